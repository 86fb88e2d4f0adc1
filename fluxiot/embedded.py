"""The embedded mode's stand-ins for the production processes, run inside `manage.py serve`.

Production runs the MQTT broker, the bridge, Celery workers and beat as processes of their own
(Procfile). With no MQTT_URL and no REDIS_URL, `serve` runs all of it in one process instead: the
embedded broker, a bridge thread whose batches run the ingest task in-process (Celery is eager),
and a thread that runs the beat schedule: the interval entries of CELERY_BEAT_SCHEDULE, and the
enabled crontab tasks of django-celery-beat's database (scheduled scenes own such tasks), which
production's beat reads with its DatabaseScheduler.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import F
from django.utils import timezone

logger = logging.getLogger(__name__)

# Database tasks beat adds by itself, which the embedded mode has no use for.
IGNORED_TASKS = frozenset({"celery.backend_cleanup"})


@dataclass
class CronEntry:
    """One enabled crontab task of the database, as loaded."""

    id: int
    name: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    tz: zoneinfo.ZoneInfo
    schedule: Any  # celery.schedules.crontab: its minute, hour, … are sets of ints
    last_run_at: datetime | None = None
    start_time: datetime | None = None
    expires: datetime | None = None

    def matches(self, now: datetime) -> bool:
        """Whether ``now`` falls in a minute the crontab names, in its own time zone (day of month
        and day of week must both match, as Celery's crontab reads them)."""
        here = now.astimezone(self.tz)
        cron = self.schedule
        return (
            here.minute in cron.minute
            and here.hour in cron.hour
            and here.day in cron.day_of_month
            and here.month in cron.month_of_year
            and here.isoweekday() % 7 in cron.day_of_week
        )

    def due(self, now: datetime) -> bool:
        """Matches this minute, has not run in it yet, has started and not expired."""
        if self.start_time is not None and now < self.start_time:
            return False
        if self.expires is not None and now >= self.expires:
            return False
        if not self.matches(now):
            return False
        minute = now.astimezone(UTC).replace(second=0, microsecond=0)
        return self.last_run_at is None or self.last_run_at < minute


class DatabaseSchedule:
    """The enabled crontab ``PeriodicTask`` rows, reloaded when django-celery-beat says they changed
    (checked every ``check_seconds``) and at least every ``reload_seconds``. At most ``limit`` tasks
    are loaded; those named in ``skip`` (the settings' own entries, should a DatabaseScheduler have
    copied them into the table) are left out."""

    def __init__(
        self,
        *,
        reload_seconds: float = 30.0,
        check_seconds: float = 5.0,
        limit: int = 1000,
        skip: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        self.reload_seconds, self.check_seconds, self.limit = reload_seconds, check_seconds, limit
        self.skip = frozenset(skip)
        self.entries: list[CronEntry] = []
        self._loaded_at: float | None = None
        self._checked_at = 0.0
        self._change: datetime | None = None

    def load(self) -> list[CronEntry]:
        from celery.schedules import crontab
        from django_celery_beat.models import PeriodicTask, PeriodicTasks

        self._change = PeriodicTasks.last_change()
        rows = list(
            PeriodicTask.objects.filter(enabled=True, crontab__isnull=False)
            .exclude(name__in=list(self.skip))
            .exclude(task__in=list(IGNORED_TASKS))
            .select_related("crontab")
            .order_by("pk")[: self.limit + 1]
        )
        if len(rows) > self.limit:
            logger.warning("embedded beat: more than %d crontab tasks; only the first %d run", self.limit, self.limit)
            rows = rows[: self.limit]
        entries = []
        for row in rows:
            cron = row.crontab
            try:
                schedule = crontab(
                    minute=cron.minute,
                    hour=cron.hour,
                    day_of_week=cron.day_of_week,
                    day_of_month=cron.day_of_month,
                    month_of_year=cron.month_of_year,
                )
                args = json.loads(row.args or "[]")
                kwargs = json.loads(row.kwargs or "{}")
                tz = (
                    cron.timezone
                    if isinstance(cron.timezone, zoneinfo.ZoneInfo)
                    else zoneinfo.ZoneInfo(str(cron.timezone))
                )
            except (ValueError, TypeError, zoneinfo.ZoneInfoNotFoundError) as exc:
                logger.warning("embedded beat: periodic task %r is left out: %s", row.name, exc)
                continue
            entries.append(
                CronEntry(
                    id=row.pk,
                    name=row.name,
                    task=row.task,
                    args=args if isinstance(args, list) else [],
                    kwargs=kwargs if isinstance(kwargs, dict) else {},
                    tz=tz,
                    schedule=schedule,
                    last_run_at=row.last_run_at,
                    start_time=row.start_time,
                    expires=row.expires,
                )
            )
        self.entries = entries
        self._loaded_at = self._checked_at = time.monotonic()
        return entries

    def _stale(self) -> bool:
        from django_celery_beat.models import PeriodicTasks

        now = time.monotonic()
        if self._loaded_at is None or now - self._loaded_at >= self.reload_seconds:
            return True
        if now - self._checked_at < self.check_seconds:
            return False
        self._checked_at = now
        return PeriodicTasks.last_change() != self._change

    def due(self, now: datetime) -> list[CronEntry]:
        """The entries due at ``now`` (reloading first when the table changed)."""
        if self._stale():
            self.load()
        return [entry for entry in self.entries if entry.due(now)]

    def mark_run(self, entry: CronEntry, now: datetime) -> None:
        """Record the run before it starts, as production's beat does: never twice in one minute."""
        from django_celery_beat.models import PeriodicTask

        entry.last_run_at = now
        PeriodicTask.objects.filter(pk=entry.id).update(last_run_at=now, total_run_count=F("total_run_count") + 1)


class PeriodicTasks:
    """Runs, in a daemon thread, every entry of ``schedule`` (CELERY_BEAT_SCHEDULE by default:
    interval schedules, in seconds) and, with ``database``, the enabled crontab tasks of the
    database at their minutes (no catching up on minutes the process was not running). Each task
    runs in the thread (Celery's ``apply``); a failing one is logged and the others go on. The
    thread closes its database connections after each round (``close_old_connections``)."""

    def __init__(self, schedule: dict[str, dict[str, Any]] | None = None, *, database: bool = True) -> None:
        self.schedule = dict(settings.CELERY_BEAT_SCHEDULE if schedule is None else schedule)
        self.database = DatabaseSchedule(skip=set(self.schedule)) if database else None
        self._due = {name: time.monotonic() for name in self.schedule}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedded-beat", daemon=True)

    def start(self) -> PeriodicTasks:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.tick()
            except DatabaseError:
                logger.exception("embedded beat: the database schedule could not be read")
            finally:
                close_old_connections()

    def tick(self, now: datetime | None = None) -> list[str]:
        """Run what is due now (``now``: the wall-clock time the crontab tasks are judged at);
        returns the names of the entries run."""
        ran = []
        for name, entry in self.schedule.items():
            if time.monotonic() < self._due[name] or self._stop.is_set():
                continue
            self._due[name] = time.monotonic() + float(entry["schedule"])
            self._apply(name, entry["task"], [], {})
            ran.append(name)
        if self.database is not None:
            now = now or timezone.now()
            for cron_entry in self.database.due(now):
                if self._stop.is_set():
                    break
                self.database.mark_run(cron_entry, now)
                self._apply(cron_entry.name, cron_entry.task, cron_entry.args, cron_entry.kwargs)
                ran.append(cron_entry.name)
        return ran

    @staticmethod
    def _apply(name: str, task_name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        from fluxiot.celery import app

        task = app.tasks.get(task_name)
        if task is None:  # the apps' tasks modules are found lazily (a worker imports them at start)
            app.loader.import_default_modules()
            task = app.tasks.get(task_name)
        if task is None:
            logger.error("embedded beat: %s names an unknown task %r", name, task_name)
            return
        try:
            task.apply(args=args, kwargs=kwargs, throw=True)
        except Exception:
            logger.exception("embedded beat: %s failed", name)
