// The coordinator dashboard's one script (docs/dashboard.md). No framework, no build step.
//
// The server renders every view; this script keeps it live:
// - the fleet's event stream (EventSource on data-fleet-events) and a slow timer (a dropped task file makes no
//   event) fetch the view's live part again (header x-coordinator-fragment) and swap it in when it changed;
// - on a task's page, its own stream (data-events on #log) appends the log as it is written, and its state;
// - the filter form narrows the task list without a reload;
// - Cancel and Retry POST to the task API (the session cookie signs them; the server checks Origin).
// Text from the server's streams is only ever set as textContent, never as markup.
"use strict";

(() => {
  const REFRESH_EVERY_MS = 3000;
  const MIN_GAP_MS = 700;
  const MAX_LOG_NODES = 4000;
  const MAX_EVENTS = 30;
  const live = document.getElementById("live");
  const conn = document.getElementById("conn");
  const notice = document.getElementById("notice");
  let lastRefresh = 0;
  let inFlight = false;
  let again = false;
  let timer = null;
  let shown = null;  // the live part as last received (innerHTML would come back re-serialized)

  function setConn(text, kind) {
    if (!conn) return;
    conn.textContent = text;
    conn.className = "conn " + kind;
  }

  function say(text) {
    if (!notice) return;
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  // Fetch the live part again now, or as soon as the last fetch is far enough behind.
  function refresh() {
    if (!live) return;
    const wait = lastRefresh + MIN_GAP_MS - Date.now();
    if (inFlight || wait > 0) {
      again = true;
      if (!inFlight && !timer) timer = setTimeout(() => { timer = null; refresh(); }, wait);
      return;
    }
    inFlight = true;
    again = false;
    lastRefresh = Date.now();
    fetch(location.href, { headers: { "x-coordinator-fragment": "1" }, credentials: "same-origin",
                           cache: "no-store" })
      .then((response) => {
        if (response.status === 401) { location.reload(); return null; }  // signed out: show how to sign in
        return response.ok || response.status === 404 ? response.text() : null;
      })
      .then((html) => {
        if (html !== null && html !== shown) {
          shown = html;
          live.innerHTML = html;  // markup the server rendered, every value escaped
        }
      })
      .catch(() => setConn("offline", "down"))
      .finally(() => {
        inFlight = false;
        if (again) refresh();
      });
  }

  function followFleet() {
    const url = document.body.dataset.fleetEvents;
    if (!url || typeof EventSource === "undefined") return;
    const events = document.getElementById("events");
    const source = new EventSource(url);
    source.onopen = () => setConn("live", "live");
    source.onerror = () => setConn(source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…",
                                   "down");
    source.onmessage = (message) => {
      if (events) showEvent(events, JSON.parse(message.data));
      refresh();
    };
  }

  function showEvent(list, event) {
    const placeholder = list.querySelector(".muted");
    if (placeholder) placeholder.remove();
    const item = document.createElement("li");
    const when = document.createElement("time");
    const at = typeof event.ts === "number" ? new Date(event.ts * 1000) : new Date();
    when.textContent = at.toLocaleTimeString();
    item.append(when, String(event.event || "event"));
    if (event.task) {
      const link = document.createElement("a");
      link.href = "/ui/tasks/" + encodeURIComponent(event.task);
      link.textContent = event.task;
      item.append(" ", link);
    }
    if (event.agent) item.append(" (" + event.agent + ")");
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  // A task's page: its log and state from its own stream.
  let taskStream = null;

  function followTask() {
    const log = document.getElementById("log");
    if (!log || !log.dataset.events || typeof EventSource === "undefined") return;
    if (taskStream) taskStream.close();
    log.textContent = "";
    const note = document.getElementById("log-note");
    let run = null;
    const source = taskStream = new EventSource(log.dataset.events);
    const setNote = (text) => { if (note) note.textContent = text; };
    setNote("following…");
    source.addEventListener("state", (message) => {
      const badge = document.getElementById("state");
      const state = JSON.parse(message.data).state;
      if (badge) { badge.textContent = state; badge.className = "badge state-" + state; }
      refresh();
    });
    source.addEventListener("output", (message) => {
      const frame = JSON.parse(message.data);
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      if (frame.run !== run) {
        run = frame.run;
        const mark = document.createElement("span");
        mark.className = "run";
        mark.textContent = "— run " + run + " —";
        log.append(mark);
      }
      const chunk = document.createElement("span");
      if (frame.stream === "stderr") chunk.className = "stderr";
      chunk.textContent = frame.text;
      log.append(chunk);
      while (log.childNodes.length > MAX_LOG_NODES) log.firstChild.remove();
      if (atBottom) log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("end", (message) => {
      setNote("ended: " + JSON.parse(message.data).state);
      source.close();
      refresh();
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setNote("stream closed");
    };
  }

  function followFilters() {
    const form = document.getElementById("filters");
    if (!form) return;
    let pending = null;
    const apply = () => {
      const query = new URLSearchParams();
      for (const [key, value] of new FormData(form)) if (value) query.set(key, String(value));
      const text = query.toString();
      history.replaceState(null, "", form.getAttribute("action") + (text ? "?" + text : ""));
      lastRefresh = 0;
      refresh();
    };
    form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
    form.addEventListener("change", apply);
    form.addEventListener("input", () => { clearTimeout(pending); pending = setTimeout(apply, 250); });
  }

  function followActions() {
    document.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      fetch(button.dataset.url, { method: "POST", credentials: "same-origin", headers: { accept: "application/json" } })
        .then((response) => response.json().then((body) => ({ ok: response.ok, body })))
        .then(({ ok, body }) => {
          say(ok ? "" : (body.error && body.error.message) || "the request failed");
          if (ok && button.dataset.action === "retry") followTask();
          refresh();
        })
        .catch(() => say("the server did not answer; is the gateway still running?"))
        .finally(() => { button.disabled = false; });
    });
  }

  followFleet();
  followTask();
  followFilters();
  followActions();
  setInterval(() => { if (document.visibilityState === "visible") refresh(); }, REFRESH_EVERY_MS);
})();
