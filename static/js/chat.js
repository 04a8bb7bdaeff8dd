// Chat page: render the stored messages, then stream new answers over the WebSocket.
// Protocol: DESIGN.md "WebSocket protocol". Text is always set with textContent, never as HTML.
(function () {
  "use strict";

  const chat = document.getElementById("chat");
  const list = document.getElementById("messages");
  const form = document.getElementById("composer");
  const prompt = document.getElementById("prompt");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const modelSelect = document.getElementById("model");
  const statusLine = document.getElementById("status");
  const conversationId = chat.dataset.conversationId;
  const bubbles = new Map(); // message id -> element

  function render(message) {
    let el = bubbles.get(message.id);
    if (!el) {
      el = document.createElement("article");
      el.className = "message " + message.role;
      el.dataset.messageId = message.id;
      const body = document.createElement("div");
      body.className = "content";
      const meta = document.createElement("div");
      meta.className = "meta";
      el.append(body, meta);
      list.append(el);
      bubbles.set(message.id, el);
    }
    el.querySelector(".content").textContent = message.content;
    el.dataset.status = message.status;
    const meta = [];
    if (message.status === "error") meta.push("Error: " + (message.error || "the model failed"));
    if (message.status === "cancelled") meta.push("Stopped");
    if (message.usage) meta.push(message.usage.completion_tokens + " tokens");
    if (message.ttft_ms != null) meta.push("first token " + message.ttft_ms + " ms");
    el.querySelector(".meta").textContent = meta.join(" · ");
    list.scrollTop = list.scrollHeight;
    return el;
  }

  function setGenerating(active) {
    sendButton.hidden = active;
    stopButton.hidden = !active;
  }

  JSON.parse(document.getElementById("initial-messages").textContent).forEach(render);

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let socket;
  let retry = 0;

  function connect() {
    socket = new WebSocket(`${scheme}://${location.host}/ws/chat/${conversationId}/`);
    socket.addEventListener("open", () => { retry = 0; statusLine.textContent = ""; });
    socket.addEventListener("close", () => {
      setGenerating(false);
      const delay = Math.min(10000, 500 * 2 ** retry++);
      statusLine.textContent = "Disconnected; reconnecting…";
      setTimeout(connect, delay);
    });
    socket.addEventListener("message", (event) => {
      const data = JSON.parse(event.data);
      switch (data.type) {
        case "message.created":
          render(data.message);
          break;
        case "generation.started":
          render({ id: data.message_id, role: "assistant", content: "", status: "streaming" });
          setGenerating(true);
          break;
        case "token": {
          const el = bubbles.get(data.message_id) ||
            render({ id: data.message_id, role: "assistant", content: "", status: "streaming" });
          el.querySelector(".content").textContent += data.delta;
          list.scrollTop = list.scrollHeight;
          break;
        }
        case "generation.completed":
          render(data.message);
          setGenerating(false);
          break;
        case "error":
          statusLine.textContent = data.detail;
          break;
      }
    });
  }
  connect();

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = prompt.value;
    if (!content.trim() || socket.readyState !== WebSocket.OPEN) return;
    statusLine.textContent = "";
    socket.send(JSON.stringify({ type: "message.send", content, model: modelSelect.value }));
    prompt.value = "";
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stopButton.addEventListener("click", () => socket.send(JSON.stringify({ type: "generation.stop" })));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !stopButton.hidden) stopButton.click();
  });
})();
