"""Handing batches to the ingest task: the one place the transport edges meet Celery."""

from __future__ import annotations

from typing import Any


def hand_off(items: list[list[Any]]) -> None:
    """Queue one batch of ``[topic, payload, received_ms(, "oversize")]`` items for ingestion.
    Returns once the broker has the task (or, in the embedded mode, once it ran); raises otherwise."""
    from telemetry.tasks import ingest_batch

    ingest_batch.apply_async(args=[items], serializer="msgpack")
