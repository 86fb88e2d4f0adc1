"""The alarm and notification vocabularies: severities, statuses, transitions, channel kinds."""

from __future__ import annotations

from django.db import models


class AlarmSeverity(models.TextChoices):
    CRITICAL = "critical", "Critical"
    MAJOR = "major", "Major"
    MINOR = "minor", "Minor"
    WARNING = "warning", "Warning"
    INDETERMINATE = "indeterminate", "Indeterminate"


# Higher is worse: a repeat raise only ever moves an alarm up this scale.
SEVERITY_RANK = {
    AlarmSeverity.INDETERMINATE: 0,
    AlarmSeverity.WARNING: 1,
    AlarmSeverity.MINOR: 2,
    AlarmSeverity.MAJOR: 3,
    AlarmSeverity.CRITICAL: 4,
}


def severity_rank(severity: str) -> int:
    """The severity's place on the scale (-1 for an unknown one)."""
    return SEVERITY_RANK.get(severity, -1)


class AlarmStatus(models.TextChoices):
    ACTIVE_UNACKNOWLEDGED = "active_unacknowledged", "Active, unacknowledged"
    ACTIVE_ACKNOWLEDGED = "active_acknowledged", "Active, acknowledged"
    CLEARED_UNACKNOWLEDGED = "cleared_unacknowledged", "Cleared, unacknowledged"
    CLEARED_ACKNOWLEDGED = "cleared_acknowledged", "Cleared, acknowledged"


ACTIVE_STATUSES = (AlarmStatus.ACTIVE_UNACKNOWLEDGED, AlarmStatus.ACTIVE_ACKNOWLEDGED)
CLEARED_STATUSES = (AlarmStatus.CLEARED_UNACKNOWLEDGED, AlarmStatus.CLEARED_ACKNOWLEDGED)
ACKNOWLEDGED_STATUSES = (AlarmStatus.ACTIVE_ACKNOWLEDGED, AlarmStatus.CLEARED_ACKNOWLEDGED)


class Transition(models.TextChoices):
    """What happened to an alarm. ``repeated`` (raised again, same or lower severity) only bumps the
    count: it is counted and shown, never notified."""

    RAISED = "raised", "Raised"
    REPEATED = "repeated", "Repeated"
    ESCALATED = "escalated", "Escalated"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    CLEARED = "cleared", "Cleared"


class NotifyOn(models.TextChoices):
    """The transitions a notification rule may send."""

    RAISED = "raised", "Raised"
    ESCALATED = "escalated", "Escalated"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    CLEARED = "cleared", "Cleared"


class DeliveryReason(models.TextChoices):
    """Why a notification was sent: an alarm transition, or a one-off message (the ``notify`` action)."""

    RAISED = "raised", "Alarm raised"
    ESCALATED = "escalated", "Alarm escalated"
    ACKNOWLEDGED = "acknowledged", "Alarm acknowledged"
    CLEARED = "cleared", "Alarm cleared"
    MESSAGE = "message", "Message"


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed (will retry)"
    DEAD = "dead", "Dead"


# A delivery in one of these still has attempts to make.
OPEN_DELIVERY_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.FAILED)
