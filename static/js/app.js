// Every signed-in page: the REST helper, the conversation sidebar (search, rename, archive, delete),
// the document panel and the usage/quota indicator. The REST API is used with the session cookie
// and Django's CSRF token (DESIGN.md "HTTP surface").
(function () {
  "use strict";

  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (input) return input.value;
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  /** An API failure: ``status`` (0 when the network failed), ``code`` and ``detail`` from the error shape. */
  class ApiError extends Error {
    constructor(status, code, detail) {
      super(detail);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
  }

  /** Call ``/api/v1/<path>``; return the parsed JSON (null for 204). Raise ApiError on failure. */
  async function api(path, { method = "GET", body, form } = {}) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
    let payload;
    if (form) payload = form;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch("/api/v1/" + path, { method, headers, body: payload, credentials: "same-origin" });
    } catch (error) {
      throw new ApiError(0, "network", "The server could not be reached.");
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      /* not JSON */
    }
    if (!response.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(response.status, err.code || "http_" + response.status, err.detail || response.statusText);
    }
    return data;
  }

  // ---- icons (inline SVG drawn here: no icon font, no emoji font needed) -----------------------
  const ICONS = {
    copy: ["M9 9h11v11H9z", "M5 15H4V4h11v1"],
    up: ["M7 11v9H3v-9z", "M7 11l4-8c1.7 0 3 1.3 3 3v3h5.5a2 2 0 0 1 2 2.3l-1.3 7A2 2 0 0 1 18.2 20H7"],
    down: ["M7 13V4H3v9z", "M7 13l4 8c1.7 0 3-1.3 3-3v-3h5.5a2 2 0 0 0 2-2.3l-1.3-7A2 2 0 0 0 18.2 4H7"],
    regenerate: ["M20 11a8 8 0 1 0-2.3 5.7", "M20 4v7h-7"],
    edit: ["M4 20h4L19 9l-4-4L4 16z", "M13 7l4 4"],
    archive: ["M3 4h18v5H3z", "M5 9v11h14V9", "M10 13h4"],
    unarchive: ["M3 4h18v5H3z", "M5 9v11h14V9", "M12 18v-6", "M9 14l3-3 3 3"],
    remove: ["M4 7h16", "M10 11v6", "M14 11v6", "M6 7l1 13h10l1-13", "M9 7V4h6v3"],
    check: ["M5 12l5 5 9-10"],
  };

  /** Return an SVG icon element (decorative: the button carries the label). */
  function icon(name) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", "svg-icon");
    for (const d of ICONS[name] || []) {
      const path = document.createElementNS(ns, "path");
      path.setAttribute("d", d);
      svg.append(path);
    }
    return svg;
  }

  // ---- sidebar --------------------------------------------------------------------------------
  const sidebar = document.getElementById("sidebar");
  const list = document.getElementById("conversations");
  const search = document.getElementById("conversation-search");
  const showActive = document.getElementById("show-active");
  const showArchived = document.getElementById("show-archived");
  const toggle = document.getElementById("sidebar-toggle");
  const currentId = list ? list.dataset.current : "";
  let archivedView = false;

  function conversationItem(c) {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    const link = document.createElement("a");
    link.href = "/c/" + c.id + "/";
    link.textContent = c.title || "New conversation";
    if (c.id === currentId) link.setAttribute("aria-current", "page");
    li.append(link);
    decorate(li, c.archived);
    return li;
  }

  function actionButton(label, iconName, handler) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "icon";
    b.append(icon(iconName));
    b.title = label;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", handler);
    return b;
  }

  function decorate(li, archived) {
    if (li.querySelector(".actions") || !li.dataset.id) return;
    const id = li.dataset.id;
    const link = li.querySelector("a");
    const name = () => link.textContent;
    const actions = document.createElement("span");
    actions.className = "actions";
    actions.append(
      actionButton("Rename " + name(), "edit", () => rename(li)),
      actionButton((archived ? "Unarchive " : "Archive ") + name(), archived ? "unarchive" : "archive", async () => {
        try {
          await api("conversations/" + id + "/", { method: "PATCH", body: { archived: !archived } });
          if (id === currentId && !archived) location.href = "/";
          else removeItem(li);
        } catch (error) {
          flash(error.detail);
        }
      }),
      actionButton("Delete " + name(), "remove", async () => {
        if (!window.confirm("Delete “" + name() + "” and all its messages?")) return;
        try {
          await api("conversations/" + id + "/", { method: "DELETE" });
          if (id === currentId) location.href = "/";
          else removeItem(li);
        } catch (error) {
          flash(error.detail);
        }
      }),
    );
    li.append(actions);
  }

  function removeItem(li) {
    li.remove();
    if (!list.querySelector("li[data-id]")) refreshConversations(); // shows "Nothing archived." etc.
  }

  function rename(li) {
    const link = li.querySelector("a");
    const input = document.createElement("input");
    input.type = "text";
    input.value = link.textContent;
    input.maxLength = 200;
    input.className = "rename";
    input.setAttribute("aria-label", "New title");
    link.hidden = true;
    li.insertBefore(input, link);
    input.focus();
    input.select();
    let done = false;
    async function finish(save) {
      if (done) return;
      done = true;
      const title = input.value.trim();
      input.remove();
      link.hidden = false;
      if (!save || !title || title === link.textContent) return link.focus();
      try {
        const c = await api("conversations/" + li.dataset.id + "/", { method: "PATCH", body: { title } });
        link.textContent = c.title;
        if (li.dataset.id === currentId) {
          document.title = c.title + " · Parley";
          const heading = document.getElementById("conversation-title");
          if (heading) heading.textContent = c.title;
        }
      } catch (error) {
        flash(error.detail);
      }
      link.focus();
    }
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  function flash(text) {
    const status = document.getElementById("sidebar-status");
    if (status) status.textContent = text;
  }

  async function refreshConversations() {
    if (!list) return;
    const params = new URLSearchParams({ page_size: "100" });
    if (search.value.trim()) params.set("q", search.value.trim());
    if (archivedView) params.set("archived", "true");
    try {
      const data = await api("conversations/?" + params);
      const rows = data.results || data;
      list.replaceChildren(...rows.map(conversationItem));
      if (!rows.length) {
        const li = document.createElement("li");
        li.className = "muted";
        li.textContent = search.value.trim() ? "No matches." : archivedView ? "Nothing archived." : "No conversations yet.";
        list.append(li);
      }
    } catch (error) {
      /* keep the list as it is */
    }
  }

  if (list) {
    list.querySelectorAll("li[data-id]").forEach((li) => decorate(li, false));
    let timer;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(refreshConversations, 250);
    });
    function setView(archived) {
      archivedView = archived;
      showActive.setAttribute("aria-pressed", String(!archived));
      showArchived.setAttribute("aria-pressed", String(archived));
      refreshConversations();
    }
    showActive.addEventListener("click", () => setView(false));
    showArchived.addEventListener("click", () => setView(true));
  }
  if (toggle && sidebar) {
    toggle.addEventListener("click", () => {
      const open = sidebar.classList.toggle("open");
      toggle.setAttribute("aria-expanded", String(open));
    });
  }

  // ---- usage and quota (GET /api/v1/me/: "quota": {daily_tokens, used, remaining, resets_at}) ---
  const usage = document.getElementById("usage");
  async function refreshUsage() {
    if (!usage) return;
    try {
      const me = await api("me/");
      const q = me.quota;
      if (!q) return;
      const used = Number(q.used || 0);
      const short = new Intl.NumberFormat(undefined, { notation: "compact" }).format;
      if (!q.daily_tokens) {
        usage.textContent = short(used) + " tokens today";
        usage.title = "No daily limit";
      } else {
        const left = Math.max(0, Number(q.remaining ?? q.daily_tokens - used));
        usage.textContent = short(used) + " / " + short(q.daily_tokens) + " tokens";
        usage.title = used.toLocaleString() + " of " + Number(q.daily_tokens).toLocaleString() + " tokens used today; " +
          left.toLocaleString() + " left" +
          (q.resets_at ? "; resets " + new Date(q.resets_at).toLocaleString() : "");
        usage.classList.toggle("low", left < Number(q.daily_tokens) * 0.1);
      }
      usage.setAttribute("aria-label", "Usage: " + usage.textContent + ". " + usage.title);
      usage.hidden = false;
    } catch (error) {
      /* no indicator */
    }
  }
  refreshUsage();

  // ---- documents (POST /api/v1/documents/ multipart "file"; GET lists them with their status) ---
  const panel = document.getElementById("documents");
  const uploadForm = document.getElementById("document-upload");
  const fileInput = document.getElementById("document-file");
  const docStatus = document.getElementById("documents-status");
  const docList = document.getElementById("document-list");
  let docTimer = null;
  let docsAvailable = true;

  async function refreshDocuments() {
    clearTimeout(docTimer);
    try {
      const data = await api("documents/?page_size=50");
      const rows = data.results || data;
      docList.replaceChildren(
        ...rows.map((d) => {
          const li = document.createElement("li");
          const title = document.createElement("span");
          title.textContent = d.title || d.filename || "Document";
          const state = document.createElement("span");
          state.className = "doc-status " + d.status;
          state.textContent = d.status === "failed" && d.failure_reason ? "failed: " + d.failure_reason : d.status;
          li.append(title, state);
          return li;
        }),
      );
      if (rows.some((d) => d.status === "pending" || d.status === "processing")) {
        docTimer = setTimeout(refreshDocuments, 2000);
      }
    } catch (error) {
      if (error.status === 404 || error.status === 405) {
        docsAvailable = false;
        uploadForm.hidden = true;
        docStatus.textContent = "Document upload is not available on this server.";
      }
    }
  }
  if (panel) {
    panel.addEventListener("toggle", () => { if (panel.open) refreshDocuments(); });
    uploadForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!fileInput.files.length || !docsAvailable) return;
      const form = new FormData();
      form.append("file", fileInput.files[0]);
      docStatus.textContent = "Uploading…";
      try {
        await api("documents/", { method: "POST", form });
        docStatus.textContent = "Uploaded; it is being indexed.";
        fileInput.value = "";
      } catch (error) {
        docStatus.textContent = error.status === 404 ? "Document upload is not available on this server." : error.detail;
      }
      refreshDocuments();
    });
  }

  window.Parley = { api, ApiError, icon, refreshConversations, refreshUsage };
})();
