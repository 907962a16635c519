/* pllm web chat: a chat with one user's agent on the left, that user's live memory on the right.
 *
 * Plain script, no build step, nothing fetched from outside the server. Every piece of data goes into the
 * page through textContent / setAttribute, never innerHTML.
 *
 * Elements (stable hooks for tests and styling):
 *   #api-key (in #key-form) optional API key, kept in localStorage ("pllm.apiKey"); sent as X-API-Key
 *   #health                server status ("model: …"); data-state = ok | down | unknown
 *   #error                 the last API error's message (error.message); hidden when there is none; click hides it
 *   #user-select           the users (GET /v1/users, plus users added here); its value is the active user
 *   #new-user, #new-user-add, #new-user-form
 *                          type a new user id and press Enter / Add: it becomes the active user
 *                          (the server creates it on the first message)
 *   #current-user          the active user's id
 *   #messages              the chat: .msg[data-role=user|assistant]; an assistant reply has
 *                          data-state = streaming | done | error, data-tokens = token events received,
 *                          data-reply-id; its text in .msg-text, and the change
 *                          events of its turn in ul.turn-events > li.event[data-kind]
 *   #message, #send, #composer
 *                          the input box and the send button (disabled while a reply streams)
 *   body[data-busy]        "true" while a reply streams, else "false"
 *   #memory-panel          data-user = the user the panel shows; data-refreshes = how many refreshes finished
 *   #facts-current         li.fact[data-fact-id][data-status=current][data-kind] > .fact-text
 *   #facts-past            li.fact[data-status=superseded|retracted] > del.fact-text, .validity
 *                          ("valid_from → valid_to")
 *   #events                li.event[data-kind] (newest first) > .event-text, time; li.fresh = from the last turn
 *   #model-state           #model-level-note (shown when the server's model updates are off);
 *                          #edits > li.edit[data-state]; #adapters > li.adapter[data-version][data-published]
 *                          (the published one has .published); #jobs > li.job[data-job-id][data-state]
 *                          (> .job-error for a failed one)
 *   #graph svg             the knowledge graph: g.node[data-id] > rect + text; g.edge[data-current=true|false]
 *                          > path + text.edge-label (superseded edges are dashed and grey: g.edge.past)
 *   #refreshed-at          when the panel was last refreshed
 *
 * API (JSON; errors {"error": {"message", "type", "code"}}): GET /v1/users, POST /v1/users/{u}/chat (SSE:
 * token… then done | error), GET /v1/users/{u}/facts?view=history, /events?limit=50, /model, /graph, GET /health.
 */
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const KEY_STORE = "pllm.apiKey";
  const USER_STORE = "pllm.user";
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const state = {
    user: "",
    busy: false,
    refreshing: null,      // the in-flight panel refresh (a Promise) or null
    refreshAgain: false,   // a refresh was asked for while one was in flight
    refreshes: 0,
    seenEvents: {},        // user -> number of events seen, to mark new ones
    freshTexts: new Set(), // event texts of the last turn (marked .fresh in #events)
    chats: new Map(),      // user -> the #messages nodes of their conversation, restored on switch
    errorSource: null,     // "panel" | "chat" | "users" | null
  };

  // ---- small DOM helpers -------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function shortTime(iso) {
    if (!iso) return "now";
    const d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}`;
  }

  function timeEl(iso, cls) {
    return el("time", { class: cls, datetime: iso || undefined, title: iso || "still valid", text: shortTime(iso) });
  }

  function fill(listId, items, render, emptyText) {
    const list = $(listId);
    const nodes = items.map(render);
    if (!nodes.length && emptyText) nodes.push(el("li", { class: "empty", text: emptyText }));
    list.replaceChildren(...nodes);
    const count = $(listId + "-count");
    if (count) count.textContent = String(items.length);
  }

  // ---- errors ----------------------------------------------------------------------------------------------

  function showError(message, source) {
    const box = $("error");
    box.textContent = String(message || "unknown error");
    box.hidden = false;
    state.errorSource = source || null;
  }

  function clearError(source) {
    if (source && state.errorSource !== source) return;
    $("error").hidden = true;
    $("error").textContent = "";
    state.errorSource = null;
  }

  class ApiError extends Error {
    constructor(message, status, type) {
      super(message);
      this.status = status;
      this.type = type;
    }
  }

  async function errorFrom(res) {
    let message = `${res.status} ${res.statusText}`.trim();
    let type;
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) {
        message = body.error.message;
        type = body.error.type;
      } else if (body && body.detail) {  // a framework-level error that slipped past the API's handler
        message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      }
    } catch (_) { /* not JSON: keep the status line */ }
    return new ApiError(message, res.status, type);
  }

  // ---- API ---------------------------------------------------------------------------------------------------

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const key = $("api-key").value.trim();
    if (key) h["X-API-Key"] = key;
    return h;
  }

  const enc = encodeURIComponent;

  async function getJSON(path) {
    let res;
    try {
      res = await fetch(path, { headers: headers(), cache: "no-store" });
    } catch (e) {
      throw new ApiError(`cannot reach the server (${e.message})`, 0);
    }
    if (!res.ok) throw await errorFrom(res);
    return res.json();
  }

  /** POST a message; calls onToken(text) per streamed piece; resolves with the `done` event's data. */
  async function streamChat(user, text, onToken) {
    let res;
    try {
      res = await fetch(`/v1/users/${enc(user)}/chat`, {
        method: "POST",
        headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ text, session_id: "web" }),
      });
    } catch (e) {
      throw new ApiError(`cannot reach the server (${e.message})`, 0);
    }
    if (!res.ok) throw await errorFrom(res);
    const type = res.headers.get("Content-Type") || "";
    if (!type.includes("text/event-stream")) {
      const body = await res.json().catch(() => null);
      if (body && body.error) throw new ApiError(body.error.message, res.status, body.error.type);
      if (body && typeof body.reply === "string") return body;  // a non-streaming answer: take it whole
      throw new ApiError(`unexpected response (${type || "no content type"})`, res.status);
    }

    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = null;

    const handle = (block) => {
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (!data.length) return;
      let payload;
      try {
        payload = JSON.parse(data.join("\n"));
      } catch (_) {
        payload = { text: data.join("\n") };
      }
      if (event === "token") onToken(payload.text || "");
      else if (event === "done") done = payload;
      else if (event === "error") throw new ApiError(payload.message || "the reply failed", 500);
    };

    for (;;) {
      const { value, done: end } = await reader.read();
      if (value) buffer += decoder.decode(value, { stream: true });
      if (end) buffer += decoder.decode();
      buffer = buffer.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        handle(block);
      }
      if (end) break;
    }
    if (buffer.trim()) handle(buffer);
    if (!done) throw new ApiError("the reply stream ended before the reply was complete", 0);
    return done;
  }

  // ---- users ---------------------------------------------------------------------------------------------------

  function addUserOption(user) {
    const select = $("user-select");
    for (const opt of select.options) if (opt.value === user) return;
    select.append(el("option", { value: user, text: user }));
  }

  async function loadUsers() {
    try {
      const body = await getJSON("/v1/users");
      for (const u of body.users || []) addUserOption(u);
      clearError("users");
    } catch (e) {
      showError(e.message, "users");
    }
    const select = $("user-select");
    const saved = localStorage.getItem(USER_STORE);
    if (!state.user) {
      if (saved && [...select.options].some((o) => o.value === saved)) setUser(saved);
      else if (select.options.length) setUser(select.options[0].value);
    }
  }

  function setUser(user) {
    if (!user || user === state.user) return;
    const messages = $("messages");
    if (state.user) state.chats.set(state.user, [...messages.childNodes]);
    state.user = user;
    state.freshTexts = new Set();
    addUserOption(user);
    $("user-select").value = user;
    $("current-user").textContent = user;
    localStorage.setItem(USER_STORE, user);
    const saved = state.chats.get(user);
    if (saved && saved.length) messages.replaceChildren(...saved);
    else messages.replaceChildren(el("p", { class: "placeholder", text: `New conversation as ${user}. Say something about yourself.` }));
    clearError("panel");
    clearPanel();
    refreshPanel();
    $("message").focus();
  }

  // ---- chat ------------------------------------------------------------------------------------------------------

  function scrollDown() {
    const m = $("messages");
    m.scrollTop = m.scrollHeight;
  }

  function eventItem(ev) {
    return el("li", { class: `event kind-${ev.kind || "other"}`, "data-kind": ev.kind || "" },
      el("span", { class: "event-text", text: ev.text || ev.kind || "" }),
      ev.at ? el("span", { class: "event-at" }, " ", timeEl(ev.at)) : null);
  }

  async function send() {
    const box = $("message");
    const text = box.value.trim();
    if (!text || state.busy) return;
    if (!state.user) {
      showError("pick a user or add a new one first", "chat");
      return;
    }
    clearError();
    const user = state.user;
    const messages = $("messages");
    messages.querySelectorAll(".placeholder").forEach((p) => p.remove());
    messages.append(el("div", { class: "msg user", "data-role": "user" }, el("div", { class: "msg-text", text })));
    const replyText = el("div", { class: "msg-text" });
    const reply = el("div", { class: "msg assistant", "data-role": "assistant", "data-state": "streaming" }, replyText);
    messages.append(reply);
    scrollDown();
    box.value = "";
    setBusy(true);
    try {
      let tokens = 0;
      const done = await streamChat(user, text, (piece) => {
        replyText.textContent += piece;
        reply.setAttribute("data-tokens", String(++tokens));
        scrollDown();
      });
      if (typeof done.reply === "string" && done.reply) replyText.textContent = done.reply;
      if (done.reply_id) reply.setAttribute("data-reply-id", done.reply_id);
      const events = done.events || [];
      if (events.length) reply.append(el("ul", { class: "turn-events", "aria-label": "memory changes" }, ...events.map(eventItem)));
      const jobs = done.jobs || [];
      if (jobs.length) {
        reply.append(el("div", { class: "turn-jobs", text: `queued: ${jobs.join(", ")}` }));
      }
      state.freshTexts = new Set(events.map((e) => e.text));
      reply.setAttribute("data-state", "done");
      addUserOption(user);
    } catch (e) {
      reply.setAttribute("data-state", "error");
      reply.append(el("div", { class: "msg-error", text: e.message }));
      showError(e.message, "chat");
    } finally {
      setBusy(false);
      scrollDown();
      if (state.user === user) refreshPanel();
      box.focus();
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    document.body.setAttribute("data-busy", busy ? "true" : "false");
    $("send").disabled = busy;
    $("send").textContent = busy ? "…" : "Send";
  }

  // ---- memory panel ------------------------------------------------------------------------------------------

  function clearPanel() {
    const panel = $("memory-panel");
    panel.setAttribute("data-user", state.user);
    for (const id of ["facts-current", "facts-past", "events", "edits", "adapters", "jobs"]) fill(id, [], String, "…");
    $("graph").replaceChildren();
  }

  function factText(f, user) {
    // `text` is "relation: object" as the server words it; fall back to the triple.
    if (f.text) return f.text;
    const subject = f.subject && f.subject !== user ? `${f.subject} ` : "";
    return `${subject}${String(f.relation || "").replace(/_/g, " ")}: ${f.object}`;
  }

  function factBadges(f) {
    const out = [];
    if (f.kind === "preference") out.push(el("span", { class: "badge pref", text: f.polarity ? `preference · ${f.polarity}` : "preference" }));
    if (f.category) out.push(el("span", { class: "badge cat", text: f.category }));
    return out;
  }

  function currentFact(f) {
    return el("li", { class: "fact", "data-fact-id": f.id, "data-status": f.status || "current", "data-kind": f.kind || "fact" },
      el("span", { class: "fact-text", text: factText(f, state.user) }),
      ...factBadges(f),
      el("span", { class: "validity" }, "since ", timeEl(f.valid_from)));
  }

  function pastFact(f) {
    return el("li", { class: `fact ${f.status || "superseded"}`, "data-fact-id": f.id, "data-status": f.status || "superseded", "data-kind": f.kind || "fact" },
      el("del", { class: "fact-text", text: factText(f, state.user) }),
      el("span", { class: `badge status-${f.status}`, text: f.status || "superseded" }),
      ...factBadges(f),
      el("span", { class: "validity" }, timeEl(f.valid_from, "from"), " → ", timeEl(f.valid_to, "to")));
  }

  function renderFacts(facts) {
    const byTime = (a, b) => String(b.valid_from || "").localeCompare(String(a.valid_from || ""));
    const isCurrent = (f) => (f.status ? f.status === "current" : !f.valid_to);
    const current = facts.filter(isCurrent).sort(byTime);
    const past = facts.filter((f) => !isCurrent(f)).sort((a, b) =>
      String(b.valid_to || b.recorded_at || "").localeCompare(String(a.valid_to || a.recorded_at || "")));
    fill("facts-current", current, currentFact, "nothing known yet");
    fill("facts-past", past, pastFact, "nothing superseded yet");
  }

  function renderEvents(events) {
    const user = state.user;
    const seen = state.seenEvents[user];
    const newest = events.slice().reverse();
    fill("events", newest, (ev, i) => {
      const li = eventItem(ev);
      const isNew = seen !== undefined && i < events.length - seen;
      if (state.freshTexts.has(ev.text) || isNew) li.classList.add("fresh");
      return li;
    }, "no changes yet");
    state.seenEvents[user] = events.length;
  }

  function renderModel(model) {
    const note = $("model-level-note");
    note.hidden = model.model_level !== false;
    note.textContent = model.model_level === false
      ? "Model updates are off on this server (PLLM_MODEL_UPDATES=0): facts stay in memory, no edits or adapters are made."
      : "";
    fill("edits", model.edits || [], (e) =>
      el("li", { class: `edit state-${e.state}`, "data-edit-id": e.id, "data-state": e.state },
        el("span", { class: "edit-target", text: `${String(e.relation || "").replace(/_/g, " ")} → ${e.target}` }),
        el("span", { class: `badge state-${e.state}`, text: e.state }),
        e.question ? el("div", { class: "sub", text: `Q: ${e.question}` }) : null,
        e.note ? el("div", { class: "sub note", text: e.note }) : null),
    "no knowledge edits");

    const adapters = (model.adapters || []).slice().sort((a, b) => (b.version || 0) - (a.version || 0));
    fill("adapters", adapters, (a) =>
      el("li", { class: `adapter${a.published ? " published" : ""}${a.stale ? " stale" : ""}`,
                 "data-version": a.version, "data-published": a.published ? "true" : "false" },
        el("span", { class: "adapter-version", text: `v${a.version}` }),
        a.published ? el("span", { class: "badge published", text: "published" }) : null,
        a.stale ? el("span", { class: "badge stale", text: "stale" }) : null,
        el("span", { class: "sub", text: ` ${a.kind || ""} on ${a.base_model_id || "?"} · ` }), timeEl(a.created_at)),
    "no adapters");

    const jobs = (model.jobs || []).slice().sort((a, b) => (b.id || 0) - (a.id || 0)).slice(0, 30);
    fill("jobs", jobs, (j) =>
      el("li", { class: `job state-${j.state}`, "data-job-id": j.id, "data-state": j.state },
        el("span", { class: "job-kind", text: `#${j.id} ${j.kind}` }),
        el("span", { class: `badge state-${j.state}`, text: j.state }),
        el("span", { class: "sub" }, " ", timeEl(j.created_at), j.finished_at ? " → " : "", j.finished_at ? timeEl(j.finished_at) : null),
        ...(j.summary || []).map((s) => el("div", { class: "sub", text: s })),
        j.detail ? el("div", { class: "sub detail", text: j.detail }) : null,
        j.error ? el("div", { class: "job-error", text: j.error }) : null),
    "no jobs");
    $("jobs-count").textContent = String((model.jobs || []).length);
  }

  // ---- knowledge graph (inline SVG) ----------------------------------------------------------------------------

  function clip(label, n) {
    label = String(label == null ? "" : label);
    return label.length > n ? label.slice(0, n - 1) + "…" : label;
  }

  function renderGraph(graph) {
    const box = $("graph");
    const nodes = graph.nodes || [];
    const edges = (graph.edges || []).filter((e) => e.source !== e.target);
    if (!nodes.length) {
      box.replaceChildren(el("p", { class: "empty", text: "no graph yet" }));
      return;
    }
    const W = 460, H = 300, cx = W / 2, cy = H / 2;
    const degree = new Map(nodes.map((n) => [n.id, 0]));
    for (const e of edges) {
      degree.set(e.source, (degree.get(e.source) || 0) + 1);
      degree.set(e.target, (degree.get(e.target) || 0) + 1);
    }
    // A hub (the user, usually) goes in the middle; the others on a circle around it.
    let hub = null;
    const ranked = nodes.slice().sort((a, b) => degree.get(b.id) - degree.get(a.id));
    if (nodes.length > 2 && degree.get(ranked[0].id) >= Math.max(2, edges.length / 2)) hub = ranked[0].id;
    const ring = nodes.filter((n) => n.id !== hub);
    const pos = new Map();
    if (hub !== null) pos.set(hub, { x: cx, y: cy });
    const rx = W / 2 - 70, ry = H / 2 - 30;
    ring.forEach((n, i) => {
      const a = (ring.length === 2 ? 0 : -Math.PI / 2) + (2 * Math.PI * i) / ring.length;
      pos.set(n.id, ring.length === 1 && hub === null ? { x: cx, y: cy } : { x: cx + rx * Math.cos(a), y: cy + ry * Math.sin(a) });
    });

    // Crop the height to what the layout uses (two or three nodes sit on one line).
    const ys = [...pos.values()].map((p) => p.y);
    const top = Math.max(0, Math.min(...ys) - 34), bottom = Math.min(H, Math.max(...ys) + 34);
    const root = svg("svg", { viewBox: `0 ${top} ${W} ${Math.max(90, bottom - top)}`, role: "img", "aria-label": "knowledge graph", class: "kg" });
    const defs = svg("defs");
    for (const [id, cls] of [["arrow-now", "arrow now"], ["arrow-past", "arrow past"]]) {
      const m = svg("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
      m.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: cls }));
      defs.append(m);
    }
    root.append(defs);
    const edgeLayer = svg("g", { class: "edges" });
    const nodeLayer = svg("g", { class: "nodes" });
    root.append(edgeLayer, nodeLayer);
    box.replaceChildren(root);

    // Nodes first (to measure their labels), then the edges that end at their borders.
    const size = new Map();
    for (const n of nodes) {
      const p = pos.get(n.id);
      const g = svg("g", { class: `node${n.id === hub ? " hub" : ""}`, "data-id": n.id, transform: `translate(${p.x},${p.y})` });
      g.append(svg("title", {}, n.label || n.id));
      const rect = svg("rect", { rx: 9, ry: 9 });
      const text = svg("text", { "text-anchor": "middle", dy: "0.35em" }, clip(n.label || n.id, 22));
      g.append(rect, text);
      nodeLayer.append(g);
      let w = 0;
      try { w = text.getComputedTextLength(); } catch (_) { /* not rendered */ }
      if (!w) w = 6.5 * text.textContent.length;
      const bw = w + 18, bh = 22;
      rect.setAttribute("x", -bw / 2);
      rect.setAttribute("y", -bh / 2);
      rect.setAttribute("width", bw);
      rect.setAttribute("height", bh);
      size.set(n.id, { w: bw, h: bh });
    }

    const trim = (from, to, s) => {  // where the segment from→to enters the box of size s around `to`
      const dx = from.x - to.x, dy = from.y - to.y;
      if (!dx && !dy) return to;
      const t = Math.min(dx ? (s.w / 2 + 3) / Math.abs(dx) : Infinity, dy ? (s.h / 2 + 3) / Math.abs(dy) : Infinity);
      return { x: to.x + dx * Math.min(t, 1), y: to.y + dy * Math.min(t, 1) };
    };

    const groups = new Map();
    for (const e of edges) {
      if (!pos.has(e.source) || !pos.has(e.target)) continue;
      const key = [e.source, e.target].sort().join("\u0000");
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(e);
    }
    for (const group of groups.values()) {
      group.forEach((e, i) => {
        const a = pos.get(e.source), b = pos.get(e.target);
        const off = (i - (group.length - 1) / 2) * 34;
        const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
        const nx = -dy / len, ny = dx / len;
        const mid = { x: (a.x + b.x) / 2 + nx * off, y: (a.y + b.y) / 2 + ny * off };
        const ctrl = { x: (a.x + b.x) / 2 + nx * off * 2, y: (a.y + b.y) / 2 + ny * off * 2 };
        const start = trim(ctrl, a, size.get(e.source));
        const end = trim(ctrl, b, size.get(e.target));
        const current = e.current !== false;
        const g = svg("g", { class: `edge ${current ? "now" : "past"}`, "data-current": current ? "true" : "false",
                             "data-source": e.source, "data-target": e.target });
        g.append(svg("title", {}, `${e.label}${current ? "" : " (superseded)"}`));
        g.append(svg("path", { d: `M${start.x},${start.y} Q${ctrl.x},${ctrl.y} ${end.x},${end.y}`, fill: "none",
                               "marker-end": `url(#arrow-${current ? "now" : "past"})`,
                               "stroke-dasharray": current ? null : "5 4" }));
        g.append(svg("text", { class: "edge-label", x: mid.x, y: mid.y, "text-anchor": "middle", dy: "-0.3em" }, clip(String(e.label || "").replace(/_/g, " "), 20)));
        edgeLayer.append(g);
      });
    }
  }

  // ---- refreshing ----------------------------------------------------------------------------------------------

  async function doRefresh() {
    const user = state.user;
    if (!user) return;
    const base = `/v1/users/${enc(user)}`;
    const results = await Promise.allSettled([
      getJSON(`${base}/facts?view=history`),
      getJSON(`${base}/events?limit=50`),
      getJSON(`${base}/model`),
      getJSON(`${base}/graph`),
    ]);
    if (state.user !== user) return;  // switched meanwhile
    const [facts, events, model, graph] = results;
    const failures = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    // An unknown user (404: added here, nothing said yet) simply has an empty memory.
    const real = failures.filter((e) => !(e instanceof ApiError && e.status === 404));
    if (facts.status === "fulfilled") renderFacts(facts.value.facts || []);
    else renderFacts([]);
    if (events.status === "fulfilled") renderEvents(events.value.events || []);
    else renderEvents([]);
    if (model.status === "fulfilled") renderModel(model.value);
    else renderModel({});
    if (graph.status === "fulfilled") renderGraph(graph.value);
    else renderGraph({});
    if (real.length) showError(real[0].message, "panel");
    else clearError("panel");
    state.refreshes += 1;
    const panel = $("memory-panel");
    panel.setAttribute("data-user", user);
    panel.setAttribute("data-refreshes", String(state.refreshes));
    const now = new Date();
    $("refreshed-at").textContent = now.toLocaleTimeString();
    $("refreshed-at").setAttribute("datetime", now.toISOString());
  }

  /** Refresh the panel; a call made while a refresh runs schedules exactly one more after it. */
  function refreshPanel() {
    if (state.refreshing) {
      state.refreshAgain = true;
      return state.refreshing;
    }
    state.refreshing = doRefresh()
      .catch((e) => showError(e.message, "panel"))
      .finally(() => {
        state.refreshing = null;
        if (state.refreshAgain) {
          state.refreshAgain = false;
          refreshPanel();
        }
      });
    return state.refreshing;
  }

  async function checkHealth() {
    const h = $("health");
    try {
      const body = await getJSON("/health");
      h.textContent = `model: ${body.model || "?"}`;
      h.setAttribute("data-state", body.status === "ok" ? "ok" : "down");
    } catch (e) {
      h.textContent = "server unreachable";
      h.setAttribute("data-state", "down");
    }
  }

  // ---- wiring ------------------------------------------------------------------------------------------------

  function init() {
    const key = $("api-key");
    key.value = localStorage.getItem(KEY_STORE) || "";
    key.addEventListener("change", () => {
      const v = key.value.trim();
      if (v) localStorage.setItem(KEY_STORE, v);
      else localStorage.removeItem(KEY_STORE);
      clearError();
      loadUsers();
      refreshPanel();
    });

    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      key.dispatchEvent(new Event("change"));
    });
    $("error").addEventListener("click", () => clearError());
    $("user-select").addEventListener("change", (e) => setUser(e.target.value));
    $("new-user-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("new-user");
      const user = input.value.trim();
      if (!user) return;
      // The server's rule for user ids (memory.validation): checked here so that a "/" or a space does not
      // reach a route that cannot exist and come back as a bare 404.
      if (!/^[A-Za-z0-9][A-Za-z0-9_.@:+\-]*$/.test(user) || user.length > 200) {
        showError(`user id "${user}" is not valid: use letters, digits and _ . @ : + - (starting with a letter or ` +
                  "digit, at most 200 characters)", "new user");
        return;
      }
      input.value = "";
      setUser(user);
    });
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      send();
    });
    $("message").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send();
      }
    });

    setBusy(false);
    checkHealth();
    loadUsers();
    setInterval(() => {
      if (state.user && !document.hidden && !state.refreshing) refreshPanel();
    }, REFRESH_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
