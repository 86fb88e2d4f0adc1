"""Admin pages of rules and plugins (rules/admin.py): they render, save through the services, show
validation errors on the form, restore versions, and host the Test panel."""

from __future__ import annotations

import hashlib

import pytest
import wasmtime
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.staticfiles import finders
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from fluxiot import roles
from rules import generation, services
from rules.models import Plugin, Rule, RuleVersion
from tests.conftest import login_staff
from tests.factories import DeviceFactory, UserFactory
from tests.rules.test_services import PLUGIN_WAT

pytestmark = pytest.mark.django_db

RULES = reverse("admin:rules_rule_changelist")
ADD_RULE = reverse("admin:rules_rule_add")
PLUGINS = reverse("admin:rules_plugin_changelist")
ADD_PLUGIN = reverse("admin:rules_plugin_add")
CONDITION = 'telemetry.temperature > 30.0 && "lab" in device.tags'


def wasm(wat: str = PLUGIN_WAT) -> bytes:
    return wasmtime.wat2wasm(wat)


@pytest.fixture
def boss(client):
    return login_staff(client, "boss", roles.ADMINISTRATOR)


def rule_form(**overrides):
    data = {
        "name": "Lab too warm",
        "description": "",
        "enabled": "on",
        "priority": "100",
        "trigger": "telemetry",
        "scope": "all",
        "scope_value": "",
        "condition": CONDITION,
        "actions": '[{"type": "emit_event", "params": {"message": "warm"}}]',
        # The read-only versions inline's management form.
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
        "versions-MIN_NUM_FORMS": "0",
        "versions-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def test_rule_pages_render_with_counters(client, boss):
    rule = services.create_rule(boss, name="Lab too warm", condition=CONDITION)
    Rule.objects.filter(pk=rule.pk).update(evaluated=12, matched=3, failed=1, last_error="no such key: temperature")
    page = client.get(RULES)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Lab too warm" in text and "no such key: temperature" in text
    page = client.get(reverse("admin:rules_rule_change", args=[rule.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="rule-test"' in text and reverse("rule-test-draft") in text and "rules/rule_test.js" in text
    assert "Versions" in text and "current" in text
    assert client.get(ADD_RULE).status_code == 200
    for name in ("rules/rule_test.js", "rules/admin.css"):
        assert finders.find(name), name


def test_adding_a_rule_goes_through_the_service(client, boss, django_capture_on_commit_callbacks):
    before = generation.current()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(ADD_RULE, rule_form())
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    rule = Rule.objects.get()
    assert (rule.version, rule.created_by, rule.actions[0]["type"]) == (1, boss, "emit_event")
    assert RuleVersion.objects.get(rule=rule).note == "created"
    assert generation.current() != before


def test_changing_a_rule_makes_a_version(client, boss):
    rule = services.create_rule(boss, name="Lab too warm", condition=CONDITION)
    Rule.objects.filter(pk=rule.pk).update(matched=4)
    url = reverse("admin:rules_rule_change", args=[rule.pk])
    response = client.post(url, rule_form(condition="telemetry.temperature > 45.0", actions="[]"))
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.condition, rule.version, rule.matched, rule.actions) == ("telemetry.temperature > 45.0", 2, 4, [])
    assert rule.versions.get(version=2).changed_by == boss


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"condition": "telemetry.temperature >"}, "Syntax error"),
        ({"condition": "telemetry.temperature * 2.0"}, "must be true or false"),
        ({"actions": '[{"type": "webhook", "params": {"url": "gopher://x"}}]'}, "http:// or https://"),
        ({"actions": "not json"}, "Enter a valid JSON"),
        ({"scope": "device", "scope_value": "ghost"}, "No device"),
    ],
)
def test_validation_errors_show_on_the_form(client, boss, overrides, expected):
    response = client.post(ADD_RULE, rule_form(**overrides))
    assert response.status_code == 200
    assert expected in response.content.decode()
    assert not Rule.objects.exists()


def test_restore_a_version_from_the_admin(client, boss):
    rule = services.create_rule(boss, name="Lab too warm", condition=CONDITION)
    services.update_rule(rule, boss, condition="telemetry.temperature > 45.0")
    page = client.get(reverse("admin:rules_rule_change", args=[rule.pk]))
    restore = reverse("admin:rules_rule_restore", args=[rule.pk, 1])
    assert restore in page.content.decode()
    confirm = client.get(restore)
    assert confirm.status_code == 200 and "Restore version 1" in confirm.content.decode()
    response = client.post(restore)
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.condition, rule.version) == (CONDITION, 3)
    assert rule.versions.get(version=3).note == "restored from version 1"
    assert client.get(reverse("admin:rules_rule_restore", args=[rule.pk, 9])).status_code == 404


def test_viewers_see_rules_but_cannot_test_or_restore(client):
    viewer = login_staff(client, "watcher", roles.VIEWER)
    rule = services.create_rule(viewer, name="Lab too warm", condition=CONDITION)
    services.update_rule(rule, viewer, priority=3)
    page = client.get(reverse("admin:rules_rule_change", args=[rule.pk]))
    assert page.status_code == 200 and 'id="rule-test"' not in page.content.decode()
    assert client.post(reverse("admin:rules_rule_restore", args=[rule.pk, 1])).status_code == 403
    assert Rule.objects.get(pk=rule.pk).version == 2


def test_delete_and_enable_actions_go_through_the_service(client, boss, django_capture_on_commit_callbacks):
    first = services.create_rule(boss, name="one", condition=CONDITION, enabled=False)
    second = services.create_rule(boss, name="two", condition=CONDITION)
    response = client.post(RULES, {"action": "enable_rules", ACTION_CHECKBOX_NAME: [first.pk, second.pk]})
    assert response.status_code == 302
    first.refresh_from_db()
    assert (first.enabled, first.version, Rule.objects.get(pk=second.pk).version) == (True, 2, 1)
    before = generation.current()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:rules_rule_delete", args=[second.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Rule.objects.filter(pk=second.pk).exists()
    assert generation.current() != before


def test_the_test_panel_endpoint_with_session_and_csrf(boss):
    """What the panel's script does: POST the form's fields to rules/test/ with the CSRF token."""
    from django.test import Client

    DeviceFactory(id="lab-1", tags=["lab"])
    client = Client(enforce_csrf_checks=True)
    client.force_login(boss)
    page = client.get(ADD_RULE)
    token = page.cookies["csrftoken"].value
    body = {
        "condition": CONDITION,
        "trigger": "telemetry",
        "scope": "all",
        "scope_value": "",
        "actions": [{"type": "emit_event", "params": {}}],
        "sample": {"device": "lab-1", "telemetry": {"temperature": 33}},
    }
    url = reverse("rule-test-draft")
    assert client.post(url, body, content_type="application/json").status_code == 403  # no CSRF token
    response = client.post(url, body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200, response.content
    assert response.json()["matched"] is True
    assert response.json()["actions"][0]["would"].startswith("would publish a rule.matched event")


# --- Plugins ---------------------------------------------------------------------------------------


def plugin_form(**overrides):
    data = {
        "name": "decoder",
        "version": "1.0.0",
        "description": "",
        "stage": "preprocess",
        "config": "{}",
        "scope": "all",
        "scope_value": "",
        "enabled": "on",
        "on_failure": "pass",
    }
    data.update(overrides)
    return data


def test_upload_a_plugin_in_the_admin(client, boss):
    module = wasm()
    response = client.post(ADD_PLUGIN, plugin_form(upload=SimpleUploadedFile("decoder.wasm", module)))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    plugin = Plugin.objects.get()
    assert (plugin.sha256, plugin.size, plugin.created_by) == (hashlib.sha256(module).hexdigest(), len(module), boss)
    page = client.get(reverse("admin:rules_plugin_change", args=[plugin.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert plugin.sha256 in text and reverse("plugin-module", args=[plugin.pk]) in text
    assert client.get(PLUGINS).status_code == 200
    # A change without a new file keeps the module.
    response = client.post(
        reverse("admin:rules_plugin_change", args=[plugin.pk]), plugin_form(description="decodes", enabled="")
    )
    assert response.status_code == 302
    plugin.refresh_from_db()
    assert (plugin.description, plugin.enabled, bytes(plugin.module)) == ("decodes", False, module)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (b"\x00asm\x01\x00\x00\x00junk", "does not compile"),
        (wasmtime.wat2wasm('(module (memory (export "memory") 1))'), "missing export: alloc"),
        (wasmtime.wat2wasm(PLUGIN_WAT.replace('"env" "log"', '"env" "time"')), "imports env.time"),
        (None, "Upload the plugin"),
    ],
)
def test_bad_uploads_show_why_on_the_form(client, boss, module, expected):
    data = plugin_form()
    if module is not None:
        data["upload"] = SimpleUploadedFile("bad.wasm", module)
    response = client.post(ADD_PLUGIN, data)
    assert response.status_code == 200
    assert expected in response.content.decode()
    assert not Plugin.objects.exists()


def test_oversize_and_duplicate_uploads(client, boss, settings):
    services.create_plugin(boss, name="decoder", version="1.0.0", module=wasm())
    response = client.post(ADD_PLUGIN, plugin_form(upload=SimpleUploadedFile("d.wasm", wasm())))
    assert response.status_code == 200 and "already exists" in response.content.decode()
    settings.PLUGIN_MAX_MODULE_BYTES = 50
    response = client.post(ADD_PLUGIN, plugin_form(version="2.0.0", upload=SimpleUploadedFile("d.wasm", wasm())))
    assert response.status_code == 200 and "over the limit of 50 bytes" in response.content.decode()
    assert Plugin.objects.count() == 1


def test_delete_a_plugin_in_the_admin(client, boss):
    plugin = services.create_plugin(boss, name="decoder", module=wasm())
    response = client.post(reverse("admin:rules_plugin_delete", args=[plugin.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Plugin.objects.exists()


# --- The Test panel in a real browser --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_the_test_panel_in_a_browser(live_server):
    """Headless Chromium types a condition into the add form, tests it on a sample message without
    saving, and sees the verdict and what the actions would do; then a broken condition's error."""
    from django.apps import apps
    from playwright.sync_api import expect

    from tests.e2e.test_console import PASSWORD, chromium_page

    roles.sync_roles(apps)  # the role groups come from a data migration: gone after an earlier flush
    UserFactory(username="rules-admin", is_staff=True, roles=[roles.ADMINISTRATOR])
    DeviceFactory(id="lab-7", tags=["lab"])
    with chromium_page() as page:
        page.goto(f"{live_server.url}/admin/login/?next={ADD_RULE}")
        page.fill("#id_username", "rules-admin")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.fill("#id_name", "Lab too warm")
        page.fill("#id_condition", CONDITION)
        page.fill(
            "#id_actions", '[{"type": "store_telemetry", "params": {"values": {"f": "telemetry.temperature * 2.0"}}}]'
        )
        page.fill("#rule-test-sample", '{"device": "lab-7", "telemetry": {"temperature": 31.5}}')
        page.click("#rule-test-run")
        expect(page.locator("#rule-test-verdict")).to_have_text("matched")
        expect(page.locator("#rule-test-action-rows")).to_contain_text("would store f = 63.0 for device lab-7")
        page.fill("#rule-test-sample", '{"device": "lab-7", "telemetry": {"temperature": 12}}')
        page.click("#rule-test-run")
        expect(page.locator("#rule-test-verdict")).to_have_text("not matched")
        page.fill("#id_condition", "telemetry.temperature >")
        page.click("#rule-test-run")
        expect(page.locator("#rule-test-errors")).to_contain_text("Condition: ")
        assert page.js_errors == []
    assert not Rule.objects.exists()  # tested, never saved
