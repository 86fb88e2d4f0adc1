// The live event page: every event the user may see, newest first. The device, group, type and
// (once alarms exist) severity filters are the WebSocket subscription's own: the server filters.
// The severity applies to alarm events (the server leaves out alarm.* events of other severities and
// lets other events through): with a severity and no type ticked, the page asks for alarm events
// only ("alarm.*"), which is what choosing a severity means to a reader. Alarm events are checked
// against it here too, should a server ever let one through.
// Pause holds new events aside (shown on resume); the list and the held events are both bounded,
// the oldest going first.
(function () {
  "use strict";

  const root = document.getElementById("live-events");
  if (!root || !window.FluxLive) return;
  const L = window.FluxLive;

  const rowsBox = document.getElementById("events-rows");
  const devicesInput = document.getElementById("filter-devices");
  const groupSelect = document.getElementById("filter-group");
  const severitySelect = document.getElementById("filter-severity");
  const bufferSelect = document.getElementById("buffer-size");
  const pauseButton = document.getElementById("events-pause");
  const shownText = document.getElementById("events-shown");
  const heldText = document.getElementById("events-held");
  const droppedText = document.getElementById("events-dropped");
  const summaryText = document.getElementById("events-filter-summary");

  let paused = false;
  let held = []; // rows waiting while paused, oldest first
  let dropped = 0;
  let received = 0;
  let subscription = null;
  let serial = 0;
  let filters = {};

  function limit() {
    return Number(bufferSelect.value) || 200;
  }

  function readFilters() {
    const chosen = {};
    const devices = devicesInput.value.split(/[\s,;]+/).map((id) => id.trim()).filter(Boolean);
    if (devices.length) chosen.devices = devices;
    if (groupSelect.value) chosen.groups = [Number(groupSelect.value)];
    const types = [...document.querySelectorAll("#filter-types input:checked")].map((input) => input.value);
    if (types.length) chosen.event_types = types;
    if (severitySelect && severitySelect.value) {
      chosen.severity = [severitySelect.value];
      if (!chosen.event_types) chosen.event_types = ["alarm.*"];
    }
    return chosen;
  }

  function describeFilters(chosen) {
    const parts = [];
    if (chosen.devices) parts.push("devices " + chosen.devices.join(", "));
    if (chosen.groups) parts.push("group " + groupSelect.selectedOptions[0].textContent.trim());
    if (chosen.event_types) parts.push(chosen.event_types.join(", "));
    if (chosen.severity) parts.push("alarms of severity " + chosen.severity.join(", "));
    return parts.length ? "Showing: " + parts.join(" · ") : "Showing every event.";
  }

  function subscribe() {
    filters = readFilters();
    serial += 1;
    const id = "events-" + serial;
    if (subscription) live.unsubscribe(subscription);
    subscription = id;
    live.subscribe(id, filters, 4);
    summaryText.textContent = describeFilters(filters);
    root.dataset.subscription = id;
    // Keep the address in step, so the filtered view can be bookmarked or shared.
    const query = new URLSearchParams();
    if (filters.devices) query.set("device", filters.devices.join(","));
    if (filters.groups) query.set("group", String(filters.groups[0]));
    // Types ticked by hand (not the "alarm.*" a lone severity stands for).
    for (const type of document.querySelectorAll("#filter-types input:checked")) query.append("type", type.value);
    if (filters.severity) query.set("severity", filters.severity[0]);
    history.replaceState(null, "", location.pathname + (query.toString() ? "?" + query : ""));
  }

  function counters() {
    shownText.textContent = rowsBox.children.length + " shown";
    heldText.textContent = held.length ? held.length + " held while paused" : "";
    droppedText.textContent = dropped ? dropped + " older dropped" : "";
    root.dataset.shown = rowsBox.children.length;
    root.dataset.held = held.length;
    root.dataset.received = received;
  }

  function makeRow(event, row) {
    const tr = L.element("tr");
    tr.dataset.type = event.type;
    tr.dataset.event = event.id;
    if (row.device) tr.dataset.device = row.device;
    const time = L.parseTime(event.time);
    const stamp = time === null ? "" : new Date(time).toLocaleTimeString(undefined,
      {hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3, hour12: false});
    tr.appendChild(L.element("td", stamp, {className: "flux-time", title: event.time}));
    tr.appendChild(L.element("td", event.type));
    const device = L.element("td");
    if (row.device) device.appendChild(L.element("a", row.device, {href: L.deviceUrl(root.dataset.deviceUrl, row.device)}));
    tr.appendChild(device);
    const detail = L.element("td", row.text);
    if (row.status) detail.classList.add("flux-status-text-" + row.status);
    if (row.severity) L.markSeverity(tr, detail, row.severity);
    tr.appendChild(detail);
    return tr;
  }

  function trim() {
    const max = limit();
    while (rowsBox.children.length > max) {
      rowsBox.lastElementChild.remove();
      dropped += 1;
    }
    if (held.length > max) {
      dropped += held.length - max;
      held = held.slice(held.length - max);
    }
  }

  function show(rows) {
    // rows oldest first: each goes on top.
    for (const tr of rows) rowsBox.prepend(tr);
    trim();
    counters();
  }

  // The server filters; a telemetry event may still carry devices besides the chosen ones.
  function wanted(row) {
    return !(filters.devices && row.device && !filters.devices.includes(row.device));
  }

  function onEvent(event, subscriptions) {
    if (!subscriptions.includes(subscription)) return; // for filters no longer chosen
    if (!L.alarmSeverityMatches(event, filters.severity)) return;
    received += 1;
    const rows = L.describe(event).filter(wanted).map((row) => makeRow(event, row));
    if (!rows.length) return;
    if (paused) {
      held.push(...rows);
      trim();
      counters();
    } else {
      show(rows);
    }
  }

  function setPaused(value) {
    paused = value;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.setAttribute("aria-pressed", String(paused));
    root.dataset.paused = String(paused);
    if (!paused && held.length) {
      const rows = held;
      held = [];
      show(rows);
    }
    counters();
  }

  const live = L.connect({
    path: root.dataset.wsPath,
    indicator: document.getElementById("live-state"),
    onEvent: onEvent,
    onSubscribed: (message) => {
      if (message.id === subscription) root.dataset.subscribed = message.id;
    },
    onError: (error) => {
      if (error.id && error.id !== subscription) return;
      summaryText.textContent = "The server refused the filters: " + (error.detail || error.code);
    },
  });

  pauseButton.addEventListener("click", () => setPaused(!paused));
  document.getElementById("events-clear").addEventListener("click", () => {
    rowsBox.replaceChildren();
    held = [];
    dropped = 0;
    counters();
  });
  document.getElementById("filters-apply").addEventListener("click", subscribe);
  devicesInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      subscribe();
    }
  });
  bufferSelect.addEventListener("change", () => {
    trim();
    counters();
  });

  subscribe();
  setPaused(false);
  window.fluxLiveEvents = {live: live, filters: () => filters, held: () => held.length};
})();
