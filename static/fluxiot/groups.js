// The group tree page: collapsible rows, and the numbers kept current. An event that can change them
// (a status change, devices created, deleted or moved, groups changed) makes the page fetch the
// cached tree again (?format=json), until it gets one computed after the event.
(function () {
  "use strict";

  const root = document.getElementById("group-tree-page");
  if (!root || !window.FluxLive) return;
  const L = window.FluxLive;

  const rowsBox = document.getElementById("group-tree-rows");
  const ungroupedRow = document.getElementById("group-tree-ungrouped");
  const COUNTING = new Set(["device.status_changed", "device.created", "device.deleted", "device.imported",
    "device.moved", "device.updated", "group.created", "group.updated", "group.deleted"]);
  const RESYNC_MS = 30000;
  const collapsed = new Set();
  let tree = JSON.parse(document.getElementById("group-tree-data").textContent);
  let dirtySince = 0;
  let timer = null;

  function percent(online, total) {
    return total ? Math.round((online / total) * 100) : null;
  }

  function fillCounts(tr, node) {
    tr.querySelector(".group-direct").textContent = node.direct;
    tr.querySelector(".group-total").textContent = node.total;
    tr.querySelector(".group-online").textContent = node.online;
    tr.querySelector(".group-fault").textContent = (node.by_status || {}).fault || 0;
    const pct = percent(node.online, node.total);
    tr.querySelector(".flux-ratio-bar > span").style.width = (pct || 0) + "%";
    tr.querySelector(".group-ratio-text").textContent = pct === null ? "–" : pct + " %";
  }

  function buildRow(node) {
    const tr = L.element("tr");
    tr.dataset.group = node.id;
    tr.dataset.parent = node.parent === null ? "" : node.parent;
    tr.dataset.depth = node.depth;
    const name = L.element("th", null, {scope: "row", className: "flux-group-name"});
    name.style.paddingLeft = "calc(8px + " + node.depth + " * 22px)";
    if (node.children) {
      const toggle = L.element("button", "▾", {type: "button", className: "flux-tree-toggle"});
      toggle.setAttribute("aria-expanded", "true");
      toggle.setAttribute("aria-label", "Collapse " + node.name);
      name.appendChild(toggle);
    } else {
      name.appendChild(L.element("span", null, {className: "flux-tree-leaf"}));
    }
    name.appendChild(L.element("a", node.name, {href: root.dataset.changelistUrl + "?group__id__exact=" + node.id}));
    tr.appendChild(name);
    for (const cls of ["group-direct", "group-total", "group-online", "group-fault"]) {
      tr.appendChild(L.element("td", null, {className: "flux-num " + cls}));
    }
    const ratio = L.element("td", null, {className: "flux-ratio group-ratio"});
    const bar = L.element("span", null, {className: "flux-ratio-bar"});
    bar.appendChild(L.element("span"));
    ratio.append(bar, L.element("span", null, {className: "group-ratio-text"}));
    tr.appendChild(ratio);
    return tr;
  }

  function render() {
    const existing = new Map([...rowsBox.querySelectorAll("tr[data-group]")].map((tr) => [tr.dataset.group, tr]));
    const rows = tree.groups.map((node) => {
      let tr = existing.get(String(node.id));
      const shape = tr && tr.dataset.parent === (node.parent === null ? "" : String(node.parent)) &&
        tr.dataset.depth === String(node.depth) && !!tr.querySelector(".flux-tree-toggle") === !!node.children &&
        tr.querySelector("a").textContent === node.name;
      if (!shape) tr = buildRow(node);
      fillCounts(tr, node);
      return tr;
    });
    if (rows.length) rowsBox.replaceChildren(...rows);
    fillCounts(ungroupedRow, Object.assign({direct: tree.ungrouped.total}, tree.ungrouped));
    applyCollapsed();
    document.getElementById("tree-updated").textContent = "counts as of " + L.formatTime(tree.computed_at);
    root.dataset.computedAt = tree.computed_at;
  }

  // --- Collapsing ----------------------------------------------------------------------------------

  function applyCollapsed() {
    const hiddenParents = new Set();
    for (const tr of rowsBox.querySelectorAll("tr[data-group]")) {
      const hidden = hiddenParents.has(tr.dataset.parent) || collapsed.has(tr.dataset.parent);
      tr.classList.toggle("flux-collapsed-hidden", hidden);
      if (hidden) hiddenParents.add(tr.dataset.group);
      const toggle = tr.querySelector(".flux-tree-toggle");
      if (toggle) {
        const open = !collapsed.has(tr.dataset.group);
        toggle.textContent = open ? "▾" : "▸";
        toggle.setAttribute("aria-expanded", String(open));
      }
    }
  }

  rowsBox.addEventListener("click", (event) => {
    const toggle = event.target.closest(".flux-tree-toggle");
    if (!toggle) return;
    const id = toggle.closest("tr").dataset.group;
    if (collapsed.has(id)) collapsed.delete(id);
    else collapsed.add(id);
    applyCollapsed();
  });
  document.getElementById("tree-expand").addEventListener("click", () => {
    collapsed.clear();
    applyCollapsed();
  });
  document.getElementById("tree-collapse").addEventListener("click", () => {
    for (const node of tree.groups) if (node.children) collapsed.add(String(node.id));
    applyCollapsed();
  });

  // --- Live ----------------------------------------------------------------------------------------

  function schedule(delay) {
    if (timer === null) timer = setTimeout(refresh, delay);
  }

  async function refresh() {
    timer = null;
    let answer;
    try {
      answer = await L.fetchJson(root.dataset.summaryUrl);
    } catch (error) {
      schedule(5000);
      return;
    }
    if (!answer.ok || !answer.body) return;
    if (answer.body.computed_at >= tree.computed_at) {
      tree = answer.body;
      render();
    }
    if (dirtySince && tree.computed_at < dirtySince + 1000) schedule((tree.ttl || 3) * 1000 + 250);
    else dirtySince = 0;
  }

  const live = L.connect({
    path: root.dataset.wsPath,
    indicator: document.getElementById("live-state"),
    onEvent: (event) => {
      if (!COUNTING.has(event.type)) return;
      dirtySince = Math.max(dirtySince, L.parseTime(event.time) || Date.now());
      schedule(250);
    },
    onState: (state) => { if (state === "open") schedule(0); },
  });
  live.subscribe("groups", {event_types: [...COUNTING]});
  setInterval(() => { if (!document.hidden) schedule(0); }, RESYNC_MS);
  render();
  window.fluxGroupTree = {live: live, tree: () => tree};
})();
