// The message composer (templates/chat/_composer.html), on the home page and on a conversation page:
// Enter sends and Shift+Enter adds a line, an empty message is refused with a note, the draft is
// kept in localStorage (per conversation; "new" on the home page), and the model picker lists the
// enabled models (GET /api/v1/models/).
//
// On the home page the form posts the first message to the server, which creates the conversation
// and redirects to its page, where the answer streams (the same post works without JavaScript). On
// a conversation page chat.js handles the submit and sends over the WebSocket.
(function () {
  "use strict";

  const form = document.getElementById("composer");
  if (!form) return;
  const prompt = document.getElementById("prompt");
  const modelSelect = document.getElementById("model");
  const sendButton = document.getElementById("send");
  const statusLine = document.getElementById("status");
  const conversationId = document.getElementById("main").dataset.conversationId || "";
  const draftKey = "parley:draft:" + (conversationId || "new");
  const startsConversation = !conversationId; // the home page: the form posts to the server

  function saveDraft() {
    if (prompt.value) localStorage.setItem(draftKey, prompt.value);
    else localStorage.removeItem(draftKey);
  }

  // Registered before chat.js's handler: an empty message goes nowhere, on either page.
  form.addEventListener("submit", (event) => {
    if (!prompt.value.trim()) {
      event.preventDefault();
      event.stopImmediatePropagation();
      statusLine.textContent = "The message is empty.";
      prompt.focus();
      return;
    }
    if (!startsConversation) return;
    if (form.dataset.sending) {
      event.preventDefault(); // already on its way: one conversation per message
      return;
    }
    // The browser posts the form and follows the redirect to the new conversation. A refused
    // message comes back in the page, so the draft is not needed any more either way.
    form.dataset.sending = "true";
    sendButton.disabled = true;
    statusLine.textContent = "Starting the conversation…";
    localStorage.removeItem(draftKey);
  });
  // Back from the conversation, the page may come from the browser's cache as it was left.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && form.dataset.sending) {
      delete form.dataset.sending;
      sendButton.disabled = false;
      statusLine.textContent = "";
    }
  });

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  prompt.addEventListener("input", saveDraft);

  // Models: the enabled ones from the API (the server-rendered options stay if it fails).
  window.Parley.api("models/")
    .then((models) => {
      if (!Array.isArray(models) || !models.length) return;
      const current = modelSelect.value || modelSelect.dataset.current;
      modelSelect.replaceChildren(
        ...models.map((m) => {
          const option = document.createElement("option");
          option.value = m.slug;
          option.textContent = m.display_name;
          option.selected = current ? m.slug === current : m.is_default;
          return option;
        }),
      );
    })
    .catch(() => {});

  // A message the server gave back (home page) wins over the stored draft.
  if (!prompt.value) prompt.value = localStorage.getItem(draftKey) || "";
  else saveDraft();
  prompt.focus();

  window.ParleyComposer = { form, prompt, modelSelect, draftKey };
})();
