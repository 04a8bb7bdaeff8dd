// Chat page: render the stored messages, stream new answers over the WebSocket, and use the REST
// API for the rest (regenerate, stop fallback, feedback). Protocol: DESIGN.md "WebSocket protocol".
// The composer's keys, draft and model picker are composer.js's (shared with the home page).
//
// Safety: user text is set with textContent only. Answers are Markdown rendered by
// ParleyRender.render (marked, then DOMPurify, then highlight.js), for stored and streaming
// answers alike.
//
// Reconnecting: the server stores a streaming answer's text so far about once a second, and each
// token event carries its `offset` in the answer. After a reconnect the page reloads the messages
// over REST (the longer of the stored and the already shown text is kept), then places each new
// token at its offset, so text sent while the socket was down is filled in and none is repeated.
// Tokens that arrive past the text known here (the stored text lags by up to a second) are kept
// and joined on once a later read of the stored text reaches them, so the stream goes on smoothly
// after a reconnect, or on a page opened while its answer streams (the first message from home).
(function () {
  "use strict";

  const { api } = window.Parley;
  const { form, prompt, modelSelect, draftKey, attachmentIds, clearAttachments } = window.ParleyComposer;
  const chat = document.getElementById("main");
  const list = document.getElementById("messages");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const statusLine = document.getElementById("status");
  const conversationId = chat.dataset.conversationId;

  const messages = new Map(); // id -> {data, el, raw, steps: [{name, status}]}
  let streamingId = null; // the answer being generated, if any
  let pendingSteps = []; // node events that arrived before generation.started
  let replacing = null; // id of the answer a regenerate will supersede
  // A branch was made in this turn (an edit or a regeneration): once it ends, the path is read again
  // over REST, for the "‹ 2 / 3 ›" counts of the messages that now have siblings.
  let branched = false;
  let lastSent = ""; // for retrying a message the server refused
  // A message sent and not yet confirmed by its message.created: {content, clientId}. If the server
  // refuses it (an error frame) or the socket closes first, its text goes back into the composer.
  let pendingSend = null;
  let restored = null; // the last such message given back, until the next reconnect has checked it
  let pendingEdit = null; // an edit sent and not yet confirmed: {id, content, clientId}; refused, it reopens

  // ---- rendering ------------------------------------------------------------------------------

  function button(label, iconName, handler, extra = "") {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "icon " + extra;
    if (iconName) b.append(window.Parley.icon(iconName));
    else b.textContent = label;
    b.title = label;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", handler);
    return b;
  }

  function create(message) {
    const el = document.createElement("article");
    el.className = "message " + message.role;
    el.dataset.messageId = message.id;
    el.setAttribute("aria-label", message.role === "user" ? "You said" : "Answer");
    const steps = document.createElement("ol");
    steps.className = "steps";
    steps.hidden = true;
    steps.setAttribute("aria-label", "Steps");
    const images = document.createElement("div");
    images.className = "images";
    images.hidden = true;
    const body = document.createElement("div");
    body.className = "content";
    const citations = document.createElement("div");
    citations.className = "citations";
    citations.hidden = true;
    const toolCalls = document.createElement("details");
    toolCalls.className = "tool-calls";
    toolCalls.hidden = true;
    const error = document.createElement("div");
    error.className = "error-box";
    error.setAttribute("role", "alert");
    error.hidden = true;
    const footer = document.createElement("div");
    footer.className = "footer";
    const meta = document.createElement("span");
    meta.className = "meta";
    const actions = document.createElement("span");
    actions.className = "actions";
    const versions = document.createElement("span");
    versions.className = "versions";
    versions.hidden = true;
    footer.append(versions, actions, meta);
    el.append(steps, images, body, citations, toolCalls, error, footer);
    const entry = { data: message, el, raw: "", steps: [] };
    messages.set(message.id, entry);
    actions.append(button("Copy", "copy", () => copy(entry.raw, actions.firstChild), "copy"));
    if (message.role === "user") actions.append(button("Edit", "edit", () => startEdit(entry), "edit"));
    if (message.role === "assistant") {
      actions.append(
        button("Good answer", "up", () => feedback(entry, "up"), "thumb up"),
        button("Bad answer", "down", () => feedback(entry, "down"), "thumb down"),
        button("Regenerate", "regenerate", () => regenerate(entry), "regenerate"),
      );
    }
    list.append(el);
    return entry;
  }

  let frame = null;
  const dirty = new Set();
  function paint(entry) {
    // Streaming re-renders at most once per animation frame, however many tokens arrive.
    dirty.add(entry);
    if (frame === null) {
      frame = requestAnimationFrame(() => {
        frame = null;
        for (const e of dirty) paintNow(e);
        dirty.clear();
        scrollDown();
      });
    }
  }

  function paintNow(entry) {
    const body = entry.el.querySelector(".content");
    if (entry.data.role === "user") body.textContent = entry.raw;
    else window.ParleyRender.render(body, entry.raw);
  }

  let stickToBottom = true;
  list.addEventListener("scroll", () => {
    stickToBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  });
  function scrollDown() {
    if (stickToBottom) list.scrollTop = list.scrollHeight;
  }

  function renderSteps(entry) {
    const ol = entry.el.querySelector(".steps");
    ol.replaceChildren(
      ...entry.steps.map((s) => {
        const li = document.createElement("li");
        const failed = s.ok === false;
        li.className = "step " + s.status + (failed ? " failed" : "");
        // A tool call names its tool; an unavailable MCP server names the server. Text only.
        const label = s.tool ? "tool " + s.tool : s.server ? "tool server " + s.server : s.name.replaceAll("_", " ");
        li.textContent = label + (s.status === "start" ? " …" : failed ? " ✗" : " ✓");
        if (s.summary) li.title = s.summary;
        return li;
      }),
    );
    ol.hidden = entry.steps.length === 0;
  }

  /** Add or finish a step from a `node` event: {name, status, tool?, server?, ok?, summary?}. */
  function addStep(entry, event) {
    const { name, status } = event;
    const tool = typeof event.tool === "string" ? event.tool : "";
    const step = entry.steps.find((s) => s.name === name && (s.tool || "") === tool && s.status === "start");
    const extra = {
      tool,
      server: typeof event.server === "string" ? event.server : "",
      ok: event.ok,
      summary: typeof event.summary === "string" ? event.summary : "",
    };
    if (step && status === "end") Object.assign(step, extra, { status: "end" });
    else if (!step) entry.steps.push({ name, status, ...extra });
    renderSteps(entry);
  }

  /** The tool calls of an answer (`metadata.tool_calls`), collapsed under it; every value shown as text. */
  function renderToolCalls(entry, calls) {
    const box = entry.el.querySelector(".tool-calls");
    if (!Array.isArray(calls) || !calls.length) {
      box.hidden = true;
      return;
    }
    const summary = document.createElement("summary");
    const failed = calls.filter((c) => c && c.ok === false).length;
    summary.textContent = "Tool calls (" + calls.length + ")" + (failed ? " · " + failed + " failed" : "");
    const list = document.createElement("ol");
    for (const call of calls) {
      if (!call || typeof call !== "object") continue;
      const li = document.createElement("li");
      li.className = call.ok === false ? "failed" : "ok";
      const head = document.createElement("div");
      head.className = "tool-head";
      const name = document.createElement("code");
      name.textContent = String(call.tool || "");
      const meta = [];
      if (call.server) meta.push("server " + call.server);
      meta.push(call.ok === false ? "failed" : "ok");
      if (call.cached) meta.push("cached");
      if (typeof call.ms === "number") meta.push(call.ms + " ms");
      const info = document.createElement("span");
      info.className = "meta";
      info.textContent = " " + meta.join(" · ");
      head.append(name, info);
      const args = document.createElement("pre");
      args.className = "tool-arguments";
      args.textContent = JSON.stringify(call.arguments ?? {}, null, 2);
      const result = document.createElement("pre");
      result.className = "tool-result";
      result.textContent = String(call.result ?? "");
      li.append(head, args, result);
      list.append(li);
    }
    box.replaceChildren(summary, list);
    box.hidden = false;
  }

  function renderCitations(entry, citations) {
    const box = entry.el.querySelector(".citations");
    if (!Array.isArray(citations) || !citations.length) {
      box.hidden = true;
      return;
    }
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = "Sources:";
    const ul = document.createElement("ul");
    const seen = new Set();
    for (const c of citations) {
      const key = c.document_id + ":" + c.chunk_id;
      if (seen.has(key)) continue;
      seen.add(key);
      const li = document.createElement("li");
      li.textContent = c.title || "Document";
      if (typeof c.similarity === "number") {
        const score = document.createElement("span");
        score.className = "score";
        score.textContent = " " + Math.round(c.similarity * 100) + "%";
        score.title = "Similarity of the passage to your question";
        li.append(score);
      }
      ul.append(li);
    }
    box.replaceChildren(label, ul);
    box.hidden = false;
  }

  function showError(entry, text, retry) {
    const box = entry.el.querySelector(".error-box");
    box.replaceChildren();
    if (!text) {
      box.hidden = true;
      return;
    }
    const p = document.createElement("span");
    p.textContent = text;
    box.append(p);
    if (retry) box.append(button("Retry", null, retry, "retry text"));
    box.hidden = false;
  }

  /** Show a user message's images as thumbnails, each a link to the image (once: images never change). */
  function renderImages(entry, attachments) {
    const box = entry.el.querySelector(".images");
    if (!Array.isArray(attachments) || !attachments.length || box.childElementCount) return;
    for (const attachment of attachments) {
      const link = document.createElement("a");
      link.href = attachment.url;
      link.target = "_blank";
      link.rel = "noopener";
      const img = document.createElement("img");
      img.src = attachment.thumbnail_url;
      img.alt = "Attached image";
      img.loading = "lazy";
      link.append(img);
      box.append(link);
    }
    box.hidden = false;
  }

  /** Create or update the bubble of ``message`` (the API's message shape). */
  function render(message) {
    const entry = messages.get(message.id) || create(message);
    const keepLocal = message.status === "streaming" && (message.content || "").length < entry.raw.length;
    entry.data = Object.assign(entry.data, message);
    if (!keepLocal) entry.raw = message.content || "";
    entry.el.dataset.status = message.status;
    paintNow(entry);
    renderImages(entry, message.attachments);
    if (message.role === "assistant") {
      // History: the steps the agent workflow recorded (`agents_used`), when the live list is gone.
      const stored = message.metadata && (message.metadata.steps || message.metadata.agents_used);
      if (Array.isArray(stored) && stored.length && !entry.steps.length) {
        entry.steps = stored.map((s) => ({ name: String((s && s.name) || s), status: "end" }));
        renderSteps(entry);
      }
      renderCitations(entry, message.citations);
      renderToolCalls(entry, message.metadata && message.metadata.tool_calls);
      if (message.status === "error") {
        showError(entry, "Error: " + (message.error || "the model failed."), () => regenerate(entry));
      } else if (message.status === "cancelled") {
        showError(entry, "");
      } else {
        showError(entry, "");
      }
    }
    const meta = [];
    if (message.status === "cancelled") meta.push("Stopped");
    if (message.model_slug && message.role === "assistant") meta.push(message.model_slug);
    if (message.usage && message.usage.completion_tokens != null) meta.push(message.usage.completion_tokens + " tokens");
    if (message.ttft_ms != null) meta.push("first token " + message.ttft_ms + " ms");
    if (message.cached) meta.push("cached");
    entry.el.querySelector(".meta").textContent = meta.join(" · ");
    updateRegenerate();
    scrollDown();
    return entry;
  }

  /** Any finished answer can be regenerated (a new version beside it), while nothing is generated. */
  function updateRegenerate() {
    for (const e of messages.values()) {
      const b = e.el.querySelector(".regenerate");
      if (b) b.hidden = e.data.status === "streaming" || streamingId !== null;
      const edit = e.el.querySelector(".actions .edit");
      if (edit) edit.disabled = streamingId !== null;
      renderVersions(e); // switching waits for the answer being generated
    }
  }

  // ---- branches: "‹ 2 / 3 ›" between the versions of a message, and editing a question -------------

  /** Show "‹ n / m ›" on a message with siblings (``sibling_ids``: other edits or regenerations). */
  function renderVersions(entry) {
    const box = entry.el.querySelector(".versions");
    const ids = entry.data.sibling_ids;
    if (!Array.isArray(ids) || ids.length < 2 || ids.indexOf(entry.data.id) < 0) {
      box.hidden = true;
      return;
    }
    const at = ids.indexOf(entry.data.id);
    const what = entry.data.role === "user" ? "message" : "answer";
    const previous = button(`Previous version of this ${what}`, null, () => switchTo(ids[at - 1]), "version-previous");
    previous.textContent = "‹";
    previous.disabled = at === 0 || streamingId !== null;
    const next = button(`Next version of this ${what}`, null, () => switchTo(ids[at + 1]), "version-next");
    next.textContent = "›";
    next.disabled = at === ids.length - 1 || streamingId !== null;
    const label = document.createElement("span");
    label.className = "version-label";
    label.textContent = `${at + 1} / ${ids.length}`;
    label.setAttribute("aria-label", `Version ${at + 1} of ${ids.length}`);
    box.replaceChildren(previous, label, next);
    box.hidden = false;
  }

  /** Show the branch through message ``id``: the server picks its newest continuation. */
  async function switchTo(id) {
    if (!id || streamingId) return;
    try {
      load(await api(`conversations/${conversationId}/messages/${id}/activate/`, { method: "POST" }));
      statusLine.textContent = "";
    } catch (error) {
      statusLine.textContent = error.detail;
    }
  }

  /** Remove every message shown after message ``parentId`` (all of them for null); return whether any was. */
  function truncateAfter(parentId) {
    const entries = [...messages.values()];
    const at = parentId ? entries.findIndex((e) => e.data.id === parentId) : -1;
    if (parentId && at < 0) return false;
    for (const e of entries.slice(at + 1)) {
      e.el.remove();
      messages.delete(e.data.id);
    }
    return entries.length > at + 1;
  }

  /** Turn a question into a text box: "Save & submit" asks it again as a new version, "Cancel" leaves it be. */
  function startEdit(entry, text = null) {
    if (streamingId || entry.el.querySelector(".edit-form")) return;
    const body = entry.el.querySelector(".content");
    const form = document.createElement("form");
    form.className = "edit-form";
    const area = document.createElement("textarea");
    area.value = text ?? entry.raw;
    area.rows = Math.min(12, Math.max(2, entry.raw.split("\n").length));
    area.setAttribute("aria-label", "Edit your message");
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "primary";
    save.textContent = "Save & submit";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    const close = () => {
      form.remove();
      body.hidden = false;
    };
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        close();
      }
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const content = area.value;
      if (!content.trim()) return;
      if (content === entry.raw) return close(); // unchanged: no new version the user did not ask for
      if (send(content, entry.data.id)) close();
    });
    form.append(area, save, cancel);
    body.hidden = true;
    body.after(form);
    area.focus();
  }

  function setGenerating(active) {
    sendButton.hidden = active;
    stopButton.hidden = !active;
    list.setAttribute("aria-busy", String(active));
    updateRegenerate();
  }

  function clearAll() {
    messages.clear();
    list.replaceChildren();
  }

  function load(data) {
    const local = new Map([...messages].map(([id, e]) => [id, e]));
    clearAll();
    streamingId = null;
    for (const message of data) {
      const old = local.get(message.id);
      const entry = render(message);
      if (old && message.status === "streaming" && old.raw.length > entry.raw.length && old.raw.startsWith(entry.raw)) {
        entry.raw = old.raw; // the stored text lags the stream by up to a second: keep what we saw
        entry.steps = old.steps;
        renderSteps(entry);
        paintNow(entry);
      }
      if (old && old.ahead && message.status === "streaming") {
        entry.ahead = old.ahead;
        if (joinAhead(entry)) paintNow(entry);
      }
      if (message.role === "assistant" && message.status === "streaming") streamingId = message.id;
    }
    setGenerating(streamingId !== null);
  }

  /** Keep a delta that starts past the text shown (``offset`` > its length), joined to the deltas kept before it. */
  function keepAhead(entry, offset, delta) {
    const ahead = entry.ahead;
    if (ahead && offset >= ahead.from && offset <= ahead.from + ahead.text.length) {
      ahead.text = ahead.text.slice(0, offset - ahead.from) + delta;
    } else {
      entry.ahead = { from: offset, text: delta };
    }
  }

  /** Once the text shown reaches the kept deltas, continue it with them; return whether the text changed. */
  function joinAhead(entry) {
    const ahead = entry.ahead;
    if (!ahead || ahead.from > entry.raw.length) return false;
    entry.ahead = null;
    if (entry.raw.length >= ahead.from + ahead.text.length) return false; // the stored text has it all
    entry.raw = entry.raw.slice(0, ahead.from) + ahead.text;
    return true;
  }

  // ---- actions -------------------------------------------------------------------------------

  async function copy(text, target) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (error) {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    if (target) {
      const old = [...target.childNodes];
      target.replaceChildren(target.classList.contains("copy-code") ? "Copied" : window.Parley.icon("check"));
      setTimeout(() => target.replaceChildren(...old), 1200);
    }
    statusLine.textContent = "Copied.";
  }

  async function feedback(entry, rating) {
    try {
      await api(`conversations/${conversationId}/messages/${entry.data.id}/feedback/`, {
        method: "POST",
        body: { rating },
      });
      for (const b of entry.el.querySelectorAll(".thumb")) {
        b.setAttribute("aria-pressed", String(b.classList.contains(rating)));
      }
      statusLine.textContent = "Thanks for the feedback.";
    } catch (error) {
      statusLine.textContent = error.detail;
    }
  }

  async function regenerate(entry) {
    if (streamingId) return;
    replacing = entry.data.id;
    showError(entry, "");
    statusLine.textContent = "";
    try {
      // Waits for the whole answer; its tokens stream to this page over the WebSocket meanwhile.
      const message = await api(`conversations/${conversationId}/messages/${entry.data.id}/regenerate/`, {
        method: "POST",
        body: { model: modelSelect.value },
      });
      render(message);
    } catch (error) {
      replacing = null;
      if (messages.has(entry.data.id)) showError(entry, error.detail, () => regenerate(entry));
      else statusLine.textContent = error.detail;
    }
  }

  /** Send ``content``; with ``editedId``, as a new version of that message (``message.edit``). */
  function send(content, editedId = null) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      statusLine.textContent = "Not connected yet; your message is kept. Try again in a moment.";
      return false;
    }
    lastSent = editedId ? "" : content; // a refused edit is retried from its message, not the composer
    removeSendErrors();
    statusLine.textContent = "";
    const clientId = newClientId();
    const frame = { type: "message.send", content, client_id: clientId, model: modelSelect.value };
    if (editedId) {
      Object.assign(frame, { type: "message.edit", message_id: editedId });
      pendingEdit = { id: editedId, content, clientId };
    } else {
      pendingSend = { content, clientId };
      frame.attachments = attachmentIds();
    }
    socket.send(JSON.stringify(frame));
    return true;
  }

  function newClientId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  /** Put the text of a send that failed back into the composer, unless something new was typed. */
  function restoreUnsent() {
    if (!pendingSend) return;
    restored = pendingSend;
    pendingSend = null;
    if (!prompt.value.trim()) {
      prompt.value = restored.content;
      localStorage.setItem(draftKey, restored.content);
    }
  }

  /** After a reconnect: if the server did store the message given back, take it out of the composer. */
  function forgetRestoredIfStored() {
    if (!restored) return;
    const stored = [...messages.values()].some((e) => e.data.role === "user" && e.data.client_id === restored.clientId);
    if (stored && prompt.value === restored.content) {
      prompt.value = "";
      localStorage.removeItem(draftKey);
    }
    restored = null;
  }

  function removeSendErrors() {
    list.querySelectorAll(".send-error").forEach((el) => el.remove());
  }

  function sendError(detail) {
    // The server refused the message (too long, quota, a generation already running...).
    removeSendErrors();
    const box = document.createElement("div");
    box.className = "error-box send-error";
    box.setAttribute("role", "alert");
    const text = document.createElement("span");
    text.textContent = detail;
    box.append(text);
    if (lastSent) {
      const content = lastSent;
      box.append(button("Retry", null, () => send(content), "retry text"));
    }
    list.append(box);
    scrollDown();
  }

  function stop() {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "generation.stop" }));
    else api(`conversations/${conversationId}/stop/`, { method: "POST" }).catch(() => {});
    statusLine.textContent = "Stopping…";
  }

  // ---- WebSocket -----------------------------------------------------------------------------

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let socket = null;
  let attempt = 0;
  let everOpened = false;
  let pinger = null;

  function connect() {
    socket = new WebSocket(`${scheme}://${location.host}/ws/chat/${conversationId}/`);
    socket.addEventListener("open", async () => {
      const reconnected = everOpened;
      everOpened = true;
      attempt = 0;
      statusLine.textContent = "";
      chat.dataset.connected = "true";
      clearInterval(pinger);
      pinger = setInterval(() => socket.readyState === WebSocket.OPEN && socket.send('{"type":"ping"}'), 25000);
      // Catch up with what happened while disconnected, or since the page was rendered when an
      // answer was streaming then (the first message sent from the home page): resume it.
      if (reconnected || streamingId) {
        try {
          load(await api(`conversations/${conversationId}/messages/`));
          forgetRestoredIfStored();
        } catch (error) {
          /* keep what is shown */
        }
      }
    });
    socket.addEventListener("close", (event) => {
      chat.dataset.connected = "false";
      clearInterval(pinger);
      restoreUnsent(); // closed before the server confirmed the message: it may not have it
      if (event.code === 4401) {
        statusLine.textContent = "You are signed out. Reload the page to sign in again.";
        return;
      }
      if (event.code === 4404) {
        statusLine.textContent = "This conversation no longer exists.";
        return;
      }
      // Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... up to 15 s.
      const delay = Math.min(15000, 500 * 2 ** attempt++) * (0.8 + Math.random() * 0.4);
      const seconds = Math.round(delay / 1000);
      if (event.code === 4429) {
        statusLine.textContent = `Too many Parley tabs are open; close one. Retrying in ${seconds} s…`;
      } else if (event.code === 4503) {
        statusLine.textContent = `Live updates are unavailable on the server; retrying in ${seconds} s…`;
      } else {
        statusLine.textContent = `Connection lost; reconnecting in ${seconds} s…`;
      }
      setTimeout(connect, delay);
    });
    socket.addEventListener("message", (event) => {
      lastEventAt = Date.now();
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      handle(data);
    });
  }

  // ---- catching up ---------------------------------------------------------------------------
  // Under load the server may drop events of a slow socket. A token placed past the text shown, or
  // silence while an answer streams, makes the page read the stored state over REST (the server
  // stores a streaming answer's text about once a second, and the final answer when it ends), at
  // most once a second.
  const STALL_MS = 8000;
  let lastEventAt = Date.now();
  let lastCatchUp = 0;
  let catchingUp = false;

  async function catchUp(now = false) {
    if (catchingUp || (!now && Date.now() - lastCatchUp < 1000)) return;
    catchingUp = true;
    lastCatchUp = Date.now();
    try {
      load(await api(`conversations/${conversationId}/messages/`));
    } catch (error) {
      /* keep what is shown; the next event or stall check tries again */
    } finally {
      catchingUp = false;
    }
  }

  setInterval(() => {
    if (streamingId && Date.now() - lastEventAt > STALL_MS) {
      lastEventAt = Date.now();
      catchUp();
    }
  }, 2000);

  function handle(data) {
    switch (data.type) {
      case "message.created":
        if (pendingSend && data.message.client_id === pendingSend.clientId) {
          pendingSend = null;
          clearAttachments(); // stored with the message; a refused one keeps them for a retry
        }
        if (pendingEdit && data.message.client_id === pendingEdit.clientId) pendingEdit = null;
        removeSendErrors();
        // An edit: the new message replaces, on screen, the one edited and what followed it.
        if ("parent_id" in data.message && !messages.has(data.message.id)) {
          const last = [...messages.values()].pop();
          const parent = data.message.parent_id || null;
          if ((last ? last.data.id : null) !== parent) branched = truncateAfter(parent) || branched;
        }
        render(data.message);
        break;
      case "generation.started": {
        if (replacing && messages.has(replacing)) {
          messages.get(replacing).el.remove();
          messages.delete(replacing);
          branched = true;
        }
        replacing = null;
        // A regenerated answer follows its question: what came after the question leaves the screen.
        if (data.parent_id && !messages.has(data.message_id)) branched = truncateAfter(data.parent_id) || branched;
        streamingId = data.message_id;
        const entry = messages.get(data.message_id) ||
          render({ id: data.message_id, role: "assistant", content: "", status: "streaming", model_slug: data.model });
        for (const s of pendingSteps) addStep(entry, s);
        pendingSteps = [];
        setGenerating(true);
        break;
      }
      case "node": {
        const entry = streamingId && messages.get(streamingId);
        if (entry) addStep(entry, data);
        else pendingSteps.push(data);
        break;
      }
      case "token": {
        const entry = messages.get(data.message_id) ||
          render({ id: data.message_id, role: "assistant", content: "", status: "streaming" });
        if (!streamingId) {
          streamingId = data.message_id;
          setGenerating(true);
        }
        if (typeof data.offset === "number" && data.offset > entry.raw.length) {
          // Text before this delta is missing here (sent before this socket joined, or events were
          // dropped): keep the delta, read the stored text, and join the two when they meet.
          keepAhead(entry, data.offset, data.delta);
          catchUp();
          break;
        }
        // Place the delta at its offset: overlapping text (already shown) is replaced, not repeated.
        const at = typeof data.offset === "number" ? data.offset : entry.raw.length;
        entry.raw = entry.raw.slice(0, at) + data.delta;
        joinAhead(entry);
        paint(entry);
        break;
      }
      case "generation.completed": {
        const entry = messages.get(data.message.id);
        if (entry) entry.steps.forEach((s) => { s.status = "end"; });
        if (entry) renderSteps(entry);
        if (streamingId === data.message.id) streamingId = null;
        render(data.message);
        setGenerating(streamingId !== null);
        statusLine.textContent = "";
        window.Parley.refreshConversations();
        window.Parley.refreshUsage();
        if (branched) {
          branched = false;
          catchUp(true); // the new version's "‹ n / m ›"
        }
        break;
      }
      case "branch.switched": {
        // Another page (or this one) picked a branch: show it, unless it is the one shown already.
        const last = [...messages.values()].pop();
        if (!last || last.data.id !== data.leaf_id) catchUp(true);
        break;
      }
      case "error":
        // Errors of a generation come back with its message (generation.completed, status error).
        // Any other is the server refusing the message just sent: its text goes back to the composer.
        if (!data.message_id) {
          restoreUnsent();
          sendError(data.detail || "Something went wrong.");
          if (pendingEdit && messages.has(pendingEdit.id)) startEdit(messages.get(pendingEdit.id), pendingEdit.content);
          pendingEdit = null;
        }
        break;
      default:
        break;
    }
  }

  // ---- composer ------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = prompt.value;
    if (!content.trim() && !attachmentIds().length) return; // composer.js says so
    if (streamingId) {
      statusLine.textContent = "An answer is still being generated: stop it (Esc) or wait.";
      return;
    }
    if (send(content)) {
      prompt.value = "";
      localStorage.removeItem(draftKey);
    }
  });
  stopButton.addEventListener("click", stop);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !stopButton.hidden) {
      event.preventDefault();
      stop();
    }
  });
  list.addEventListener("click", (event) => {
    const b = event.target.closest(".copy-code");
    if (b) copy(b.parentElement.querySelector("code")?.textContent || "", b);
  });

  load(JSON.parse(document.getElementById("initial-messages").textContent));
  connect();
})();
