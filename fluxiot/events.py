"""The event bus: the one way apps tell each other that something happened.

``publish(type, data)`` sends the event after the current transaction commits (so nobody hears of a
change that was rolled back) to two Channels groups: ``events`` (everything) and ``events.<type>``.
Consumers subscribe by joining the groups of the types they want (``subscribe_groups``). The
transport is the Channels layer: in-memory in the embedded mode, Redis in production.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

ALL_EVENTS_GROUP = "events"
# Channel group names allow ASCII letters, digits, hyphens, underscores and periods.
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

# Event types, named ``<subject>.<what happened>``.
DEVICE_CREATED = "device.created"
DEVICE_UPDATED = "device.updated"
DEVICE_DELETED = "device.deleted"
DEVICES_IMPORTED = "device.imported"
DEVICES_MOVED = "device.moved"
GROUP_CREATED = "group.created"
GROUP_UPDATED = "group.updated"
GROUP_DELETED = "group.deleted"
DEVICE_ATTRIBUTES_UPDATED = "device.attributes_updated"
TELEMETRY_RECEIVED = "telemetry.received"
DEVICE_STATUS_CHANGED = "device.status_changed"
DEVICE_ACTIVATION_CHANGED = "device.activation_changed"
DEVICE_CREDENTIALS_ROTATED = "device.credentials_rotated"
COMMAND_STATUS_CHANGED = "command.status_changed"
COMMAND_BATCH_CREATED = "command.batch_created"
RULE_CHANGED = "rule.changed"
RULE_MATCHED = "rule.matched"
PLUGIN_CHANGED = "plugin.changed"
SCENE_CHANGED = "scene.changed"
SCENE_EXECUTED = "scene.executed"
# Alarms (data: alarm, device, severity, transition, actor) and notification deliveries (data:
# delivery, channel, kind, reason, alarm, device, status, attempts, response_code, error).
ALARM_RAISED = "alarm.raised"
ALARM_UPDATED = "alarm.updated"  # raised again: transition "repeated" (count) or "escalated" (severity)
ALARM_ACKNOWLEDGED = "alarm.acknowledged"
ALARM_CLEARED = "alarm.cleared"
NOTIFICATION_DELIVERED = "notification.delivered"
NOTIFICATION_FAILED = "notification.failed"  # an attempt failed; another one follows
NOTIFICATION_DEAD = "notification.dead"  # given up: the last attempt failed, or the failure was final


def group_for(event_type: str) -> str:
    """The Channels group that carries events of one type."""
    return f"{ALL_EVENTS_GROUP}.{event_type}"


def subscribe_groups(event_types: list[str] | None = None) -> list[str]:
    """The groups a consumer joins to hear the given types (all events when None)."""
    if not event_types:
        return [ALL_EVENTS_GROUP]
    return [group_for(t) for t in event_types]


def build_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    if not _TYPE_RE.match(event_type):
        raise ValueError(f"bad event type {event_type!r}")
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "time": timezone.now().isoformat(),
        "data": data,
    }


class _Sender:
    """One event loop per process, on a daemon thread, that sends events to the channel layer in
    the order they were published.

    ``async_to_sync`` per event would start a new loop and, with the Redis layer, open a new
    connection each time (about 50 ms per batch event in the ingest worker); here the loop and its
    connections live as long as the process, and publishers do not wait for Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._pending = 0

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        # Called with self._lock held.
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                self._queue = asyncio.Queue()
                loop.create_task(self._drain())
                ready.set()
                loop.run_forever()

            threading.Thread(target=run, name="event-bus-sender", daemon=True).start()
            ready.wait()
            self._loop = loop
        return self._loop

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            try:
                layer = get_channel_layer()
                if layer is not None:
                    message = {"type": "bus.event", "event": event}
                    await layer.group_send(ALL_EVENTS_GROUP, message)
                    await layer.group_send(group_for(event["type"]), message)
            except Exception:
                logger.exception("event bus: could not send %s", event.get("type"))
            finally:
                with self._lock:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()

    def submit(self, event: dict[str, Any]) -> None:
        with self._lock:
            loop = self._ensure_loop()
            self._pending += 1
        loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every event submitted so far has been sent (graceful shutdown, tests)."""
        with self._lock:
            self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)


_sender = _Sender()


def send_now(event: dict[str, Any]) -> None:
    """Send an already built event to its groups without waiting. Failures are logged, never
    raised: the change that caused the event has already been committed."""
    _sender.submit(event)


def flush(timeout: float = 5.0) -> None:
    """Wait for the events sent so far to leave this process."""
    _sender.flush(timeout)


def publish(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Publish an event once the current transaction (if any) commits. Returns the event."""
    event = build_event(event_type, data)
    transaction.on_commit(lambda: send_now(event))
    return event
