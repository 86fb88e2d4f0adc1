"""Rule and plugin services (rules/services.py): validation, versions, restore, dry runs, plugins."""

from __future__ import annotations

import hashlib

import pytest
import wasmtime
from django.core.exceptions import ValidationError
from django.db.models import F
from django.utils import timezone

from control.models import DeviceCommand
from devices.choices import ActivationState, DeviceStatus
from fluxiot.errors import ConflictError
from rules import generation, services
from rules.choices import PluginStage, Scope, Trigger
from rules.models import Plugin, Rule, RuleVersion
from rules.plugins import host
from telemetry.models import LatestValue
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = pytest.mark.django_db

CONDITION = 'telemetry.temperature > 30.0 && "lab" in device.tags'

PLUGIN_WAT = """(module
  (import "env" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func (export "dealloc") (param i32 i32))
  ;; Echoes its input: {"config": ..., "messages": [...]} is not a list of results, which is fine
  ;; for these tests (they never look at the output).
  (func (export "process") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)) (i64.extend_i32_u (local.get $len))))
)"""


def wasm(wat: str = PLUGIN_WAT) -> bytes:
    return wasmtime.wat2wasm(wat)


def rule_fields(**overrides):
    fields = {
        "name": "Lab too warm",
        "trigger": Trigger.TELEMETRY,
        "condition": CONDITION,
        "actions": [{"type": "emit_event", "params": {"message": "warm"}}],
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def user():
    return UserFactory(username="editor")


@pytest.fixture
def lab_device():
    return DeviceFactory(
        id="lab-1",
        device_type="actuator",
        tags=["lab"],
        activation_state=ActivationState.ACTIVE,
        status=DeviceStatus.ONLINE,
    )


# --- Create, validate ----------------------------------------------------------------------------


def test_create_rule_keeps_version_one_bumps_generation_and_announces(user, bus, django_capture_on_commit_callbacks):
    listener = bus("rule.changed")
    before = generation.current()
    with django_capture_on_commit_callbacks(execute=True):
        rule = services.create_rule(user, **rule_fields())
    assert rule.pk and rule.version == 1 and rule.created_by == user
    version = RuleVersion.objects.get(rule=rule)
    assert (version.version, version.note, version.changed_by) == (1, "created", user)
    assert version.snapshot == rule.snapshot()
    assert generation.current() != before
    [event] = listener.received()
    assert event["data"] == {"rule": rule.pk, "version": 1, "action": "created", "actor": user.pk}


def test_nothing_is_announced_before_commit(user, bus):
    listener = bus("rule.changed")
    before = generation.current()
    services.create_rule(user, **rule_fields())  # the test's transaction never commits
    assert listener.received() == []
    assert generation.current() == before


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("telemetry.temperature >", "Syntax error"),
        ("telemetry.temperature + 1", "must be true or false"),
        ("sensor.temperature > 30", "Unknown variable 'sensor'"),
        ("", "cannot be blank"),
    ],
)
def test_bad_conditions_are_refused_with_the_reason(user, condition, expected):
    with pytest.raises(ValidationError) as caught:
        services.create_rule(user, **rule_fields(condition=condition))
    assert any(expected in message for message in caught.value.message_dict["condition"]), caught.value.message_dict
    assert not Rule.objects.exists()


def test_bad_action_params_are_refused_naming_the_action(user, lab_device):
    actions = [
        {"type": "emit_event"},
        {"type": "send_command", "params": {"type": "set_state", "params": {"state": "on"}}},
        {"type": "store_telemetry", "params": {"values": {"f": "telemetry.t *"}}},
        {"type": "publish_mqtt", "params": {"topic": "alerts/#"}},
        {"type": "webhook", "params": {"url": "ftp://example.com/"}},
        {"type": "no_such_action", "params": {}},
        "emit_event",
    ]
    with pytest.raises(ValidationError) as caught:
        services.create_rule(user, **rule_fields(actions=actions))
    messages = caught.value.message_dict["actions"]
    assert len(messages) == 6, messages
    assert messages[0].startswith("actions[1] (send_command): params: state:")
    assert "boolean" in messages[0]
    assert messages[1].startswith("actions[2] (store_telemetry): values.f:")
    assert messages[2].startswith("actions[3] (publish_mqtt): topic: no wildcards")
    assert messages[3].startswith("actions[4] (webhook): url:")
    assert "unknown action type 'no_such_action'" in messages[4]
    assert messages[5].startswith("actions[6]:")


def test_every_problem_is_told_at_once(user):
    with pytest.raises(ValidationError) as caught:
        services.create_rule(
            user,
            **rule_fields(
                condition="1 +",
                scope=Scope.DEVICE,
                scope_value="ghost",
                actions=[{"type": "webhook", "params": {}}],
            ),
        )
    assert set(caught.value.message_dict) == {"condition", "scope_value", "actions"}
    assert "No device 'ghost'" in caught.value.message_dict["scope_value"][0]


def test_the_condition_is_checked_against_the_trigger(user):
    # A command-result rule sees command.*; "telemetry.x" names a key of an empty map there, which
    # only fails at run time (real data may differ), so it is accepted; a non-boolean never is.
    services.create_rule(
        user, **rule_fields(name="ok", trigger=Trigger.COMMAND_RESULT, condition='command.status == "failed"')
    )
    with pytest.raises(ValidationError):
        services.create_rule(user, **rule_fields(name="bad", trigger="sometimes"))


def test_duplicate_names_are_refused(user):
    services.create_rule(user, **rule_fields())
    with pytest.raises(ValidationError) as caught:
        services.create_rule(user, **rule_fields())
    assert "name" in caught.value.message_dict


def test_fields_that_are_not_editable_are_refused(user):
    with pytest.raises(ValidationError) as caught:
        services.create_rule(user, **rule_fields(), matched=10)
    assert "matched" in caught.value.message_dict


# --- Update, versions, restore -----------------------------------------------------------------


def test_update_keeps_a_version_and_leaves_the_counters(user, bus, django_capture_on_commit_callbacks):
    rule = services.create_rule(user, **rule_fields())
    Rule.objects.filter(pk=rule.pk).update(evaluated=F("evaluated") + 7, matched=3)  # the engine, meanwhile
    listener = bus("rule.changed")
    before = generation.current()
    other = UserFactory(username="other")
    with django_capture_on_commit_callbacks(execute=True):
        services.update_rule(rule, other, condition="telemetry.temperature > 40.0", priority=5)
    assert rule.version == 2
    stored = Rule.objects.get(pk=rule.pk)
    assert (stored.condition, stored.priority, stored.version) == ("telemetry.temperature > 40.0", 5, 2)
    assert (stored.evaluated, stored.matched) == (7, 3)
    latest = stored.versions.get(version=2)
    assert (latest.note, latest.changed_by, latest.snapshot["priority"]) == ("updated", other, 5)
    assert generation.current() != before
    assert [e["data"]["action"] for e in listener.received()] == ["updated"]


def test_an_update_that_changes_nothing_saves_nothing(user, bus, django_capture_on_commit_callbacks):
    rule = services.create_rule(user, **rule_fields())
    listener = bus("rule.changed")
    with django_capture_on_commit_callbacks(execute=True):
        services.update_rule(rule, user, condition=CONDITION, enabled=True)
    assert rule.version == 1 and RuleVersion.objects.count() == 1
    assert listener.received() == []


def test_an_invalid_update_changes_nothing(user):
    rule = services.create_rule(user, **rule_fields())
    with pytest.raises(ValidationError):
        services.update_rule(rule, user, condition="telemetry.temperature + 1")
    stored = Rule.objects.get(pk=rule.pk)
    assert (stored.condition, stored.version) == (CONDITION, 1)


def test_restore_brings_a_version_back_as_a_new_one(user, bus, django_capture_on_commit_callbacks):
    rule = services.create_rule(user, **rule_fields())
    services.update_rule(rule, user, condition="telemetry.temperature > 40.0", enabled=False)
    listener = bus("rule.changed")
    with django_capture_on_commit_callbacks(execute=True):
        services.restore_rule_version(rule, 1, user)
    stored = Rule.objects.get(pk=rule.pk)
    assert (stored.condition, stored.enabled, stored.version) == (CONDITION, True, 3)
    assert stored.versions.get(version=3).note == "restored from version 1"
    assert [e["data"] for e in listener.received()] == [
        {"rule": rule.pk, "version": 3, "action": "restored", "actor": user.pk}
    ]
    # Restoring what the rule already is changes nothing.
    services.restore_rule_version(rule, 3, user)
    assert Rule.objects.get(pk=rule.pk).version == 3


def test_restore_validates_the_old_version_again(user, lab_device):
    rule = services.create_rule(user, **rule_fields(scope=Scope.DEVICE, scope_value=lab_device.pk))
    services.update_rule(rule, user, scope=Scope.ALL, scope_value="")
    lab_device.delete()
    with pytest.raises(ValidationError) as caught:
        services.restore_rule_version(rule, 1, user)
    assert "scope_value" in caught.value.message_dict
    with pytest.raises(ValidationError):
        services.restore_rule_version(rule, 99, user)
    other = services.create_rule(user, **rule_fields(name="other"))
    with pytest.raises(ValidationError):
        services.restore_rule_version(rule, other.versions.get(), user)


def test_delete_announces_and_bumps(user, bus, django_capture_on_commit_callbacks):
    rule = services.create_rule(user, **rule_fields())
    rule_id = rule.pk
    listener = bus("rule.changed")
    before = generation.current()
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_rule(rule, user)
    assert not Rule.objects.exists() and not RuleVersion.objects.exists()
    assert generation.current() != before
    assert [e["data"] for e in listener.received()] == [
        {"rule": rule_id, "version": 1, "action": "deleted", "actor": user.pk}
    ]


# --- Dry runs ------------------------------------------------------------------------------------


def test_test_rule_says_what_would_happen_and_does_nothing(user, lab_device, bus, django_capture_on_commit_callbacks):
    rule = services.create_rule(
        user,
        **rule_fields(
            actions=[
                {"type": "emit_event", "params": {"message": "warm"}},
                {
                    "type": "store_telemetry",
                    "params": {"values": {"temperature_f": "telemetry.temperature * 1.8 + 32.0"}},
                },
                {"type": "send_command", "params": {"type": "set_state", "params": {"state": True}}},
                {"type": "publish_mqtt", "params": {"topic": "alerts/{device}"}},
                {"type": "webhook", "params": {"url": "https://hooks.example.com/x"}},
            ]
        ),
    )
    listener = bus("rule.matched", "rule.changed", "command.status_changed")
    before = generation.current()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = services.test_rule(rule, {"device": "lab-1", "telemetry": {"temperature": 31.5}})
    assert callbacks == []
    assert (result["matched"], result["error"], result["skipped"]) == (True, None, None)
    would = [action["would"] for action in result["actions"]]
    assert [action["type"] for action in result["actions"]] == [
        "emit_event",
        "store_telemetry",
        "send_command",
        "publish_mqtt",
        "webhook",
    ]
    assert not any("error" in action for action in result["actions"]), result["actions"]
    assert "rule.matched" in would[0] and "'warm'" in would[0]
    assert "temperature_f = 88.7" in would[1]
    assert would[2].startswith('would send set_state {"state":true} to device lab-1')
    assert "alerts/lab-1" in would[3]
    assert "https://hooks.example.com/x" in would[4]
    assert not DeviceCommand.objects.exists()
    assert listener.received() == []
    assert generation.current() == before
    stored = Rule.objects.get(pk=rule.pk)
    assert (stored.evaluated, stored.matched, stored.failed) == (0, 0, 0)


def test_test_rule_not_matched_out_of_scope_other_trigger_and_errors(user, lab_device):
    rule = services.create_rule(user, **rule_fields())
    assert services.test_rule(rule, {"device": "lab-1", "telemetry": {"temperature": 20}}) == {
        "matched": False,
        "error": None,
        "skipped": None,
        "actions": [],
    }
    outsider = {"device": {"id": "x", "tags": []}, "telemetry": {"temperature": 50}}
    assert services.test_rule(rule, outsider)["matched"] is False  # "lab" not in its tags
    scoped = services.create_rule(user, **rule_fields(name="scoped", scope=Scope.TAG, scope_value="lab"))
    result = services.test_rule(scoped, outsider)
    assert result["matched"] is False and "outside the rule's scope" in result["skipped"]
    result = services.test_rule(
        rule, {"device": "lab-1", "trigger": "status", "status": {"old": "online", "new": "offline"}}
    )
    assert "runs on telemetry messages" in result["skipped"]
    result = services.test_rule(rule, {"device": "lab-1", "telemetry": {"humidity": 50}})
    assert result["matched"] is None and "temperature" in result["error"]


def test_test_rule_uses_the_devices_real_facts_and_latest_values(user):
    group = DeviceGroupFactory(name="plant")
    device = DeviceFactory(id="pump-1", group=group, tags=["lab"], attributes={"firmware": "2.0"})
    LatestValue.objects.create(device=device, key="temperature", ts=timezone.now(), value=25)
    fields = {
        "condition": 'previous.temperature < 30 && attributes.firmware == "2.0" && device.group != ""',
        "trigger": "telemetry",
        "scope": Scope.GROUP,
        "scope_value": str(group.pk),
    }
    result = services.test_rule(fields, {"device": "pump-1", "telemetry": {"temperature": 35}})
    assert result["matched"] is True, result
    result = services.test_rule(fields, {"device": "pump-1", "previous": {"temperature": 31}})
    assert result["matched"] is False


def test_test_rule_of_unsaved_fields_refuses_what_cannot_be_evaluated(lab_device):
    with pytest.raises(ValidationError) as caught:
        services.test_rule({"condition": "telemetry.t >", "trigger": "telemetry"}, {"device": "lab-1"})
    assert "condition" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        services.test_rule({"condition": "true", "trigger": "telemetry"}, {"device": "ghost"})
    assert "No device 'ghost'" in caught.value.message_dict["device"][0]
    with pytest.raises(ValidationError) as caught:
        services.test_rule({"condition": "true"}, {"device": "lab-1", "telemetry": [1]})
    assert "telemetry" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        services.test_rule({"condition": "true"}, {"device": "lab-1", "humidity": 1})
    assert "sample" in caught.value.message_dict


def test_test_rule_reports_an_action_that_would_fail(user):
    DeviceFactory(id="off-1", device_type="sensor", tags=["lab"])  # registered, not active
    fields = rule_fields(actions=[{"type": "send_command", "params": {"type": "reboot"}}])
    result = services.test_rule(fields, {"device": "off-1", "telemetry": {"temperature": 40.0}})
    [action] = result["actions"]
    assert action["would"] == "" and "not active" in action["error"]


# --- Plugins -------------------------------------------------------------------------------------


def test_create_plugin_stores_module_sha_and_size(user, bus, django_capture_on_commit_callbacks):
    module = wasm()
    listener = bus("plugin.changed")
    before = generation.current()
    with django_capture_on_commit_callbacks(execute=True):
        plugin = services.create_plugin(user, name="decoder", version="1.0.0", module=module, config={"scale": 2})
    stored = Plugin.objects.get(pk=plugin.pk)
    assert bytes(stored.module) == module
    assert stored.sha256 == hashlib.sha256(module).hexdigest() and stored.size == len(module)
    assert (stored.stage, stored.config, stored.created_by) == (PluginStage.PREPROCESS, {"scale": 2}, user)
    assert generation.current() != before
    [event] = listener.received()
    assert event["data"]["plugin"] == plugin.pk and event["data"]["action"] == "created"
    assert event["data"]["sha256"] == stored.sha256


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (b"\x00asm\x01\x00\x00\x00\xff", "does not compile"),
        (wasm('(module (memory (export "memory") 1))'), "missing export: alloc"),
        (wasm(PLUGIN_WAT.replace('"env" "log"', '"env" "clock"')), "imports env.clock"),
        (b"", "Upload a WebAssembly module"),
    ],
)
def test_bad_modules_are_refused_with_the_reason(user, module, expected):
    with pytest.raises(ValidationError) as caught:
        services.create_plugin(user, name="bad", module=module)
    assert any(expected in message for message in caught.value.message_dict["module"]), caught.value.message_dict
    assert not Plugin.objects.exists()


def test_modules_over_the_size_limit_are_refused(user, settings):
    settings.PLUGIN_MAX_MODULE_BYTES = 100
    with pytest.raises(ValidationError) as caught:
        services.create_plugin(user, name="big", module=wasm())
    assert "over the limit of 100 bytes" in caught.value.message_dict["module"][0]


def test_the_same_name_and_version_twice_is_a_conflict(user):
    services.create_plugin(user, name="decoder", version="1.0.0", module=wasm())
    with pytest.raises(ConflictError):
        services.create_plugin(user, name="decoder", version="1.0.0", module=wasm())
    services.create_plugin(user, name="decoder", version="1.1.0", module=wasm())


def test_plugin_fields_are_validated(user):
    with pytest.raises(ValidationError) as caught:
        services.create_plugin(
            user, name="decoder", module=wasm(), config=[1], stage="sometimes", scope=Scope.GROUP, scope_value="999"
        )
    assert {"config", "stage", "scope_value"} <= set(caught.value.message_dict)


def test_update_plugin_new_module_new_sha_and_the_host_forgets(user, bus, django_capture_on_commit_callbacks):
    plugin = services.create_plugin(user, name="decoder", module=wasm())
    old_sha = plugin.sha256
    host.run_plugin(
        plugin.pk, plugin.sha256, bytes(plugin.module), {}, [{"device": "d", "topic": "t", "payload": b"{}"}]
    )
    assert host.pool_stats(plugin.pk) is not None
    listener = bus("plugin.changed")
    newer = wasm(PLUGIN_WAT.replace("(i32.const 1024)", "(i32.const 2048)"))
    with django_capture_on_commit_callbacks(execute=True):
        services.update_plugin(plugin, user, module=newer, enabled=False)
    stored = Plugin.objects.get(pk=plugin.pk)
    assert stored.sha256 == hashlib.sha256(newer).hexdigest() != old_sha
    assert (stored.size, stored.enabled, bytes(stored.module)) == (len(newer), False, newer)
    assert host.pool_stats(plugin.pk) is None
    assert [e["data"]["action"] for e in listener.received()] == ["updated"]


def test_update_plugin_without_change_or_with_a_bad_module(user, bus, django_capture_on_commit_callbacks):
    plugin = services.create_plugin(user, name="decoder", module=wasm())
    Plugin.objects.filter(pk=plugin.pk).update(calls=10)
    listener = bus("plugin.changed")
    with django_capture_on_commit_callbacks(execute=True):
        services.update_plugin(plugin, user, module=wasm(), enabled=True)
    assert listener.received() == []
    with pytest.raises(ValidationError) as caught:
        services.update_plugin(plugin, user, module=b"nope", description="x")
    assert "module" in caught.value.message_dict
    services.update_plugin(plugin, user, description="decodes")
    assert Plugin.objects.get(pk=plugin.pk).calls == 10
    other = services.create_plugin(user, name="decoder", version="2.0.0", module=wasm())
    with pytest.raises(ConflictError):
        services.update_plugin(other, user, version="1.0.0")


def test_delete_plugin(user, bus, django_capture_on_commit_callbacks):
    plugin = services.create_plugin(user, name="decoder", module=wasm())
    plugin_id = plugin.pk
    listener = bus("plugin.changed")
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_plugin(plugin, user)
    assert not Plugin.objects.exists()
    assert [(e["data"]["plugin"], e["data"]["action"]) for e in listener.received()] == [(plugin_id, "deleted")]
