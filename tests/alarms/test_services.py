"""The alarm lifecycle: one active alarm per device and type, repeats, escalation, acknowledge and
clear, events and metrics, and concurrent raises on a real PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from prometheus_client import REGISTRY

from alarms import services
from alarms.choices import AlarmStatus
from alarms.models import Alarm
from fluxiot import events
from fluxiot.errors import ConflictError
from tests.factories import DeviceFactory, UserFactory

pytestmark = pytest.mark.django_db


def transitions(transition: str, severity: str) -> float:
    value = REGISTRY.get_sample_value(
        "fluxiot_alarm_transitions_total", {"transition": transition, "severity": severity}
    )
    return value or 0.0


def test_a_first_raise_creates_an_active_unacknowledged_alarm(device):
    alarm = services.raise_alarm(device, "high_temperature", "minor", details={"value": 31}, source="manual")
    assert alarm.transition == "raised"
    alarm.refresh_from_db()
    assert (alarm.device_id, alarm.type, alarm.severity, alarm.status) == (
        "pump-1",
        "high_temperature",
        "minor",
        AlarmStatus.ACTIVE_UNACKNOWLEDGED,
    )
    assert alarm.count == 1 and alarm.details == {"value": 31} and alarm.source == "manual"
    assert alarm.started_at == alarm.last_raised_at and alarm.ended_at is None
    assert alarm.active and not alarm.acknowledged


def test_a_repeat_bumps_the_count_and_merges_details_never_a_second_alarm(device):
    first = services.raise_alarm(device.id, "high_temperature", "major", details={"value": 31, "unit": "C"})
    again = services.raise_alarm(device.id, "high_temperature", "minor", details={"value": 35})
    assert again.pk == first.pk and again.transition == "repeated"
    alarm = Alarm.objects.get()
    assert alarm.count == 2
    assert alarm.severity == "major"  # never lowered
    assert alarm.details == {"value": 35, "unit": "C"}
    assert alarm.last_raised_at >= alarm.started_at
    # Another type, or another device: alarms of their own.
    services.raise_alarm(device.id, "low_pressure", "minor")
    services.raise_alarm(DeviceFactory(), "high_temperature", "minor")
    assert Alarm.objects.count() == 3


def test_a_more_severe_repeat_escalates_and_wants_a_new_acknowledgement(device):
    alarm = services.raise_alarm(device, "vibration", "warning")
    services.acknowledge(alarm)
    escalated = services.raise_alarm(device, "vibration", "critical")
    assert escalated.transition == "escalated"
    escalated.refresh_from_db()
    assert escalated.severity == "critical" and escalated.count == 2
    assert escalated.status == AlarmStatus.ACTIVE_UNACKNOWLEDGED and escalated.acknowledged_at is None


def test_acknowledge_and_clear_walk_the_four_statuses(device):
    user = UserFactory(username="oncall")
    alarm = services.raise_alarm(device, "door_open", "minor")
    alarm = services.acknowledge(alarm, actor=user)
    assert alarm.status == AlarmStatus.ACTIVE_ACKNOWLEDGED and alarm.acknowledged_by == user
    with pytest.raises(ConflictError):
        services.acknowledge(alarm.pk, actor=user)
    alarm = services.clear(alarm.pk, actor=user, reason="closed it")
    assert alarm.status == AlarmStatus.CLEARED_ACKNOWLEDGED and alarm.ended_at and alarm.clear_reason == "closed it"
    assert alarm.cleared_by == user
    with pytest.raises(ConflictError):
        services.clear(alarm)

    other = services.raise_alarm(device, "door_open", "minor")  # cleared: a new alarm starts
    assert other.pk != alarm.pk and other.transition == "raised"
    other = services.clear(other)
    assert other.status == AlarmStatus.CLEARED_UNACKNOWLEDGED
    other = services.acknowledge(other)
    assert other.status == AlarmStatus.CLEARED_ACKNOWLEDGED


def test_clear_alarm_by_type_clears_the_active_one_or_does_nothing(device):
    assert services.clear_alarm(device, "door_open") is None
    alarm = services.raise_alarm(device, "door_open", "minor")
    cleared = services.clear_alarm(device.id, "door_open", reason="back to normal")
    assert cleared.pk == alarm.pk and cleared.status == AlarmStatus.CLEARED_UNACKNOWLEDGED
    assert services.clear_alarm(device, "door_open") is None


def test_bad_raises_are_refused(device):
    with pytest.raises(ValidationError) as caught:
        services.raise_alarm(device, "bad type!", "loud", details=[1])
    assert set(caught.value.message_dict) == {"type", "severity", "details"}
    with pytest.raises(ValidationError) as caught:
        services.raise_alarm("no-such-device", "door_open", "minor")
    assert "device" in caught.value.message_dict
    assert not Alarm.objects.exists()


def test_the_database_refuses_a_second_active_alarm(device):
    services.raise_alarm(device, "door_open", "minor")
    alarm = Alarm.objects.get()
    alarm.pk = None
    with pytest.raises(IntegrityError), transaction.atomic():
        alarm.save(force_insert=True)
    # A cleared one does not count.
    services.clear_alarm(device, "door_open")
    alarm.pk = None
    alarm.save(force_insert=True)
    assert Alarm.objects.count() == 2


def test_transitions_are_counted_and_published(device, bus, django_capture_on_commit_callbacks):
    listener = bus(events.ALARM_RAISED, events.ALARM_UPDATED, events.ALARM_ACKNOWLEDGED, events.ALARM_CLEARED)
    before = {t: transitions(t, "critical") for t in ("raised", "repeated", "acknowledged", "cleared")}
    with django_capture_on_commit_callbacks(execute=True):
        alarm = services.raise_alarm(device, "fire", "critical")
        for _ in range(5):
            services.raise_alarm(device, "fire", "critical")  # one update event within the window
        services.acknowledge(alarm)
        services.clear(alarm)
    for transition, n in (("raised", 1), ("repeated", 5), ("acknowledged", 1), ("cleared", 1)):
        assert transitions(transition, "critical") == before[transition] + n
    received = listener.received()
    assert [event["type"] for event in received] == [
        events.ALARM_RAISED,
        events.ALARM_UPDATED,
        events.ALARM_ACKNOWLEDGED,
        events.ALARM_CLEARED,
    ]
    first = received[0]["data"]
    assert first["device"] == "pump-1" and first["severity"] == "critical" and first["transition"] == "raised"
    assert first["alarm"]["type"] == "fire" and first["alarm"]["count"] == 1
    assert received[1]["data"]["transition"] == "repeated"


def test_active_counts_by_severity(device):
    services.raise_alarm(device, "a", "major")
    services.raise_alarm(device, "b", "major")
    services.raise_alarm(device, "c", "warning")
    services.clear_alarm(device, "c")
    counts = services.active_counts()
    assert counts == {"critical": 0, "major": 2, "minor": 0, "warning": 0, "indeterminate": 0}


@pytest.mark.django_db(transaction=True)
def test_concurrent_raises_make_one_alarm():
    """Threads with connections of their own raise the same alarm at once: one alarm, every raise counted."""
    device = DeviceFactory()
    threads_n, raises = 8, 5
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work():
        try:
            barrier.wait(10)
            for _ in range(raises):
                services.raise_alarm(device.id, "storm", "major")
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    alarm = Alarm.objects.get()
    assert alarm.count == threads_n * raises
