"""The app's settings, with their defaults (docs/ALARMS.md lists them)."""

from __future__ import annotations

from django.conf import settings


def repeat_event_seconds() -> float:
    """A repeated raise is announced on the bus at most once per this many seconds per alarm."""
    return float(getattr(settings, "ALARM_REPEAT_EVENT_SECONDS", 5.0))


def default_max_attempts() -> int:
    return int(getattr(settings, "NOTIFY_MAX_ATTEMPTS", 5))


def retry_backoff() -> float:
    """Seconds before the second attempt; doubled for each further one."""
    return float(getattr(settings, "NOTIFY_RETRY_BACKOFF_SECONDS", 2.0))


def retry_backoff_max() -> float:
    return float(getattr(settings, "NOTIFY_RETRY_BACKOFF_MAX_SECONDS", 600.0))


def webhook_default_timeout() -> int:
    return int(getattr(settings, "NOTIFY_WEBHOOK_TIMEOUT", 10))


def webhook_max_timeout() -> int:
    return int(getattr(settings, "NOTIFY_WEBHOOK_MAX_TIMEOUT", 30))


def email_timeout() -> float:
    return float(getattr(settings, "NOTIFY_EMAIL_TIMEOUT", 10.0))


def email_subject_prefix() -> str:
    return str(getattr(settings, "NOTIFY_EMAIL_SUBJECT_PREFIX", "[FluxIoT] "))


def base_url() -> str:
    """The platform's public address, for links in notifications ("" for none)."""
    return str(getattr(settings, "NOTIFY_BASE_URL", "")).rstrip("/")


def sweep_grace() -> float:
    """A delivery due this many seconds ago and not attempted is queued again (lost task)."""
    return float(getattr(settings, "NOTIFY_SWEEP_GRACE_SECONDS", 60.0))


def delivery_retention_days() -> int:
    """Delivery log rows older than this are deleted by the sweep (0: kept forever)."""
    return int(getattr(settings, "NOTIFY_DELIVERY_RETENTION_DAYS", 30))
