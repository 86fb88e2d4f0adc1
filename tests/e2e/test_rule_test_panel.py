"""The Test panel of a rule's admin page in a real browser (headless Chromium via Playwright, against
a live server): the form's unsaved condition and actions tried on a sample message, and the API's
errors shown next to it (rules/static/rules/rule_test.js with the shared helpers of live.js)."""

from __future__ import annotations

import json

import pytest
from django.apps import apps

from fluxiot import roles
from rules import services as rule_services
from tests.e2e.test_console import PASSWORD, chromium_page
from tests.factories import DeviceFactory, UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


def test_try_a_draft_condition_on_a_sample_message(live_server):
    from playwright.sync_api import expect

    roles.sync_roles(apps)  # the role groups come from a data migration: gone after an earlier flush
    user = UserFactory(username="rule-author", is_staff=True, roles=[roles.ADMINISTRATOR])
    DeviceFactory(id="lab-1", tags=["lab"])
    rule = rule_services.create_rule(
        user,
        name="lab too warm",
        condition='telemetry.temperature > 30.0 && "lab" in device.tags',
        actions=[{"type": "emit_event", "params": {"message": "warm"}}],
    )
    rule_page = f"/admin/rules/rule/{rule.pk}/change/"
    with chromium_page() as page:
        page.goto(f"{live_server.url}/admin/login/?next={rule_page}")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"**{rule_page}")

        # A sample that matches: the verdict and what each action would do.
        page.fill("#rule-test-sample", json.dumps({"device": "lab-1", "telemetry": {"temperature": 33}}))
        page.click("#rule-test-run")
        expect(page.locator("#rule-test-verdict")).to_have_text("matched")
        expect(page.locator("#rule-test-action-rows")).to_contain_text("would publish a rule.matched event")
        expect(page.locator("#rule-test-errors")).to_be_empty()

        # The form's unsaved condition is what is tried; the API's 400 is shown as readable lines.
        page.fill("#id_condition", "telemetry.temperature >")
        page.click("#rule-test-run")
        expect(page.locator("#rule-test-errors")).to_contain_text("Condition: ")
        expect(page.locator("#rule-test-result")).to_be_hidden()

        # A sample that is not JSON never leaves the page.
        page.fill("#id_condition", "telemetry.temperature > 40.0")
        page.fill("#rule-test-sample", "{not json")
        page.click("#rule-test-run")
        expect(page.locator("#rule-test-errors")).to_contain_text("Sample message: not valid JSON")
        page.fill("#rule-test-sample", json.dumps({"device": "lab-1", "telemetry": {"temperature": 33}}))
        page.click("#rule-test-run")
        expect(page.locator("#rule-test-verdict")).to_have_text("not matched")
        assert page.js_errors == []
