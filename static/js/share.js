// The conversation page's Share panel: create a read-only link to a snapshot of the conversation
// (POST /api/v1/conversations/<id>/shares/) and show it, ready to copy.
(function () {
  "use strict";

  const { api } = window.Parley;
  const form = document.getElementById("share-form");
  if (!form) return;
  const conversationId = document.getElementById("main").dataset.conversationId;
  const expiry = document.getElementById("share-expiry");
  const result = document.getElementById("share-result");
  const url = document.getElementById("share-url");
  const status = document.getElementById("share-status");
  const create = document.getElementById("share-create");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    create.disabled = true;
    status.textContent = "Creating the link…";
    try {
      const days = expiry.value ? Number(expiry.value) : null;
      const share = await api("conversations/" + conversationId + "/shares/", {
        method: "POST",
        body: { expires_in_days: days },
      });
      url.value = share.url;
      result.hidden = false;
      url.focus();
      url.select();
      status.textContent = share.expires_at
        ? "Link created; it expires " + new Date(share.expires_at).toLocaleString() + "."
        : "Link created.";
    } catch (error) {
      status.textContent = error.detail || "The link could not be created.";
    } finally {
      create.disabled = false;
    }
  });

  document.getElementById("share-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(url.value);
      status.textContent = "Link copied.";
    } catch (error) {
      url.select();
      status.textContent = "Press Ctrl+C to copy the selected link.";
    }
  });
})();
