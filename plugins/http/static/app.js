// The web chat page: plain JavaScript over the same API every OpenAI client uses.
"use strict";

const $ = (id) => document.getElementById(id);
const store = window.localStorage;
const state = {
  characters: [],
  current: null,
  chats: {},            // character id -> {conversation, items: [{role, text, id, el}]}
  streaming: null,      // AbortController of the reply being streamed
  userId: store.getItem("personae.user") || ("web-" + Math.random().toString(36).slice(2, 10)),
  userName: store.getItem("personae.userName") || "User",
  key: store.getItem("personae.key") || "",
};
store.setItem("personae.user", state.userId);
// Sampling from the page's address (?temperature=0&max_tokens=40), else each character's own.
const query = new URLSearchParams(window.location.search);
const sampling = {};
for (const name of ["temperature", "top_p", "max_tokens"]) {
  if (query.get(name) !== null && query.get(name) !== "") sampling[name] = Number(query.get(name));
}

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + kind;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("key-dialog").showModal();
    throw new Error("an API key is needed");
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) return "";
  return URL.createObjectURL(await response.blob());
}

// --- characters ------------------------------------------------------------------------------

async function loadCharacters() {
  setStatus("Loading characters…");
  const response = await api("/v1/characters?user_name=" + encodeURIComponent(state.userName));
  if (!response.ok) return setStatus(await errorText(response), "error");
  state.characters = (await response.json()).data;
  const list = $("characters");
  list.replaceChildren();
  for (const character of state.characters) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "character";
    button.dataset.id = character.id;
    const img = document.createElement("img");
    img.className = "avatar";
    img.alt = "";
    blobUrl(character.avatar).then((url) => { if (url) img.src = url; character.avatarUrl = url; });
    const text = document.createElement("span");
    text.className = "character-text";
    const name = document.createElement("strong");
    name.textContent = character.name;
    const greeting = document.createElement("span");
    greeting.className = "character-greeting";
    greeting.textContent = character.greeting || character.description;
    text.append(name, greeting);
    button.append(img, text);
    button.addEventListener("click", () => pick(character.id));
    item.append(button);
    list.append(item);
  }
  setStatus(state.characters.length ? "" : "No characters installed", state.characters.length ? "" : "error");
}

function newConversation(characterId) {
  const conversation = `web-${state.userId}-${characterId}-${Date.now().toString(36)}`;
  const character = state.characters.find((c) => c.id === characterId);
  state.chats[characterId] = { conversation, items: [] };
  if (character.greeting) state.chats[characterId].items.push({ role: "assistant", text: character.greeting, greeting: true });
  return state.chats[characterId];
}

function pick(characterId) {
  if (state.streaming) state.streaming.abort();
  const character = state.characters.find((c) => c.id === characterId);
  state.current = character;
  for (const el of document.querySelectorAll(".character")) el.classList.toggle("active", el.dataset.id === characterId);
  $("chat-name").textContent = character.name;
  const avatar = $("chat-avatar");
  avatar.hidden = false;
  blobUrl(character.avatar).then((url) => { avatar.src = url; });
  const badge = $("chat-version");
  badge.hidden = false;
  badge.textContent = character.active_version === "base" ? "base weights" : character.active_version;
  for (const id of ["new-chat", "show-audits", "input", "send"]) $(id).disabled = false;
  $("input").placeholder = `Message ${character.name}…`;
  if (!state.chats[characterId]) newConversation(characterId);
  render();
  $("input").focus();
}

// --- messages --------------------------------------------------------------------------------

function render() {
  const chat = state.chats[state.current.id];
  const list = $("messages");
  list.replaceChildren();
  chat.items.forEach((item, index) => list.append(bubble(item, index === chat.items.length - 1)));
  list.scrollTop = list.scrollHeight;
}

function bubble(item, last) {
  const li = document.createElement("li");
  li.className = `message ${item.role}` + (item.pending ? " pending" : "") + (item.error ? " failed" : "");
  if (item.id) li.dataset.messageId = item.id;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = item.role === "user" ? state.userName : state.current.name;
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = item.text;
  li.append(who, text);
  if (item.role === "assistant" && item.id) {
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.append(feedbackButton(item, 1, "Good reply"), feedbackButton(item, -1, "Bad reply"));
    if (last) {
      const again = document.createElement("button");
      again.type = "button";
      again.className = "regenerate";
      again.textContent = "↻ Regenerate";
      again.title = "Another reply in place of this one";
      again.addEventListener("click", regenerate);
      actions.append(again);
    }
    li.append(actions);
  }
  item.el = text;
  return li;
}

// Thumb icons as inline SVG (Feather icons, MIT): emoji fonts are missing on many servers and kiosks.
const THUMB_PATHS = {
  "1": "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3",
  "-1": "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17",
};

function thumbIcon(value) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [name, v] of Object.entries({ viewBox: "0 0 24 24", width: "16", height: "16", fill: "none",
    stroke: "currentColor", "stroke-width": "2", "stroke-linecap": "round", "stroke-linejoin": "round" })) {
    svg.setAttribute(name, v);
  }
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", THUMB_PATHS[String(value)]);
  svg.append(path);
  return svg;
}

function feedbackButton(item, value, title) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "thumb" + (item.feedback === value ? " chosen" : "");
  button.append(thumbIcon(value));
  button.title = title;
  button.setAttribute("aria-label", title);
  button.dataset.value = value;
  button.addEventListener("click", async () => {
    const next = item.feedback === value ? 0 : value;  // a second click takes it back
    const response = await api("/v1/feedback", { method: "POST", json: { message_id: item.id, value: next, user: state.userId } });
    if (!response.ok) return setStatus(await errorText(response), "error");
    item.feedback = next;
    setStatus(next ? "Thanks for the feedback" : "Feedback taken back");
    render();
  });
  return button;
}

async function streamReply(path, body, item) {
  const controller = new AbortController();
  state.streaming = controller;
  $("send").textContent = "Stop";
  const chat = state.chats[state.current.id];
  try {
    const response = await api(path, {
      method: "POST", signal: controller.signal, json: body,
      headers: { "X-Personae-Conversation": chat.conversation,
                 "X-Personae-User-Name": encodeURIComponent(state.userName) },
    });
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      throw new Error((await errorText(response)) + (retry ? ` (retry in ${retry} s)` : ""));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    setStatus(`${state.current.name} is typing…`);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.delta && choice.delta.content) {
            item.text += choice.delta.content;
            item.el.textContent = item.text;
            $("messages").scrollTop = $("messages").scrollHeight;
          }
          if (chunk.personae_message_id) item.id = chunk.personae_message_id;
        }
      }
    }
    setStatus("");
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus("Stopped");
    } else {
      item.error = true;
      if (!item.text) item.text = "(no reply)";
      setStatus(error.message, "error");
    }
  } finally {
    item.pending = false;
    state.streaming = null;
    $("send").textContent = "Send";
    render();
  }
}

async function send(event) {
  event.preventDefault();
  if (state.streaming) return state.streaming.abort();
  const input = $("input");
  const text = input.value.trim();
  if (!text || !state.current) return;
  input.value = "";
  const chat = state.chats[state.current.id];
  chat.items.push({ role: "user", text });
  const item = { role: "assistant", text: "", pending: true };
  chat.items.push(item);
  render();
  await streamReply("/v1/chat/completions", Object.assign({
    model: state.current.id, stream: true, user: state.userId,
    messages: [{ role: "user", content: text, name: state.userName }],
  }, sampling), item);
}

async function regenerate() {
  if (state.streaming) return;
  const chat = state.chats[state.current.id];
  const item = { role: "assistant", text: "", pending: true };
  chat.items[chat.items.length - 1] = item;
  render();
  await streamReply("/v1/regenerate", Object.assign({ model: state.current.id, stream: true, user: state.userId },
                                                    sampling), item);
}

// --- audits ----------------------------------------------------------------------------------

async function showAudits() {
  const character = state.current;
  $("audit-title").textContent = `Audits of ${character.name}`;
  const body = $("audit-body");
  body.replaceChildren("Loading…");
  $("audit-dialog").showModal();
  const response = await api(`/v1/characters/${encodeURIComponent(character.id)}/audits`);
  if (!response.ok) return body.replaceChildren(await errorText(response));
  const audits = await response.json();
  body.replaceChildren();
  if (!audits.files.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = audits.message || "No audits yet";
    return body.append(p);
  }
  for (const file of audits.files) {
    if (file.kind === "image") {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.alt = file.name;
      blobUrl(file.url).then((url) => { img.src = url; });
      const caption = document.createElement("figcaption");
      caption.textContent = file.name;
      figure.append(img, caption);
      body.append(figure);
    } else {
      const link = document.createElement("a");
      link.textContent = `Open ${file.name}`;
      link.href = "#";
      link.addEventListener("click", async (e) => { e.preventDefault(); window.open(await blobUrl(file.url)); });
      body.append(link);
    }
  }
}

// --- start -----------------------------------------------------------------------------------

function start() {
  const name = $("user-name");
  name.value = state.userName;
  name.addEventListener("change", () => {
    state.userName = name.value.trim() || "User";
    store.setItem("personae.userName", state.userName);
  });
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (e) => {
    // Enter sends; while a reply streams it does nothing (only the Stop button stops a reply).
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); if (!state.streaming) $("composer").requestSubmit(); }
  });
  $("new-chat").addEventListener("click", () => { newConversation(state.current.id); render(); });
  $("show-audits").addEventListener("click", showAudits);
  $("key-form").addEventListener("submit", () => {
    state.key = $("key-input").value.trim();
    store.setItem("personae.key", state.key);
    loadCharacters();
  });
  loadCharacters().catch((error) => setStatus(error.message, "error"));
}

start();
