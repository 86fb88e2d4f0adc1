"""Alarms (one active per device and type), notification channels and rules, and the delivery log."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from alarms import conf
from alarms.choices import (
    ACKNOWLEDGED_STATUSES,
    ACTIVE_STATUSES,
    AlarmSeverity,
    AlarmStatus,
    ChannelKind,
    DeliveryReason,
    DeliveryStatus,
    NotifyOn,
)

ALARM_TYPE_MAX_LENGTH = 64
CLEAR_REASON_MAX_LENGTH = 200
SOURCE_MAX_LENGTH = 100
WEBHOOK_URL_MAX_LENGTH = 2048
SECRET_MIN_LENGTH = 16
SECRET_MAX_LENGTH = 256
MAX_EMAIL_ADDRESSES = 100
MAX_RULE_ALARM_TYPES = 50
MAX_ATTEMPTS_LIMIT = 20
# The unique index behind "one active alarm per device and type" (services.raise_alarm tells its
# violation, a concurrent raise, from any other integrity error by this name).
ONE_ACTIVE_CONSTRAINT = "alarm_one_active_per_device_type"

validate_alarm_type = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z",
    "An alarm type is letters, digits, and _ . : - (starting with a letter or digit), e.g. high_temperature.",
    code="invalid_alarm_type",
)


def validate_details(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError("Details must be a JSON object.", code="invalid_details")


def webhook_url_errors(url: str) -> list[str]:
    """What is wrong with a webhook URL (empty when it is fine): http or https, with a host."""
    if not url:
        return ["A webhook needs a URL."]
    if len(url) > WEBHOOK_URL_MAX_LENGTH:
        return [f"At most {WEBHOOK_URL_MAX_LENGTH} characters."]
    if any(ch.isspace() for ch in url):
        return ["No spaces in the URL."]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return ["Not a valid URL."]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ["An http:// or https:// URL with a host."]
    return []


def email_address_errors(addresses: Any) -> list[str]:
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        return ["A list of email addresses."]
    if len(addresses) > MAX_EMAIL_ADDRESSES:
        return [f"At most {MAX_EMAIL_ADDRESSES} addresses."]
    validator = EmailValidator()
    errors = []
    for address in addresses:
        try:
            validator(address)
        except ValidationError:
            errors.append(f"{address[:100]!r} is not an email address.")
    return errors


class Alarm(models.Model):
    """Something wrong with a device, from the first raise until it is cleared. At most one alarm per
    device and type is active: raising it again bumps ``count`` (and ``severity`` if higher)."""

    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="alarms")
    type = models.CharField(max_length=ALARM_TYPE_MAX_LENGTH, validators=[validate_alarm_type])
    severity = models.CharField(max_length=13, choices=AlarmSeverity.choices)
    status = models.CharField(max_length=24, choices=AlarmStatus.choices, default=AlarmStatus.ACTIVE_UNACKNOWLEDGED)
    started_at = models.DateTimeField(help_text="When the alarm was first raised.")
    ended_at = models.DateTimeField(null=True, blank=True, help_text="When it was cleared.")
    last_raised_at = models.DateTimeField(help_text="When it was last raised (first raise or repeat).")
    count = models.PositiveIntegerField(default=1, help_text="How many times it was raised while active.")
    details = models.JSONField(default=dict, blank=True, validators=[validate_details])
    source = models.CharField(
        max_length=SOURCE_MAX_LENGTH,
        blank=True,
        help_text='Who raised it: "check:device_offline", "rule:12", "scene:3", "manual"…',
    )
    raised_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cleared_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    clear_reason = models.CharField(max_length=CLEAR_REASON_MAX_LENGTH, blank=True)
    # When an alarm.updated event last went out for a repeat (repeats are announced at most once per
    # ALARM_REPEAT_EVENT_SECONDS, so an alarm storm does not flood the bus).
    announced_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    # What the last service call did to this instance (services.raise_alarm sets it; not stored).
    transition: ClassVar[str] = ""

    class Meta:
        ordering = ["-started_at", "-id"]
        permissions = [("acknowledge_alarm", "Can acknowledge alarms")]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "type"],
                condition=Q(status__in=ACTIVE_STATUSES),
                name=ONE_ACTIVE_CONSTRAINT,
                violation_error_message="This device already has an active alarm of this type.",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "severity"], name="alarm_status_severity_idx"),
            models.Index(fields=["device", "-started_at"], name="alarm_device_started_idx"),
            models.Index(fields=["-started_at"], name="alarm_started_idx"),
            models.Index(fields=["type"], name="alarm_type_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} on {self.device_id} ({self.severity})"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def acknowledged(self) -> bool:
        return self.status in ACKNOWLEDGED_STATUSES


class NotificationChannel(models.Model):
    """Where notifications go: email (addresses, users, the members of user groups) or a webhook
    (a JSON POST signed with HMAC-SHA256 of the body under ``secret``)."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    enabled = models.BooleanField(default=True)
    email_addresses = models.JSONField(default=list, blank=True, help_text="Email: addresses to send to.")
    users = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="+", help_text="Email: users (their email address)."
    )
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="+", help_text="Email: every member of these user groups."
    )
    url = models.CharField(max_length=WEBHOOK_URL_MAX_LENGTH, blank=True, help_text="Webhook: an http(s) URL.")
    secret = models.CharField(
        max_length=SECRET_MAX_LENGTH,
        blank=True,
        help_text="Webhook: the HMAC-SHA256 key of the X-FluxIoT-Signature header (never shown again).",
    )
    timeout = models.PositiveSmallIntegerField(
        default=conf.webhook_default_timeout,
        validators=[MinValueValidator(1)],
        help_text="Webhook: seconds to wait for an answer.",
    )
    max_attempts = models.PositiveSmallIntegerField(
        default=conf.default_max_attempts,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_ATTEMPTS_LIMIT)],
        help_text="Attempts before a delivery is given up (dead).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        errors: dict[str, list[str]] = {}
        max_timeout = conf.webhook_max_timeout()
        if self.kind == ChannelKind.WEBHOOK:
            self.url = (self.url or "").strip()
            if problems := webhook_url_errors(self.url):
                errors["url"] = problems
            if len(self.secret or "") < SECRET_MIN_LENGTH:
                errors["secret"] = [f"A webhook needs a secret of at least {SECRET_MIN_LENGTH} characters."]
            if self.timeout and self.timeout > max_timeout:
                errors["timeout"] = [f"At most {max_timeout} seconds."]
            if self.email_addresses:
                errors["email_addresses"] = ["Only an email channel has addresses."]
        elif self.kind == ChannelKind.EMAIL:
            if self.url:
                errors["url"] = ["Only a webhook has a URL."]
            self.email_addresses = [a.strip() for a in self.email_addresses] if _strings(self.email_addresses) else []
            if problems := email_address_errors(self.email_addresses):
                errors["email_addresses"] = problems
        if errors:
            raise ValidationError(errors)

    @property
    def target(self) -> str:
        """A short text of where the channel sends (for the delivery log)."""
        if self.kind == ChannelKind.WEBHOOK:
            return self.url
        return ", ".join(self.email_addresses or []) or "users and groups"


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def default_notify_on() -> list[str]:
    return [NotifyOn.RAISED, NotifyOn.ESCALATED]


class NotificationRule(models.Model):
    """Which alarms (types, a minimum severity, the devices of a group and the groups below it) are
    sent to which channels, and on which transitions."""

    name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    alarm_types = models.JSONField(default=list, blank=True, help_text="Alarm types to send (empty: every type).")
    min_severity = models.CharField(
        max_length=13,
        choices=AlarmSeverity.choices,
        default=AlarmSeverity.INDETERMINATE,
        help_text="Alarms at least this severe (indeterminate: all).",
    )
    group = models.ForeignKey(
        "devices.DeviceGroup",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Only devices of this group and the groups below it (empty: every device).",
    )
    transitions = models.JSONField(
        default=default_notify_on, help_text="raised, escalated, acknowledged and/or cleared."
    )
    channels = models.ManyToManyField(NotificationChannel, related_name="rules")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        errors: dict[str, list[str]] = {}
        if not _strings(self.alarm_types):
            errors["alarm_types"] = ["A list of alarm types."]
        else:
            self.alarm_types = list(dict.fromkeys(t.strip() for t in self.alarm_types if t.strip()))
            if len(self.alarm_types) > MAX_RULE_ALARM_TYPES:
                errors["alarm_types"] = [f"At most {MAX_RULE_ALARM_TYPES} types."]
            for alarm_type in self.alarm_types:
                try:
                    validate_alarm_type(alarm_type)
                except ValidationError:
                    errors.setdefault("alarm_types", []).append(f"{alarm_type[:64]!r} is not an alarm type.")
        if not _strings(self.transitions) or not self.transitions:
            errors["transitions"] = [f"A non-empty list of: {', '.join(NotifyOn.values)}."]
        else:
            unknown = [t for t in self.transitions if t not in NotifyOn.values]
            if unknown:
                errors["transitions"] = [f"Unknown transitions {', '.join(unknown)} ({', '.join(NotifyOn.values)})."]
            else:
                self.transitions = [t for t in NotifyOn.values if t in self.transitions]
        if errors:
            raise ValidationError(errors)


class NotificationDelivery(models.Model):
    """One notification to one channel, and how sending it went: the delivery log."""

    channel = models.ForeignKey(
        NotificationChannel, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    target = models.CharField(max_length=500, blank=True, help_text="Where it went (the URL or addresses), as sent.")
    alarm = models.ForeignKey(Alarm, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries")
    reason = models.CharField(max_length=12, choices=DeliveryReason.choices)
    payload = models.JSONField(default=dict, help_text="What is sent (the webhook body, less the delivery id).")
    status = models.CharField(max_length=8, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "notification deliveries"
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_status_next_idx"),
            models.Index(fields=["-created_at"], name="delivery_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_reason_display()} → {self.target or self.kind} ({self.status})"
