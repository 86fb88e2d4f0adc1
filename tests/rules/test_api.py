"""The rules and plugins API (rules/api/)."""

from __future__ import annotations

import base64
import hashlib

import pytest
import wasmtime
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from control.models import DeviceCommand
from devices.choices import ActivationState, DeviceStatus
from rules import services
from rules.models import Plugin, Rule
from tests.factories import DeviceFactory
from tests.rules.test_services import PLUGIN_WAT

pytestmark = pytest.mark.django_db

RULES = "/api/v1/rules/"
PLUGINS = "/api/v1/plugins/"
CONDITION = 'telemetry.temperature > 30.0 && "lab" in device.tags'


def wasm(wat: str = PLUGIN_WAT) -> bytes:
    return wasmtime.wat2wasm(wat)


def rule_body(**overrides):
    body = {
        "name": "Lab too warm",
        "trigger": "telemetry",
        "condition": CONDITION,
        "actions": [{"type": "emit_event", "params": {"message": "warm"}}],
    }
    body.update(overrides)
    return body


@pytest.fixture
def lab_device():
    return DeviceFactory(
        id="lab-1",
        device_type="actuator",
        tags=["lab"],
        activation_state=ActivationState.ACTIVE,
        status=DeviceStatus.ONLINE,
    )


@pytest.fixture
def rule(administrator):
    return services.create_rule(administrator, **rule_body())


# --- Rules CRUD ------------------------------------------------------------------------------------


def test_create_read_update_delete(admin_client_api, administrator):
    response = admin_client_api.post(RULES, rule_body(priority=10), format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["version"] == 1 and data["created_by"] == "administrator" and data["priority"] == 10
    assert (data["evaluated"], data["matched"], data["failed"], data["last_error"]) == (0, 0, 0, "")
    url = f"{RULES}{data['id']}/"
    response = admin_client_api.patch(url, {"condition": "telemetry.temperature > 40.0", "matched": 99}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["version"] == 2 and response.json()["matched"] == 0  # counters are read-only
    assert admin_client_api.get(url).json()["condition"] == "telemetry.temperature > 40.0"
    full = {**rule_body(), "enabled": False}
    response = admin_client_api.put(url, full, format="json")
    assert response.status_code == 200 and response.json()["version"] == 3
    assert admin_client_api.delete(url).status_code == 204
    assert not Rule.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({"condition": "telemetry.temperature >"}, "condition", "Syntax error"),
        ({"condition": "telemetry.temperature * 2.0"}, "condition", "must be true or false"),
        ({"condition": "temperature > 3"}, "condition", "Unknown variable 'temperature'"),
        (
            {"actions": [{"type": "send_command", "params": {"type": "reboot", "timeout": "soon"}}]},
            "actions",
            "timeout",
        ),
        ({"actions": [{"type": "teleport"}]}, "actions", "unknown action type"),
        ({"actions": {"type": "emit_event"}}, "actions", "A list of actions"),
        ({"scope": "device", "scope_value": "ghost"}, "scope_value", "No device 'ghost'"),
        ({"trigger": "sometimes"}, "trigger", "not a valid choice"),
    ],
)
def test_bad_input_is_a_400_saying_what_is_wrong(admin_client_api, overrides, field, expected):
    response = admin_client_api.post(RULES, rule_body(**overrides), format="json")
    assert response.status_code == 400
    assert any(expected in message for message in response.json()[field]), response.json()


def test_duplicate_rule_name_is_a_400(admin_client_api, rule):
    response = admin_client_api.post(RULES, rule_body(), format="json")
    assert response.status_code == 400 and "name" in response.json()


def test_list_filters_and_ordering(admin_client_api, administrator, lab_device):
    services.create_rule(administrator, **rule_body(name="a", priority=5, enabled=False))
    services.create_rule(administrator, **rule_body(name="b", priority=1, scope="tag", scope_value="lab"))
    services.create_rule(
        administrator, **rule_body(name="c", priority=9, trigger="status", condition='status.new == "offline"')
    )
    Rule.objects.filter(name="c").update(failed=2, last_error="boom")

    def names(query=""):
        return [r["name"] for r in admin_client_api.get(RULES + query).json()["results"]]

    assert names() == ["b", "a", "c"]
    assert names("?enabled=false") == ["a"]
    assert names("?trigger=status") == ["c"]
    assert names("?scope=tag") == ["b"]
    assert names("?q=offline") == ["c"]
    assert names("?failing=true") == ["c"]
    assert names("?ordering=-name") == ["c", "b", "a"]
    assert admin_client_api.get(RULES + "?trigger=sometimes").status_code == 400


def test_permissions(viewer_client, operator_client, nobody_client, api_client, rule):
    url = f"{RULES}{rule.pk}/"
    assert api_client.get(RULES).status_code == 401
    assert nobody_client.get(RULES).status_code == 403
    assert viewer_client.get(RULES).status_code == 200
    assert viewer_client.get(url).status_code == 200
    assert viewer_client.get(f"{url}versions/").status_code == 200
    assert viewer_client.get(f"{RULES}action-types/").status_code == 200
    for client in (viewer_client, operator_client):
        assert client.post(RULES, rule_body(name="x"), format="json").status_code == 403
        assert client.patch(url, {"enabled": False}, format="json").status_code == 403
        assert client.delete(url).status_code == 403
        assert client.post(f"{url}test/", {"device": "x"}, format="json").status_code == 403
        assert client.post(f"{RULES}test/", {"condition": "true", "sample": {}}, format="json").status_code == 403
        assert client.post(f"{url}versions/1/restore/").status_code == 403
    assert api_client.post(f"{url}test/", {}, format="json").status_code == 401


# --- Test endpoints --------------------------------------------------------------------------------


def test_test_a_saved_rule(admin_client_api, administrator, lab_device):
    rule = services.create_rule(
        administrator,
        **rule_body(
            actions=[
                {"type": "send_command", "params": {"type": "set_state", "params": {"state": False}}},
                {"type": "store_telemetry", "params": {"values": {"f": "telemetry.temperature * 1.8 + 32.0"}}},
            ]
        ),
    )
    url = f"{RULES}{rule.pk}/test/"
    response = admin_client_api.post(url, {"device": "lab-1", "telemetry": {"temperature": 35.0}}, format="json")
    assert response.status_code == 200, response.json()
    data = response.json()
    assert (data["matched"], data["error"], data["skipped"]) == (True, None, None)
    assert data["actions"][0] == {
        "type": "send_command",
        "would": 'would send set_state {"state":false} to device lab-1',
    }
    assert data["actions"][1]["would"] == "would store f = 95.0 for device lab-1"
    assert not DeviceCommand.objects.exists()
    # The sample may also come wrapped, as for rules/test/.
    wrapped = {"sample": {"device": "lab-1", "telemetry": {"temperature": 20.0}}}
    assert admin_client_api.post(url, wrapped, format="json").json() == {
        "matched": False,
        "error": None,
        "skipped": None,
        "actions": [],
    }
    response = admin_client_api.post(url, {"device": "lab-1", "telemetry": {"pressure": 1}}, format="json")
    assert response.json()["matched"] is None and "temperature" in response.json()["error"]
    response = admin_client_api.post(url, {"device": "ghost"}, format="json")
    assert response.status_code == 400 and "No device 'ghost'" in response.json()["device"][0]
    assert admin_client_api.post(f"{RULES}999999/test/", {"device": "lab-1"}, format="json").status_code == 404
    stored = Rule.objects.get(pk=rule.pk)
    assert (stored.evaluated, stored.matched) == (0, 0)


def test_test_an_unsaved_rule(admin_client_api, lab_device):
    body = {
        "condition": CONDITION,
        "trigger": "telemetry",
        "actions": [{"type": "publish_mqtt", "params": {"topic": "alerts/{device}", "payload": "hot"}}],
        "sample": {"device": {"id": "bench", "tags": ["lab"]}, "telemetry": {"temperature": 31}},
    }
    response = admin_client_api.post(f"{RULES}test/", body, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["matched"] is True
    assert response.json()["actions"] == [
        {"type": "publish_mqtt", "would": "would publish 3 bytes to alerts/bench: hot"}
    ]
    assert not Rule.objects.exists()
    bad = admin_client_api.post(f"{RULES}test/", {**body, "condition": "telemetry.temperature + 1"}, format="json")
    assert bad.status_code == 400 and "must be true or false" in bad.json()["condition"][0]
    bad = admin_client_api.post(
        f"{RULES}test/", {**body, "actions": [{"type": "webhook", "params": {}}]}, format="json"
    )
    assert bad.status_code == 400 and "actions" in bad.json()
    assert admin_client_api.post(f"{RULES}test/", {"condition": "true"}, format="json").status_code == 400
    assert admin_client_api.post(f"{RULES}test/", {"sample": {"device": "lab-1"}}, format="json").status_code == 400


# --- Versions --------------------------------------------------------------------------------------


def test_versions_and_restore(admin_client_api, administrator, rule):
    services.update_rule(rule, administrator, condition="telemetry.temperature > 50.0")
    url = f"{RULES}{rule.pk}/versions/"
    versions = admin_client_api.get(url).json()["results"]
    assert [(v["version"], v["note"], v["changed_by"]) for v in versions] == [
        (2, "updated", "administrator"),
        (1, "created", "administrator"),
    ]
    assert versions[1]["snapshot"]["condition"] == CONDITION
    response = admin_client_api.post(f"{url}1/restore/")
    assert response.status_code == 200
    assert (response.json()["version"], response.json()["condition"]) == (3, CONDITION)
    assert admin_client_api.get(url).json()["results"][0]["note"] == "restored from version 1"
    assert admin_client_api.post(f"{url}9/restore/").status_code == 404


def test_restore_of_a_version_no_longer_valid_is_a_400(admin_client_api, administrator, lab_device):
    rule = services.create_rule(administrator, **rule_body(scope="device", scope_value="lab-1"))
    services.update_rule(rule, administrator, scope="all", scope_value="")
    lab_device.delete()
    response = admin_client_api.post(f"{RULES}{rule.pk}/versions/1/restore/")
    assert response.status_code == 400 and "scope_value" in response.json()


def test_action_types(viewer_client):
    types = viewer_client.get(f"{RULES}action-types/").json()
    assert {t["type"] for t in types} >= {"emit_event", "store_telemetry", "send_command", "publish_mqtt", "webhook"}
    assert all({"description", "params_schema", "example"} <= set(t) for t in types)


# --- Plugins ---------------------------------------------------------------------------------------


def upload(module: bytes, name="decoder.wasm"):
    return SimpleUploadedFile(name, module, content_type="application/wasm")


def test_upload_a_plugin_with_multipart(admin_client_api, administrator):
    module = wasm()
    response = admin_client_api.post(
        PLUGINS,
        {
            "name": "decoder",
            "version": "1.0.0",
            "module": upload(module),
            "config": '{"scale": 2}',
            "stage": "preprocess",
        },
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    data = response.json()
    assert "module" not in data
    assert (data["sha256"], data["size"]) == (hashlib.sha256(module).hexdigest(), len(module))
    assert (data["config"], data["created_by"], data["calls"], data["failures"]) == (
        {"scale": 2},
        "administrator",
        0,
        0,
    )
    listed = admin_client_api.get(PLUGINS).json()["results"]
    assert [p["name"] for p in listed] == ["decoder"] and "module" not in listed[0]
    download = admin_client_api.get(f"{PLUGINS}{data['id']}/module/")
    assert download.status_code == 200 and download["Content-Type"] == "application/wasm"
    assert download.content == module
    assert 'filename="decoder-1.0.0.wasm"' in download["Content-Disposition"]


def test_upload_a_plugin_as_json_base64(admin_client_api):
    module = wasm()
    body = {"name": "decoder", "module": base64.b64encode(module).decode(), "stage": "action", "config": {"a": 1}}
    response = admin_client_api.post(PLUGINS, body, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["stage"] == "action" and response.json()["size"] == len(module)
    bad = admin_client_api.post(PLUGINS, {**body, "name": "other", "module": "%%%"}, format="json")
    assert bad.status_code == 400 and "base64" in bad.json()["module"][0]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (b"\x00asm\x01\x00\x00\x00garbage", "does not compile"),
        (
            wasm('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 0))'),
            "missing export: dealloc",
        ),
        (wasm(PLUGIN_WAT.replace('"env" "log"', '"wasi_snapshot_preview1" "fd_write"')), "WASI is not available"),
    ],
)
def test_bad_modules_are_a_400_saying_why(admin_client_api, module, expected):
    response = admin_client_api.post(PLUGINS, {"name": "bad", "module": upload(module)}, format="multipart")
    assert response.status_code == 400
    assert any(expected in message for message in response.json()["module"]), response.json()
    assert not Plugin.objects.exists()


def test_modules_over_the_size_limit_are_a_400(admin_client_api, settings):
    settings.PLUGIN_MAX_MODULE_BYTES = 64
    response = admin_client_api.post(PLUGINS, {"name": "big", "module": upload(wasm())}, format="multipart")
    assert response.status_code == 400
    assert "over the limit of 64 bytes" in response.json()["module"][0]
    encoded = base64.b64encode(wasm()).decode()
    response = admin_client_api.post(PLUGINS, {"name": "big", "module": encoded}, format="json")
    assert response.status_code == 400 and "over the limit of 64 bytes" in response.json()["module"][0]


def test_a_plugin_needs_a_module_and_valid_fields(admin_client_api):
    response = admin_client_api.post(PLUGINS, {"name": "nothing"}, format="multipart")
    assert response.status_code == 400 and "module" in response.json()
    response = admin_client_api.post(
        PLUGINS, {"name": "x", "module": upload(wasm()), "scope": "device", "scope_value": "ghost"}, format="multipart"
    )
    assert response.status_code == 400 and "scope_value" in response.json()
    response = admin_client_api.post(
        PLUGINS, {"name": "x", "module": upload(wasm()), "config": "[1]"}, format="multipart"
    )
    assert response.status_code == 400 and "config" in response.json()


def test_duplicate_name_and_version_is_a_409(admin_client_api):
    body = {"name": "decoder", "version": "1.0.0"}
    assert admin_client_api.post(PLUGINS, {**body, "module": upload(wasm())}, format="multipart").status_code == 201
    response = admin_client_api.post(PLUGINS, {**body, "module": upload(wasm())}, format="multipart")
    assert response.status_code == 409 and "already exists" in response.json()["detail"]


def test_update_a_plugin(admin_client_api, administrator):
    plugin = services.create_plugin(administrator, name="decoder", module=wasm())
    url = f"{PLUGINS}{plugin.pk}/"
    response = admin_client_api.patch(url, {"enabled": False, "config": {"k": "v"}}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["enabled"], response.json()["config"], response.json()["sha256"]) == (
        False,
        {"k": "v"},
        plugin.sha256,
    )
    newer = wasm(PLUGIN_WAT.replace("(i32.const 1024)", "(i32.const 4096)"))
    response = admin_client_api.patch(url, {"module": upload(newer)}, format="multipart")
    assert response.status_code == 200 and response.json()["sha256"] == hashlib.sha256(newer).hexdigest()
    response = admin_client_api.patch(url, {"module": upload(b"junk")}, format="multipart")
    assert response.status_code == 400 and "module" in response.json()
    assert Plugin.objects.get(pk=plugin.pk).sha256 == hashlib.sha256(newer).hexdigest()
    Plugin.objects.filter(pk=plugin.pk).update(calls=5, failures=1, last_error="x", last_error_at=timezone.now())
    data = admin_client_api.get(url).json()
    assert (data["calls"], data["failures"], data["last_error"]) == (5, 1, "x")
    assert admin_client_api.delete(url).status_code == 204
    assert not Plugin.objects.exists()


def test_plugin_permissions_and_filters(viewer_client, operator_client, nobody_client, api_client, administrator):
    plugin = services.create_plugin(administrator, name="decoder", module=wasm(), stage="action")
    services.create_plugin(administrator, name="other", module=wasm(), enabled=False)
    assert api_client.get(PLUGINS).status_code == 401
    assert nobody_client.get(PLUGINS).status_code == 403
    assert viewer_client.get(f"{PLUGINS}{plugin.pk}/module/").status_code == 200
    assert [p["name"] for p in viewer_client.get(PLUGINS + "?stage=action").json()["results"]] == ["decoder"]
    assert [p["name"] for p in viewer_client.get(PLUGINS + "?enabled=false").json()["results"]] == ["other"]
    assert [p["name"] for p in viewer_client.get(PLUGINS + f"?sha256={plugin.sha256}").json()["results"]] == [
        "decoder",
        "other",
    ]
    for client in (viewer_client, operator_client):
        assert client.post(PLUGINS, {"name": "x", "module": upload(wasm())}, format="multipart").status_code == 403
        assert client.patch(f"{PLUGINS}{plugin.pk}/", {"enabled": False}, format="json").status_code == 403
        assert client.delete(f"{PLUGINS}{plugin.pk}/").status_code == 403
