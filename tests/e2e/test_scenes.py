"""Scenes end to end, every part real: a sensor publishes over MQTT (Mosquitto with dynamic
security), the bridge hands the batch to a Celery worker whose ingest starts the scene, and a
Celery task runs it: the fan — a paho MQTT 5 client — receives the command and answers. And Celery
beat (the DatabaseScheduler) runs a scheduled scene's periodic task."""

from __future__ import annotations

import pytest

from control.models import DeviceCommand, SceneExecution
from control.scenes import services
from devices import services as device_services
from telemetry.models import LatestValue
from tests.e2e.platform import DeviceClient, wait_for
from tests.e2e.test_commands import command_device
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def fan_command(state: bool) -> dict:
    return {
        "type": "send_command",
        "params": {"type": "set_state", "params": {"state": state}, "target": {"device": "e2e-fan"}},
    }


def test_a_sensor_over_30_degrees_turns_the_fan_on_through_a_scene(platform):
    DeviceFactory(id="e2e-temp", device_type="sensor")
    sensor = DeviceClient(platform.broker, "e2e-temp", device_services.activate_device("e2e-temp", actor=None))
    with command_device(platform, "e2e-fan") as fan:
        scene = services.create_scene(
            None,
            name="temperature control",
            cooldown=0,
            triggers=[{"kind": "device_data", "device": "e2e-temp", "condition": "has(trigger.telemetry.temperature)"}],
            conditions=["trigger.telemetry.temperature > 30.0"],
            then_actions=[fan_command(True)],
            else_if=[{"condition": "trigger.telemetry.temperature < 25.0", "actions": [fan_command(False)]}],
        )
        fan.telemetry({"rpm": 0})  # the fan is online, so its command goes out at once
        wait_for(lambda: LatestValue.objects.filter(device_id="e2e-fan").exists(), 30, "the fan online")
        try:
            sensor.publish("telemetry", {"temperature": 31}).wait_for_publish(10)
            command = fan.next_command(timeout=30)
            assert command["type"] == "set_state" and command["params"] == {"state": True}
            wait_for(lambda: DeviceCommand.objects.filter(status="success").exists(), 30, "the fan's success reply")

            sensor.publish("telemetry", {"temperature": 27}).wait_for_publish(10)  # neither branch
            sensor.publish("telemetry", {"temperature": 22.5}).wait_for_publish(10)
            command = fan.next_command(timeout=30)
            assert command["params"] == {"state": False}
        finally:
            sensor.close()

    wait_for(lambda: SceneExecution.objects.filter(scene=scene).count() >= 2, 30, "the executions")
    log = list(SceneExecution.objects.filter(scene=scene).order_by("id"))
    branches = [execution.branch for execution in log]
    assert branches[0] == "then" and branches[-1] == "else_if" and set(branches[1:-1]) <= {"none"}
    assert log[0].trigger["device"] == "e2e-temp" and log[0].trigger["telemetry"] == {"temperature": 31}
    assert all(execution.failed_actions == 0 for execution in log)


def test_beat_runs_a_scheduled_scene(platform):
    platform.start("beat")
    group = DeviceGroupFactory(name="Office HVAC")
    with command_device(platform, "e2e-hvac", group=group) as hvac:
        hvac.telemetry({"temperature": 21})
        wait_for(lambda: LatestValue.objects.filter(device_id="e2e-hvac").exists(), 30, "the unit online")
        scene = services.create_scene(
            None,
            name="every minute",
            time_zone="Europe/Berlin",
            triggers=[{"kind": "schedule", "cron": "* * * * *"}],
            then_actions=[
                {
                    "type": "send_command",
                    "params": {"type": "set_value", "params": {"value": 22}, "target": {"group": group.pk}},
                }
            ],
        )
        command = hvac.next_command(timeout=100)  # beat fires at the next minute
        assert command["type"] == "set_value" and command["params"] == {"value": 22}
    execution = SceneExecution.objects.filter(scene=scene).first()
    assert execution is not None and execution.trigger["kind"] == "schedule"
