// The command console of a device's admin page: send a command through the API (session auth),
// follow its status until it finishes, and list the device's recent commands. Plain JS, no build step.
(function () {
  "use strict";

  const box = document.getElementById("device-commands");
  if (!box) return;

  const ZERO = "00000000-0000-0000-0000-000000000000";
  const TERMINAL = new Set(["success", "failed", "timeout", "cancelled", "expired"]);
  const POLL_MS = 1000;
  const RECENT_MS = 5000;
  const RECENT_ROWS = 10;
  const deviceType = box.dataset.deviceType;
  const commandUrl = (id) => box.dataset.commandUrl.replace(ZERO, encodeURIComponent(id));
  const adminUrl = (id) => box.dataset.adminUrl.replace(ZERO, encodeURIComponent(id));

  const L = window.FluxLive; // static/fluxiot/live.js, loaded first by the device page
  const api = L.fetchJson; // adds the CSRF token to a POST
  const element = L.element;

  function setBadge(node, status) {
    node.className = "command-status command-status-" + status;
    node.dataset.status = status;
    node.textContent = status;
  }

  function badge(status) {
    const node = element("span");
    setBadge(node, status);
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleString();
  }

  // --- Recent commands ---------------------------------------------------------------------------

  const recentRows = document.getElementById("recent-commands-rows");

  async function refreshRecent() {
    let answer;
    try {
      const query = "?page_size=" + RECENT_ROWS + "&ordering=-created_at";
      answer = await api(box.dataset.historyUrl + query);
    } catch (error) {
      return; // the next refresh tries again
    }
    if (!answer.ok || !answer.body) return;
    const commands = answer.body.results || [];
    if (!commands.length) {
      recentRows.replaceChildren(element("tr"));
      recentRows.firstChild.appendChild(element("td", "No commands yet.", {colSpan: 5}));
      return;
    }
    recentRows.replaceChildren(...commands.map((command) => {
      const tr = element("tr");
      tr.dataset.command = command.id;
      const link = element("a", command.id.slice(0, 8), {href: adminUrl(command.id), className: "command-id"});
      link.title = command.id;
      const cells = [link, command.type, badge(command.status), when(command.created_at), command.created_by || ""];
      for (const content of cells) {
        const td = element("td");
        if (content instanceof Node) td.appendChild(content);
        else td.textContent = content;
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  refreshRecent();
  setInterval(() => { if (!document.hidden) refreshRecent(); }, RECENT_MS);

  // --- The console (only for users who may send commands) ----------------------------------------

  const consoleBox = document.getElementById("command-console");
  if (!consoleBox) return;

  const typeSelect = document.getElementById("command-type");
  const description = document.getElementById("command-description");
  const paramsInput = document.getElementById("command-params");
  const timeoutInput = document.getElementById("command-timeout");
  const sendButton = document.getElementById("command-send");
  const errors = document.getElementById("command-errors");
  const current = document.getElementById("command-current");
  const currentId = document.getElementById("command-current-id");
  const currentStatus = document.getElementById("command-current-status");
  const currentDetail = document.getElementById("command-current-detail");
  let catalogue = {};
  let tracking = 0; // bumped for each command sent: an older one's polling stops

  function profile() {
    const script = document.getElementById("command-profile");
    try {
      const value = script ? JSON.parse(script.textContent) : null;
      return Array.isArray(value) ? new Set(value) : null;
    } catch (error) {
      return null;
    }
  }

  function showErrors(messages) {
    errors.replaceChildren(...messages.map((message) => element("li", message)));
  }

  function errorLines(body, status) {
    return L.errorLines(body, status, {forbidden: "You may not send commands to this device."});
  }

  function selectType(name) {
    const spec = catalogue[name];
    if (!spec) return;
    paramsInput.value = JSON.stringify(spec.example || {}, null, 2);
    description.textContent = spec.description;
  }

  async function loadTypes() {
    let answer;
    try {
      answer = await api(box.dataset.typesUrl);
    } catch (error) {
      showErrors(["Could not load the command types: " + error.message]);
      return;
    }
    if (!answer.ok || !Array.isArray(answer.body)) {
      showErrors(errorLines(answer.body, answer.status));
      return;
    }
    const known = answer.body.some((spec) => spec.device_types.includes(deviceType));
    const only = profile();
    const accepted = answer.body.filter((spec) =>
      (!known || spec.device_types.includes(deviceType)) && (only === null || only.has(spec.type)));
    catalogue = Object.fromEntries(accepted.map((spec) => [spec.type, spec]));
    if (!accepted.length) {
      typeSelect.replaceChildren(element("option", "(this device accepts no commands)", {value: ""}));
      return;
    }
    typeSelect.replaceChildren(...accepted.map((spec) =>
      element("option", spec.label + " (" + spec.type + ")", {value: spec.type})));
    typeSelect.disabled = false;
    sendButton.disabled = false;
    selectType(typeSelect.value);
  }

  function showCommand(command) {
    current.hidden = false;
    currentId.textContent = command.id;
    currentId.href = adminUrl(command.id);
    setBadge(currentStatus, command.status);
    let detail = "";
    if (command.status === "pending") detail = "waiting for the device to come online";
    else if (command.status === "sent") detail = "waiting for the device's reply";
    else if (command.status === "executing") detail = "the device is working on it";
    else if (command.error) detail = command.error;
    else if (command.status === "success" && command.result !== null && command.result !== undefined) {
      detail = "result: " + JSON.stringify(command.result);
    }
    currentDetail.textContent = detail;
  }

  function follow(command) {
    const mine = ++tracking;
    let last = command.status;
    const poll = async () => {
      if (mine !== tracking) return;
      let answer;
      try {
        answer = await api(commandUrl(command.id));
      } catch (error) {
        setTimeout(poll, POLL_MS); // a network blip: try again
        return;
      }
      if (mine !== tracking) return;
      if (answer.status === 403 || answer.status === 404) {
        currentDetail.textContent = "(no longer visible: HTTP " + answer.status + ")";
        return;
      }
      if (answer.ok && answer.body) {
        showCommand(answer.body);
        if (answer.body.status !== last) {
          last = answer.body.status;
          refreshRecent();
        }
        if (TERMINAL.has(answer.body.status)) return;
      }
      setTimeout(poll, POLL_MS);
    };
    if (!TERMINAL.has(command.status)) setTimeout(poll, POLL_MS);
  }

  async function send() {
    showErrors([]);
    const type = typeSelect.value;
    if (!type) return;
    let params = {};
    if (paramsInput.value.trim()) {
      try {
        params = JSON.parse(paramsInput.value);
      } catch (error) {
        showErrors(["Params: not valid JSON (" + error.message + ")."]);
        return;
      }
    }
    const body = {type: type, params: params};
    const timeout = timeoutInput.value.trim();
    if (timeout) {
      if (!/^\d+$/.test(timeout)) {
        showErrors(["Timeout: a whole number of seconds."]);
        return;
      }
      body.timeout = Number(timeout);
    }
    sendButton.disabled = true;
    try {
      const answer = await api(box.dataset.historyUrl, {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body),
      });
      if (answer.status === 201 && answer.body) {
        showCommand(answer.body);
        follow(answer.body);
        refreshRecent();
      } else {
        showErrors(errorLines(answer.body, answer.status));
      }
    } catch (error) {
      showErrors(["Could not reach the server: " + error.message]);
    } finally {
      sendButton.disabled = false;
    }
  }

  typeSelect.addEventListener("change", () => selectType(typeSelect.value));
  sendButton.addEventListener("click", send);
  // Enter in the timeout field would submit the device's form around the console: send instead.
  timeoutInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      send();
    }
  });
  loadTypes();
})();
