// ReDoc's menu footer shows Redocly's logo from their CDN (https://cdn.redoc.ly/...), whatever its
// options say. Parley's pages load nothing off-site (and the Content-Security-Policy would block it
// and report a violation): point that one image at nothing. ReDoc hides the logo when it fails.
(() => {
  const offsite = (value) => typeof value === "string" && /^https?:\/\/cdn\.redoc\.ly\//.test(value);
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (this instanceof HTMLImageElement && name === "src" && offsite(value)) value = "data:,";
    return setAttribute.call(this, name, value);
  };
  const src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    ...src,
    set(value) {
      src.set.call(this, offsite(value) ? "data:," : value);
    },
  });
})();
