"""Replies arrive through the ingest path (bridge → ingest_batch) like any uplink message."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from control import services
from control.choices import CommandStatus
from devices.choices import DeviceStatus
from telemetry import services as ingest
from telemetry.choices import RejectReason
from telemetry.models import DeadLetter
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def item(device_id: str, command_id: str, body: object) -> list:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return [f"devices/{device_id}/commands/{command_id}/reply", payload, int(time.time() * 1000)]


def test_replies_in_an_ingest_batch_update_their_commands_and_bad_ones_are_dead_lettered(online_device):
    command = services.send_command(online_device, "set_state", {"state": True})
    finished = services.send_command(online_device, "reboot", {})
    services.cancel_command(finished)
    other = DeviceFactory(activation_state="active")
    items = [
        item(online_device.id, str(command.pk), {"status": "executing"}),
        item(online_device.id, str(command.pk), {"status": "success", "result": {"state": True}}),
        item(online_device.id, str(finished.pk), {"status": "success"}),  # after the cancel: kept, no effect
        item(other.id, str(command.pk), {"status": "failed"}),  # someone else's command
        item(online_device.id, str(uuid.uuid4()), {"status": "success"}),
        item(online_device.id, str(command.pk), b"{oops"),
        item(online_device.id, str(command.pk), {"status": "finished"}),
    ]
    result = ingest.ingest_batch(items)

    command.refresh_from_db()
    assert command.status == CommandStatus.SUCCESS and command.result == {"state": True}
    finished.refresh_from_db()
    assert finished.status == CommandStatus.CANCELLED
    assert finished.replies.get().applied is False
    assert dict(result.rejected) == {
        RejectReason.WRONG_DEVICE: 1,
        RejectReason.UNKNOWN_COMMAND: 1,
        RejectReason.MALFORMED_JSON: 1,
        RejectReason.BAD_REPLY: 1,
    }
    letters = DeadLetter.objects.filter(reason=RejectReason.WRONG_DEVICE).get()
    assert letters.device_id == other.id and letters.topic.endswith("/reply")


def test_a_reply_is_a_sign_of_life(db):
    device = DeviceFactory(activation_state="active", status=DeviceStatus.OFFLINE)
    command = services.send_command(device, "reboot", {})
    ingest.ingest_batch([item(device.id, str(command.pk), {"status": "success"})])
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE and device.last_seen_at is not None
