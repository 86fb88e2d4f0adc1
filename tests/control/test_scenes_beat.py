"""The embedded mode's beat (fluxiot/embedded.py) runs the database's crontab tasks — the scheduled
scenes' — at their minutes in their time zones, once per minute, and the settings' interval entries
as before; in its thread too."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from control.models import SceneExecution
from control.scenes import services
from fluxiot.embedded import PeriodicTasks

pytestmark = pytest.mark.django_db

EMIT = {"type": "emit_event", "params": {"message": "tick"}}
MONDAY_7_BERLIN = datetime(2025, 6, 30, 5, 0, 12, tzinfo=UTC)  # 07:00:12 in Berlin (CEST)


def scheduled(name="weekday 7", cron="0 7 * * 1-5", time_zone="Europe/Berlin", **fields):
    return services.create_scene(
        None,
        name=name,
        time_zone=time_zone,
        triggers=[{"kind": "schedule", "cron": cron}],
        then_actions=[EMIT],
        **fields,
    )


def beat(schedule=None):
    periodic = PeriodicTasks(schedule={} if schedule is None else schedule)
    periodic.database.check_seconds = 0  # look for changes on every tick
    return periodic


def test_a_due_crontab_task_runs_once_in_its_minute_and_time_zone():
    scene = scheduled()
    name = f"scene:{scene.pk}:0"
    periodic = beat()
    assert periodic.tick(MONDAY_7_BERLIN) == [name]
    [execution] = SceneExecution.objects.filter(scene=scene)
    assert execution.trigger["kind"] == "schedule" and execution.trigger["cron"] == "0 7 * * 1-5"
    assert execution.branch == "then"
    task = PeriodicTask.objects.get(name=name)
    assert task.last_run_at == MONDAY_7_BERLIN and task.total_run_count == 1

    assert periodic.tick(MONDAY_7_BERLIN + timedelta(seconds=40)) == []  # the same minute
    assert periodic.tick(MONDAY_7_BERLIN + timedelta(minutes=1)) == []  # 07:01
    assert periodic.tick(MONDAY_7_BERLIN + timedelta(hours=2)) == []  # 07:00 UTC is 09:00 in Berlin
    assert periodic.tick(MONDAY_7_BERLIN + timedelta(days=5)) == []  # Saturday
    assert periodic.tick(MONDAY_7_BERLIN + timedelta(days=1)) == [name]  # Tuesday 07:00
    assert SceneExecution.objects.filter(scene=scene).count() == 2

    # A new process does not run it again in a minute it already ran (last_run_at is stored).
    assert beat().tick(MONDAY_7_BERLIN + timedelta(days=1, seconds=5)) == []

    # Disabled with the scene: no longer loaded.
    services.set_enabled(scene, False, None)
    assert periodic.tick(MONDAY_7_BERLIN + timedelta(days=2)) == []
    assert SceneExecution.objects.filter(scene=scene).count() == 2


def test_only_enabled_crontab_tasks_that_are_not_settings_entries_run():
    every_minute = CrontabSchedule.objects.create(minute="*", hour="*", timezone="UTC")
    PeriodicTask.objects.create(
        name="interval one",
        task="control.tasks.sweep_commands",
        interval=IntervalSchedule.objects.create(every=5, period="seconds"),
    )
    PeriodicTask.objects.create(name="off", task="control.tasks.sweep_commands", crontab=every_minute, enabled=False)
    PeriodicTask.objects.create(name="sweep-commands", task="control.tasks.sweep_commands", crontab=every_minute)
    PeriodicTask.objects.create(name="unknown task", task="nowhere.task", crontab=every_minute)
    PeriodicTask.objects.create(name="on", task="control.tasks.sweep_commands", crontab=every_minute)
    periodic = beat({"sweep-commands": {"task": "control.tasks.sweep_commands", "schedule": 3600.0}})
    # The settings entry (once, then every hour), "on", and the unknown task (logged, not raised).
    assert periodic.tick(MONDAY_7_BERLIN) == ["sweep-commands", "unknown task", "on"]
    assert periodic.tick(MONDAY_7_BERLIN + timedelta(minutes=1)) == ["unknown task", "on"]


def test_a_failing_task_does_not_stop_the_others():
    scene = scheduled(name="first")
    other = scheduled(name="second")
    # Its task fails (a broken argument): logged, and the next task still runs.
    PeriodicTask.objects.filter(name=f"scene:{scene.pk}:0").update(args='["not a scene id"]')
    ran = beat().tick(MONDAY_7_BERLIN)
    assert ran == [f"scene:{scene.pk}:0", f"scene:{other.pk}:0"]
    assert SceneExecution.objects.filter(scene=other).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_beat_thread_runs_a_due_scene_and_stops():
    scene = scheduled(name="every minute", cron="* * * * *", time_zone="Pacific/Auckland")
    periodic = PeriodicTasks(schedule={}).start()
    try:
        deadline = time.monotonic() + 10
        while not SceneExecution.objects.filter(scene=scene).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        started = time.monotonic()
        periodic.stop()
    assert time.monotonic() - started < 3
    [execution] = SceneExecution.objects.filter(scene=scene)
    assert execution.trigger["kind"] == "schedule" and execution.branch == "then"
