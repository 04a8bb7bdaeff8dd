// Markdown rendering of answers: marked (Markdown -> HTML), then DOMPurify (sanitise the HTML),
// then highlight.js (colour code blocks). One function, `ParleyRender.render(el, text)`, serves both
// stored answers and streaming ones, so both go through the same sanitiser.
//
// Why sanitise AFTER conversion: Markdown passes raw HTML through and builds links and images from
// text, so only the final HTML can be checked. DOMPurify parses it in an inert document (nothing
// loads or runs there) and keeps only the tags and attributes a Markdown answer needs.
(function () {
  "use strict";

  const ALLOWED_TAGS = [
    "a", "b", "blockquote", "br", "code", "del", "details", "div", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "summary", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
  ];
  // No `style` (CSS can fetch external images with url(...)), no event handlers, no srcset.
  const ALLOWED_ATTR = ["href", "title", "alt", "src", "class", "align", "start", "colspan", "rowspan"];

  // Images: only same-origin or data: images may load. An external image would tell its host who
  // read the answer and when (a tracking pixel a prompt injection can plant), so its address is
  // removed here, while the node is still in DOMPurify's inert document, before anything fetches it.
  function externalImage(src) {
    try {
      const url = new URL(src, location.href);
      return !(url.protocol === "data:" || url.origin === location.origin);
    } catch (error) {
      return true;
    }
  }

  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
    if (node.tagName === "IMG") {
      const src = node.getAttribute("src") || "";
      if (!src || externalImage(src)) {
        node.removeAttribute("src");
        node.setAttribute("data-blocked-src", src.slice(0, 500));
      }
    }
  });

  const PURIFY = {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
    // DOMPurify's default URI check stays: http(s), mailto, tel, relative; data: only for images.
  };

  /** Return sanitised HTML (a string) for Markdown ``text``. Never throws. */
  function toHTML(text) {
    let html;
    try {
      html = marked.parse(String(text ?? ""), { gfm: true, breaks: true, async: false });
    } catch (error) {
      // Broken Markdown mid-stream: show the text as text.
      const div = document.createElement("div");
      div.textContent = String(text ?? "");
      html = div.innerHTML;
    }
    return DOMPurify.sanitize(html, PURIFY);
  }

  /** Render Markdown ``text`` into element ``el`` (replacing its children), safely. */
  function render(el, text) {
    el.innerHTML = toHTML(text);
    for (const img of el.querySelectorAll("img[data-blocked-src]")) {
      const note = document.createElement("span");
      note.className = "blocked-image";
      note.textContent = "[image not loaded" + (img.alt ? ": " + img.alt : "") + "]";
      note.title = "External images are not loaded: " + img.dataset.blockedSrc;
      img.replaceWith(note);
    }
    if (window.hljs) {
      for (const code of el.querySelectorAll("pre code")) {
        // highlight.js reads textContent and writes escaped markup: safe after sanitising.
        try {
          hljs.highlightElement(code);
        } catch (error) {
          /* an unknown language: leave the block plain */
        }
      }
    }
    for (const pre of el.querySelectorAll("pre")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy code");
      pre.prepend(button);
    }
  }

  if (window.hljs) hljs.configure({ ignoreUnescapedHTML: true });
  window.ParleyRender = { toHTML, render };
})();
