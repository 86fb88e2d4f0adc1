"""Scheduled scenes: cron expressions, and the django-celery-beat periodic tasks that run them.

Each ``{"kind": "schedule", "cron": "0 7 * * 1-5"}`` trigger of a scene owns one ``PeriodicTask``
named ``scene:<scene id>:<trigger index>``, on a ``CrontabSchedule`` in the scene's time zone,
running ``control.tasks.run_scene(scene_id, {"kind": "schedule", "index": …, "cron": …})``. The
services keep them in step with the scene (``sync`` on every save, enabled with the scene,
``remove`` on delete). Production's beat (``celery beat`` with the DatabaseScheduler) and the
embedded beat (fluxiot/embedded.py) run them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.schedules import ParseException, crontab
from django.core.exceptions import ValidationError
from django_celery_beat import validators
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from control.scenes.choices import TriggerKind

logger = logging.getLogger(__name__)

TASK = "control.tasks.run_scene"
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
_VALIDATORS = {
    "minute": validators.minute_validator,
    "hour": validators.hour_validator,
    "day_of_month": validators.day_of_month_validator,
    "month_of_year": validators.month_of_year_validator,
    "day_of_week": validators.day_of_week_validator,
}
_MAX_LENGTH = {name: CrontabSchedule._meta.get_field(name).max_length for name in CRON_FIELDS}


def parse_cron(expression: Any) -> dict[str, str]:
    """The five fields of a cron expression (``minute hour day-of-month month day-of-week``, as
    Celery reads them: day of week 0 = Sunday … 6 = Saturday, or names: ``mon-fri``). ValueError
    saying what is wrong when it does not parse."""
    if not isinstance(expression, str):
        raise ValueError('A cron expression is a string, e.g. "0 7 * * 1-5".')
    parts = expression.split()
    if len(parts) != 5:
        raise ValueError(
            f"{expression!r}: a cron expression has five fields, minute hour day-of-month month day-of-week "
            '(e.g. "0 7 * * 1-5").'
        )
    fields = dict(zip(CRON_FIELDS, parts, strict=True))
    for name, value in fields.items():
        if len(value) > _MAX_LENGTH[name]:
            raise ValueError(f"{expression!r}: the {name.replace('_', ' ')} field is too long.")
        try:
            _VALIDATORS[name](value)
        except ValidationError as exc:
            raise ValueError(f"{expression!r}: {name.replace('_', ' ')}: {'; '.join(exc.messages)}") from None
    try:
        crontab(**fields)  # what beat itself will read
    except (ValueError, ParseException) as exc:
        if "7" in fields["day_of_week"]:
            raise ValueError(f"{expression!r}: day of week: Sunday is 0 (or sun); 7 is not accepted.") from None
        raise ValueError(f"{expression!r} does not parse: {exc}") from None
    return fields


def task_prefix(scene_id: int) -> str:
    return f"scene:{scene_id}:"


def task_name(scene_id: int, index: int) -> str:
    return f"{task_prefix(scene_id)}{index}"


def describe(expression: str, time_zone: str) -> str:
    """``At 07:00 AM, Monday through Friday (Europe/Paris)``, or the expression when that fails."""
    try:
        from cron_descriptor import get_description

        return f"{get_description(expression)} ({time_zone})"
    except Exception:  # noqa: BLE001 — a description is a nicety; the expression was validated already
        return f"{expression} ({time_zone})"


def _crontab(fields: dict[str, str], time_zone: str) -> CrontabSchedule:
    schedule = CrontabSchedule.objects.filter(**fields, timezone=time_zone).order_by("pk").first()
    if schedule is None:
        schedule = CrontabSchedule.objects.create(**fields, timezone=time_zone)
    return schedule


def sync(scene: Any) -> list[PeriodicTask]:
    """Make the scene's periodic tasks what its schedule triggers say (created, updated, enabled
    with the scene, the others deleted). Call inside the transaction that saves the scene."""
    wanted: dict[str, tuple[int, str]] = {}
    for index, trigger in enumerate(scene.triggers or []):
        if isinstance(trigger, dict) and trigger.get("kind") == TriggerKind.SCHEDULE:
            wanted[task_name(scene.pk, index)] = (index, trigger["cron"])
    stale = PeriodicTask.objects.filter(name__startswith=task_prefix(scene.pk)).exclude(name__in=list(wanted))
    for task in stale:  # one by one: each delete tells the beat (django-celery-beat's change tracking)
        task.delete()
    tasks = []
    for name, (index, cron) in wanted.items():
        schedule = _crontab(parse_cron(cron), scene.time_zone)
        args = json.dumps([scene.pk, {"kind": TriggerKind.SCHEDULE, "index": index, "cron": cron}])
        task = PeriodicTask.objects.filter(name=name).first() or PeriodicTask(name=name)
        changed = (
            task.pk is None
            or task.crontab_id != schedule.pk
            or task.args != args
            or task.enabled != scene.enabled
            or task.task != TASK
        )
        if changed:
            task.task = TASK
            task.crontab = schedule
            task.interval = task.solar = task.clocked = None
            task.args = args
            task.kwargs = "{}"
            task.enabled = scene.enabled
            task.one_off = False
            task.description = f"Scene {scene.name!r}: {describe(cron, scene.time_zone)}"[:1000]
            task.save()
        tasks.append(task)
    if stale or tasks:
        logger.info("scene %s: %d periodic tasks in sync", scene.pk, len(tasks))
    return tasks


def remove(scene_id: int) -> int:
    """Delete the scene's periodic tasks; returns how many there were."""
    tasks = list(PeriodicTask.objects.filter(name__startswith=task_prefix(scene_id)))
    for task in tasks:
        task.delete()
    return len(tasks)


def schedules_of(scene: Any) -> list[dict[str, Any]]:
    """The scene's periodic tasks as the API and the admin show them."""
    tasks = {
        task.name: task
        for task in PeriodicTask.objects.filter(name__startswith=task_prefix(scene.pk)).select_related("crontab")
    }
    shown = []
    for index, trigger in enumerate(scene.triggers or []):
        if not (isinstance(trigger, dict) and trigger.get("kind") == TriggerKind.SCHEDULE):
            continue
        task = tasks.get(task_name(scene.pk, index))
        shown.append(
            {
                "trigger": index,
                "cron": trigger.get("cron"),
                "time_zone": scene.time_zone,
                "description": describe(str(trigger.get("cron")), scene.time_zone),
                "task": task.name if task else None,
                "enabled": bool(task and task.enabled),
                "last_run_at": task.last_run_at.isoformat() if task and task.last_run_at else None,
            }
        )
    return shown
