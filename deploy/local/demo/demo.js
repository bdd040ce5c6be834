// The demo page's script (no build step). State: the chosen organization and
// user, one EventSource on /api/realtime/stream (same origin, cookie auth),
// the organization's properties kept up to date from the events themselves.
//
// Contract with deploy/local/e2e/demo-page.mjs: #state[data-state] is
// "idle" | "connecting" | "open" | "closed" | "error"; each event is an
// <li data-type data-id data-operation data-property-id> in #events, newest
// first; #properties rows carry data-property-id.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_EVENTS = 200;

let organizations = [];
let users = [];
let source = null;
let eventCount = 0;
/** propertyId → row, as the API and the events describe it. */
let properties = new Map();

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${(data && data.error) || text}`);
  }
  return data;
}

function message(text, bad = false) {
  const el = $("message");
  el.textContent = text;
  el.className = bad ? "message bad" : "message";
}

function setState(state, text, detail = "") {
  $("state").dataset.state = state;
  $("state-text").textContent = text;
  $("state-detail").textContent = detail;
  const open = state === "open";
  for (const id of ["create", "update", "delete"]) $(id).disabled = !open;
  $("disconnect").disabled = state === "idle" || state === "closed";
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function fillUsers() {
  const org = organizations.find((o) => o.id === $("org").value);
  const members = new Map((org ? org.members : []).map((m) => [m.userId, m.role]));
  const select = $("user");
  const previous = select.value;
  select.replaceChildren();
  for (const u of users) {
    const role = members.get(u.id);
    select.append(option(u.id, role ? `${u.name} (${role})` : `${u.name} (not a member: expect 403)`));
  }
  const firstMember = users.find((u) => members.has(u.id));
  select.value = members.has(previous) ? previous : firstMember ? firstMember.id : (users[0] || {}).id;
}

async function loadDirectory() {
  [organizations, users] = await Promise.all([
    api("GET", "/api/demo/organizations"),
    api("GET", "/api/demo/users"),
  ]);
  const select = $("org");
  select.replaceChildren(...organizations.map((o) => option(o.id, `${o.name} (${o.id})`)));
  fillUsers();
  $("org").dataset.loaded = "true";
}

// --- properties ------------------------------------------------------------------

function renderProperties() {
  const body = $("properties");
  body.replaceChildren();
  const rows = [...properties.values()].sort((a, b) =>
    String(b.updatedAt || "").localeCompare(String(a.updatedAt || "")) || a.id.localeCompare(b.id));
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.innerHTML = '<td colspan="5" class="empty">none</td>';
    body.append(tr);
    return;
  }
  for (const p of rows) {
    const tr = document.createElement("tr");
    tr.dataset.propertyId = p.id;
    for (const [text, cls] of [[p.id, ""], [p.propertyType, ""], [p.status, ""], [p.price, "num"]]) {
      const td = document.createElement("td");
      td.textContent = text == null ? "" : String(text);
      if (cls) td.className = cls;
      tr.append(td);
    }
    const td = document.createElement("td");
    const up = document.createElement("button");
    up.textContent = "update";
    up.onclick = () => updateProperty(p.id);
    const del = document.createElement("button");
    del.textContent = "delete";
    del.onclick = () => deleteProperty(p.id);
    td.append(up, " ", del);
    tr.append(td);
    body.append(tr);
  }
}

function newestPropertyId() {
  let newest = null;
  for (const p of properties.values()) {
    if (!newest || String(p.updatedAt || "") > String(newest.updatedAt || "")) newest = p;
  }
  return newest && newest.id;
}

async function loadProperties(org) {
  const list = await api("GET", `/api/demo/organizations/${encodeURIComponent(org)}/properties`);
  properties = new Map(list.map((p) => [p.id, p]));
  renderProperties();
}

/** Applies a property.update event to the table: the events are the source of truth. */
function applyPropertyEvent(event) {
  const p = event.payload || {};
  if (!p.propertyId) return;
  if (p.operation === "delete") {
    properties.delete(p.propertyId);
  } else {
    const row = Object.assign({ id: p.propertyId }, properties.get(p.propertyId), p.changes || {});
    row.id = p.propertyId;
    row.updatedAt = new Date(event.timestamp).toISOString();
    properties.set(p.propertyId, row);
  }
  renderProperties();
  if ($("message").dataset.lastPropertyId === p.propertyId) {
    message(`${p.operation} of ${p.propertyId}: event ${event.id} arrived live`);
  }
}

/**
 * Reports a write the API answered. Its event may well have arrived before
 * the answer did; otherwise applyPropertyEvent reports it when it comes.
 */
function written(operation, id, text) {
  $("message").dataset.lastPropertyId = id;
  const seen = document.querySelector(`#events li[data-operation="${operation}"][data-property-id="${id}"]`);
  message(seen ? `${operation} of ${id}: event ${seen.dataset.id} arrived live` : `${text}: waiting for its event…`);
}

async function createProperty() {
  const org = $("org").value;
  try {
    const p = await api("POST", `/api/demo/organizations/${encodeURIComponent(org)}/properties`);
    written("create", p.id, `created ${p.id}`);
  } catch (e) {
    message(e.message, true);
  }
}

async function updateProperty(id) {
  const org = $("org").value;
  if (!id) return message("no property to update", true);
  try {
    const p = await api("PATCH", `/api/demo/organizations/${encodeURIComponent(org)}/properties/${encodeURIComponent(id)}`);
    written("update", p.id, `updated ${p.id}: price ${p.price}, status ${p.status}`);
  } catch (e) {
    message(e.message, true);
  }
}

async function deleteProperty(id) {
  const org = $("org").value;
  if (!id) return message("no property to delete", true);
  try {
    await api("DELETE", `/api/demo/organizations/${encodeURIComponent(org)}/properties/${encodeURIComponent(id)}`);
    written("delete", id, `deleted ${id}`);
  } catch (e) {
    message(e.message, true);
  }
}

// --- the stream ------------------------------------------------------------------

function summary(event) {
  const p = event.payload || {};
  switch (event.type) {
    case "property.update": {
      const fields = p.updatedFields ? ` [${p.updatedFields.join(", ")}]` : "";
      const c = p.changes || {};
      const changes = p.operation === "update" ? ` ${JSON.stringify(c)}`
        : p.operation === "create" ? ` ${c.propertyType} ${c.status} ${c.price}` : "";
      return `${p.operation} ${p.propertyId}${fields}${changes}`;
    }
    case "member.join":
    case "member.leave":
      return `${p.memberId} ${p.role || ""}`.trim();
    case "organization.change":
      return `${p.changeType || ""} ${JSON.stringify(p.changes || {})}`;
    default:
      return JSON.stringify(p).slice(0, 200);
  }
}

function showEvent(event, id) {
  $("events-empty").style.display = "none";
  const li = document.createElement("li");
  li.dataset.type = event.type;
  li.dataset.id = id || "";
  const p = event.payload || {};
  if (p.operation) li.dataset.operation = p.operation;
  if (p.propertyId) li.dataset.propertyId = p.propertyId;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date(event.timestamp || Date.now()).toLocaleTimeString();
  const type = document.createElement("span");
  type.className = "type";
  type.textContent = event.type;
  const eid = document.createElement("span");
  eid.className = "id";
  eid.textContent = id ? `id ${id}` : "";
  const sum = document.createElement("span");
  sum.className = "summary";
  sum.textContent = summary(event);
  li.append(time, type, eid, sum);
  const list = $("events");
  list.insertBefore(li, list.children[1] || null);
  while (list.children.length > MAX_EVENTS + 1) list.lastElementChild.remove();
  eventCount += 1;
  $("event-count").textContent = `(${eventCount})`;
}

function disconnect(text = "not connected") {
  if (source) {
    source.close();
    source = null;
  }
  setState("idle", text);
}

/**
 * EventSource hides a refusal's status and reason; ask once more with fetch
 * (which sees the gateway's one-line text/plain reason) and show it.
 */
async function explainRefusal(url) {
  const abort = new AbortController();
  try {
    const response = await fetch(url, { credentials: "same-origin", signal: abort.signal });
    if (response.ok) return "the stream closed";
    return `${response.status}: ${(await response.text()).trim()}`;
  } catch (e) {
    return String(e.message || e);
  } finally {
    abort.abort();
  }
}

async function connect() {
  disconnect();
  const org = $("org").value;
  const user = $("user").value;
  setState("connecting", `signing in as ${user}…`);
  try {
    const session = await api("POST", "/api/demo/session", { userId: user });
    $("state").dataset.userId = session.userId;
  } catch (e) {
    setState("error", "sign-in failed", e.message);
    return;
  }
  properties = new Map();
  renderProperties();
  loadProperties(org).catch((e) => message(e.message, true));

  const url = `/api/realtime/stream?organizationId=${encodeURIComponent(org)}`;
  setState("connecting", `connecting to ${org}…`);
  const es = new EventSource(url, { withCredentials: true });
  source = es;
  es.onmessage = (e) => {
    if (source !== es) return;
    let event;
    try { event = JSON.parse(e.data); } catch { return; }
    if (event.type === "connection") {
      setState("open", `connected to ${event.organizationName} as ${event.userId}`,
        `connection ${event.connectionId}`);
      return;
    }
    showEvent(event, e.lastEventId);
    if (event.type === "property.update") applyPropertyEvent(event);
    if (event.type === "data.sync") loadProperties(org).catch((err) => message(err.message, true));
  };
  es.onerror = async () => {
    if (source !== es) return;
    if (es.readyState === EventSource.CONNECTING) {
      // The browser reconnects by itself, sending Last-Event-ID: nothing is missed.
      setState("connecting", "reconnecting (resumes from the last event id)…");
    } else {
      source = null;
      setState("closed", "refused or closed", await explainRefusal(url));
    }
  };
}

$("org").addEventListener("change", () => { fillUsers(); disconnect(); });
$("user").addEventListener("change", () => disconnect());
$("connect").addEventListener("click", connect);
$("disconnect").addEventListener("click", () => disconnect());
$("create").addEventListener("click", createProperty);
$("update").addEventListener("click", () => updateProperty(newestPropertyId()));
$("delete").addEventListener("click", () => deleteProperty(newestPropertyId()));

loadDirectory().catch((e) => setState("error", "cannot load the demo directory", e.message));
