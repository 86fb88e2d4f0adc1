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

  const L = window.FluxLive; // static/fluxiot/live.js, loaded first by the rule page
  const element = L.element;

  function field(name) {
    const input = document.getElementById("id_" + name);
    return input ? input.value : "";
  }

  function showErrors(lines) {
    errors.replaceChildren(...lines.map((line) => element("li", line)));
  }

  // {"condition": ["…"], "actions": ["…"]} → ["Condition: …", "Actions: …"].
  function errorLines(body, status) {
    return L.errorLines(body, status, {failed: "The test failed", forbidden: "You may not test rules."});
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
        ? element("td", "would fail: " + action.error, {className: "rule-action-error"})
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
      const answer = await L.fetchJson(box.dataset.url, {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body),
      });
      if (!answer.ok) {
        result.hidden = true;
        showErrors(errorLines(answer.body, answer.status));
        return;
      }
      show(answer.body);
    } catch (error) {
      showErrors(["The test could not be sent: " + error.message]);
    } finally {
      button.disabled = false;
    }
  }

  button.addEventListener("click", run);
})();
