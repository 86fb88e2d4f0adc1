"""Scenes (control/scenes): the two scenarios of the issue end to end in one process (real
PostgreSQL, Redis and Mosquitto; devices are MQTT clients), every trigger kind, branches, cooldown,
delays, run_scene chains and loops, failing actions, events and metrics."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django_celery_beat.models import PeriodicTask
from prometheus_client import REGISTRY

from control.models import DeviceCommand, Scene, SceneExecution
from control.scenes import engine, runner, services
from control.scenes.choices import Branch, ExecutionStatus
from control.scenes.engine import SceneSet
from control.tasks import run_scene
from devices import services as device_services
from devices.choices import ActivationState, DeviceStatus
from rules.actions import ActionContext, ActionSpec, register, run_actions
from rules.engine import EngineMessage
from rules.models import DeviceFacts
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db

MONDAY_NOON_PARIS = datetime(2025, 6, 30, 10, 0, tzinfo=UTC)  # 12:00 in Paris (CEST)
MONDAY_EVENING_PARIS = datetime(2025, 6, 30, 19, 30, tzinfo=UTC)  # 21:30 in Paris
FAN_ON = {
    "type": "send_command",
    "params": {"type": "set_state", "params": {"state": True}, "target": {"device": "fan_01"}},
}
FAN_OFF = {
    "type": "send_command",
    "params": {"type": "set_state", "params": {"state": False}, "target": {"device": "fan_01"}},
}
EMIT = {"type": "emit_event", "params": {"message": "hello"}}


def actuator(device_id, **fields):
    fields.setdefault("status", DeviceStatus.ONLINE)
    fields.setdefault("activation_state", ActivationState.ACTIVE)
    return DeviceFactory(id=device_id, device_type="actuator", **fields)


def sensor(device_id, **fields):
    return DeviceFactory(id=device_id, device_type="sensor", activation_state=ActivationState.ACTIVE, **fields)


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """``with committed():`` runs what waits for the commit (commands, queued scenes, generation)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def make_scene(committed):
    def make(name="scene", **fields):
        fields.setdefault("triggers", [{"kind": "manual"}])
        fields.setdefault("then_actions", [EMIT])
        with committed():
            return services.create_scene(None, name=name, **fields)

    return make


def telemetry(device_id, values, at, device_type="sensor"):
    return EngineMessage(
        device=DeviceFacts(device_id, device_type, (), ""), trigger="telemetry", received=at, telemetry=values
    )


def batch(committed, *messages):
    with committed(), transaction.atomic():
        engine.on_batch(list(messages))


def commands_received(listener, count, timeout=5.0):
    return [(m["type"], m["params"]) for m in (json.loads(x.payload) for x in listener.commands(count, timeout))]


def executions(scene):
    return list(SceneExecution.objects.filter(scene=scene).order_by("id"))


def sample(name, labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- The issue's scenarios -----------------------------------------------------------------------


TEMPERATURE_CONTROL = {
    "name": "temperature control",
    "time_zone": "Europe/Paris",
    "triggers": [
        {"kind": "device_data", "device": "temp_sensor_01", "condition": "has(trigger.telemetry.temperature)"}
    ],
    "conditions": ["trigger.telemetry.temperature > 30.0", "local.hour >= 8 && local.hour < 20"],
    "then_actions": [FAN_ON],
    "else_if": [{"condition": "trigger.telemetry.temperature < 25.0", "actions": [FAN_OFF]}],
}


def test_temperature_control_turns_the_fan_on_in_the_window_and_off_below_25(
    make_scene, committed, listen, eager_celery
):
    sensor("temp_sensor_01")
    actuator("fan_01")
    fan = listen("fan_01")
    scene = make_scene(**TEMPERATURE_CONTROL)

    # 31 °C at 12:00 in Paris: then, the fan receives set_state true over MQTT.
    batch(committed, telemetry("temp_sensor_01", {"temperature": 31}, MONDAY_NOON_PARIS))
    assert commands_received(fan, 1) == [("set_state", {"state": True})]
    first = executions(scene)[-1]
    assert (first.branch, first.status, first.failed_actions) == (Branch.THEN, ExecutionStatus.DONE, 0)
    assert first.trigger["kind"] == "device_data" and first.trigger["device"] == "temp_sensor_01"
    assert first.trigger["telemetry"] == {"temperature": 31}
    assert first.results[0]["type"] == "send_command" and first.results[0]["status"] == "ok"

    # 24 °C: the else-if turns it off.
    batch(committed, telemetry("temp_sensor_01", {"temperature": 24}, MONDAY_NOON_PARIS + timedelta(minutes=5)))
    assert commands_received(fan, 1) == [("set_state", {"state": False})]
    second = executions(scene)[-1]
    assert (second.branch, second.branch_index) == (Branch.ELSE_IF, 0)

    # 31 °C at 21:30 in Paris: outside the window, and not below 25: nothing.
    batch(committed, telemetry("temp_sensor_01", {"temperature": 31}, MONDAY_EVENING_PARIS))
    assert fan.message(timeout=0.5) is None
    assert executions(scene)[-1].branch == Branch.NONE
    # 27 °C in the window: neither branch.
    batch(committed, telemetry("temp_sensor_01", {"temperature": 27.5}, MONDAY_NOON_PARIS + timedelta(minutes=9)))
    assert fan.message(timeout=0.5) is None
    assert [e.branch for e in executions(scene)] == ["then", "else_if", "none", "none"]
    assert DeviceCommand.objects.filter(device_id="fan_01").count() == 2

    # Another device's data, or a message without temperature (the trigger's condition): no run.
    sensor("other_sensor")
    batch(
        committed,
        telemetry("other_sensor", {"temperature": 40}, MONDAY_NOON_PARIS),
        telemetry("temp_sensor_01", {"humidity": 40}, MONDAY_NOON_PARIS),
    )
    assert len(executions(scene)) == 4


def test_the_latest_matching_message_of_a_batch_runs_the_scene_once(make_scene, committed, eager_celery):
    sensor("temp_sensor_01")
    actuator("fan_01", status=DeviceStatus.OFFLINE)
    scene = make_scene(**TEMPERATURE_CONTROL)
    batch(
        committed,
        telemetry("temp_sensor_01", {"temperature": 31}, MONDAY_NOON_PARIS),
        telemetry("temp_sensor_01", {"temperature": 22}, MONDAY_NOON_PARIS + timedelta(seconds=10)),
        telemetry("temp_sensor_01", {"humidity": 3}, MONDAY_NOON_PARIS + timedelta(seconds=20)),
    )
    [only] = executions(scene)
    assert only.trigger["telemetry"] == {"temperature": 22} and only.branch == Branch.ELSE_IF
    # The fan is offline: the command waits, pending.
    assert DeviceCommand.objects.get().status == "pending"


def test_weekday_schedule_sends_set_value_to_every_device_of_the_group(make_scene, listen, committed, eager_celery):
    hvac = DeviceGroupFactory(name="Office HVAC")
    floor = DeviceGroupFactory(name="Floor 2", parent=hvac)
    members = [actuator("hvac-1", group=hvac), actuator("hvac-2", group=floor), actuator("hvac-3", group=floor)]
    outsider = actuator("hvac-elsewhere")
    listeners = {device.id: listen(device.id) for device in [*members, outsider]}
    scene = make_scene(
        name="weekday morning",
        time_zone="Europe/Berlin",
        triggers=[{"kind": "schedule", "cron": "0 7 * * 1-5"}],
        then_actions=[
            {
                "type": "send_command",
                "params": {"type": "set_value", "params": {"value": 22}, "target": {"group": hvac.pk}},
            }
        ],
    )

    task = PeriodicTask.objects.get(name=f"scene:{scene.pk}:0")
    assert task.task == "control.tasks.run_scene" and task.enabled
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week) == (
        "0",
        "7",
        "*",
        "*",
        "1-5",
    )
    assert str(crontab.timezone) == "Europe/Berlin"
    args = json.loads(task.args)
    assert args == [scene.pk, {"kind": "schedule", "index": 0, "cron": "0 7 * * 1-5"}]

    # What beat does at 07:00: run the task with its args.
    with committed():
        run_scene.apply(args=args)
    for device in members:
        assert commands_received(listeners[device.id], 1) == [("set_value", {"value": 22})], device.id
    assert listeners[outsider.id].message(timeout=0.5) is None
    [execution] = executions(scene)
    assert execution.trigger["kind"] == "schedule" and execution.branch == Branch.THEN

    # Kept in step: disabled with the scene, moved with its cron and time zone, gone with it.
    with committed():
        services.set_enabled(scene, False, None)
    assert not PeriodicTask.objects.get(name=f"scene:{scene.pk}:0").enabled
    with committed():
        services.update_scene(
            scene,
            None,
            enabled=True,
            time_zone="America/New_York",
            triggers=[{"kind": "manual"}, {"kind": "schedule", "cron": "30 6 * * sat,sun"}],
        )
    assert not PeriodicTask.objects.filter(name=f"scene:{scene.pk}:0").exists()
    moved = PeriodicTask.objects.get(name=f"scene:{scene.pk}:1")
    assert moved.enabled and (moved.crontab.hour, moved.crontab.minute, moved.crontab.day_of_week) == (
        "6",
        "30",
        "sat,sun",
    )
    assert str(moved.crontab.timezone) == "America/New_York"
    with committed():
        services.delete_scene(scene, None)
    assert not PeriodicTask.objects.filter(name__startswith=f"scene:{scene.pk}:").exists()


# --- Trigger kinds -------------------------------------------------------------------------------


def test_status_change_trigger(make_scene, committed, eager_celery):
    door = sensor("door-1", status=DeviceStatus.ONLINE)
    scene = make_scene(
        name="door offline",
        triggers=[
            {"kind": "device_status", "device": "door-1", "to": "offline", "condition": 'trigger.device == "door-1"'}
        ],
        conditions=['trigger.status.old == "online"'],
    )
    with committed():
        device_services.set_status(door, DeviceStatus.OFFLINE, reason="silent")
    [execution] = executions(scene)
    assert execution.trigger["kind"] == "device_status"
    assert execution.trigger["status"] == {"old": "online", "new": "offline", "reason": "silent"}
    assert execution.branch == Branch.THEN
    with committed():  # to online: not this trigger
        device_services.set_status(door, DeviceStatus.ONLINE)
    assert len(executions(scene)) == 1


def test_attributes_trigger(make_scene, committed, eager_celery):
    sensor("meter-1")
    scene = make_scene(
        name="firmware watch",
        triggers=[{"kind": "device_data", "on": "attributes", "condition": 'trigger.attributes.firmware != "2.0"'}],
    )
    message = EngineMessage(
        device=DeviceFacts("meter-1", "sensor", (), ""),
        trigger="attributes",
        received=MONDAY_NOON_PARIS,
        reported_attributes={"firmware": "1.9"},
    )
    batch(committed, message, telemetry("meter-1", {"firmware": "1.0"}, MONDAY_NOON_PARIS))
    [execution] = executions(scene)
    assert execution.trigger["on"] == "attributes" and execution.trigger["attributes"] == {"firmware": "1.9"}
    assert engine.wants("attributes") and not engine.wants("telemetry") and not engine.wants("status")


def test_alarm_trigger_filters_by_type_severity_and_transition(make_scene, committed, eager_celery):
    sensor("boiler")
    scene = make_scene(
        name="on alarm",
        triggers=[
            {
                "kind": "alarm",
                "device": "boiler",
                "alarm_type": "overheat",
                "severity": ["major", "critical"],
                "transition": "raised",
            }
        ],
        conditions=['trigger.alarm.severity == "critical"'],
        else_actions=[{"type": "emit_event", "params": {"message": "major only"}}],
    )
    with committed():
        engine.on_alarm(7, "boiler", "overheat", "minor", "raised")  # severity filtered out
        engine.on_alarm(7, "boiler", "overheat", "major", "cleared")  # transition filtered out
        engine.on_alarm(7, "other", "overheat", "major", "raised")  # device filtered out
        engine.on_alarm(7, "boiler", "overheat", "major", "raised")
        engine.on_alarm(8, "boiler", "overheat", "critical", "raised")
    runs = executions(scene)
    assert [(e.trigger["alarm"]["id"], e.branch) for e in runs] == [(7, "else"), (8, "then")]
    assert runs[0].trigger["alarm"] == {"id": 7, "type": "overheat", "severity": "major", "transition": "raised"}

    # Without a transition filter: every transition but "repeated".
    anything = make_scene(name="any alarm", triggers=[{"kind": "alarm"}])
    with committed():
        engine.on_alarm(9, "", "door", "warning", "repeated")
        engine.on_alarm(9, "", "door", "warning", "cleared")
    assert [e.trigger["alarm"]["transition"] for e in executions(anything)] == ["cleared"]


def test_manual_execution_records_the_user(make_scene, operator):
    scene = make_scene(name="by hand", cooldown=3600)
    first = services.execute_scene(scene, operator)
    second = services.execute_scene(scene, operator)  # by hand: no cooldown
    assert first.trigger["kind"] == "manual" and first.trigger["user"] == "operator"
    assert second.branch == Branch.THEN and second.triggered_by == operator


def test_a_rule_runs_a_scene(make_scene, committed, eager_celery):
    target = make_scene(name="from a rule", conditions=["trigger.telemetry.t > 1.0"])

    class FakeRule:
        id, name = 99, "hot"

    message = telemetry("dev-x", {"t": 2}, MONDAY_NOON_PARIS)
    with committed():
        outcome = run_actions(
            ActionContext(), [{"type": "run_scene", "params": {"scene": target.pk}}], FakeRule(), message
        )
    assert outcome == [{"type": "run_scene"}]
    [execution] = executions(target)
    assert execution.trigger["kind"] == "rule" and execution.trigger["rule"] == {"id": 99, "name": "hot"}
    assert execution.branch == Branch.THEN


# --- Cooldown, failures, conditions --------------------------------------------------------------


def test_cooldown_skips_and_says_so(make_scene, committed, eager_celery):
    sensor("temp_sensor_01")
    door = sensor("door-2", status=DeviceStatus.ONLINE)
    scene = make_scene(
        name="cooling",
        cooldown=60,
        triggers=[{"kind": "device_status", "device": "door-2"}, {"kind": "device_data", "device": "temp_sensor_01"}],
    )
    start = datetime.now(UTC)
    first = runner.run(scene.pk, {"kind": "device_status", "device": "door-2"}, now=start)
    assert first.branch == Branch.THEN
    second = runner.run(scene.pk, {"kind": "device_status", "device": "door-2"}, now=start + timedelta(seconds=30))
    assert second.branch == Branch.SKIPPED and second.error.startswith("Cooldown:")
    assert second.results == [] and second.status == ExecutionStatus.DONE
    later = runner.run(scene.pk, {"kind": "device_status", "device": "door-2"}, now=start + timedelta(seconds=61))
    assert later.branch == Branch.THEN

    # Through the hooks: the status run starts the cooldown; device data meanwhile is dropped at the
    # ingest (counted), a status change is logged as skipped.
    Scene.objects.filter(pk=scene.pk).update(last_run_at=None)
    dropped = sample("fluxiot_scene_triggers_dropped_total", {"reason": "cooldown"})
    with committed():
        device_services.set_status(door, DeviceStatus.OFFLINE)
    batch(committed, telemetry("temp_sensor_01", {"temperature": 1}, MONDAY_NOON_PARIS))
    with committed():
        device_services.set_status(door, DeviceStatus.ONLINE)
    assert [e.branch for e in executions(scene)][-2:] == ["then", "skipped"]
    assert sample("fluxiot_scene_triggers_dropped_total", {"reason": "cooldown"}) == dropped + 1


def test_a_failing_action_is_recorded_and_the_rest_go_on(make_scene, committed, listen, eager_celery):
    actuator("fan_01")
    actuator("broken-fan", activation_state=ActivationState.DISABLED)
    fan = listen("fan_01")
    scene = make_scene(
        name="partly failing",
        triggers=[{"kind": "manual"}, {"kind": "device_data"}],
        then_actions=[
            {"type": "send_command", "params": {"type": "reboot", "target": {"device": "broken-fan"}}},
            {"type": "send_command", "params": {"type": "reboot"}},  # "self": a manual run has no device
            FAN_ON,
        ],
    )
    with committed():
        execution = services.execute_scene(scene, None)
    assert [r["status"] for r in execution.results] == ["failed", "failed", "ok"]
    assert "not active" in execution.results[0]["error"] or "disabled" in execution.results[0]["error"]
    assert "no triggering device" in execution.results[1]["error"]
    assert execution.failed_actions == 2 and execution.branch == Branch.THEN
    assert commands_received(fan, 1) == [("set_state", {"state": True})]


def test_actions_pointing_at_a_device_deleted_after_saving_fail_at_run_time(make_scene, committed):
    gone = actuator("gone-fan")
    scene = make_scene(
        name="stale target",
        then_actions=[{"type": "send_command", "params": {"type": "reboot", "target": {"device": "gone-fan"}}}, EMIT],
    )
    gone.delete()
    execution = services.execute_scene(scene, None)
    assert execution.results[0]["status"] == "failed" and "gone-fan" in execution.results[0]["error"]
    assert execution.results[1]["status"] == "ok"


def test_a_condition_that_fails_runs_nothing(make_scene):
    scene = make_scene(
        name="bad data", conditions=["trigger.telemetry.temperature > 30.0"], else_actions=[EMIT], then_actions=[]
    )
    execution = services.execute_scene(scene, None)  # a manual run has no telemetry
    assert execution.branch == Branch.ERROR and "conditions[0]" in execution.error and execution.results == []


def test_conditions_see_other_devices_latest_values_and_local_time(make_scene):
    from telemetry.models import LatestValue

    outdoor = sensor("outdoor-1")
    LatestValue.objects.create(device=outdoor, key="temperature", ts=MONDAY_NOON_PARIS, value=12)
    scene = make_scene(
        name="cold outside on weekdays",
        time_zone="Asia/Tokyo",
        conditions=['devices["outdoor-1"].temperature < 15.0', "local.weekday <= 5", 'local.time >= "18:00"'],
        else_actions=[EMIT],
    )
    # Monday 19:30 UTC is Tuesday 04:30 in Tokyo: weekday, but before 18:00 → else.
    run = runner.run(scene.pk, {"kind": "manual", "at": MONDAY_EVENING_PARIS.isoformat()})
    assert run.branch == Branch.ELSE
    # Monday 10:00 UTC is Monday 19:00 in Tokyo → then.
    run = runner.run(scene.pk, {"kind": "manual", "at": MONDAY_NOON_PARIS.isoformat()})
    assert run.branch == Branch.THEN


# --- Delays ------------------------------------------------------------------------------------


def test_a_delay_holds_the_rest_until_resumed_once(make_scene, committed, listen, settings):
    actuator("fan_01")
    fan = listen("fan_01")
    scene = make_scene(name="pulse", then_actions=[FAN_ON, {"type": "delay", "params": {"seconds": 120}}, FAN_OFF])
    settings.CELERY_TASK_ALWAYS_EAGER = False  # the continuation would go to a worker; resumed by hand here
    with committed():
        execution = services.execute_scene(scene, None)
    assert execution.status == ExecutionStatus.WAITING and execution.resume_index == 2
    assert [r["status"] for r in execution.results] == ["ok", "waiting"]
    assert commands_received(fan, 1) == [("set_state", {"state": True})]

    assert runner.resume(execution.pk, 1) is None  # not where it waits
    with committed():
        resumed = runner.resume(execution.pk, 2)
    assert resumed.status == ExecutionStatus.DONE and resumed.finished_at is not None
    assert [r["status"] for r in resumed.results] == ["ok", "waiting", "ok"]
    assert commands_received(fan, 1) == [("set_state", {"state": False})]
    assert runner.resume(execution.pk, 2) is None  # delivered twice: runs once
    assert DeviceCommand.objects.filter(device_id="fan_01").count() == 2


def test_a_delay_resumed_while_the_scene_is_disabled_runs_nothing_more(make_scene, committed):
    scene = make_scene(name="pulse off", then_actions=[EMIT, {"type": "delay", "params": {"seconds": 5}}, EMIT])
    with committed():
        execution = services.execute_scene(scene, None)
    Scene.objects.filter(pk=scene.pk).update(enabled=False)
    resumed = runner.resume(execution.pk, 2)
    assert resumed.status == ExecutionStatus.DONE and "disabled" in resumed.error and len(resumed.results) == 2


@pytest.mark.django_db(transaction=True)
def test_with_eager_celery_a_delay_is_a_timer_in_the_process(listen, eager_celery):
    actuator("fan_01")
    fan = listen("fan_01")
    scene = services.create_scene(
        None,
        name="timer",
        triggers=[{"kind": "manual"}],
        then_actions=[FAN_ON, {"type": "delay", "params": {"seconds": 0.3}}, FAN_OFF],
    )
    started = time.monotonic()
    execution = services.execute_scene(scene, None)
    assert execution.status == ExecutionStatus.WAITING
    assert commands_received(fan, 2) == [("set_state", {"state": True}), ("set_state", {"state": False})]
    assert time.monotonic() - started >= 0.3
    deadline = time.monotonic() + 5
    while SceneExecution.objects.get(pk=execution.pk).status != ExecutionStatus.DONE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert SceneExecution.objects.get(pk=execution.pk).status == ExecutionStatus.DONE


# --- Chains and loops ----------------------------------------------------------------------------


def test_run_scene_chains_and_cycles(make_scene, committed, eager_celery, settings):
    c = make_scene(name="C")
    b = make_scene(name="B", then_actions=[{"type": "run_scene", "params": {"scene": c.pk}}])
    a = make_scene(name="A", then_actions=[{"type": "run_scene", "params": {"scene": b.pk}}, EMIT])
    with committed():
        services.execute_scene(a, None)
    [run_b], [run_c] = executions(b), executions(c)
    assert (
        run_b.trigger["kind"] == "scene" and run_b.trigger["scene"]["id"] == a.pk and run_b.trigger["chain"] == [a.pk]
    )
    assert run_c.trigger["chain"] == [a.pk, b.pk] and run_c.branch == Branch.THEN

    # Refused when saved: a cycle, and a scene running itself.
    with pytest.raises(ValidationError) as refused:
        services.update_scene(c, None, then_actions=[{"type": "run_scene", "params": {"scene": a.pk}}])
    assert "loop" in str(refused.value) and "A (" in str(refused.value)
    with pytest.raises(ValidationError, match="cannot run itself"):
        services.update_scene(c, None, then_actions=[{"type": "run_scene", "params": {"scene": c.pk}}])

    # Cut at run time: a chain that comes back, and one too deep.
    looped = runner.run(b.pk, {"kind": "scene", "chain": [b.pk, a.pk]})
    assert looped.branch == Branch.SKIPPED and looped.error.startswith("Loop cut off") and "B (" in looped.error
    settings.SCENE_MAX_CHAIN_DEPTH = 2
    with committed():
        services.execute_scene(a, None)
    assert executions(b)[-1].branch == Branch.THEN
    cut = executions(c)[-1]
    assert len(executions(c)) == 2 and cut.branch == Branch.SKIPPED and cut.error.startswith("Chain cut off")


def test_a_scene_looping_through_device_data_is_cut_off(make_scene, settings):
    settings.SCENE_LOOP_MAX_RUNS = 3
    scene = make_scene(name="echo", triggers=[{"kind": "device_data"}])
    start = datetime.now(UTC)
    branches = [
        runner.run(scene.pk, {"kind": "device_data", "device": "x"}, now=start + timedelta(seconds=i)).branch
        for i in range(5)
    ]
    assert branches == ["then", "then", "then", "skipped", "skipped"]
    assert "Loop suspected" in executions(scene)[-1].error
    # By hand it still runs.
    assert services.execute_scene(scene, None).branch == Branch.THEN


class RaiseTestAlarm(ActionSpec):
    """Stands for an action whose effect is an alarm transition reported to scenes after commit."""

    type = "test_scene_alarm"
    schema = {"type": "object"}

    def execute(self, ctx, params, rule, message):
        transaction.on_commit(lambda: engine.on_alarm(1, "boiler", "loop", "major", "raised"))


@pytest.mark.django_db(transaction=True)
def test_a_scene_started_by_its_own_alarm_is_cut_off(eager_celery):
    register(RaiseTestAlarm())
    sensor("boiler")
    try:
        scene = services.create_scene(
            None,
            name="alarm echo",
            triggers=[{"kind": "alarm", "alarm_type": "loop"}, {"kind": "manual"}],
            then_actions=[{"type": "test_scene_alarm", "params": {}}],
        )
        services.execute_scene(scene, None)
        runs = executions(scene)
        assert [e.trigger["kind"] for e in runs] == ["manual", "alarm"]
        assert runs[1].branch == Branch.SKIPPED and runs[1].trigger["chain"] == [scene.pk]
        assert runs[1].error.startswith("Loop cut off")
    finally:
        from rules import actions as registry

        registry._REGISTRY.pop("test_scene_alarm", None)


# --- Alarms actions, events and metrics ----------------------------------------------------------


def test_scenes_raise_and_clear_alarms(make_scene, committed):
    from alarms.models import Alarm

    sensor("boiler")
    raise_it = make_scene(
        name="raise",
        then_actions=[{"type": "raise_alarm", "params": {"type": "overheat", "severity": "major", "device": "boiler"}}],
    )
    clear_it = make_scene(
        name="clear", then_actions=[{"type": "clear_alarm", "params": {"type": "overheat", "device": "boiler"}}]
    )
    with committed():
        execution = services.execute_scene(raise_it, None)
    assert execution.results[0]["status"] == "ok"
    alarm = Alarm.objects.get(device_id="boiler", type="overheat")
    assert alarm.source == f"scene:{raise_it.pk}" and alarm.severity == "major"
    with committed():
        services.execute_scene(clear_it, None)
    alarm.refresh_from_db()
    assert alarm.ended_at is not None


def test_executions_are_announced_and_counted(make_scene, committed, bus):
    listener = bus("scene.executed")
    sensor("gone-later")
    scene = make_scene(
        name="announced",
        then_actions=[EMIT, {"type": "clear_alarm", "params": {"type": "overheat", "device": "gone-later"}}],
    )
    before = sample("fluxiot_scene_executions_total", {"branch": "then"})
    failed_before = sample("fluxiot_scene_actions_total", {"outcome": "failed"})
    with committed():
        execution = services.execute_scene(scene, None)
    [event] = listener.received()
    assert event["data"]["scene"] == {"id": scene.pk, "name": "announced"}
    assert event["data"]["execution"] == execution.pk and event["data"]["branch"] == "then"
    assert event["data"]["trigger"] == "manual" and event["data"]["status"] == "done"
    assert sample("fluxiot_scene_executions_total", {"branch": "then"}) == before + 1
    assert sample("fluxiot_scene_actions_total", {"outcome": "failed"}) == failed_before + execution.failed_actions


def test_the_scene_set_reloads_after_a_change(make_scene, committed):
    scene = make_scene(name="reloaded", triggers=[{"kind": "device_data"}])
    assert any(t.scene_id == scene.pk for t in SceneSet.current().triggers)
    with committed():
        services.set_enabled(scene, False, None)
    assert not any(t.scene_id == scene.pk for t in SceneSet.current().triggers)


def test_a_scene_naming_a_deleted_device_can_still_be_disabled_but_not_saved(make_scene, committed):
    gone = sensor("short-lived")
    scene = make_scene(name="stale trigger", triggers=[{"kind": "device_data", "device": "short-lived"}])
    gone.delete()
    with pytest.raises(ValidationError, match="no device 'short-lived'"):
        services.update_scene(scene, None, description="touched")
    with committed():
        services.set_enabled(scene, False, None)
    scene.refresh_from_db()
    assert not scene.enabled


def test_a_scenes_action_lists_are_checked_with_their_names():
    from control.scenes import actions as scene_actions

    assert scene_actions.validate("on", "else_actions") == [
        'else_actions: a list of actions, each {"type": …, "params": {…}}.'
    ]
    assert scene_actions.validate([{"type": "emit_event"}] * 21, "then_actions") == [
        "then_actions: at most 20 actions."
    ]
    [unknown, delay, missing] = scene_actions.validate(
        [{"type": "teleport"}, {"type": "delay", "params": {}}, {"type": "run_scene", "params": {"scene": 999999}}],
        "then_actions",
    )
    assert unknown.startswith("then_actions[0]: unknown action type 'teleport' (")
    assert " delay, " in unknown and " run_scene, " in unknown  # the scene-only types are listed
    assert delay.startswith("then_actions[1] (delay): ")
    assert missing == "then_actions[2] (run_scene): scene: no scene 999999"
