"""Plugins and rules inside the ingest batch: binary frames decoded by a real Wasm plugin, rules on
every trigger judging what came in, their actions run with the batch."""

from __future__ import annotations

import json
import time

import pytest

from control.models import DeviceCommand
from devices.choices import ActivationState, DeviceStatus
from fluxiot import events
from rules import services as rule_services
from rules.choices import PluginFailure, Scope, Trigger
from rules.models import Plugin, Rule
from telemetry import services as ingest
from telemetry.choices import RejectReason
from telemetry.models import DeadLetter, LatestValue, TelemetryPoint
from tests.factories import DeviceFactory
from tests.wasm import sensor_frame

pytestmark = pytest.mark.django_db

FAHRENHEIT = "double(telemetry.temperature) * 9.0 / 5.0 + 32.0"
SET_STATE = {"type": "set_state", "params": {"state": True}}
FAILED_REPLY = b'{"status": "failed", "error": "no"}'


def item(device_id: str, kind: str, payload: bytes | dict | str) -> list:
    body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    body = body.encode() if isinstance(body, str) else body
    return [f"devices/{device_id}/{kind}", body, int(time.time() * 1000)]


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run a block's on-commit callbacks (rule changes bump the generation when they commit)."""

    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)

    return run


@pytest.fixture
def sensor(db):
    return DeviceFactory(id="frame-1", device_type="sensor", activation_state=ActivationState.ACTIVE, tags=["lab"])


@pytest.fixture
def decoder(plugin_examples, committed):
    return committed(
        rule_services.create_plugin,
        None,
        name="frame-decoder",
        module=plugin_examples["frame_decoder"],
        scope=Scope.DEVICE_TYPE,
        scope_value="sensor",
    )


def rule(committed, **fields) -> Rule:
    fields.setdefault("name", f"rule-{Rule.objects.count() + 1}")
    fields.setdefault("trigger", Trigger.TELEMETRY)
    return committed(rule_services.create_rule, None, **fields)


def test_frames_are_decoded_and_a_rule_stores_derived_telemetry(sensor, decoder, committed):
    rule(
        committed,
        condition='"lab" in device.tags && telemetry.temperature > 20.0',
        # double(): a decoded 25.00 °C is the JSON number 25, an int, and CEL does not mix int and double.
        actions=[{"type": "store_telemetry", "params": {"values": {"temperature_f": FAHRENHEIT}}}],
    )
    result = ingest.ingest_batch([item("frame-1", "telemetry", sensor_frame(ts=0, temperature=2500))])

    assert not DeadLetter.objects.exists()
    latest = dict(LatestValue.objects.filter(device_id="frame-1").values_list("key", "value"))
    assert latest["temperature"] == 25.0 and latest["humidity"] == 45.12 and latest["battery_mv"] == 3000
    assert latest["temperature_f"] == 77.0
    assert result.derived == 1
    assert TelemetryPoint.objects.filter(device_id="frame-1", key="temperature_f").count() == 1
    counted = Rule.objects.get()
    assert (counted.evaluated, counted.matched, counted.failed) == (1, 1, 0)
    plugin = Plugin.objects.get()
    assert (plugin.calls, plugin.failures) == (1, 0)


def test_a_bad_frame_is_dead_lettered_or_passed_on_as_the_plugin_says(sensor, decoder, committed):
    bad_checksum, too_short = sensor_frame(ts=0, checksum=0), b"\x01\x02"
    ingest.ingest_batch([item("frame-1", "telemetry", bad_checksum), item("frame-1", "telemetry", too_short)])
    # on_failure "pass": the raw bytes go on, and are no JSON.
    assert sorted(DeadLetter.objects.values_list("reason", flat=True)) == [RejectReason.MALFORMED_JSON] * 2
    plugin = Plugin.objects.get()
    assert (plugin.calls, plugin.failures) == (2, 2) and "frame-1" in plugin.last_error

    committed(rule_services.update_plugin, plugin, None, on_failure=PluginFailure.DEAD_LETTER)
    DeadLetter.objects.all().delete()
    ingest.ingest_batch([item("frame-1", "telemetry", sensor_frame(ts=0, checksum=0))])
    letter = DeadLetter.objects.get()
    assert letter.reason == RejectReason.PLUGIN_FAILED and "checksum" in letter.detail


def test_a_plugin_only_decodes_the_devices_of_its_scope(decoder, db):
    DeviceFactory(id="json-1", device_type="actuator", activation_state=ActivationState.ACTIVE)
    ingest.ingest_batch([item("json-1", "telemetry", {"temperature": 20})])
    assert LatestValue.objects.get(device_id="json-1").value == 20
    assert Plugin.objects.get().calls == 0


def test_a_rule_sends_a_command_the_device_receives(sensor, committed, listen, django_capture_on_commit_callbacks):
    fan = DeviceFactory(id="fan-1", device_type="actuator", activation_state="active", status=DeviceStatus.ONLINE)
    probe = listen(fan.id)
    rule(
        committed,
        condition="telemetry.temperature > 30",
        actions=[{"type": "send_command", "params": {**SET_STATE, "target": {"device": "fan-1"}}}],
    )
    with django_capture_on_commit_callbacks(execute=True):
        ingest.ingest_batch([item("frame-1", "telemetry", {"temperature": t}) for t in (29, 31)])
    command = DeviceCommand.objects.get()
    assert command.device_id == "fan-1" and command.params == {"state": True}
    message = probe.message()
    assert message is not None and json.loads(message.payload)["id"] == str(command.pk)
    assert Rule.objects.get().matched == 1


def test_status_command_result_and_previous_values_reach_their_rules(
    sensor, committed, bus, django_capture_on_commit_callbacks
):
    listener = bus(events.RULE_MATCHED)
    sensor.status = DeviceStatus.ONLINE
    sensor.save()
    emit = [{"type": "emit_event", "params": {"message": "seen"}}]
    went_offline = rule(committed, trigger=Trigger.STATUS, condition='status.new == "offline"', actions=emit)
    failed = rule(committed, trigger=Trigger.COMMAND_RESULT, condition='command.status == "failed"', actions=emit)
    jump = rule(committed, condition="telemetry.temperature - previous.temperature > 5.0", actions=emit)

    from control import services as command_services

    command = command_services.send_command(sensor, "reboot", {})
    with django_capture_on_commit_callbacks(execute=True):  # events leave after the commit
        ingest.ingest_batch([item("frame-1", "telemetry", {"temperature": 20})])
        ingest.ingest_batch(
            [
                item("frame-1", "telemetry", {"temperature": 27.5}),
                [f"devices/frame-1/commands/{command.pk}/reply", FAILED_REPLY, int(time.time() * 1000)],
                item("frame-1", "status", "offline"),
            ]
        )
    for found in (went_offline, failed, jump):
        found.refresh_from_db()
        assert found.matched == 1, (found.name, found.failed, found.last_error)
    # "previous" has no temperature before the first batch: the jump rule failed on it, once.
    assert (jump.evaluated, jump.failed) == (2, 1)
    matched = [e["data"] for e in listener.received()]
    assert len(matched) == 3


def test_a_failing_rule_or_action_is_counted_and_the_batch_is_stored(sensor, committed):
    broken = rule(committed, condition="telemetry.humidity > 50.0", actions=[])
    refused = rule(
        committed,
        condition="true || telemetry.temperature > 0",
        actions=[{"type": "send_command", "params": {"type": "reboot", "target": "self"}}],
    )
    sensor.activation_state = ActivationState.ACTIVE
    sensor.metadata = {"commands": ["read_value"]}  # the profile refuses reboot: the action fails
    sensor.save()
    ingest.ingest_batch([item("frame-1", "telemetry", {"temperature": 21})])

    assert LatestValue.objects.get(device_id="frame-1", key="temperature").value == 21
    broken.refresh_from_db()
    assert broken.failed == 1 and "humidity" in broken.last_error
    refused.refresh_from_db()
    assert refused.matched == 1 and refused.failed == 1 and "reboot" in refused.last_error
    assert not DeviceCommand.objects.exists()


def test_rule_changes_reach_the_ingest_without_a_restart(sensor, committed):
    emit = [{"type": "emit_event", "params": {}}]
    first = rule(committed, condition="telemetry.temperature > 10", actions=emit)
    ingest.ingest_batch([item("frame-1", "telemetry", {"temperature": 21})])
    committed(rule_services.update_rule, first, None, condition="telemetry.temperature > 30")
    ingest.ingest_batch([item("frame-1", "telemetry", {"temperature": 21})])
    first.refresh_from_db()
    assert (first.evaluated, first.matched) == (2, 1)
