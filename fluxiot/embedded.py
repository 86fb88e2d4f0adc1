"""The embedded mode's stand-ins for the production processes, run inside `manage.py serve`.

Production runs the MQTT broker, the bridge, Celery workers and beat as processes of their own
(Procfile). With no MQTT_URL and no REDIS_URL, `serve` runs all of it in one process instead: the
embedded broker, a bridge thread whose batches run the ingest task in-process (Celery is eager),
and a thread that runs the beat schedule.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)


class PeriodicTasks:
    """Runs every entry of CELERY_BEAT_SCHEDULE (interval schedules) in a daemon thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedded-beat", daemon=True)

    def start(self) -> PeriodicTasks:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from fluxiot.celery import app

        due = {name: time.monotonic() for name in settings.CELERY_BEAT_SCHEDULE}
        while not self._stop.wait(1.0):
            for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
                if time.monotonic() < due[name]:
                    continue
                due[name] = time.monotonic() + float(entry["schedule"])
                try:
                    app.tasks[entry["task"]].apply(throw=True)
                except Exception:
                    logger.exception("embedded beat: %s failed", name)
                finally:
                    close_old_connections()
