"""Celery tasks: thin wrappers around control.services."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from control import services

_RETRY = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 20,
}


@shared_task(acks_late=True, reject_on_worker_lost=True, **_RETRY)
def dispatch_batch(batch_id: str) -> int:
    """Publish a batch's commands to its online devices (the others wait for them to come online)."""
    return services.dispatch_all(batch_id=batch_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, **_RETRY)
def deliver_pending(device_id: str) -> int:
    """A device came online: send what waited for it, oldest first."""
    return services.dispatch_all(device_id=device_id)


@shared_task
def sweep_commands() -> dict[str, int]:
    return services.sweep()
