// The Test panel of a rule's admin page: send the form's current (unsaved) condition, trigger, scope
// and actions with a sample message to the API (session auth, the page's CSRF token) and show whether
// the rule would match and what each action would do. Plain JS, no build step.
(function () {
  "use strict";

  const box = document.getElementById("rule-test");
  if (!box) return;

  const sample = document.getElementById("rule-test-sample");
  const button = document.getElementById("rule-test-run");
  const errors = document.getElementById("rule-test-errors");
  const result = document.getElementById("rule-test-result");
  const verdict = document.getElementById("rule-test-verdict");
  const detail = document.getElementById("rule-test-detail");
  const table = document.getElementById("rule-test-actions");
  const rows = document.getElementById("rule-test-action-rows");

  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (input && input.value) return input.value;
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function field(name) {
    const input = document.getElementById("id_" + name);
    return input ? input.value : "";
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function showErrors(lines) {
    errors.replaceChildren(...lines.map((line) => element("li", line)));
  }

  // {"condition": ["…"], "actions": ["…"]} → ["Condition: …", "Actions: …"].
  function errorLines(body, status) {
    if (!body || typeof body !== "object") return ["The test failed (HTTP " + status + ")."];
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
    if (status === 403 && !lines.length) lines.push("You may not test rules.");
    return lines.length ? lines : ["The test failed (HTTP " + status + ")."];
  }

  function show(answer) {
    result.hidden = false;
    let kind, text;
    if (answer.skipped) { kind = "skipped"; text = "would not run"; }
    else if (answer.error) { kind = "error"; text = "error"; }
    else if (answer.matched) { kind = "matched"; text = "matched"; }
    else { kind = "not-matched"; text = "not matched"; }
    verdict.className = "rule-verdict rule-verdict-" + kind;
    verdict.dataset.verdict = kind;
    verdict.textContent = text;
    detail.textContent = answer.skipped || answer.error || "";
    const actions = answer.actions || [];
    table.hidden = !actions.length;
    rows.replaceChildren(...actions.map((action) => {
      const tr = element("tr");
      tr.appendChild(element("td", action.type));
      const cell = action.error
        ? element("td", "would fail: " + action.error, "rule-action-error")
        : element("td", action.would);
      tr.appendChild(cell);
      return tr;
    }));
  }

  async function run() {
    showErrors([]);
    let message;
    try {
      message = JSON.parse(sample.value || "{}");
    } catch (error) {
      showErrors(["Sample message: not valid JSON (" + error.message + ")."]);
      return;
    }
    let actions = [];
    const actionsText = field("actions").trim();
    if (actionsText) {
      try {
        actions = JSON.parse(actionsText);
      } catch (error) {
        showErrors(["Actions: not valid JSON (" + error.message + ")."]);
        return;
      }
    }
    const body = {
      condition: field("condition"),
      trigger: field("trigger"),
      scope: field("scope"),
      scope_value: field("scope_value"),
      actions: actions,
      sample: message,
    };
    button.disabled = true;
    try {
      const response = await fetch(box.dataset.url, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken()},
        body: JSON.stringify(body),
      });
      const text = await response.text();
      let answer = null;
      try {
        answer = text ? JSON.parse(text) : null;
      } catch (error) {
        answer = {detail: "HTTP " + response.status + ": " + text.slice(0, 200)};
      }
      if (!response.ok) {
        result.hidden = true;
        showErrors(errorLines(answer, response.status));
        return;
      }
      show(answer);
    } catch (error) {
      showErrors(["The test could not be sent: " + error.message]);
    } finally {
      button.disabled = false;
    }
  }

  button.addEventListener("click", run);
})();
