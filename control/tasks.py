"""Celery tasks: thin wrappers around control.services."""

from __future__ import annotations

from typing import Any

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


# --- Scenes --------------------------------------------------------------------------------------


@shared_task(acks_late=True, reject_on_worker_lost=True, **_RETRY)
def run_scene(scene_id: int, trigger: dict[str, Any] | None = None) -> int | None:
    """Run a scene for a trigger (device data, status, alarm, schedule — beat's periodic tasks call
    this —, another scene). Returns the execution's id (None: the scene is gone)."""
    from control.scenes import runner

    execution = runner.run(scene_id, trigger or {"kind": "schedule"})
    return execution.pk if execution is not None else None


@shared_task(acks_late=True, reject_on_worker_lost=True, **_RETRY)
def resume_scene(execution_id: int, index: int) -> int | None:
    """Go on with a scene's actions after a delay (once: a second delivery does nothing)."""
    from control.scenes import runner

    execution = runner.resume(execution_id, index)
    return execution.pk if execution is not None else None
