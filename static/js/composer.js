// The message composer (templates/chat/_composer.html), on the home page and on a conversation page:
// Enter sends and Shift+Enter adds a line, an empty message is refused with a note, the draft is
// kept in localStorage (per conversation; "new" on the home page), and the model picker lists the
// enabled models (GET /api/v1/models/).
//
// Images: chosen with the Attach button, pasted or dropped on the composer, each is uploaded at once
// (POST /api/v1/attachments/) and shown as a thumbnail with a Remove button; the message carries the
// ids (attachmentIds(): hidden "attachments" inputs, which the home page's form posts as they are).
// A message may be images alone.
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
  const attachInput = document.getElementById("attach-input");
  const attachList = document.getElementById("attachments");

  // ---- images --------------------------------------------------------------------------------

  function removable(li) {
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "icon remove-attachment";
    remove.textContent = "×";
    remove.title = "Remove image";
    remove.setAttribute("aria-label", "Remove image");
    remove.addEventListener("click", () => {
      li.remove();
      attachList.hidden = !attachList.childElementCount;
    });
    li.append(remove);
  }

  async function upload(file) {
    const li = document.createElement("li");
    li.className = "attachment uploading";
    li.textContent = "Uploading " + (file.name || "image") + "…";
    attachList.append(li);
    attachList.hidden = false;
    const data = new FormData();
    data.append("file", file, file.name || "pasted-image");
    try {
      const attachment = await window.Parley.api("attachments/", { method: "POST", form: data });
      li.replaceChildren();
      li.className = "attachment";
      li.dataset.id = attachment.id;
      const img = document.createElement("img");
      img.src = attachment.thumbnail_url;
      img.alt = "Attached image" + (attachment.filename ? " " + attachment.filename : "");
      const hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = "attachments";
      hidden.value = attachment.id;
      li.append(img, hidden);
    } catch (error) {
      li.className = "attachment failed";
      li.setAttribute("role", "alert");
      li.textContent = (file.name || "Image") + ": " + error.detail;
    }
    removable(li);
  }

  function addFiles(files) {
    for (const file of files) upload(file);
  }

  /** Return the ids of the images uploaded for the next message. */
  function attachmentIds() {
    return [...attachList.querySelectorAll("li[data-id]")].map((li) => li.dataset.id);
  }

  function clearAttachments() {
    attachList.replaceChildren();
    attachList.hidden = true;
  }

  attachInput.addEventListener("change", () => {
    addFiles([...attachInput.files]);
    attachInput.value = "";
  });
  prompt.addEventListener("paste", (event) => {
    const files = [...((event.clipboardData && event.clipboardData.files) || [])];
    if (!files.length) return; // text: pasted as usual
    event.preventDefault();
    addFiles(files);
  });
  form.addEventListener("dragover", (event) => {
    if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) {
      event.preventDefault();
      form.classList.add("dropping");
    }
  });
  form.addEventListener("dragleave", () => form.classList.remove("dropping"));
  form.addEventListener("drop", (event) => {
    form.classList.remove("dropping");
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    event.preventDefault();
    addFiles([...event.dataTransfer.files]);
  });

  function saveDraft() {
    if (prompt.value) localStorage.setItem(draftKey, prompt.value);
    else localStorage.removeItem(draftKey);
  }

  // Registered before chat.js's handler: an empty message goes nowhere, on either page.
  form.addEventListener("submit", (event) => {
    if (attachList.querySelector(".uploading")) {
      event.preventDefault();
      event.stopImmediatePropagation();
      statusLine.textContent = "An image is still uploading; send again in a moment.";
      return;
    }
    if (!prompt.value.trim() && !attachmentIds().length) {
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

  window.ParleyComposer = { form, prompt, modelSelect, draftKey, attachmentIds, clearAttachments };
})();
