"""The alarm lifecycle. Rules, scenes, the built-in checks, the API and the admin all go through here.

    raise_alarm(device, type, severity)  one active alarm per device and type: the first raise
                                         creates it (raised), a repeat bumps its count (repeated)
                                         and, if more severe, its severity (escalated)
    clear_alarm(device, type)            clears the active alarm of that type, if any
    acknowledge(alarm) / clear(alarm)    an operator's acts (ConflictError, 409, when already done)

Statuses: active_unacknowledged → (ack) active_acknowledged; either → (clear) cleared_unacknowledged
or cleared_acknowledged; cleared_unacknowledged → (ack) cleared_acknowledged. An escalation of an
acknowledged alarm makes it unacknowledged again: its new severity has not been seen yet.

Every transition is counted (``fluxiot_alarm_transitions_total``) and announced on the bus after
commit (repeats at most once per ``ALARM_REPEAT_EVENT_SECONDS`` per alarm); raised, escalated,
acknowledged and cleared go to the matching notification rules (``alarms.notifications``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from alarms import conf, metrics
from alarms.choices import (
    ACTIVE_STATUSES,
    AlarmSeverity,
    AlarmStatus,
    NotifyOn,
    Transition,
    severity_rank,
)
from alarms.models import (
    CLEAR_REASON_MAX_LENGTH,
    ONE_ACTIVE_CONSTRAINT,
    SOURCE_MAX_LENGTH,
    Alarm,
    validate_alarm_type,
)
from devices import services as device_services
from devices.models import Device
from fluxiot import events
from fluxiot.errors import ConflictError

logger = logging.getLogger(__name__)

Actor = device_services.Actor

# Alarm types of the built-in checks (alarms.checks).
DEVICE_OFFLINE = "device_offline"
COMMAND_FAILED = "command_failed"

EVENT_TYPES = {
    Transition.RAISED: events.ALARM_RAISED,
    Transition.REPEATED: events.ALARM_UPDATED,
    Transition.ESCALATED: events.ALARM_UPDATED,
    Transition.ACKNOWLEDGED: events.ALARM_ACKNOWLEDGED,
    Transition.CLEARED: events.ALARM_CLEARED,
}
MAX_RAISE_COUNT = 1_000_000


def _actor_id(actor: Actor) -> int | None:
    return device_services._actor_id(actor)


def alarm_summary(alarm: Alarm) -> dict[str, Any]:
    """The JSON form of an alarm that events and notifications carry."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    device = alarm.device if Alarm.device.is_cached(alarm) else None
    return {
        "id": alarm.pk,
        "device": alarm.device_id,
        "device_name": device.name if device is not None else None,
        "type": alarm.type,
        "severity": alarm.severity,
        "status": alarm.status,
        "active": alarm.active,
        "acknowledged": alarm.acknowledged,
        "count": alarm.count,
        "started_at": when(alarm.started_at),
        "last_raised_at": when(alarm.last_raised_at),
        "ended_at": when(alarm.ended_at),
        "acknowledged_at": when(alarm.acknowledged_at),
        "source": alarm.source,
        "details": alarm.details,
        "clear_reason": alarm.clear_reason,
    }


def _check_raise(alarm_type: str, severity: str, details: Any, count: int) -> None:
    errors: dict[str, list[str]] = {}
    try:
        validate_alarm_type(alarm_type if isinstance(alarm_type, str) else "")
        if len(alarm_type) > 64:
            raise ValidationError("too long")
    except ValidationError:
        errors["type"] = ["An alarm type: 1 to 64 letters, digits, and _ . : - (e.g. high_temperature)."]
    if severity not in AlarmSeverity.values:
        errors["severity"] = [f"One of {', '.join(AlarmSeverity.values)}."]
    if details is not None and not isinstance(details, dict):
        errors["details"] = ["A JSON object."]
    if not isinstance(count, int) or not 1 <= count <= MAX_RAISE_COUNT:
        errors["count"] = [f"Between 1 and {MAX_RAISE_COUNT}."]
    if errors:
        raise ValidationError(errors)


def _locked_active(device_id: str, alarm_type: str) -> Alarm | None:
    return (
        Alarm.objects.select_for_update(of=("self",))
        .select_related("device__group")
        .filter(device_id=device_id, type=alarm_type, status__in=ACTIVE_STATUSES)
        .first()
    )


def raise_alarm(
    device: Device | str,
    alarm_type: str,
    severity: str = AlarmSeverity.MAJOR,
    *,
    details: dict[str, Any] | None = None,
    source: str = "",
    actor: Actor = None,
    count: int = 1,
    at: datetime | None = None,
) -> Alarm:
    """Raise an alarm of ``alarm_type`` on ``device``. Without an active one of that type, a new
    alarm starts (``alarm.transition == "raised"``); otherwise the active one is raised again: its
    count grows by ``count``, ``details`` are merged into its own, and a higher severity replaces
    its severity (``"escalated"``, else ``"repeated"``). Concurrent raises never make two active
    alarms (a partial unique index, and a row lock on the active one). Raises ValidationError for a
    bad type, severity, details or an unknown device. Runs in the caller's transaction if any."""
    _check_raise(alarm_type, severity, details, count)
    device_id = device.pk if isinstance(device, Device) else str(device)
    now = at or timezone.now()
    source = (source or "")[:SOURCE_MAX_LENGTH]
    for attempt in range(3):
        # The common case, a repeat, needs no savepoint: one locking read and one update.
        with transaction.atomic(savepoint=False):
            alarm = _locked_active(device_id, alarm_type)
            if alarm is not None:
                return _repeat(alarm, severity, details, count, now, actor)
        try:
            # A savepoint: losing the race below (or an unknown device) leaves the caller's
            # transaction usable.
            with transaction.atomic():
                return _create(device_id, alarm_type, severity, details, source, count, now, actor)
        except IntegrityError as exc:
            # Another transaction created the active alarm since we looked: raise that one again.
            if ONE_ACTIVE_CONSTRAINT not in str(exc) or attempt == 2:
                raise
            logger.debug("alarm %s on %s: lost a race to create it, raising it again", alarm_type, device_id)
    raise AssertionError("unreachable")  # pragma: no cover


def _create(
    device_id: str,
    alarm_type: str,
    severity: str,
    details: dict[str, Any] | None,
    source: str,
    count: int,
    now: datetime,
    actor: Actor,
) -> Alarm:
    device = Device.objects.select_related("group").filter(pk=device_id).first()
    if device is None:
        raise ValidationError({"device": [f"Unknown device {device_id!r}."]})
    alarm = Alarm(
        device=device,
        type=alarm_type,
        severity=severity,
        status=AlarmStatus.ACTIVE_UNACKNOWLEDGED,
        started_at=now,
        last_raised_at=now,
        count=count,
        details=dict(details or {}),
        source=source,
        raised_by_id=_actor_id(actor),
    )
    alarm.save(force_insert=True)
    _transition(alarm, Transition.RAISED, actor)
    logger.info("alarm %s raised: %s %s on %s (%s)", alarm.pk, severity, alarm_type, device_id, source or "-")
    return alarm


def _repeat(
    alarm: Alarm, severity: str, details: dict[str, Any] | None, count: int, now: datetime, actor: Actor
) -> Alarm:
    fields = ["count", "last_raised_at", "updated_at"]
    alarm.count = min(alarm.count + count, 2**31 - 1)
    alarm.last_raised_at = max(alarm.last_raised_at, now)
    if details:
        alarm.details = {**alarm.details, **details}
        fields.append("details")
    transition = Transition.REPEATED
    if severity_rank(severity) > severity_rank(alarm.severity):
        transition = Transition.ESCALATED
        alarm.severity = severity
        fields.append("severity")
        if alarm.status == AlarmStatus.ACTIVE_ACKNOWLEDGED:
            alarm.status = AlarmStatus.ACTIVE_UNACKNOWLEDGED
            alarm.acknowledged_at = None
            alarm.acknowledged_by = None
            fields += ["status", "acknowledged_at", "acknowledged_by"]
    announce = transition == Transition.ESCALATED or (
        alarm.announced_at is None or (now - alarm.announced_at) >= timedelta(seconds=conf.repeat_event_seconds())
    )
    if announce:
        alarm.announced_at = now
        fields.append("announced_at")
    alarm.save(update_fields=fields)
    _transition(alarm, transition, actor, announce=announce)
    if transition == Transition.ESCALATED:
        logger.info("alarm %s escalated to %s", alarm.pk, severity)
    return alarm


def clear_alarm(
    device: Device | str,
    alarm_type: str,
    *,
    reason: str = "",
    actor: Actor = None,
    at: datetime | None = None,
) -> Alarm | None:
    """Clear the active alarm of ``alarm_type`` on ``device``; None (and nothing done) when there is
    none. What rules, scenes and the checks call when the condition is over."""
    device_id = device.pk if isinstance(device, Device) else str(device)
    with transaction.atomic():
        alarm = _locked_active(device_id, alarm_type)
        if alarm is None:
            return None
        return _clear(alarm, reason, actor, at or timezone.now())


def _lock(alarm: Alarm | int) -> Alarm:
    pk = alarm.pk if isinstance(alarm, Alarm) else alarm
    return Alarm.objects.select_for_update(of=("self",)).select_related("device__group").get(pk=pk)


def clear(alarm: Alarm | int, *, actor: Actor = None, reason: str = "", at: datetime | None = None) -> Alarm:
    """Clear an alarm by hand. ConflictError when it already is cleared."""
    with transaction.atomic():
        locked = _lock(alarm)
        if not locked.active:
            raise ConflictError(f"Alarm {locked.pk} is already cleared.")
        return _clear(locked, reason, actor, at or timezone.now())


def _clear(alarm: Alarm, reason: str, actor: Actor, now: datetime) -> Alarm:
    alarm.status = AlarmStatus.CLEARED_ACKNOWLEDGED if alarm.acknowledged else AlarmStatus.CLEARED_UNACKNOWLEDGED
    alarm.ended_at = now
    alarm.cleared_by_id = _actor_id(actor)
    alarm.clear_reason = (reason or "")[:CLEAR_REASON_MAX_LENGTH]
    alarm.save(update_fields=["status", "ended_at", "cleared_by", "clear_reason", "updated_at"])
    _transition(alarm, Transition.CLEARED, actor)
    logger.info("alarm %s cleared by %s: %s", alarm.pk, _actor_id(actor), alarm.clear_reason or "-")
    return alarm


def acknowledge(alarm: Alarm | int, *, actor: Actor = None, at: datetime | None = None) -> Alarm:
    """Acknowledge an alarm, active or cleared. ConflictError when it already is acknowledged."""
    with transaction.atomic():
        locked = _lock(alarm)
        if locked.acknowledged:
            raise ConflictError(f"Alarm {locked.pk} is already acknowledged.")
        locked.status = AlarmStatus.ACTIVE_ACKNOWLEDGED if locked.active else AlarmStatus.CLEARED_ACKNOWLEDGED
        locked.acknowledged_at = at or timezone.now()
        locked.acknowledged_by_id = _actor_id(actor)
        locked.save(update_fields=["status", "acknowledged_at", "acknowledged_by", "updated_at"])
        _transition(locked, Transition.ACKNOWLEDGED, actor)
    logger.info("alarm %s acknowledged by %s", locked.pk, _actor_id(actor))
    return locked


def _transition(alarm: Alarm, transition: str, actor: Actor, *, announce: bool = True) -> None:
    """Count, announce and notify one transition (inside the transaction that made it)."""
    alarm.transition = transition
    severity = alarm.severity
    transaction.on_commit(lambda: metrics.ALARM_TRANSITIONS.labels(transition, severity).inc())
    if announce:
        events.publish(
            EVENT_TYPES[Transition(transition)],
            {
                "alarm": alarm_summary(alarm),
                "device": alarm.device_id,
                "severity": severity,
                "transition": transition,
                "actor": _actor_id(actor),
            },
        )
    if transition in NotifyOn.values:
        from alarms import notifications

        notifications.on_transition(alarm, transition)
    # Scenes triggered by alarms run after the commit, in this thread: a scene that raised this alarm
    # is then recognised if the alarm would start it again (the loop is cut off).
    alarm_id, device_id, alarm_type = alarm.pk, alarm.device_id, alarm.type
    transaction.on_commit(lambda: _scenes_on_alarm(alarm_id, device_id, alarm_type, severity, transition))


def _scenes_on_alarm(alarm_id: int, device_id: str, alarm_type: str, severity: str, transition: str) -> None:
    from control.scenes.engine import on_alarm

    on_alarm(alarm_id, device_id, alarm_type, severity, transition)


def active_counts() -> dict[str, int]:
    """Active alarms per severity (every severity present, 0 when none): one grouped count."""
    counts = dict.fromkeys(AlarmSeverity.values, 0)
    rows = Alarm.objects.filter(status__in=ACTIVE_STATUSES).order_by().values("severity").annotate(n=Count("pk"))
    for row in rows:
        counts[row["severity"]] = row["n"]
    return counts
