// The alarms of a device, on its admin page: the active ones first (newest first), then the latest
// cleared ones, at most MAX_ROWS in all, from GET /api/v1/alarms/?device=<id> (session auth), with
// Acknowledge and Clear buttons for users who may (POST alarms/{id}/ack/ and clear/ with the CSRF
// token). The page's WebSocket (device.js, subscribed to this device) hands alarm.* events of the
// device to onEvent: the row changes at once from the event's alarm, and the list is read again from
// the API shortly after (what the event does not carry: who acknowledged, the cleared ones that drop
// out of the list).
(function () {
  "use strict";

  const box = document.getElementById("device-alarms");
  if (!box || !window.FluxLive) return;
  const L = window.FluxLive;

  const MAX_ROWS = 20;
  const RELOAD_AFTER_EVENT_MS = 300;
  const RESYNC_MS = 60000;
  const SEVERITY_RANK = {critical: 4, major: 3, minor: 2, warning: 1, indeterminate: 0};
  const STATUS_LABELS = {
    active_unacknowledged: "Active, unacknowledged",
    active_acknowledged: "Active, acknowledged",
    cleared_unacknowledged: "Cleared, unacknowledged",
    cleared_acknowledged: "Cleared, acknowledged",
  };

  const deviceId = box.dataset.device;
  const listUrl = box.dataset.listUrl;
  const canAck = box.dataset.canAck === "true";
  const canClear = box.dataset.canClear === "true";
  const rowsBox = document.getElementById("device-alarms-rows");
  const summaryText = document.getElementById("device-alarms-summary");
  const errors = document.getElementById("device-alarms-errors");

  let alarms = new Map(); // id → the API's alarm (or an event's summary of it)
  let activeTotal = null; // the device's active alarms (the API's count; more than shown when many)
  let generation = 0; // a load answered after a newer load or event started is dropped
  let reloadTimer = null;

  function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : "";
  }

  function isActive(alarm) {
    return alarm.active !== undefined ? alarm.active : String(alarm.status).startsWith("active");
  }

  function isAcknowledged(alarm) {
    return alarm.acknowledged !== undefined ? alarm.acknowledged : String(alarm.status).endsWith("_acknowledged");
  }

  // Active first (newest first), then cleared (latest cleared first).
  function ordered() {
    const time = (value) => L.parseTime(value) || 0;
    const all = [...alarms.values()];
    const active = all.filter(isActive).sort((a, b) => time(b.started_at) - time(a.started_at) || b.id - a.id);
    const cleared = all.filter((a) => !isActive(a)).sort((a, b) => time(b.ended_at) - time(a.ended_at) || b.id - a.id);
    return active.concat(cleared).slice(0, MAX_ROWS);
  }

  function badge(kind, value, label) {
    const span = L.element("span", label, {className: "alarm-badge alarm-" + kind + "-" + value});
    span.dataset[kind] = value;
    return span;
  }

  function cell(child) {
    const td = L.element("td");
    td.appendChild(child);
    return td;
  }

  function button(label, action, alarm) {
    const node = L.element("button", label, {type: "button", className: "button alarm-" + action});
    node.dataset.action = action;
    node.dataset.alarm = alarm.id;
    node.addEventListener("click", () => act(action, alarm.id, node));
    return node;
  }

  function makeRow(alarm) {
    const tr = L.element("tr");
    tr.dataset.alarm = alarm.id;
    tr.dataset.type = alarm.type;
    tr.dataset.severity = alarm.severity;
    tr.dataset.status = alarm.status;
    const type = L.element("th", null, {scope: "row"});
    type.appendChild(L.element("a", alarm.type, {href: box.dataset.adminUrl.replace("/0/", "/" + alarm.id + "/")}));
    const actions = L.element("td", null, {className: "alarm-actions"});
    if (canAck && !isAcknowledged(alarm)) actions.appendChild(button("Acknowledge", "ack", alarm));
    if (canClear && isActive(alarm)) actions.appendChild(button("Clear", "clear", alarm));
    tr.append(
      type,
      cell(badge("severity", alarm.severity, capitalise(alarm.severity))),
      cell(badge("status", alarm.status, STATUS_LABELS[alarm.status] || alarm.status)),
      L.element("td", String(alarm.count || 1), {className: "flux-num alarm-count"}),
      L.element("td", L.formatTime(alarm.started_at, true), {className: "flux-time"}),
      L.element("td", L.formatTime(alarm.last_raised_at, true), {className: "flux-time"}),
      L.element("td", alarm.ended_at ? L.formatTime(alarm.ended_at, true) : "—", {className: "flux-time"}),
      actions,
    );
    if (alarm.clear_reason) tr.children[6].title = alarm.clear_reason;
    return tr;
  }

  function render() {
    const shown = ordered();
    if (!shown.length) {
      rowsBox.replaceChildren(L.element("tr", null, {className: "flux-empty"}));
      rowsBox.firstChild.appendChild(L.element("td", "No alarms.", {colSpan: 8}));
    } else {
      rowsBox.replaceChildren(...shown.map(makeRow));
    }
    const active = [...alarms.values()].filter(isActive);
    const count = activeTotal === null ? active.length : Math.max(activeTotal, active.length);
    const unacknowledged = active.filter((a) => !isAcknowledged(a)).length;
    const worst = active.map((a) => a.severity).sort((a, b) => (SEVERITY_RANK[b] || 0) - (SEVERITY_RANK[a] || 0))[0];
    summaryText.textContent = count
      ? count + " active (" + unacknowledged + " unacknowledged" + (worst ? ", worst " + worst : "") + ")"
      : "No active alarm.";
    box.dataset.active = String(count);
    box.dataset.shown = String(shown.length);
  }

  function showError(text) {
    errors.replaceChildren(...(text ? [L.element("li", text)] : []));
  }

  async function load() {
    const mine = ++generation;
    const query = (extra) => listUrl + "?" + new URLSearchParams(Object.assign(
      {device: deviceId, page_size: String(MAX_ROWS)}, extra));
    let active, cleared;
    try {
      [active, cleared] = await Promise.all([
        L.fetchJson(query({active: "true", ordering: "-started_at"})),
        L.fetchJson(query({active: "false", ordering: "-ended_at"})),
      ]);
    } catch (error) {
      if (mine === generation) scheduleReload(5000);
      return;
    }
    if (mine !== generation) return; // an event came meanwhile: a fresher load follows
    if (!active.ok || !cleared.ok) {
      showError("Could not load the alarms (HTTP " + (active.ok ? cleared.status : active.status) + ").");
      return;
    }
    const fresh = new Map();
    for (const alarm of (active.body.results || []).concat(cleared.body.results || [])) fresh.set(alarm.id, alarm);
    alarms = fresh;
    activeTotal = active.body.count !== undefined ? active.body.count : null;
    box.dataset.loaded = String(Date.now());
    render();
  }

  function scheduleReload(delay) {
    if (reloadTimer !== null) clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => {
      reloadTimer = null;
      load();
    }, delay);
  }

  async function act(action, id, node) {
    node.disabled = true;
    showError("");
    let answer;
    try {
      answer = await L.fetchJson(listUrl + encodeURIComponent(id) + "/" + action + "/", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: action === "clear" ? JSON.stringify({reason: "Cleared from the device page."}) : "{}",
      });
    } catch (error) {
      node.disabled = false;
      showError("Could not reach the server: " + error.message);
      return;
    }
    if (answer.ok && answer.body) {
      generation += 1;
      alarms.set(answer.body.id, answer.body);
      render();
    } else if (answer.status === 409) {
      showError((answer.body && answer.body.detail) || "Already done.");
    } else {
      node.disabled = false;
      showError("Refused (HTTP " + answer.status + "): " + ((answer.body && answer.body.detail) || ""));
      return;
    }
    scheduleReload(RELOAD_AFTER_EVENT_MS);
  }

  // An alarm.* event of this device (from device.js's subscription).
  function onEvent(event) {
    const data = event.data || {};
    if (!String(event.type).startsWith("alarm.") || data.device !== deviceId) return;
    const summary = data.alarm;
    generation += 1; // a load already under way may predate the change
    if (summary && summary.id !== undefined) {
      const known = alarms.get(summary.id) || {};
      alarms.set(summary.id, Object.assign({}, known, summary));
      if (isActive(summary) && !isActive(known) && activeTotal !== null) activeTotal += 1;
      if (!isActive(summary) && isActive(known) && known.id !== undefined && activeTotal) activeTotal -= 1;
      render();
    }
    scheduleReload(RELOAD_AFTER_EVENT_MS);
  }

  load();
  setInterval(() => { if (!document.hidden) load(); }, RESYNC_MS);
  window.fluxDeviceAlarms = {onEvent: onEvent, reload: load, alarms: () => ordered()};
})();
