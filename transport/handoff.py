"""Handing batches to the ingest task: the one place the transport edges meet Celery."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import close_old_connections


def hand_off(items: list[list[Any]]) -> None:
    """Queue one batch of ``[topic, payload, received_ms(, "oversize")]`` items for ingestion.
    Returns once the broker has the task (or, in the embedded mode, once it ran); raises otherwise."""
    from telemetry.tasks import ingest_batch

    if settings.CELERY_TASK_ALWAYS_EAGER:
        # The task runs here, in the bridge's thread: treat each batch like a request, so a
        # connection that went bad is replaced rather than reused forever.
        close_old_connections()
        try:
            ingest_batch.apply_async(args=[items], serializer="msgpack")
        finally:
            close_old_connections()
        return
    ingest_batch.apply_async(args=[items], serializer="msgpack")
