// A share link's page (/s/<token>/): render the snapshot's messages as the chat page does. User text
// is set with textContent only; answers are Markdown rendered by ParleyRender.render (marked, then
// DOMPurify, then highlight.js), the chat's own sanitiser.
(function () {
  "use strict";

  const list = document.getElementById("messages");
  const data = JSON.parse(document.getElementById("shared-messages").textContent);

  for (const message of data) {
    const el = document.createElement("article");
    el.className = "message " + message.role;
    el.setAttribute("aria-label", message.role === "user" ? "Question" : "Answer");
    const body = document.createElement("div");
    body.className = "content";
    if (message.role === "assistant") window.ParleyRender.render(body, message.content);
    else body.textContent = message.content;
    el.append(body);
    if (message.role === "assistant" && message.model) {
      const meta = document.createElement("div");
      meta.className = "footer";
      const model = document.createElement("span");
      model.className = "meta";
      model.textContent = message.model;
      meta.append(model);
      el.append(meta);
    }
    list.append(el);
  }

  // The code blocks' Copy buttons (added by ParleyRender.render).
  list.addEventListener("click", (event) => {
    const button = event.target.closest(".copy-code");
    if (!button) return;
    const code = button.parentElement.querySelector("code");
    navigator.clipboard?.writeText(code ? code.textContent : "").then(
      () => (button.textContent = "Copied"),
      () => (button.textContent = "Copy failed"),
    );
  });
})();
