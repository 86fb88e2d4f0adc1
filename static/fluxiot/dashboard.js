// The fleet dashboard (the admin index). Counts come from the server's cached summary (embedded in
// the page, then GET data-summary-url); an event that changes them (a status change, a device
// created or deleted…) makes the page fetch the summary again, until it gets one computed after the
// event. Messages per second are counted here, from the telemetry events the page receives. With the
// alarms app (and alarms.view_alarm) the summary holds the active alarms per severity too: an alarm
// raised, escalated or cleared makes the page fetch it again the same way.
(function () {
  "use strict";

  const root = document.getElementById("fleet-dashboard");
  if (!root || !window.FluxLive) return;
  const L = window.FluxLive;

  const LATEST_ROWS = 15;
  const RATE_WINDOW_S = 10;
  const HISTORY_S = 120;
  const RESYNC_MS = 30000;
  const COUNTING = new Set(["device.status_changed", "device.created", "device.deleted", "device.imported",
    "alarm.raised", "alarm.cleared"]);

  let summary = JSON.parse(document.getElementById("fleet-summary").textContent);
  let dirtySince = 0;
  let refreshTimer = null;

  // --- Counts --------------------------------------------------------------------------------------

  function percent(ratio) {
    return ratio === null || ratio === undefined ? "–" : Math.round(ratio * 100) + " %";
  }

  function setText(node, text) {
    if (node && node.textContent !== String(text)) node.textContent = text;
  }

  function render() {
    for (const node of root.querySelectorAll("[data-summary=total]")) setText(node, summary.total);
    for (const node of root.querySelectorAll("[data-summary=online]")) setText(node, summary.online);
    for (const node of root.querySelectorAll("[data-summary=online_ratio]")) setText(node, percent(summary.online_ratio));
    setText(document.getElementById("fleet-status-caption"), "Devices by status (" + summary.total + " in all)");
    document.getElementById("online-ratio-bar").style.width = ((summary.online_ratio || 0) * 100).toFixed(1) + "%";
    for (const cell of root.querySelectorAll("td.status-count")) {
      setText(cell, summary.by_status[cell.dataset.status] || 0);
    }
    for (const cell of root.querySelectorAll("td.type-count")) {
      const counts = summary.by_type[cell.dataset.type] || {};
      setText(cell, counts[cell.dataset.status] || 0);
    }
    for (const cell of root.querySelectorAll("td.type-total")) {
      setText(cell, (summary.by_type[cell.dataset.type] || {}).total || 0);
    }
    renderAlarms();
    setText(document.getElementById("summary-updated"), "counts as of " + L.formatTime(summary.computed_at));
    root.dataset.computedAt = summary.computed_at;
  }

  // Active alarms per severity (the panel exists only for users who may view alarms).
  function renderAlarms() {
    const panel = document.getElementById("fleet-alarms");
    const counts = summary.alarms;
    if (!panel || !counts) return;
    for (const cell of panel.querySelectorAll("td.alarm-count")) {
      const n = counts[cell.dataset.severity] || 0;
      setText(cell, n);
      cell.parentElement.classList.toggle("flux-alarmed", n > 0);
    }
    setText(panel.querySelector("td.alarm-total"), counts.total || 0);
  }

  // Does the event change a count of the summary?
  function changesCounts(event) {
    const data = event.data || {};
    if (COUNTING.has(event.type)) return true;
    if (event.type === "device.updated") return (data.fields || []).includes("device_type");
    // Raised again: a higher severity moves the alarm to another row; a mere repeat changes nothing.
    return event.type === "alarm.updated" && data.transition === "escalated";
  }

  function scheduleRefresh(delay) {
    if (refreshTimer !== null) return;
    refreshTimer = setTimeout(refresh, delay);
  }

  async function refresh() {
    refreshTimer = null;
    let answer;
    try {
      answer = await L.fetchJson(root.dataset.summaryUrl);
    } catch (error) {
      scheduleRefresh(5000);
      return;
    }
    if (!answer.ok || !answer.body) return;
    if (answer.body.computed_at >= summary.computed_at) {
      summary = answer.body;
      render();
    }
    // The cache may still hold counts from before the last change: ask again once it expires. A
    // summary computed right around the event is confirmed once more (the change may have been
    // committed just after it was counted).
    if (dirtySince && summary.computed_at < dirtySince + 1000) {
      scheduleRefresh((summary.ttl || 3) * 1000 + 250);
    } else {
      dirtySince = 0;
    }
  }

  // --- Messages per second -------------------------------------------------------------------------

  const buckets = new Map(); // second → [messages, values]
  let liveSince = null;

  function countTelemetry(event) {
    const devices = (event.data || {}).devices || {};
    let messages = 0;
    let values = 0;
    for (const entry of Object.values(devices)) {
      messages += 1;
      values += Object.keys(entry.values || {}).length;
    }
    const second = Math.floor(Date.now() / 1000);
    const bucket = buckets.get(second) || [0, 0];
    bucket[0] += messages;
    bucket[1] += values;
    buckets.set(second, bucket);
  }

  let rateChart = null;
  function setupRateChart() {
    const canvas = document.getElementById("rate-chart");
    if (!canvas || !window.Chart) return;
    const style = getComputedStyle(document.documentElement);
    const color = style.getPropertyValue("--secondary").trim() || "#417690";
    rateChart = new window.Chart(canvas, {
      type: "line",
      data: {datasets: [{label: "messages/s", data: [], borderColor: color, backgroundColor: color + "33",
        fill: true, pointRadius: 0, borderWidth: 1.5, tension: 0.2}]},
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        plugins: {legend: {display: false}, tooltip: {enabled: true}},
        scales: {
          x: {type: "linear", ticks: {maxTicksLimit: 5, callback: (v) => L.formatTime(v)}},
          y: {beginAtZero: true, ticks: {maxTicksLimit: 4, precision: 0}},
        },
      },
    });
  }

  function tick() {
    const now = Math.floor(Date.now() / 1000);
    for (const second of buckets.keys()) if (second < now - HISTORY_S) buckets.delete(second);
    if (rateChart) {
      rateChart.options.scales.x.min = (now - HISTORY_S) * 1000;
      rateChart.options.scales.x.max = now * 1000;
    }
    if (liveSince === null) {
      if (rateChart) rateChart.update("none");
      return;
    }
    // The rate over the last complete seconds of the window (or since the socket opened).
    const span = Math.max(1, Math.min(RATE_WINDOW_S, now - liveSince));
    let messages = 0;
    let values = 0;
    for (let second = now - span; second < now; second++) {
      const bucket = buckets.get(second);
      if (bucket) {
        messages += bucket[0];
        values += bucket[1];
      }
    }
    const rate = messages / span;
    setText(document.getElementById("messages-per-second"), rate < 10 ? rate.toFixed(1) : Math.round(rate));
    setText(document.getElementById("values-per-second"), "(" + (values / span).toFixed(1) + " values/s)");
    if (rateChart) {
      const points = [];
      for (let second = Math.max(liveSince, now - HISTORY_S); second < now; second++) {
        points.push({x: second * 1000, y: (buckets.get(second) || [0])[0]});
      }
      rateChart.data.datasets[0].data = points;
      rateChart.update("none");
    }
  }

  // --- Latest events -------------------------------------------------------------------------------

  const latestRows = document.getElementById("latest-events-rows");

  function addLatest(event) {
    const empty = latestRows.querySelector(".flux-empty");
    if (empty) empty.remove();
    // The rows of one event in its order, so its last change ends on top (newest first).
    for (const row of L.describe(event).slice(-5)) {
      const tr = L.element("tr");
      tr.dataset.type = event.type;
      if (row.device) tr.dataset.device = row.device;
      tr.appendChild(L.element("td", L.formatTime(event.time)));
      tr.appendChild(L.element("td", event.type));
      const td = L.element("td");
      if (row.device) td.appendChild(L.element("a", row.device, {href: L.deviceUrl(root.dataset.deviceUrl, row.device)}));
      tr.appendChild(td);
      const detail = L.element("td", row.text);
      if (row.status) detail.classList.add("flux-status-text-" + row.status);
      if (row.severity) L.markSeverity(tr, detail, row.severity);
      tr.appendChild(detail);
      latestRows.prepend(tr);
    }
    while (latestRows.children.length > LATEST_ROWS) latestRows.lastElementChild.remove();
  }

  // --- Wiring --------------------------------------------------------------------------------------

  function onEvent(event) {
    if (event.type === "telemetry.received") {
      countTelemetry(event);
      return;
    }
    // A repeat of an active alarm (announced every few seconds while its cause lasts) would push
    // everything else out of the short list: the live event page shows those.
    if (!(event.type === "alarm.updated" && (event.data || {}).transition === "repeated")) addLatest(event);
    if (changesCounts(event)) {
      dirtySince = Math.max(dirtySince, L.parseTime(event.time) || Date.now());
      scheduleRefresh(250);
    }
  }

  render();
  setupRateChart();
  const live = L.connect({
    path: root.dataset.wsPath,
    indicator: document.getElementById("live-state"),
    onEvent: onEvent,
    onState: (state) => {
      if (state === "open") {
        if (liveSince === null) liveSince = Math.floor(Date.now() / 1000);
        scheduleRefresh(0); // whatever changed while the socket was down
      }
    },
  });
  // Everything the user may see: telemetry for the rate, the rest for the list and the counts.
  live.subscribe("dashboard", {}, 4);
  setInterval(tick, 1000);
  setInterval(() => { if (!document.hidden) scheduleRefresh(0); }, RESYNC_MS);
  window.fluxDashboard = {live: live, summary: () => summary, buckets: buckets};
})();
