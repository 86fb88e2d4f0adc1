"""The Celery app. Tasks live in each app's ``tasks.py``; settings come from ``CELERY_*``."""

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

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
