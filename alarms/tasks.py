"""Celery tasks: sending notifications (with their retries) and the delivery sweep."""

from __future__ import annotations

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError

from alarms import conf, notifications


@shared_task(
    bind=True,
    name="alarms.tasks.deliver_notification",
    acks_late=True,
    reject_on_worker_lost=True,
    # Attempts are counted on the delivery (the channel's max_attempts), not by Celery.
    max_retries=None,
    autoretry_for=(OperationalError, InterfaceError),
    retry_kwargs={"max_retries": 10},
    retry_backoff=True,
    soft_time_limit=conf.webhook_max_timeout() + 30,
    time_limit=conf.webhook_max_timeout() + 60,
)
def deliver_notification(self: Task, delivery_id: int, attempt: int = 0) -> str | None:
    """Make the next attempt of a delivery; a failure worth another try is retried (a Celery retry
    with the backoff's countdown) as the next attempt."""
    outcome = notifications.attempt_delivery(delivery_id, attempt)
    if outcome is None:
        return None
    if outcome.retry_in is not None:
        raise self.retry(args=[delivery_id, outcome.attempts], kwargs={}, countdown=outcome.retry_in)
    return outcome.status


@shared_task(name="alarms.tasks.sweep_deliveries")
def sweep_deliveries() -> dict[str, int]:
    """Queue lost deliveries again; trim the delivery log."""
    return notifications.sweep()
