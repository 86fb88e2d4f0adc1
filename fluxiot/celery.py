"""The Celery app. Tasks live in each app's ``tasks.py``; settings come from ``CELERY_*``."""

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fluxiot.settings")

logger = logging.getLogger(__name__)

app = Celery("fluxiot")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _serve_worker_metrics(**kwargs: Any) -> None:
    """Each worker process serves its Prometheus metrics on WORKER_METRICS_PORT + its index."""
    from billiard.process import current_process
    from django.conf import settings
    from prometheus_client import start_http_server

    if not settings.WORKER_METRICS_PORT:
        return
    port = settings.WORKER_METRICS_PORT + (getattr(current_process(), "index", 0) or 0)
    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        logger.warning("worker metrics: port %s unavailable: %s", port, exc)


@task_prerun.connect
@task_postrun.connect
def _return_database_connections(task: Any = None, **kwargs: Any) -> None:
    """Around each task, hand the database connection back to the process's pool (or drop it when
    unusable), as Django does around a request. Celery's own fixup would close the whole pool
    around every task of a prefork worker, so each task paid for a new PostgreSQL session (two
    backends forked per ingest batch, measured); settings.CELERY_DB_REUSE_MAX keeps it from doing
    that. Eager tasks (the embedded mode) run inside their caller, whose connection is left alone."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


@worker_ready.connect
def _restore_orphaned_tasks(sender: Any, **kwargs: Any) -> None:
    """A worker that starts takes back, at once, the tasks a dead worker had taken but not
    acknowledged (acks_late) once their visibility timeout has passed. Kombu does this too, but
    only on a slow periodic cycle; a batch killed with its worker would wait minutes."""
    try:
        with sender.app.connection_for_write() as connection:
            qos = getattr(connection.default_channel, "qos", None)
            if hasattr(qos, "restore_visible"):  # the Redis transport
                qos.restore_visible(num=10_000, interval=1)
    except Exception:
        logger.exception("could not restore unacknowledged tasks at start")
