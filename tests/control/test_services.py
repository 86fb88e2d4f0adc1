"""Command lifecycle against a real Mosquitto: sending, delivery on coming online, replies, timeouts,
expiry, cancelling, batches."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from control import services
from control.choices import CommandStatus
from control.models import CommandReply, DeviceCommand
from devices import services as device_services
from devices.choices import ActivationState, DeviceStatus
from fluxiot import events
from fluxiot.errors import ConflictError
from telemetry.choices import RejectReason
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db


def send(device, command_type="set_state", params=None, capture=None, **kwargs):
    with capture(execute=True):
        return services.send_command(device, command_type, {"state": True} if params is None else params, **kwargs)


def reply(command, status, device_id=None, at=None, **extra):
    payload = json.dumps({"status": status, **extra}).encode()
    parsed = services.parse_reply(device_id or command.device_id, str(command.pk), payload, at or timezone.now())
    return services.record_replies([parsed])


# --- Sending -------------------------------------------------------------------------------------


def test_command_to_an_online_device_is_published_and_marked_sent(
    online_device, listen, django_capture_on_commit_callbacks, bus
):
    device = listen(online_device.id)
    listener = bus(events.COMMAND_STATUS_CHANGED)
    command = send(online_device, capture=django_capture_on_commit_callbacks, timeout=20)

    message = device.message()
    assert message is not None and message.topic == f"devices/{online_device.id}/commands/{command.pk}"
    body = json.loads(message.payload)
    assert body == {
        "id": str(command.pk),
        "type": "set_state",
        "params": {"state": True},
        "expires_at": command.expires_at.isoformat(),
    }
    assert message.properties.ResponseTopic == f"{message.topic}/reply"
    assert message.properties.CorrelationData == command.pk.bytes
    assert 0 < message.properties.MessageExpiryInterval <= 20
    assert message.qos == 1

    command.refresh_from_db()
    assert command.status == CommandStatus.SENT
    assert command.deadline_at == command.sent_at + timedelta(seconds=20)
    statuses = [c["status"] for e in listener.received() for c in e["data"]["commands"]]
    assert statuses == ["pending", "sent"]


def test_command_to_an_offline_device_waits_and_goes_out_oldest_first_when_it_comes_online(
    listen, django_capture_on_commit_callbacks, eager_celery
):
    offline = DeviceFactory(device_type="actuator", activation_state=ActivationState.ACTIVE, status="offline")
    device = listen(offline.id)
    first = send(offline, capture=django_capture_on_commit_callbacks, params={"state": True})
    second = send(offline, "set_value", {"value": 3}, capture=django_capture_on_commit_callbacks)
    assert device.message(timeout=0.5) is None
    first.refresh_from_db()
    assert first.status == CommandStatus.PENDING

    with django_capture_on_commit_callbacks(execute=True):
        device_services.set_status(offline.id, DeviceStatus.ONLINE, reason="test")

    received = device.commands(2)
    assert [json.loads(m.payload)["id"] for m in received] == [str(first.pk), str(second.pk)]
    assert set(DeviceCommand.objects.values_list("status", flat=True)) == {CommandStatus.SENT}


def test_broker_unreachable_leaves_the_command_pending_and_the_sweep_sends_it_later(
    online_device, settings, django_capture_on_commit_callbacks, mosquitto_broker
):
    from control import publisher

    settings.MQTT_URL = "mqtt://127.0.0.1:9"  # nothing listens there
    settings.EMBEDDED_BROKER = False
    settings.COMMAND_PUBLISH_TIMEOUT = 0.5
    publisher.reset_publisher()
    try:
        command = send(online_device, capture=django_capture_on_commit_callbacks)
        command.refresh_from_db()
        assert command.status == CommandStatus.PENDING

        settings.MQTT_URL = mosquitto_broker.url
        publisher.reset_publisher()
        # Not yet old enough for a retry (it may still be on its way from the first attempt).
        assert services.sweep()["resent"] == 0
        later = timezone.now() + timedelta(seconds=settings.COMMAND_RETRY_AFTER + 1)
        assert services.sweep(now=later)["resent"] == 1
        command.refresh_from_db()
        assert command.status == CommandStatus.SENT
    finally:
        publisher.reset_publisher()


def test_bad_commands_are_refused_with_field_errors(online_device):
    cases = [
        (("reboot_now", {}), "type"),
        (("set_state", {"state": "yes"}), "params"),
        (("set_sampling_rate", {"rate": 0}), "params"),
        (("ptz_control", {"pan": 500}), "params"),
        (("take_snapshot", {}), "type"),  # an actuator has no camera
    ]
    for (command_type, params), field in cases:
        with pytest.raises(ValidationError) as caught:
            services.send_command(online_device, command_type, params)
        assert field in caught.value.message_dict, (command_type, caught.value)
    with pytest.raises(ValidationError) as caught:
        services.send_command(online_device, "reboot", {}, expires_at=timezone.now() - timedelta(seconds=1))
    assert "expires_at" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        services.send_command(online_device, "reboot", {}, timeout=0)
    assert "timeout" in caught.value.message_dict
    disabled = DeviceFactory(activation_state=ActivationState.DISABLED)
    with pytest.raises(ValidationError, match="disabled"):
        services.send_command(disabled, "reboot", {})
    assert not DeviceCommand.objects.exists()


def test_a_device_profile_narrows_the_commands_it_accepts(db):
    device = DeviceFactory(
        device_type="actuator", activation_state=ActivationState.ACTIVE, metadata={"commands": ["reboot"]}
    )
    with pytest.raises(ValidationError, match="does not accept set_state"):
        services.send_command(device, "set_state", {"state": True})
    assert services.send_command(device, "reboot", {}).status == CommandStatus.PENDING


# --- Replies ------------------------------------------------------------------------------------


def test_replies_move_the_command_through_executing_to_success(
    online_device, listen, django_capture_on_commit_callbacks
):
    listen(online_device.id)
    command = send(online_device, capture=django_capture_on_commit_callbacks)
    assert reply(command, "executing") == []
    command.refresh_from_db()
    assert command.status == CommandStatus.EXECUTING and command.delivered_at is not None
    assert reply(command, "success", result={"state": True}) == []
    command.refresh_from_db()
    assert command.status == CommandStatus.SUCCESS
    assert command.result == {"state": True} and command.completed_at is not None
    # Repeated and late replies are kept, and change nothing.
    reply(command, "failed", error="too late")
    command.refresh_from_db()
    assert command.status == CommandStatus.SUCCESS
    assert list(command.replies.values_list("status", "applied")) == [
        ("executing", True),
        ("success", True),
        ("failed", False),
    ]


def test_a_failed_reply_keeps_the_error(online_device, django_capture_on_commit_callbacks, command_broker):
    command = send(online_device, capture=django_capture_on_commit_callbacks)
    reply(command, "failed", error="motor jammed", result={"code": 7})
    command.refresh_from_db()
    assert (command.status, command.error, command.result) == (CommandStatus.FAILED, "motor jammed", {"code": 7})


def test_a_reply_before_the_sent_mark_still_counts(online_device):
    """The device may answer before the dispatcher records "sent" (or the broker ack was lost)."""
    command = services.send_command(online_device, "set_state", {"state": False})  # never dispatched here
    reply(command, "success")
    command.refresh_from_db()
    assert command.status == CommandStatus.SUCCESS
    assert command.sent_at is not None and command.deadline_at is not None


def test_replies_for_unknown_commands_or_other_devices_are_rejected(online_device):
    command = services.send_command(online_device, "reboot", {})
    other = DeviceFactory(activation_state=ActivationState.ACTIVE)
    now = timezone.now()
    replies = [
        services.parse_reply(other.id, str(command.pk), b'{"status": "success"}', now),
        services.parse_reply(online_device.id, str(uuid.uuid4()), b'{"status": "success"}', now),
        services.parse_reply(online_device.id, "not-a-uuid", b'{"status": "success"}', now),
    ]
    rejected = services.record_replies(replies)
    assert sorted(exc.reason for _, exc in rejected) == sorted(
        [RejectReason.WRONG_DEVICE, RejectReason.UNKNOWN_COMMAND, RejectReason.UNKNOWN_COMMAND]
    )
    command.refresh_from_db()
    assert command.status == CommandStatus.PENDING
    assert not CommandReply.objects.exists()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", RejectReason.MALFORMED_JSON),
        (b"[1, 2]", RejectReason.BAD_REPLY),
        (b'{"status": "done"}', RejectReason.BAD_REPLY),
        (b'{"status": "success", "error": 5}', RejectReason.BAD_REPLY),
        (b'{"status": "success", "result": NaN}', RejectReason.MALFORMED_JSON),
        (b'{"status": "success", "result": "\\u0000"}', RejectReason.BAD_REPLY),  # PostgreSQL cannot store NUL
    ],
)
def test_malformed_replies_are_rejected(payload, reason):
    with pytest.raises(services.ReplyRejected) as caught:
        services.parse_reply("dev", str(uuid.uuid4()), payload, timezone.now())
    assert caught.value.reason == reason


# --- Timeouts, expiry, cancelling ---------------------------------------------------------------------


def test_the_sweep_times_out_commands_without_a_final_reply_and_a_late_reply_changes_nothing(
    online_device, listen, django_capture_on_commit_callbacks
):
    listen(online_device.id)
    quiet = send(online_device, capture=django_capture_on_commit_callbacks, timeout=5)
    busy = send(online_device, capture=django_capture_on_commit_callbacks, timeout=5)
    reply(busy, "executing")
    assert services.sweep()["timeout"] == 0
    counts = services.sweep(now=timezone.now() + timedelta(seconds=6))
    assert counts["timeout"] == 2
    for command in (quiet, busy):
        command.refresh_from_db()
        assert command.status == CommandStatus.TIMEOUT and command.completed_at is not None
    reply(quiet, "success")
    quiet.refresh_from_db()
    assert quiet.status == CommandStatus.TIMEOUT
    assert quiet.replies.get().applied is False


def test_undelivered_commands_expire(db, listen, django_capture_on_commit_callbacks, eager_celery):
    offline = DeviceFactory(activation_state=ActivationState.ACTIVE, status="offline")
    device = listen(offline.id)
    soon = timezone.now() + timedelta(seconds=30)
    command = send(offline, "reboot", {}, capture=django_capture_on_commit_callbacks, expires_at=soon)
    assert services.sweep()["expired"] == 0
    assert services.sweep(now=soon + timedelta(seconds=1))["expired"] == 1
    command.refresh_from_db()
    assert command.status == CommandStatus.EXPIRED
    with django_capture_on_commit_callbacks(execute=True):
        device_services.set_status(offline.id, DeviceStatus.ONLINE)
    assert device.message(timeout=0.5) is None  # an expired command is never delivered


def test_cancel_only_unfinished_commands(online_device, operator):
    command = services.send_command(online_device, "reboot", {})
    cancelled = services.cancel_command(command, actor=operator)
    assert cancelled.status == CommandStatus.CANCELLED and operator.username in cancelled.error
    with pytest.raises(ConflictError):
        services.cancel_command(command)
    # A cancelled command is never sent.
    assert services.dispatch(ids=[command.pk]) == 0


# --- Batches ------------------------------------------------------------------------------------


def test_batch_to_a_group_with_descendants_sends_to_online_devices_and_skips_those_that_cannot(
    db, listen, django_capture_on_commit_callbacks, eager_celery
):
    parent = DeviceGroupFactory()
    child = DeviceGroupFactory(parent=parent)
    online = [
        DeviceFactory(group=group, device_type="actuator", activation_state="active", status="online")
        for group in (parent, child, child)
    ]
    offline = DeviceFactory(group=child, device_type="actuator", activation_state="active", status="offline")
    DeviceFactory(group=child, device_type="actuator", activation_state="disabled", status="offline")
    DeviceFactory(group=parent, device_type="camera", activation_state="active", status="online")
    probes = [listen(d.id) for d in online]

    with django_capture_on_commit_callbacks(execute=True):
        batch = services.send_batch("set_state", {"state": True}, {"group": parent.pk, "include_descendants": True})

    assert batch.total == 4
    assert batch.skipped == {"not_active": 1, "refuses_type": 1}
    for probe in probes:
        assert probe.message() is not None
    counts = services.batch_counts(batch)
    assert counts["sent"] == 3 and counts["pending"] == 1
    assert DeviceCommand.objects.get(device=offline).status == CommandStatus.PENDING


def test_batch_targets_by_tags_and_by_list(db):
    a = DeviceFactory(tags=["floor-1", "fan"], activation_state="active")
    b = DeviceFactory(tags=["floor-2", "fan"], activation_state="active")
    DeviceFactory(tags=["floor-1"], activation_state="active")
    assert {d.id for d in services.select_targets({"tags": ["fan"]}, "reboot").devices} == {a.id, b.id}
    assert {d.id for d in services.select_targets({"tags": ["fan", "floor-1"], "match": "all"}, "reboot").devices} == {
        a.id
    }
    assert [d.id for d in services.select_targets({"devices": [b.id, a.id, b.id]}, "reboot").devices] == [b.id, a.id]


def test_bad_batches_are_refused(db, settings):
    settings.COMMAND_BATCH_MAX_DEVICES = 2
    devices = [DeviceFactory(activation_state="active", tags=["x"]) for _ in range(3)]
    disabled = DeviceFactory(activation_state="disabled")
    cases = [
        {},
        {"devices": [devices[0].id], "tags": ["x"]},
        {"devices": ["nope"]},
        {"devices": [disabled.id]},
        {"devices": [d.id for d in devices]},
        {"tags": ["x"]},
        {"group": 999999},
        {"tags": ["nothing-has-this"]},
    ]
    for targets in cases:
        with pytest.raises(ValidationError) as caught:
            services.send_batch("reboot", {}, targets)
        assert "targets" in caught.value.message_dict, targets
    assert not DeviceCommand.objects.exists()
