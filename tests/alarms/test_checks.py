"""The built-in checks, through the real registry and commands services: a device going offline
raises device_offline and coming back clears it; failed and timed-out commands raise command_failed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from alarms.choices import AlarmStatus
from alarms.models import Alarm
from control import services as command_services
from control.models import DeviceCommand
from devices import services as device_services
from devices.choices import ActivationState, DeviceStatus
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def test_offline_raises_a_major_alarm_and_online_clears_it(device, committed):
    with committed():
        device_services.set_status(device, DeviceStatus.OFFLINE, reason="no heartbeat for 300 s")
    alarm = Alarm.objects.get()
    assert (alarm.type, alarm.severity, alarm.status) == ("device_offline", "major", AlarmStatus.ACTIVE_UNACKNOWLEDGED)
    assert alarm.details == {"reason": "no heartbeat for 300 s", "previous_status": "online"}
    assert alarm.source == "check:device_offline"

    with committed():
        device_services.set_status(device, DeviceStatus.ONLINE, reason="data received")
    alarm.refresh_from_db()
    assert alarm.status == AlarmStatus.CLEARED_UNACKNOWLEDGED and alarm.ended_at is not None
    assert alarm.clear_reason == "data received"

    # Offline again: a new alarm; acknowledged, then back online: cleared and acknowledged.
    with committed():
        device_services.set_status(device, DeviceStatus.OFFLINE)
    second = Alarm.objects.get(status__in=[AlarmStatus.ACTIVE_UNACKNOWLEDGED])
    assert second.pk != alarm.pk
    from alarms import services

    services.acknowledge(second)
    with committed():
        device_services.set_status(device, DeviceStatus.ONLINE)
    second.refresh_from_db()
    assert second.status == AlarmStatus.CLEARED_ACKNOWLEDGED


def test_other_status_changes_leave_alarms_alone(device, committed):
    with committed():
        device_services.set_status(device, DeviceStatus.MAINTENANCE)
        device_services.set_status(device, DeviceStatus.FAULT)
    assert not Alarm.objects.exists()


def _command(device):
    # The device is offline, so the command waits (pending): nothing is published.
    return command_services.send_command(device, "reboot", {})


def test_a_failed_reply_raises_a_minor_command_failed_alarm(committed):
    device = DeviceFactory(activation_state=ActivationState.ACTIVE, status=DeviceStatus.OFFLINE)
    first, second = _command(device), _command(device)
    now = timezone.now()
    with committed():
        command_services.record_replies(
            [
                command_services.Reply(device.id, str(first.pk), "failed", None, "disk full", now),
                command_services.Reply(device.id, str(second.pk), "failed", None, "still full", now),
            ]
        )
    alarm = Alarm.objects.get()
    assert (alarm.device_id, alarm.type, alarm.severity) == (device.id, "command_failed", "minor")
    assert alarm.count == 2  # both failures, one alarm
    assert alarm.details["command_type"] == "reboot" and alarm.details["command_status"] == "failed"
    assert alarm.details["error"] in ("disk full", "still full")

    third = _command(device)
    with committed():
        command_services.record_replies([command_services.Reply(device.id, str(third.pk), "failed", None, "x", now)])
    alarm.refresh_from_db()
    assert alarm.count == 3 and alarm.details["command"] == str(third.pk)


def test_a_timed_out_command_raises_the_alarm_too(committed):
    device = DeviceFactory(activation_state=ActivationState.ACTIVE, status=DeviceStatus.OFFLINE)
    command = _command(device)
    now = timezone.now()
    DeviceCommand.objects.filter(pk=command.pk).update(
        status="sent", sent_at=now, deadline_at=now - timedelta(seconds=1)
    )
    with committed():
        command_services.sweep(now=now)
    alarm = Alarm.objects.get()
    assert alarm.type == "command_failed" and alarm.details["command_status"] == "timeout"
    assert alarm.details["command"] == str(command.pk)


def test_a_successful_reply_raises_nothing(committed):
    device = DeviceFactory(activation_state=ActivationState.ACTIVE, status=DeviceStatus.OFFLINE)
    command = _command(device)
    with committed():
        command_services.record_replies(
            [command_services.Reply(device.id, str(command.pk), "success", {"ok": True}, "", timezone.now())]
        )
    assert not Alarm.objects.exists()
