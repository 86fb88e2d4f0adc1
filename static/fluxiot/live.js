// FluxLive: the admin pages' connection to the platform's live events (WebSocket /ws/events/,
// authenticated by the admin's session cookie), and small helpers the live pages share.
//
// const live = FluxLive.connect({path, indicator, onEvent, onError, onState});
// live.subscribe("id", {devices: [...], groups: [...], event_types: [...], severity: [...]}, rate);
// live.unsubscribe("id");
//
// The socket reconnects with a growing, jittered delay (1 s up to 30 s) whenever it closes, except
// when the server refuses the session (close code 4401: signed out); subscriptions are sent again on
// every (re)connection. A socket silent for over a minute (the server sends a heartbeat every 20 s)
// is treated as dead and replaced. Plain JS, no build step, nothing loaded from elsewhere.
(function () {
  "use strict";

  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const PING_AFTER_MS = 30000;
  const DEAD_AFTER_MS = 65000;
  const UNAUTHORIZED = 4401;
  const TOO_MANY = 4429;
  const STATE_TEXT = {
    connecting: "connecting…",
    open: "live",
    reconnecting: "reconnecting…",
    unauthorized: "signed out: reload the page",
  };

  class Client {
    constructor(options) {
      this.options = options || {};
      this.path = this.options.path || "/ws/events/";
      this.subscriptions = new Map();
      this.socket = null;
      this.state = "connecting";
      this.backoff = BACKOFF_MIN_MS;
      this.lastMessage = Date.now();
      this.retryTimer = null;
      this.stats = {connections: 0, events: 0, errors: []};
      this.watchdog = setInterval(() => this._watch(), 5000);
      this._open();
    }

    url() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      return scheme + location.host + this.path;
    }

    subscribe(id, filters, rate) {
      const message = {type: "subscribe", id: id, filters: filters || {}};
      if (rate) message.rate = rate;
      this.subscriptions.set(id, message);
      this._send(message);
    }

    unsubscribe(id) {
      if (this.subscriptions.delete(id)) this._send({type: "unsubscribe", id: id});
    }

    close() {
      clearInterval(this.watchdog);
      clearTimeout(this.retryTimer);
      this.closed = true;
      if (this.socket) this.socket.close(1000);
    }

    _send(message) {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
    }

    _setState(state, detail) {
      this.state = state;
      document.documentElement.dataset.liveState = state;
      const indicator = this.options.indicator;
      if (indicator) {
        indicator.dataset.state = state;
        indicator.textContent = STATE_TEXT[state] || state;
        indicator.title = detail || "";
      }
      if (this.options.onState) this.options.onState(state, detail);
    }

    _open() {
      clearTimeout(this.retryTimer);
      this._setState(this.stats.connections ? "reconnecting" : "connecting");
      let socket;
      try {
        socket = new WebSocket(this.url());
      } catch (error) {
        this._retry("could not open: " + error.message);
        return;
      }
      this.socket = socket;
      socket.addEventListener("open", () => {
        if (socket !== this.socket) return;
        this.stats.connections += 1;
        this.lastMessage = Date.now();
        this._setState("open");
        for (const message of this.subscriptions.values()) this._send(message);
      });
      socket.addEventListener("message", (message) => {
        if (socket !== this.socket) return;
        this.lastMessage = Date.now();
        // A socket that delivers is healthy: the next failure starts from the shortest delay again.
        this.backoff = BACKOFF_MIN_MS;
        let data;
        try {
          data = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        this._dispatch(data);
      });
      socket.addEventListener("close", (event) => {
        if (socket !== this.socket || this.closed) return;
        this.socket = null;
        if (event.code === UNAUTHORIZED) {
          this._setState("unauthorized", "the server refused the session (" + event.code + ")");
          return;
        }
        if (event.code === TOO_MANY) this.backoff = BACKOFF_MAX_MS;
        this._retry("closed (" + event.code + (event.reason ? ": " + event.reason : "") + ")");
      });
    }

    _retry(detail) {
      const delay = Math.min(this.backoff, BACKOFF_MAX_MS) * (1 + Math.random() * 0.3);
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      this._setState("reconnecting", detail + "; next try in " + Math.round(delay / 1000) + " s");
      this.retryTimer = setTimeout(() => this._open(), delay);
    }

    _watch() {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
      const silent = Date.now() - this.lastMessage;
      if (silent > DEAD_AFTER_MS) this.socket.close(4000, "silent");
      else if (silent > PING_AFTER_MS) this._send({type: "ping"});
    }

    _dispatch(data) {
      const options = this.options;
      if (data.type === "event" && data.event) {
        this.stats.events += 1;
        if (options.onEvent) options.onEvent(data.event, data.subscriptions || []);
      } else if (data.type === "error") {
        this.stats.errors.push(data);
        if (options.onError) options.onError(data);
      } else if (data.type === "subscribed" && options.onSubscribed) {
        options.onSubscribed(data);
      }
    }
  }

  // --- Helpers the pages share ---------------------------------------------------------------------

  // The admin's URL quoting of primary keys (django.contrib.admin.utils.quote): "_" becomes "_5F".
  function adminQuote(id) {
    return String(id).replace(/[":/_#?;@&=+$,[\]<>%\n\\]/g,
      (c) => "_" + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0"));
  }

  function deviceUrl(template, id) {
    return template.replace("DEVICE-ID", encodeURIComponent(adminQuote(id)));
  }

  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (input && input.value) return input.value;
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  // GET (or other) JSON with the session; resolves to {ok, status, body}; network errors throw. A
  // failed request whose answer is not JSON (a proxy's error page) gets {detail: "HTTP …: …"}.
  async function fetchJson(url, options) {
    const init = Object.assign({credentials: "same-origin"}, options || {});
    init.headers = Object.assign({Accept: "application/json"}, init.headers || {});
    if (init.method && init.method !== "GET") init.headers["X-CSRFToken"] = csrfToken();
    const response = await fetch(url, init);
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (error) {
      body = response.ok ? null : {detail: "HTTP " + response.status + ": " + text.slice(0, 200)};
    }
    return {ok: response.ok, status: response.status, body: body};
  }

  // An API error body as readable lines: {"params": ["state: … is not of type 'boolean'"]} →
  // ["Params: state: …"]; "detail" and "non_field_errors" go without a prefix. ``texts`` gives the
  // fallback line ({failed}) and the line for a bare 403 ({forbidden}).
  function errorLines(body, status, texts) {
    const failed = (texts && texts.failed) || "The request failed";
    const fallback = [failed + " (HTTP " + status + ")."];
    if (!body || typeof body !== "object") return fallback;
    const lines = [];
    const walk = (value, where) => {
      if (Array.isArray(value)) value.forEach((item) => walk(item, where));
      else if (value && typeof value === "object") {
        for (const [key, inner] of Object.entries(value)) walk(inner, where ? where + "." + key : key);
      } else {
        const prefix = !where || where === "detail" || where === "non_field_errors"
          ? "" : where.charAt(0).toUpperCase() + where.slice(1).replace(/_/g, " ") + ": ";
        lines.push(prefix + String(value));
      }
    };
    walk(body, "");
    if (status === 403 && !lines.length && texts && texts.forbidden) lines.push(texts.forbidden);
    return lines.length ? lines : fallback;
  }

  function element(tag, text, props) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    Object.assign(node, props || {});
    return node;
  }

  function parseTime(value) {
    if (typeof value === "number") return value;
    const ms = Date.parse(value);
    return isNaN(ms) ? null : ms;
  }

  // A time as the browser's local clock time; withDate: with the date too, unless it is today.
  function formatTime(value, withDate) {
    const ms = parseTime(value);
    if (ms === null) return value ? String(value) : "";
    const date = new Date(ms);
    if (withDate && date.toDateString() !== new Date().toDateString()) return date.toLocaleString();
    return date.toLocaleTimeString();
  }

  function formatValue(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(+value.toFixed(6));
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  }

  function idOf(value) {
    return value && typeof value === "object" ? value.id : value;
  }

  // The devices an event is about (ids).
  function eventDevices(event) {
    const data = event.data || {};
    if (event.type === "telemetry.received") return Object.keys(data.devices || {});
    if (Array.isArray(data.commands)) return [...new Set(data.commands.map((c) => c.device))];
    if (Array.isArray(data.devices)) return data.devices.map(idOf);
    if (data.device !== undefined && data.device !== null) return [idOf(data.device)];
    return [];
  }

  function shortValues(values, limit) {
    const keys = Object.keys(values || {}).sort();
    const parts = keys.slice(0, limit).map((key) => key + "=" + formatValue(values[key].value));
    if (keys.length > limit) parts.push("+" + (keys.length - limit) + " more");
    return parts.join(", ");
  }

  // An event as rows of {device, text, status, severity}: one row per device for telemetry and
  // commands; an alarm event's row has its severity (and alarm id).
  function describe(event) {
    const data = event.data || {};
    const type = event.type;
    if (type === "telemetry.received") {
      return Object.entries(data.devices || {}).map(([device, entry]) =>
        ({device: device, text: shortValues(entry.values, 6)}));
    }
    if (type === "device.status_changed") {
      return [{device: data.device, text: data.old_status + " → " + data.new_status + (data.reason ? " (" + data.reason + ")" : ""),
        status: data.new_status}];
    }
    if (type === "command.status_changed") {
      return (data.commands || []).map((c) => ({
        device: c.device,
        text: c.type + " " + String(c.id).slice(0, 8) + ": " + (c.old_status || "new") + " → " + c.status + (c.error ? " (" + c.error + ")" : ""),
        status: c.status,
      }));
    }
    if (type.startsWith("alarm.")) {
      // "device_offline major raised", "… repeated (×3)", "… cleared (the device is back online)".
      const alarm = data.alarm || {};
      const severity = data.severity || alarm.severity || "";
      const transition = data.transition || type.slice(6);
      let text = [alarm.type || "alarm", severity, transition].filter(Boolean).join(" ");
      if (transition === "repeated" && alarm.count) text += " (×" + alarm.count + ")";
      if (transition === "cleared" && alarm.clear_reason) text += " (" + alarm.clear_reason + ")";
      return [{device: data.device === undefined ? null : data.device, text: text, severity: severity, alarm: alarm.id}];
    }
    if (type.startsWith("notification.")) {
      const text = (data.kind || "notification") + " " + (data.reason || "") + ": " + (data.status || type.slice(13)) +
        (data.error ? " (" + data.error + ")" : "");
      return [{device: data.device || null, text: text}];
    }
    let text;
    if (type === "device.created") text = "created: " + (data.device && data.device.name || "") + " (" + (data.device && data.device.device_type || "") + ")";
    else if (type === "device.updated") text = "changed: " + (data.fields || []).join(", ");
    else if (type === "device.deleted") text = "deleted";
    else if (type === "device.imported") text = data.count + " devices imported";
    else if (type === "device.moved") text = (data.devices || []).length + " devices moved to group " + (data.group === null ? "(none)" : "#" + data.group);
    else if (type === "device.attributes_updated") text = "attributes: " + Object.entries(data.attributes || {}).map(([k, v]) => k + "=" + formatValue(v)).join(", ");
    else if (type === "device.activation_changed") text = "activation: " + data.activation_state;
    else if (type === "device.credentials_rotated") text = "credentials rotated";
    else if (type === "command.batch_created") text = "batch " + String(data.batch).slice(0, 8) + ": " + data.total + " × " + data.type;
    else if (type.startsWith("group.")) text = type.slice(6) + ": " + (data.group && data.group.name || "#" + (data.group && data.group.id));
    else text = JSON.stringify(data).slice(0, 200);
    if (type === "device.imported" || type === "device.moved") return [{device: null, text: text}];
    const devices = eventDevices(event);
    return [{device: devices.length === 1 ? devices[0] : null, text: text, severity: data.severity}];
  }

  // Is the event an alarm event of one of the given severities? (null/empty: any severity.)
  function alarmSeverityMatches(event, severities) {
    if (!severities || !severities.length || !String(event.type).startsWith("alarm.")) return true;
    const data = event.data || {};
    return severities.includes(data.severity || (data.alarm || {}).severity);
  }

  // An alarm event's row: its severity as data-severity, a coloured square before the details.
  function markSeverity(tr, detail, severity) {
    tr.dataset.severity = severity;
    detail.classList.add("flux-severity-text-" + severity);
    detail.prepend(element("span", null, {className: "flux-severity flux-severity-" + severity, title: severity}));
  }

  window.FluxLive = {
    connect: (options) => new Client(options),
    adminQuote: adminQuote,
    deviceUrl: deviceUrl,
    csrfToken: csrfToken,
    fetchJson: fetchJson,
    errorLines: errorLines,
    element: element,
    parseTime: parseTime,
    formatTime: formatTime,
    formatValue: formatValue,
    eventDevices: eventDevices,
    describe: describe,
    alarmSeverityMatches: alarmSeverityMatches,
    markSeverity: markSeverity,
  };
})();
