"""Celery tasks: thin wrappers around telemetry.services."""

from __future__ import annotations

from typing import Any

import psycopg
from celery import shared_task
from django.db import InterfaceError, OperationalError

from telemetry import services


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    # The store writes with COPY on the raw psycopg cursor: a connection cut there (the database
    # restarting, an administrator's terminate) raises psycopg's own errors, not Django's.
    autoretry_for=(OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def ingest_batch(items: list[list[Any]]) -> dict[str, int]:
    """One batch from the bridge or HTTP ingest. Idempotent: a redelivered batch stores nothing
    twice. Database outages are retried with backoff until it is back."""
    result = services.ingest_batch(items)
    return {"messages": result.messages, "stored": result.stored, "rejected": sum(result.rejected.values())}


@shared_task
def mark_silent_devices_offline() -> int:
    return services.mark_silent_devices_offline()


@shared_task
def create_partitions() -> None:
    services.create_partitions()


@shared_task
def trim_dead_letters() -> int:
    return services.trim_dead_letters()
