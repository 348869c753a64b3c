// Playground page: ask, watch the base model and each adapter answer side by side (live over a websocket), then
// follow up: each column answers with its own conversation so far.
"use strict";
(function () {
  const options = JSON.parse(document.getElementById("pg-options").textContent);
  const initial = JSON.parse(document.getElementById("pg-session").textContent);
  const form = document.getElementById("pg-form");
  const baseSelect = document.getElementById("pg-base");
  const adapterList = document.getElementById("pg-adapter-list");
  const errorBox = document.getElementById("pg-error");
  const answersBox = document.getElementById("pg-answers");
  const followForm = document.getElementById("pg-follow-form");
  let socket = null;
  let current = null;          // the session shown: {id, state, outputs, ...}
  const texts = {};            // answer key -> text received so far (live)

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- the form
  function renderAdapterChoices(checked) {
    adapterList.replaceChildren();
    const mine = options.adapters.filter((a) => a.base_model === baseSelect.value);
    if (!mine.length) adapterList.append(el("p", { class: "muted" }, "No adapters for this base model yet."));
    mine.forEach((a) => {
      const box = el("input", { type: "checkbox", name: "adapters", value: a.id });
      box.checked = (checked || []).includes(a.id);
      const label = el("label");
      label.append(box, document.createTextNode(` ${a.name} (r=${a.rank})`));
      adapterList.append(label);
    });
    limitChoices();
    const model = options.base_models.find((m) => m.id === baseSelect.value);
    document.getElementById("pg-template-note").textContent =
      model ? (model.chat_template ? "Has a chat template." : "No chat template: the plain layout is used.") : "";
  }
  function chosenAdapters() {
    return [...adapterList.querySelectorAll("input[name=adapters]:checked")].map((b) => b.value);
  }
  function limitChoices() {
    const full = chosenAdapters().length >= options.max_adapters;
    adapterList.querySelectorAll("input[name=adapters]").forEach((b) => { b.disabled = full && !b.checked; });
  }
  function fillSettings(settings) {
    for (const [name, value] of Object.entries(settings)) {
      if (form.elements[name]) form.elements[name].value = value;
    }
  }
  function readSettings() {
    const settings = {};
    for (const name of Object.keys(options.defaults)) {
      const raw = form.elements[name].value;
      if (raw !== "") settings[name] = Number(raw);
    }
    return settings;
  }

  baseSelect.addEventListener("change", () => renderAdapterChoices([]));
  adapterList.addEventListener("change", limitChoices);
  // Start a session (a new chat, or a follow-up naming its parent) and show it; true once it is shown. The button is
  // disabled meanwhile, and a refusal is written to errorLine.
  async function ask(button, errorLine, body) {
    errorLine.textContent = "";
    button.disabled = true;
    try {
      const session = await Studio.api("/api/playground/", { method: "POST",
                                                             json: Object.assign(body, { settings: readSettings() }) });
      history.pushState({}, "", `/playground/${session.id}/`);
      show(session);
      return true;
    } catch (error) {
      errorLine.textContent = error.message;
      return false;
    } finally {
      button.disabled = false;
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ask(document.getElementById("pg-run"), errorBox, { base_model: baseSelect.value, adapters: chosenAdapters(),
                                                       prompt: document.getElementById("pg-prompt").value });
  });

  // ---- follow-ups and new chats
  followForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const followUp = document.getElementById("pg-follow-up");
    const sent = await ask(document.getElementById("pg-send"), document.getElementById("pg-follow-error"),
                           { parent: current.id, prompt: followUp.value });
    if (sent) followUp.value = "";
  });
  document.getElementById("pg-new-chat").addEventListener("click", () => {
    if (socket) { socket.onclose = null; socket.close(); socket = null; }
    current = null;
    history.pushState({}, "", "/playground/");
    document.getElementById("pg-result").hidden = true;
    document.getElementById("pg-prompt").value = "";
    document.getElementById("pg-prompt").focus();
  });

  // ---- the answers
  function conversation(session, key) {
    // the earlier turns as this column saw them: the user's prompts and its own answers, then the current prompt
    const box = el("div", { class: "pg-history" });
    if (!session.history || !session.history.length) return box;
    session.history.forEach((turn) => {
      box.append(el("p", { class: "pg-turn pg-turn-user" }, turn.prompt),
                 el("pre", { class: "pg-turn pg-turn-assistant", "data-testid": "earlier-answer" },
                    turn.answers[key] || ""));
    });
    box.append(el("p", { class: "pg-turn pg-turn-user" }, session.prompt));
    return box;
  }
  function show(session) {
    current = session;
    Object.keys(texts).forEach((k) => delete texts[k]);
    session.outputs.forEach((o) => { texts[o.key] = o.text; });
    document.getElementById("pg-result").hidden = false;
    answersBox.replaceChildren();
    session.outputs.forEach((o) => {
      const card = el("article", { class: "pg-answer", "data-key": o.key, "data-testid": "answer" });
      card.append(el("h3", {}, o.label), el("div", { class: "pg-stats" }), conversation(session, o.key),
                  el("pre", { class: "pg-text" }));
      answersBox.append(card);
    });
    update(session);
    connect(session.id);
  }
  function update(session) {
    current = session;
    const state = document.getElementById("pg-state");
    state.className = "state state-" + session.state;
    state.textContent = session.state;
    document.getElementById("pg-shown-prompt").textContent = session.prompt;
    const s = session.settings;
    document.getElementById("pg-meta").textContent =
      `max ${s.max_new_tokens} tokens · temperature ${s.temperature} · top-p ${s.top_p} · seed ${s.seed}` +
      (session.prompt_tokens ? ` · prompt ${session.prompt_tokens} tokens` : "");
    document.getElementById("pg-session-error").textContent = session.error_message || "";
    followForm.hidden = session.state !== "succeeded";
    session.outputs.forEach((o) => {
      if (o.state === "done" || o.state === "failed" || (texts[o.key] || "").length < o.text.length) texts[o.key] = o.text;
      paint(o.key, o);
    });
  }
  function paint(key, output) {
    const card = answersBox.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (!card) return;
    card.querySelector(".pg-text").textContent = texts[key] || "";
    card.classList.toggle("pg-running", output.state === "running");
    card.dataset.state = output.state;
    const stats = output.state === "done"
      ? `${output.tokens} tokens · ${output.seconds}s · ${output.finish_reason === "length" ? "hit the token limit" : "finished"}`
      : output.state === "running" ? `writing… ${output.tokens || 0} tokens` : output.state;
    card.querySelector(".pg-stats").textContent = stats;
  }
  function onTokens(message) {
    const have = texts[message.key] || "";
    if (message.offset === have.length) {
      texts[message.key] = have + message.text;
    } else if (message.offset < have.length) {
      texts[message.key] = have.slice(0, message.offset) + message.text;
    } // else: a piece was missed; the next session snapshot brings the whole answer
    const output = current.outputs.find((o) => o.key === message.key);
    if (output) { output.state = "running"; output.tokens = message.tokens; paint(message.key, output); }
  }
  function connect(id) {
    if (socket) { socket.onclose = null; socket.close(); }
    if (current && (current.state === "succeeded" || current.state === "failed")) return;
    socket = new WebSocket(Studio.wsUrl(`/ws/playground/${id}/`));
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "session" && message.session.id === id) update(message.session);
      else if (message.type === "tokens") onTokens(message);
      if (current.state === "succeeded" || current.state === "failed") socket.close();
    };
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4403) return;
      if (current && current.id === id && current.state !== "succeeded" && current.state !== "failed") {
        setTimeout(() => connect(id), 2000);
      }
    };
  }

  // ---- start
  if (initial) {
    baseSelect.value = initial.base_model.id;
    renderAdapterChoices(initial.adapters.map((a) => a.id));
    document.getElementById("pg-prompt").value = initial.prompt;
    fillSettings(initial.settings);
    show(initial);
  } else {
    // /playground/?adapter=<id> (the job page's "Try in the playground"): that adapter on its base, ticked
    const wanted = options.adapters.find((a) => a.id === new URLSearchParams(location.search).get("adapter"));
    if (wanted) baseSelect.value = wanted.base_model;
    renderAdapterChoices(wanted ? [wanted.id] : []);
    fillSettings(options.defaults);
  }
})();
