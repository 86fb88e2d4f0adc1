// The live parts of a device's admin page: its latest values, a chart per numeric key (the chosen
// range's history from the telemetry API, then live points), its status timeline, and live status
// badges for the command list. Data: GET metrics/, telemetry/ and status/ of the REST API (session
// auth), then the WebSocket /ws/events/ subscribed to this device only. Its alarm.* events go to the
// Alarms section (alarms.js) when the page has one.
(function () {
  "use strict";

  const box = document.getElementById("live-telemetry");
  if (!box || !window.FluxLive) return;
  const L = window.FluxLive;

  const deviceId = box.dataset.device;
  const HISTORY_LIMIT = 2000; // points per key in one request
  const SAMPLE_SEGMENTS = 24; // when a range holds more, the first points of each 1/24th of it
  const PARALLEL_REQUESTS = 4;
  const SLIDE_MS = 5000;
  const MAX_LIVE_POINTS = 20000;
  const GAP_MIN_MS = 60000;

  const latestRows = document.getElementById("latest-values-rows");
  const chartsBox = document.getElementById("charts");
  const chartsNote = document.getElementById("charts-note");
  const statusBadge = document.getElementById("device-live-status");
  const lastSeen = document.getElementById("device-last-seen");
  const latest = new Map(); // key → {ts (ms), value}
  const charts = new Map(); // key → {chart, card, loading}
  const notes = new Map(); // key → text about its history (sampled, truncated)
  let history = []; // status changes, oldest first: {at (ms), old_status, new_status, reason}
  let currentStatus = box.dataset.status;
  // The chosen range: a sliding window of `span` ms ending now, or fixed [start, end] ms.
  let range = {span: 3600 * 1000, start: null, end: null};
  let rangeVersion = 0;

  function now() {
    return Date.now();
  }

  function rangeBounds() {
    if (range.span) return [now() - range.span, now()];
    return [range.start, range.end];
  }

  // --- Latest values -------------------------------------------------------------------------------

  function renderLatest(flashKeys) {
    const keys = [...latest.keys()].sort();
    if (!keys.length) {
      latestRows.replaceChildren(L.element("tr", null, {className: "flux-empty"}));
      latestRows.firstChild.appendChild(L.element("td", "No values yet.", {colSpan: 3}));
      return;
    }
    const existing = new Map([...latestRows.querySelectorAll("tr[data-key]")].map((tr) => [tr.dataset.key, tr]));
    const rows = keys.map((key) => {
      const entry = latest.get(key);
      let tr = existing.get(key);
      if (!tr) {
        tr = L.element("tr");
        tr.dataset.key = key;
        tr.append(L.element("th", key, {scope: "row"}), L.element("td", "", {className: "flux-value"}),
          L.element("td", "", {className: "flux-time"}));
      }
      tr.children[1].textContent = L.formatValue(entry.value);
      tr.children[2].textContent = L.formatTime(entry.ts, true);
      tr.dataset.ts = entry.ts;
      if (flashKeys && flashKeys.has(key)) {
        const cell = tr.children[1];
        cell.classList.remove("flux-flash");
        void cell.offsetWidth; // restart the animation
        cell.classList.add("flux-flash");
      }
      return tr;
    });
    latestRows.replaceChildren(...rows);
  }

  function setLastSeen(ms) {
    if (ms) lastSeen.textContent = L.formatTime(ms, true);
  }

  async function loadLatest() {
    let answer;
    try {
      answer = await L.fetchJson(box.dataset.metricsUrl);
    } catch (error) {
      setTimeout(loadLatest, 5000);
      return;
    }
    if (!answer.ok || !answer.body) return;
    for (const [key, point] of Object.entries(answer.body.values || {})) {
      const ts = L.parseTime(point.ts);
      const known = latest.get(key);
      if (!known || known.ts <= ts) latest.set(key, {ts: ts, value: point.value});
    }
    setLastSeen(L.parseTime(answer.body.last_seen_at));
    renderLatest();
    for (const [key, entry] of latest) if (isNumeric(entry.value)) ensureChart(key);
  }

  // --- Charts --------------------------------------------------------------------------------------

  function isNumeric(value) {
    return typeof value === "number" && isFinite(value);
  }

  function chartColor(index) {
    const palette = ["#417690", "#2e7d32", "#c27c0e", "#8e2450", "#2f6fb0", "#5d4037", "#00838f", "#6a1b9a"];
    return palette[index % palette.length];
  }

  function ensureChart(key) {
    if (charts.has(key) || !window.Chart) return charts.get(key);
    const card = L.element("div", null, {className: "flux-chart-card"});
    card.dataset.key = key;
    const title = L.element("h3");
    title.append(L.element("span", key), L.element("span", "", {className: "flux-quiet flux-chart-info"}));
    const holder = L.element("div", null, {className: "flux-chart"});
    const canvas = L.element("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "Chart of " + key);
    holder.appendChild(canvas);
    card.append(title, holder);
    // Charts in key order.
    const after = [...chartsBox.children].find((other) => other.dataset.key > key);
    chartsBox.insertBefore(card, after || null);
    const color = chartColor(charts.size);
    const chart = new window.Chart(canvas, {
      type: "line",
      data: {datasets: [{label: key, data: [], borderColor: color, backgroundColor: color,
        pointRadius: 0, pointHitRadius: 6, borderWidth: 1.5, spanGaps: GAP_MIN_MS}]},
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        normalized: true,
        interaction: {mode: "nearest", axis: "x", intersect: false},
        plugins: {
          legend: {display: false},
          decimation: {enabled: true, algorithm: "min-max"},
          tooltip: {callbacks: {title: (items) => items.length ? L.formatTime(items[0].parsed.x, true) : ""}},
        },
        scales: {
          x: {type: "linear", ticks: {maxTicksLimit: 6, callback: (v) => formatTick(v)}},
          y: {ticks: {maxTicksLimit: 6}},
        },
      },
    });
    const entry = {chart: chart, card: card, loading: false};
    charts.set(key, entry);
    loadHistory(key);
    return entry;
  }

  function formatTick(ms) {
    const [start, end] = rangeBounds();
    const date = new Date(ms);
    if (end - start > 36 * 3600 * 1000) return date.toLocaleDateString(undefined, {month: "short", day: "numeric"}) + " " + date.toLocaleTimeString(undefined, {hour: "2-digit", minute: "2-digit"});
    return date.toLocaleTimeString(undefined, {hour: "2-digit", minute: "2-digit", second: end - start <= 3600 * 1000 ? "2-digit" : undefined});
  }

  function describeChart(key) {
    const entry = charts.get(key);
    if (!entry) return;
    const data = entry.chart.data.datasets[0].data;
    entry.card.dataset.points = data.length;
    entry.card.dataset.loading = String(entry.loading);
    entry.card.dataset.last = data.length ? data[data.length - 1].y : "";
    const info = entry.card.querySelector(".flux-chart-info");
    info.textContent = (entry.loading ? "loading… " : "") + data.length + " points" + (notes.get(key) ? " · " + notes.get(key) : "");
  }

  let redraw = null;
  function scheduleRedraw() {
    if (redraw !== null) return;
    redraw = requestAnimationFrame(() => {
      redraw = null;
      const [start, end] = rangeBounds();
      for (const [key, entry] of charts) {
        entry.chart.options.scales.x.min = start;
        entry.chart.options.scales.x.max = end;
        entry.chart.update("none");
        describeChart(key);
      }
    });
  }

  async function fetchRange(key, start, end, limit) {
    const query = new URLSearchParams({
      device: deviceId,
      key: key,
      start: new Date(start).toISOString(),
      end: new Date(end).toISOString(),
      limit: String(limit),
    });
    const answer = await L.fetchJson(box.dataset.rangeUrl + "?" + query);
    if (!answer.ok || !answer.body) throw new Error("HTTP " + answer.status);
    return answer.body;
  }

  // At most PARALLEL_REQUESTS requests in flight.
  async function pool(tasks) {
    const results = new Array(tasks.length);
    let next = 0;
    async function worker() {
      while (next < tasks.length) {
        const index = next++;
        results[index] = await tasks[index]();
      }
    }
    await Promise.all(Array.from({length: Math.min(PARALLEL_REQUESTS, tasks.length)}, worker));
    return results;
  }

  function toPoints(points) {
    const out = [];
    for (const point of points) {
      if (isNumeric(point.value)) out.push({x: L.parseTime(point.ts), y: point.value});
    }
    return out;
  }

  async function loadHistory(key) {
    const entry = charts.get(key);
    const version = rangeVersion;
    const [start, end] = rangeBounds();
    entry.loading = true;
    notes.delete(key);
    describeChart(key);
    let points;
    try {
      const first = await fetchRange(key, start, end, HISTORY_LIMIT);
      points = toPoints(first.points);
      if (first.truncated) {
        // Too many points for one answer (they come oldest first): take the first points of each
        // slice of the range instead, an even sample over all of it.
        const step = (end - start) / SAMPLE_SEGMENTS;
        const per = Math.ceil(HISTORY_LIMIT / SAMPLE_SEGMENTS);
        const slices = await pool(Array.from({length: SAMPLE_SEGMENTS}, (_, i) =>
          () => fetchRange(key, start + i * step, start + (i + 1) * step, per)));
        points = slices.flatMap((slice) => toPoints(slice.points));
        notes.set(key, "sampled: the range holds more than " + HISTORY_LIMIT + " points");
      }
    } catch (error) {
      notes.set(key, "history unavailable (" + error.message + ")");
      points = [];
    }
    if (version !== rangeVersion) return; // the range changed meanwhile: a newer load runs
    const dataset = entry.chart.data.datasets[0];
    // No line across a silence: a gap over ten typical intervals (a minute at least) breaks it.
    dataset.spanGaps = gapThreshold(points, notes.has(key) ? (end - start) / SAMPLE_SEGMENTS : 0);
    // Live points that arrived during the load (newer than the history) are kept.
    const lastHistory = points.length ? points[points.length - 1].x : start;
    const live = dataset.data.filter((point) => point.x > lastHistory);
    dataset.data = points.concat(live);
    entry.loading = false;
    scheduleRedraw();
  }

  function gapThreshold(points, atLeast) {
    const steps = [];
    for (let i = 1; i < points.length; i++) steps.push(points[i].x - points[i - 1].x);
    steps.sort((a, b) => a - b);
    const typical = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
    return Math.max(GAP_MIN_MS, typical * 10, atLeast * 1.5);
  }

  function addLivePoint(key, ts, value) {
    const entry = ensureChart(key);
    if (!entry) return;
    const [start, end] = rangeBounds();
    if (ts < start || (!range.span && ts > end)) return;
    const data = entry.chart.data.datasets[0].data;
    if (!data.length || data[data.length - 1].x < ts) data.push({x: ts, y: value});
    else if (!data.some((point) => point.x === ts)) {
      data.push({x: ts, y: value});
      data.sort((a, b) => a.x - b.x);
    }
    if (data.length > MAX_LIVE_POINTS) data.splice(0, data.length - MAX_LIVE_POINTS);
    scheduleRedraw();
  }

  function slide() {
    if (!range.span) return;
    const [start] = rangeBounds();
    for (const entry of charts.values()) {
      const data = entry.chart.data.datasets[0].data;
      let drop = 0;
      while (drop < data.length && data[drop].x < start) drop++;
      if (drop) data.splice(0, drop);
    }
    scheduleRedraw();
    renderTimeline();
  }

  // --- Range picker --------------------------------------------------------------------------------

  const rangeBox = document.getElementById("chart-range");
  const startInput = document.getElementById("range-start");
  const endInput = document.getElementById("range-end");

  function localInput(ms) {
    const date = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
    return date.toISOString().slice(0, 16);
  }

  function setRange(next) {
    range = next;
    rangeVersion += 1;
    for (const button of rangeBox.querySelectorAll("button[data-range]")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.range) * 1000 === range.span));
    }
    const [start, end] = rangeBounds();
    startInput.value = localInput(start);
    endInput.value = localInput(end);
    box.dataset.range = range.span ? String(range.span / 1000) : "custom";
    chartsNote.textContent = range.span ? "" : "A fixed range: live points are not added.";
    for (const [key, entry] of charts) {
      entry.chart.data.datasets[0].data = [];
      loadHistory(key);
    }
    scheduleRedraw();
    renderTimeline();
  }

  rangeBox.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-range]");
    if (button) setRange({span: Number(button.dataset.range) * 1000, start: null, end: null});
  });
  function applyCustom() {
    const start = Date.parse(startInput.value);
    const end = Date.parse(endInput.value);
    if (isNaN(start) || isNaN(end) || start >= end) {
      chartsNote.textContent = "Choose a start before the end.";
      return;
    }
    setRange({span: null, start: start, end: end});
  }
  document.getElementById("range-apply").addEventListener("click", applyCustom);
  // Enter in these fields would submit the device's form around them.
  for (const input of [startInput, endInput]) {
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        applyCustom();
      }
    });
  }

  // --- Status and its timeline ---------------------------------------------------------------------

  const timeline = document.getElementById("status-timeline");
  const changeRows = document.getElementById("status-changes-rows");

  function setStatus(status) {
    currentStatus = status;
    statusBadge.dataset.status = status;
    statusBadge.textContent = status.charAt(0).toUpperCase() + status.slice(1);
    box.dataset.status = status;
  }

  // Status at a time: the last change before it, or (before every known change) the first one's
  // old status.
  function statusSegments(start, end) {
    const segments = [];
    let status = history.length ? history[0].old_status : currentStatus;
    let from = start;
    for (const change of history) {
      if (change.at <= start) {
        status = change.new_status;
        continue;
      }
      if (change.at >= end) break;
      segments.push({from: from, to: change.at, status: status});
      from = change.at;
      status = change.new_status;
    }
    segments.push({from: from, to: end, status: status});
    return segments.filter((segment) => segment.to > segment.from);
  }

  function renderTimeline() {
    const [start, end] = rangeBounds();
    const spans = statusSegments(start, end).map((segment) => {
      const span = L.element("span");
      span.dataset.status = segment.status;
      span.style.left = ((segment.from - start) / (end - start)) * 100 + "%";
      span.style.width = ((segment.to - segment.from) / (end - start)) * 100 + "%";
      span.title = segment.status + ": " + L.formatTime(segment.from, true) + " – " + L.formatTime(segment.to, true);
      return span;
    });
    timeline.replaceChildren(...spans);
    document.getElementById("status-timeline-start").textContent = L.formatTime(start, true);
    document.getElementById("status-timeline-end").textContent = range.span ? "now" : L.formatTime(end, true);
  }

  function renderChanges() {
    if (!history.length) {
      changeRows.replaceChildren(L.element("tr", null, {className: "flux-empty"}));
      changeRows.firstChild.appendChild(L.element("td", "No status changes yet.", {colSpan: 3}));
      return;
    }
    changeRows.replaceChildren(...history.slice().reverse().map((change) => {
      const tr = L.element("tr");
      tr.dataset.status = change.new_status;
      const what = L.element("td");
      what.append(change.old_status + " → ", L.element("span", change.new_status, {className: "flux-status-text-" + change.new_status}));
      tr.append(L.element("td", L.formatTime(change.at, true), {className: "flux-time"}), what, L.element("td", change.reason || ""));
      return tr;
    }));
  }

  function addChange(change) {
    if (history.some((known) => known.at === change.at && known.new_status === change.new_status)) return;
    history.push(change);
    history.sort((a, b) => a.at - b.at);
    renderChanges();
    renderTimeline();
  }

  async function loadStatus() {
    let answer;
    try {
      answer = await L.fetchJson(box.dataset.statusUrl);
    } catch (error) {
      setTimeout(loadStatus, 5000);
      return;
    }
    if (!answer.ok || !answer.body) return;
    const loaded = (answer.body.history || []).map((change) => ({
      at: L.parseTime(change.changed_at),
      old_status: change.old_status,
      new_status: change.new_status,
      reason: change.reason,
    }));
    // Changes heard live before the answer came are kept.
    const known = new Set(loaded.map((change) => change.at + change.new_status));
    history = loaded.concat(history.filter((change) => !known.has(change.at + change.new_status)));
    history.sort((a, b) => a.at - b.at);
    if (answer.body.status && !history.some((change) => change.live)) setStatus(answer.body.status);
    setLastSeen(L.parseTime(answer.body.last_seen_at));
    renderChanges();
    renderTimeline();
  }

  // --- Commands: live status badges in the console's list ------------------------------------------

  function updateCommand(command) {
    const badge = document.querySelector('#recent-commands-rows tr[data-command="' + CSS.escape(command.id) + '"] .command-status');
    if (!badge) return;
    badge.className = "command-status command-status-" + command.status;
    badge.dataset.status = command.status;
    badge.textContent = command.status;
  }

  // --- Live events ---------------------------------------------------------------------------------

  function onEvent(event) {
    const data = event.data || {};
    if (event.type === "telemetry.received") {
      const entry = (data.devices || {})[deviceId];
      if (!entry) return;
      const changed = new Set();
      for (const [key, point] of Object.entries(entry.values || {})) {
        const known = latest.get(key);
        if (!known || known.ts <= point.ts) {
          latest.set(key, {ts: point.ts, value: point.value});
          changed.add(key);
        }
        if (isNumeric(point.value)) addLivePoint(key, point.ts, point.value);
      }
      setLastSeen(entry.last_seen);
      if (changed.size) renderLatest(changed);
    } else if (event.type === "device.status_changed" && data.device === deviceId) {
      setStatus(data.new_status);
      addChange({at: L.parseTime(data.at) || L.parseTime(event.time), old_status: data.old_status,
        new_status: data.new_status, reason: data.reason, live: true});
    } else if (event.type === "command.status_changed") {
      for (const command of data.commands || []) if (command.device === deviceId) updateCommand(command);
    } else if (event.type.startsWith("alarm.") && window.fluxDeviceAlarms) {
      window.fluxDeviceAlarms.onEvent(event); // the Alarms section (alarms.js)
    }
  }

  let live = null;
  live = L.connect({
    path: box.dataset.wsPath,
    indicator: document.getElementById("live-state"),
    onEvent: onEvent,
    onState: (state) => {
      // Back after a gap: what happened meanwhile comes from the API again.
      if (state === "open" && live && live.stats.connections > 1) {
        loadLatest();
        loadStatus();
        if (window.fluxDeviceAlarms) window.fluxDeviceAlarms.reload();
      }
    },
  });
  live.subscribe("device", {devices: [deviceId]}, 4);

  setRange(range);
  loadLatest();
  loadStatus();
  setInterval(() => { if (!document.hidden) slide(); }, SLIDE_MS);

  window.fluxDevicePage = {
    live: live,
    latest: latest,
    charts: charts,
    points: (key) => (charts.has(key) ? charts.get(key).chart.data.datasets[0].data.slice() : null),
    history: () => history.slice(),
  };
})();
