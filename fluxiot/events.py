"""The event bus: the one way apps tell each other that something happened.

``publish(type, data)`` sends the event after the current transaction commits (so nobody hears of a
change that was rolled back) to two Channels groups: ``events`` (everything) and ``events.<type>``.
Consumers subscribe by joining the groups of the types they want (``subscribe_groups``). The
transport is the Channels layer: in-memory in the embedded mode, Redis in production.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from asgiref.sync import async_to_sync
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


def send_now(event: dict[str, Any]) -> None:
    """Send an already built event to its groups at once. Failures are logged, never raised:
    the change that caused the event has already been committed."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "bus.event", "event": event}

    async def send() -> None:
        await layer.group_send(ALL_EVENTS_GROUP, message)
        await layer.group_send(group_for(event["type"]), message)

    try:
        async_to_sync(send)()
    except Exception:
        logger.exception("event bus: could not send %s", event["type"])


def publish(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Publish an event once the current transaction (if any) commits. Returns the event."""
    event = build_event(event_type, data)
    transaction.on_commit(lambda: send_now(event))
    return event
