// The prompt library in the composer: typing "/" at the start of an empty message lists the prompts
// you may use (GET /api/v1/prompts/), filtered by what follows the "/". ArrowUp/ArrowDown choose,
// Enter or Tab inserts, Escape closes; a click inserts too. The prompt's text replaces the "/..."
// with its first {{variable}} selected, so typing fills it in; Tab then selects the next one.
//
// Loaded before composer.js: its keydown handler runs first, so Enter inserts a prompt instead of
// sending while the list is open.
(function () {
  "use strict";

  const prompt = document.getElementById("prompt");
  const form = document.getElementById("composer");
  if (!prompt || !form) return;
  const { api } = window.Parley;
  // The same pattern as chat.models.PROMPT_VARIABLE.
  const VARIABLE = /\{\{\s*\w[\w \-]{0,62}?\s*\}\}/g;

  const menu = document.createElement("ul");
  menu.id = "prompt-menu";
  menu.className = "prompt-menu";
  menu.setAttribute("role", "listbox");
  menu.setAttribute("aria-label", "Prompts");
  menu.hidden = true;
  form.prepend(menu);
  prompt.setAttribute("aria-controls", menu.id);
  prompt.setAttribute("aria-expanded", "false");

  let prompts = null; // loaded once, when "/" is first typed
  let shown = []; // the prompts listed now
  let active = 0;
  let filling = false; // a prompt with placeholders was inserted: Tab selects the next one

  function close() {
    menu.hidden = true;
    shown = [];
    prompt.setAttribute("aria-expanded", "false");
    prompt.removeAttribute("aria-activedescendant");
  }

  function highlight(index) {
    active = index;
    menu.querySelectorAll("[role=option]").forEach((li, i) => li.setAttribute("aria-selected", String(i === index)));
    const current = menu.querySelector(`[role=option][aria-selected="true"]`);
    if (current) {
      prompt.setAttribute("aria-activedescendant", current.id);
      current.scrollIntoView({ block: "nearest" });
    }
  }

  function show(query) {
    const q = query.toLowerCase();
    shown = (prompts || []).filter((p) => p.title.toLowerCase().includes(q));
    const items = shown.map((p, i) => {
      const li = document.createElement("li");
      li.id = "prompt-option-" + i;
      li.setAttribute("role", "option");
      li.textContent = p.title;
      if (!p.mine) {
        const owner = document.createElement("span");
        owner.className = "muted small";
        owner.textContent = " · " + p.owner;
        li.append(owner);
      }
      li.addEventListener("mousedown", (event) => {
        event.preventDefault(); // keep the focus in the composer
        insert(p);
      });
      return li;
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = prompts === null ? "Loading prompts…" : "No prompt matches. Add prompts on the Settings page.";
      items.push(li);
    }
    menu.replaceChildren(...items);
    menu.hidden = false;
    prompt.setAttribute("aria-expanded", "true");
    highlight(0);
  }

  function selectNextPlaceholder(from) {
    VARIABLE.lastIndex = 0;
    let match;
    while ((match = VARIABLE.exec(prompt.value))) {
      if (match.index >= from) {
        prompt.setSelectionRange(match.index, match.index + match[0].length);
        return true;
      }
    }
    return false;
  }

  function insert(p) {
    close();
    prompt.value = p.text;
    prompt.dispatchEvent(new Event("input", { bubbles: true })); // the draft is kept, as for typing
    prompt.focus();
    filling = selectNextPlaceholder(0);
    if (!filling) prompt.setSelectionRange(prompt.value.length, prompt.value.length);
  }

  async function load() {
    if (prompts !== null) return;
    try {
      prompts = await api("prompts/");
    } catch (error) {
      prompts = [];
    }
  }

  prompt.addEventListener("input", async () => {
    const match = prompt.value.match(/^\/([^\n]*)$/);
    if (!match) return close();
    if (prompts === null) {
      show(match[1]);
      await load();
      const again = prompt.value.match(/^\/([^\n]*)$/);
      if (!again) return close();
      return show(again[1]);
    }
    show(match[1]);
  });

  prompt.addEventListener("keydown", (event) => {
    if (!menu.hidden && shown.length) {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        const step = event.key === "ArrowDown" ? 1 : -1;
        highlight((active + step + shown.length) % shown.length);
        return;
      }
      if ((event.key === "Enter" && !event.shiftKey && !event.isComposing) || event.key === "Tab") {
        event.preventDefault();
        event.stopImmediatePropagation(); // not a send (composer.js)
        insert(shown[active]);
        return;
      }
    }
    if (!menu.hidden && event.key === "Escape") {
      event.preventDefault();
      event.stopImmediatePropagation(); // not a stop (chat.js)
      close();
      return;
    }
    if (filling && event.key === "Tab" && !event.shiftKey) {
      if (selectNextPlaceholder(prompt.selectionEnd)) event.preventDefault();
      else filling = false;
    }
  });
  prompt.addEventListener("blur", () => setTimeout(close, 150));
})();
