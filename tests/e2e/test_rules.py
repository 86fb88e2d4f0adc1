"""Rules and plugins end to end, every part real: a sensor publishes binary frames over MQTT
(Mosquitto with dynamic security), the bridge hands them to a Celery worker, whose ingest decodes
them with the SDK's frame decoder (C compiled to wasm32, run by wasmtime), and a rule on the decoded
temperature sends a command that a fan — a paho MQTT 5 client — receives."""

from __future__ import annotations

import time

import pytest
from django.db import transaction

from control.models import DeviceCommand
from devices import services as device_services
from rules import services as rule_services
from rules.choices import Scope
from rules.models import Plugin, Rule
from telemetry.models import LatestValue
from tests.e2e.platform import DeviceClient, wait_for
from tests.e2e.test_commands import command_device
from tests.factories import DeviceFactory
from tests.wasm import sensor_frame

SET_STATE = {"type": "set_state", "params": {"state": True}}
FAHRENHEIT = "telemetry.temperature * 9.0 / 5.0 + 32.0"

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def test_binary_frames_are_decoded_and_a_rule_commands_the_fan(platform, plugin_examples):
    DeviceFactory(id="e2e-sensor", device_type="sensor", tags=["lab"])
    sensor = DeviceClient(platform.broker, "e2e-sensor", device_services.activate_device("e2e-sensor", actor=None))
    with command_device(platform, "e2e-fan") as fan:
        with transaction.atomic():  # the changes bump the rules' generation when they commit
            rule_services.create_plugin(
                None,
                name="frame-decoder",
                module=plugin_examples["frame_decoder"],
                scope=Scope.DEVICE_TYPE,
                scope_value="sensor",
            )
            rule_services.create_rule(
                None,
                name="Lab too warm",
                condition='telemetry.temperature > 30.0 && "lab" in device.tags',
                actions=[
                    {"type": "send_command", "params": {**SET_STATE, "target": {"device": "e2e-fan"}}},
                    {"type": "store_telemetry", "params": {"values": {"temperature_f": FAHRENHEIT}}},
                ],
            )
        fan.telemetry({"rpm": 0})  # the fan is online, so its command goes out at once
        wait_for(lambda: LatestValue.objects.filter(device_id="e2e-fan").exists(), 30, "the fan online")
        try:
            # 24.50 °C, then 31.25 °C, with their own times (points are keyed by device, key and time)
            now = int(time.time())
            for ts, temperature in ((now - 10, 2450), (now - 5, 3125)):
                sensor.publish("telemetry", sensor_frame(ts=ts, temperature=temperature)).wait_for_publish(10)
            command = fan.next_command(timeout=30)
            assert command["type"] == "set_state" and command["params"] == {"state": True}
            wait_for(lambda: DeviceCommand.objects.filter(status="success").exists(), 30, "the fan's success reply")
        finally:
            sensor.close()

    latest = dict(LatestValue.objects.filter(device_id="e2e-sensor").values_list("key", "value"))
    assert latest["temperature"] == 31.25 and latest["humidity"] == 45.12
    assert latest["temperature_f"] == pytest.approx(88.25)
    assert DeviceCommand.objects.count() == 1  # the 24.50 °C frame did not match
    rule = Rule.objects.get()
    # Judged on the fan's own telemetry too (all devices): false there, as "lab" is not its tag.
    assert (rule.evaluated, rule.matched, rule.failed) == (3, 1, 0)
    plugin = Plugin.objects.get()
    assert (plugin.calls, plugin.failures) == (2, 0)
