/*
 * Stream explorer: connects to this gateway with ?api_key= (browsers cannot set WebSocket headers), sends
 * subscribe/unsubscribe, and shows the stream.
 *
 * A busy stream brings thousands of events a second, so receiving only updates in-memory state; the page is
 * redrawn at most once per animation frame, touching only the rows and cells that changed. Everything the
 * server sends is shown with textContent, never parsed as HTML.
 */

const MAX_ROWS = 500;
const MAX_LOG_ENTRIES = 200;
const KEY_STORAGE = "cutemarkets.explorer.apiKey";
const MARKET_STORAGE = "cutemarkets.explorer.market";

const CLOSE_MEANINGS = new Map([
  [4401, "The key was refused: it is missing, invalid, revoked or expired, it is for the other market, " +
         "or its plan does not include streaming (Expert or Commercial is required)."],
  [4409, "Another connection of this account is already open (another tab, app or script). " +
         "Close it, then connect again."],
  [1011, "Gateway error: the stream failed on the server side. Try again in a moment."],
  [1008, "Closed by the server: this client read the stream too slowly (slow consumer) " +
         "or sent too many messages."],
  [1001, "The server is restarting. Connect again in a moment."],
  [1000, "Closed normally."],
  [1006, "Connection lost: the network dropped or the server could not be reached."],
]);

const STATES = {
  idle: "Not connected",
  connecting: "Connecting…",
  authenticating: "Connected, checking the key…",
  streaming: "Streaming",
};

const $ = (id) => document.getElementById(id);
const ui = {
  key: $("api-key"),
  market: $("market"),
  connect: $("connect"),
  disconnect: $("disconnect"),
  state: $("connection-state"),
  explanation: $("close-explanation"),
  closeCode: $("close-code"),
  closeMeaning: $("close-meaning"),
  closeMessage: $("close-message"),
  subscription: $("subscription"),
  subscribe: $("subscribe"),
  unsubscribe: $("unsubscribe"),
  active: $("active-subscriptions"),
  rows: document.querySelector("#events tbody"),
  noEvents: $("no-events"),
  eventsPerSecond: $("events-per-second"),
  rowCount: $("row-count"),
  clear: $("clear"),
  log: $("status-log"),
};

let socket = null;
let state = "idle";
let lastServerMessage = "";

// Latest event per row key since the last frame, in order of arrival (re-inserted on every update).
let pending = new Map();
// Displayed rows, least recently updated first: the first one is evicted when the table is full.
const rows = new Map();
// Row keys in display order (symbol, then event type), for inserting new rows in place.
const order = [];
let pendingLog = [];
let frameRequested = false;
let eventsThisSecond = 0;
let secondStartedAt = performance.now();

// --- connection ------------------------------------------------------------------------------------------------

function streamUrl(market, key) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/ws/${market}/?api_key=${encodeURIComponent(key)}`;
}

function connect() {
  if (socket) return;
  const key = ui.key.value.trim();
  if (!key) {
    note("Paste an API key first.");
    ui.key.focus();
    return;
  }
  const market = ui.market.value;
  sessionStorage.setItem(KEY_STORAGE, key);
  sessionStorage.setItem(MARKET_STORAGE, market);
  ui.explanation.hidden = true;
  lastServerMessage = "";
  note(`Connecting to /v1/ws/${market}/`);
  const ws = new WebSocket(streamUrl(market, key));
  socket = ws;
  setState("connecting");
  ws.addEventListener("open", () => ws === socket && setState("authenticating"));
  ws.addEventListener("message", (message) => ws === socket && receive(message.data));
  ws.addEventListener("close", (event) => ws === socket && closed(event));
}

function disconnect() {
  if (socket) socket.close(1000);
}

function closed(event) {
  socket = null;
  setState("closed", `Closed (${event.code})`);
  ui.closeCode.textContent = `Closed with code ${event.code}.`;
  ui.closeMeaning.textContent = CLOSE_MEANINGS.get(event.code) || "Unexpected close code.";
  const serverMessage = event.reason || lastServerMessage;
  ui.closeMessage.textContent = serverMessage ? `Server said: ${serverMessage}` : "";
  ui.closeMessage.hidden = !serverMessage;
  ui.explanation.hidden = false;
  ui.active.replaceChildren();
  note(`Closed with code ${event.code}`);
}

function setState(next, label = STATES[next]) {
  state = next;
  ui.state.dataset.state = next;
  ui.state.textContent = label;
  const open = socket !== null;
  ui.connect.disabled = open;
  ui.disconnect.disabled = !open;
  ui.key.disabled = open;
  ui.market.disabled = open;
  ui.subscribe.disabled = next !== "streaming";
  ui.unsubscribe.disabled = next !== "streaming";
  // Connecting disables the focused key field; carry keyboard users on to the next step.
  if (next === "streaming" && document.activeElement === document.body) ui.subscription.focus();
}

function send(action, params) {
  if (state !== "streaming") return;
  if (!params.trim()) {
    note("Type one or more subscriptions first, e.g. T.AAPL.");
    return;
  }
  socket.send(JSON.stringify({ action, params }));
}

// --- incoming frames -------------------------------------------------------------------------------------------

function receive(data) {
  let events;
  try {
    events = JSON.parse(data);
  } catch {
    note("Unreadable frame from the server (not JSON).");
    return;
  }
  if (!Array.isArray(events)) events = [events];
  for (const event of events) {
    if (event === null || typeof event !== "object") continue;
    if (event.ev === "status") {
      onStatus(event);
    } else {
      const key = `${text(event.sym ?? event.T)}\u0000${text(event.ev)}`;
      pending.delete(key);
      pending.set(key, event);
      eventsThisSecond += 1;
    }
  }
  requestFrame();
}

function onStatus(event) {
  const status = text(event.status);
  const message = text(event.message);
  pendingLog.push({ status, message, at: new Date() });
  if (status === "auth_success") setState("streaming");
  else if (status !== "success" && status !== "connected") lastServerMessage = message;
  const ack = /^(subscribed|unsubscribed) to: (.+)$/.exec(message);
  if (status === "success" && ack) {
    if (ack[1] === "subscribed") addChip(ack[2]);
    else removeChip(ack[2]);
  }
}

// --- drawing ---------------------------------------------------------------------------------------------------

function requestFrame() {
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(draw);
  }
}

function draw() {
  frameRequested = false;
  // Only the latest MAX_ROWS keys of this frame could stay in the table; skip building rows for the rest.
  let skip = pending.size - MAX_ROWS;
  for (const [key, event] of pending) {
    if (skip-- > 0) continue;
    let row = rows.get(key);
    if (row) rows.delete(key);
    else row = addRow(key, event);
    rows.set(key, row);
    fill(row, describe(event));
  }
  pending = new Map();
  while (rows.size > MAX_ROWS) removeRow(rows.keys().next().value);
  ui.rowCount.textContent = rows.size.toLocaleString();
  ui.noEvents.hidden = rows.size > 0;
  drawLog();
}

function addRow(key, event) {
  const tr = document.createElement("tr");
  const cells = [];
  for (let index = 0; index < 6; index += 1) cells.push(tr.insertCell());
  cells[0].textContent = text(event.sym ?? event.T);
  cells[1].textContent = text(event.ev);
  cells[2].className = "number";
  cells[3].className = "number";
  const position = insertionPoint(key);
  const next = position < order.length ? rows.get(order[position]).tr : null;
  order.splice(position, 0, key);
  ui.rows.insertBefore(tr, next);
  return { tr, cells, values: [] };
}

function removeRow(key) {
  rows.get(key).tr.remove();
  rows.delete(key);
  order.splice(insertionPoint(key), 1);
}

function insertionPoint(key) {
  let low = 0;
  let high = order.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (order[middle] < key) low = middle + 1;
    else high = middle;
  }
  return low;
}

function fill(row, values) {
  values.forEach((value, index) => {
    if (row.values[index] !== value) {
      row.values[index] = value;
      row.cells[index + 2].textContent = value;
    }
  });
}

/** Price, size, time and exchange of an event, as text, by event type. */
function describe(event) {
  switch (event.ev) {
    case "T":
      return [price(event.p), size(event.s), time(event.t), text(event.x)];
    case "Q":
      return [`${price(event.bp)} / ${price(event.ap)}`, `${size(event.bs)} × ${size(event.as)}`, time(event.t),
              `${text(event.bx)} / ${text(event.ax)}`];
    case "A":
    case "AM":
      return [price(event.c), size(event.v), time(event.s ?? event.e), ""];
    case "LULD":
      return [`${price(event.l)} – ${price(event.h)}`, "", time(event.t), ""];
    default:
      return ["", "", time(event.t), ""];
  }
}

function text(value) {
  return value === undefined || value === null ? "" : String(value);
}

/** At least two decimals (271.70), and all that the feed sent (sub-penny prices keep theirs). */
function price(value) {
  if (typeof value !== "number") return text(value);
  const decimals = String(value).split(".")[1]?.length ?? 0;
  return decimals >= 2 ? String(value) : value.toFixed(2);
}

const sizeFormat = new Intl.NumberFormat();

function size(value) {
  return typeof value === "number" ? sizeFormat.format(value) : text(value);
}

const pad = (value, width) => String(value).padStart(width, "0");

/** HH:MM:SS.mmm in local time; the feed sends milliseconds, but µs and ns are recognised by their size. */
function time(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "";
  let milliseconds = value;
  while (milliseconds > 1e14) milliseconds /= 1000;
  const date = new Date(milliseconds);
  return `${pad(date.getHours(), 2)}:${pad(date.getMinutes(), 2)}:${pad(date.getSeconds(), 2)}.` +
         pad(date.getMilliseconds(), 3);
}

function clearTable() {
  pending = new Map();
  rows.clear();
  order.length = 0;
  ui.rows.replaceChildren();
  ui.rowCount.textContent = "0";
  ui.noEvents.hidden = false;
}

function updateRate() {
  const now = performance.now();
  const perSecond = Math.round((eventsThisSecond * 1000) / (now - secondStartedAt));
  ui.eventsPerSecond.textContent = perSecond.toLocaleString();
  eventsThisSecond = 0;
  secondStartedAt = now;
}

// --- status log and subscriptions ------------------------------------------------------------------------------

/** A line of the page's own in the status log. */
function note(message) {
  pendingLog.push({ status: "page", message, at: new Date() });
  requestFrame();
}

function drawLog() {
  if (pendingLog.length === 0) return;
  const fragment = document.createDocumentFragment();
  for (const entry of pendingLog.slice(-MAX_LOG_ENTRIES).reverse()) {
    const item = document.createElement("li");
    const at = document.createElement("time");
    at.dateTime = entry.at.toISOString();
    at.textContent = time(entry.at.getTime());
    const badge = document.createElement("span");
    badge.className = `badge badge-${/^[a-z_]+$/.test(entry.status) ? entry.status : "other"}`;
    badge.textContent = entry.status;
    const message = document.createElement("span");
    message.textContent = entry.message;
    item.append(at, badge, message);
    fragment.append(item);
  }
  pendingLog = [];
  ui.log.prepend(fragment);
  while (ui.log.childElementCount > MAX_LOG_ENTRIES) ui.log.lastElementChild.remove();
}

function addChip(item) {
  if (findChip(item)) return;
  const chip = document.createElement("li");
  chip.dataset.item = item;
  const label = document.createElement("span");
  label.textContent = item;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.setAttribute("aria-label", `Unsubscribe from ${item}`);
  remove.addEventListener("click", () => send("unsubscribe", item));
  chip.append(label, remove);
  ui.active.append(chip);
}

function removeChip(item) {
  findChip(item)?.remove();
}

function findChip(item) {
  return Array.from(ui.active.children).find((chip) => chip.dataset.item === item);
}

// --- wiring ----------------------------------------------------------------------------------------------------

function onEnter(input, action) {
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      action();
    }
  });
}

ui.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
const storedMarket = sessionStorage.getItem(MARKET_STORAGE);
if (Array.from(ui.market.options).some((option) => option.value === storedMarket)) ui.market.value = storedMarket;
ui.connect.addEventListener("click", connect);
ui.disconnect.addEventListener("click", disconnect);
ui.subscribe.addEventListener("click", () => send("subscribe", ui.subscription.value));
ui.unsubscribe.addEventListener("click", () => send("unsubscribe", ui.subscription.value));
ui.clear.addEventListener("click", clearTable);
onEnter(ui.key, connect);
onEnter(ui.subscription, () => send("subscribe", ui.subscription.value));
setInterval(updateRate, 1000);
setState("idle");
