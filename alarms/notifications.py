"""Notifications: which channels an alarm transition goes to, the delivery log, and sending.

A transition that notification rules select creates one ``NotificationDelivery`` per channel (never
two for one channel, however many rules match) inside the transaction that made the transition; once
it commits, one Celery task per delivery sends it (``alarms.tasks.deliver_notification``).

Sending: an email through Django's mail (``EMAIL_*`` settings) to the channel's addresses, users and
group members; a webhook as a JSON POST with ``X-FluxIoT-Signature: sha256=<hex HMAC-SHA256 of the
body under the channel's secret>`` and ``X-FluxIoT-Delivery: <delivery id>``. A failure worth another
try (network error, timeout, 408, 429, 5xx; SMTP errors) is retried with exponential backoff
(``NOTIFY_RETRY_BACKOFF_SECONDS`` doubled per attempt) as Celery retries, until the channel's
``max_attempts``: then the delivery is dead. Other answers (3xx: redirects are not followed, 4xx)
make it dead at once. Every attempt is logged on the delivery, counted and announced on the bus.

Each task names the attempt it makes; a delivery is claimed by moving its attempt counter under a
row lock, so a task queued twice (a retry and the sweep) sends once.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from celery.exceptions import Retry
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import Prefetch, Q
from django.utils import timezone

from alarms import conf, metrics
from alarms.choices import (
    OPEN_DELIVERY_STATUSES,
    ChannelKind,
    DeliveryReason,
    DeliveryStatus,
    severity_rank,
)
from alarms.models import Alarm, NotificationChannel, NotificationDelivery, NotificationRule
from devices import services as device_services
from fluxiot import events
from fluxiot.errors import ConflictError

logger = logging.getLogger(__name__)

Actor = device_services.Actor

SIGNATURE_HEADER = "X-FluxIoT-Signature"
DELIVERY_HEADER = "X-FluxIoT-Delivery"
EVENT_HEADER = "X-FluxIoT-Event"
USER_AGENT = "FluxIoT-notifications"
ERROR_MAX_CHARS = 500
MESSAGE_EVENT = "notification.message"
SUBJECT_MAX_LENGTH = 200
TEXT_MAX_LENGTH = 10_000
SWEEP_CHUNK = 1000

EVENT_FOR_STATUS = {
    DeliveryStatus.SENT: events.NOTIFICATION_DELIVERED,
    DeliveryStatus.FAILED: events.NOTIFICATION_FAILED,
    DeliveryStatus.DEAD: events.NOTIFICATION_DEAD,
}


# --- Which channels ----------------------------------------------------------------------------


def rule_matches(rule: NotificationRule, alarm: Alarm, transition: str, group_path: str) -> bool:
    """Does ``rule`` send this transition of ``alarm`` (whose device's group path is ``group_path``)?"""
    if not rule.enabled or transition not in rule.transitions:
        return False
    if rule.alarm_types and alarm.type not in rule.alarm_types:
        return False
    if severity_rank(alarm.severity) < severity_rank(rule.min_severity):
        return False
    if rule.group_id is not None:
        return bool(rule.group.path) and group_path.startswith(rule.group.path)
    return True


def channels_for(alarm: Alarm, transition: str) -> list[NotificationChannel]:
    """The enabled channels of every enabled rule that sends this transition, each once."""
    rules = (
        NotificationRule.objects.filter(enabled=True)
        .select_related("group")
        .prefetch_related(Prefetch("channels", queryset=NotificationChannel.objects.filter(enabled=True)))
    )
    group = alarm.device.group
    group_path = group.path if group is not None else ""
    found: dict[int, NotificationChannel] = {}
    for rule in rules:
        if rule_matches(rule, alarm, transition, group_path):
            for channel in rule.channels.all():
                found.setdefault(channel.pk, channel)
    return sorted(found.values(), key=lambda channel: channel.pk)


def _alarm_url(alarm_id: int) -> str | None:
    base = conf.base_url()
    return f"{base}/admin/alarms/alarm/{alarm_id}/change/" if base else None


def alarm_payload(alarm: Alarm, transition: str) -> dict[str, Any]:
    from alarms.services import EVENT_TYPES, alarm_summary

    return {
        "event": EVENT_TYPES[transition],
        "reason": transition,
        "alarm": alarm_summary(alarm),
        "at": timezone.now().isoformat(),
        "url": _alarm_url(alarm.pk),
    }


def on_transition(alarm: Alarm, transition: str) -> list[NotificationDelivery]:
    """The services' call for each notifiable transition (inside its transaction): one delivery per
    channel the rules select, sent once the transaction commits."""
    channels = channels_for(alarm, transition)
    if not channels:
        return []
    payload = alarm_payload(alarm, transition)
    return _create_deliveries(channels, DeliveryReason(transition), payload, alarm)


def _create_deliveries(
    channels: Iterable[NotificationChannel], reason: str, payload: dict[str, Any], alarm: Alarm | None = None
) -> list[NotificationDelivery]:
    now = timezone.now()
    deliveries = NotificationDelivery.objects.bulk_create(
        [
            NotificationDelivery(
                channel=channel,
                kind=channel.kind,
                target=channel.target[:500],
                alarm=alarm,
                reason=reason,
                payload=payload,
                next_attempt_at=now,
            )
            for channel in channels
        ]
    )
    ids = [delivery.pk for delivery in deliveries]
    transaction.on_commit(lambda: queue(ids), robust=True)
    return deliveries


def queue(ids: Iterable[int], attempt: int = 0) -> None:
    """Hand deliveries to the workers (a failure to queue is left to the sweep)."""
    from alarms.tasks import deliver_notification

    for delivery_id in ids:
        try:
            deliver_notification.delay(delivery_id, attempt)
        except Retry:
            # Tasks run in-process and propagate (the embedded mode): the failed attempt is logged on
            # the delivery, and the sweep makes the next one when it is due (no waiting here).
            logger.info("notification delivery %s: the sweep makes the next attempt when it is due", delivery_id)
        except Exception:
            logger.exception("could not queue notification delivery %s; the sweep will", delivery_id)


def send_message(
    channel: NotificationChannel | int,
    subject: str,
    text: str,
    *,
    device_id: str | None = None,
    source: str = "",
) -> NotificationDelivery:
    """A one-off notification (the ``notify`` rule action): ``subject`` and ``text`` through one
    channel, sent after the commit like any other delivery. ValidationError for an unknown or
    disabled channel."""
    pk = channel.pk if isinstance(channel, NotificationChannel) else channel
    found = NotificationChannel.objects.filter(pk=pk).first()
    if found is None:
        raise ValidationError({"channel": [f"No notification channel {pk}."]})
    if not found.enabled:
        raise ValidationError({"channel": [f"Notification channel {found.name!r} is disabled."]})
    payload = {
        "event": MESSAGE_EVENT,
        "reason": DeliveryReason.MESSAGE,
        "subject": subject[:SUBJECT_MAX_LENGTH],
        "text": text[:TEXT_MAX_LENGTH],
        "device": device_id,
        "source": source,
        "at": timezone.now().isoformat(),
    }
    return _create_deliveries([found], DeliveryReason.MESSAGE, payload)[0]


# --- Channels and rules --------------------------------------------------------------------------


def save_channel(
    channel: NotificationChannel,
    *,
    actor: Actor = None,
    users: Iterable[Any] | None = None,
    groups: Iterable[Any] | None = None,
) -> NotificationChannel:
    """Create or update a channel (and its users and groups, when given). ValidationError for a bad
    URL, a short secret, bad addresses, or an email channel without any recipient."""
    with transaction.atomic():
        channel.full_clean()
        channel.save()
        if users is not None:
            channel.users.set(list(users))
        if groups is not None:
            channel.groups.set(list(groups))
        if channel.kind == ChannelKind.EMAIL and not (
            channel.email_addresses or channel.users.exists() or channel.groups.exists()
        ):
            raise ValidationError(
                {"email_addresses": ["An email channel needs at least one address, user or user group."]}
            )
    logger.info("notification channel %s (%s) saved by %s", channel.pk, channel.kind, device_services._actor_id(actor))
    return channel


def save_rule(
    rule: NotificationRule, *, actor: Actor = None, channels: Iterable[NotificationChannel] | None = None
) -> NotificationRule:
    """Create or update a notification rule (and its channels, when given; it needs at least one)."""
    with transaction.atomic():
        rule.full_clean()
        rule.save()
        if channels is not None:
            rule.channels.set(list(channels))
        if not rule.channels.exists():
            raise ValidationError({"channels": ["A rule sends to at least one channel."]})
    logger.info("notification rule %s saved by %s", rule.pk, device_services._actor_id(actor))
    return rule


def retry_delivery(delivery: NotificationDelivery | int) -> NotificationDelivery:
    """Send a dead delivery again, from a fresh attempt count. ConflictError unless it is dead."""
    pk = delivery.pk if isinstance(delivery, NotificationDelivery) else delivery
    with transaction.atomic():
        locked = NotificationDelivery.objects.select_for_update().get(pk=pk)
        if locked.status != DeliveryStatus.DEAD:
            raise ConflictError(f"Delivery {pk} is {locked.status}; only dead deliveries are sent again.")
        locked.status = DeliveryStatus.PENDING
        locked.attempts = 0
        locked.next_attempt_at = timezone.now()
        locked.save(update_fields=["status", "attempts", "next_attempt_at", "updated_at"])
        transaction.on_commit(lambda: queue([pk]), robust=True)
    return locked


# --- Sending -----------------------------------------------------------------------------------


class Retryable(Exception):
    """The attempt failed in a way another attempt may not."""

    def __init__(self, message: str, response_code: int | None = None) -> None:
        super().__init__(message)
        self.response_code = response_code


class Permanent(Exception):
    """The attempt failed in a way another attempt would too."""

    def __init__(self, message: str, response_code: int | None = None) -> None:
        super().__init__(message)
        self.response_code = response_code


@dataclass(frozen=True)
class Outcome:
    """What an attempt came to: ``retry_in`` (seconds) when another attempt is due."""

    status: str
    attempts: int
    retry_in: float | None = None
    response_code: int | None = None


def sign(secret: str, body: bytes) -> str:
    """The ``X-FluxIoT-Signature`` value of a webhook body: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(delivery: NotificationDelivery) -> bytes:
    """The exact bytes POSTed (and signed): the payload with the delivery's id."""
    return json.dumps({"delivery": delivery.pk, **delivery.payload}, separators=(",", ":"), default=str).encode()


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt."""
    return min(conf.retry_backoff() * (2 ** max(attempts - 1, 0)), conf.retry_backoff_max())


def _claim(delivery_id: int, attempt: int) -> NotificationDelivery | None:
    with transaction.atomic():
        delivery = (
            NotificationDelivery.objects.select_for_update(of=("self",))
            .select_related("channel")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.status not in OPEN_DELIVERY_STATUSES or delivery.attempts != attempt:
            return None
        delivery.attempts += 1
        # Not due again before this attempt could have ended (the sweep leaves it alone till then).
        window = (delivery.channel.timeout if delivery.channel else conf.webhook_default_timeout()) + 30
        delivery.next_attempt_at = timezone.now() + timedelta(seconds=window)
        delivery.save(update_fields=["attempts", "next_attempt_at", "updated_at"])
    return delivery


def attempt_delivery(delivery_id: int, attempt: int = 0) -> Outcome | None:
    """Make attempt number ``attempt + 1`` of a delivery and log how it went. None when there is
    nothing to do (the delivery is gone, done, or another task made this attempt)."""
    delivery = _claim(delivery_id, attempt)
    if delivery is None:
        return None
    channel = delivery.channel
    try:
        if channel is None:
            raise Permanent("The channel was deleted.")
        if not channel.enabled:
            raise Permanent("The channel is disabled.")
        if channel.kind == ChannelKind.WEBHOOK:
            code = _post(channel, delivery)
        else:
            code = _email(channel, delivery)
    except Permanent as exc:
        return _finish(delivery, DeliveryStatus.DEAD, exc.response_code, str(exc))
    except Retryable as exc:
        if channel is None or delivery.attempts >= channel.max_attempts:
            error = f"{exc} (gave up after {delivery.attempts} attempts)"
            return _finish(delivery, DeliveryStatus.DEAD, exc.response_code, error)
        retry_in = backoff(delivery.attempts)
        return _finish(delivery, DeliveryStatus.FAILED, exc.response_code, str(exc), retry_in=retry_in)
    return _finish(delivery, DeliveryStatus.SENT, code, "")


def _finish(
    delivery: NotificationDelivery,
    status: str,
    response_code: int | None,
    error: str,
    *,
    retry_in: float | None = None,
) -> Outcome:
    now = timezone.now()
    delivery.status = status
    delivery.response_code = response_code
    delivery.last_error = error[:ERROR_MAX_CHARS]
    delivery.sent_at = now if status == DeliveryStatus.SENT else None
    delivery.next_attempt_at = now + timedelta(seconds=retry_in) if retry_in is not None else None
    kind = delivery.kind
    with transaction.atomic():
        delivery.save(
            update_fields=["status", "response_code", "last_error", "sent_at", "next_attempt_at", "updated_at"]
        )
        transaction.on_commit(lambda: metrics.NOTIFICATION_DELIVERIES.labels(kind, status).inc())
        events.publish(EVENT_FOR_STATUS[DeliveryStatus(status)], delivery_event(delivery))
    log = logger.info if status == DeliveryStatus.SENT else logger.warning
    log(
        "notification delivery %s (%s to %s), attempt %s: %s%s",
        delivery.pk,
        kind,
        delivery.target,
        delivery.attempts,
        status,
        f": {error}" if error else "",
    )
    return Outcome(status, delivery.attempts, retry_in, response_code)


def delivery_event(delivery: NotificationDelivery) -> dict[str, Any]:
    payload = delivery.payload if isinstance(delivery.payload, dict) else {}
    alarm = payload.get("alarm") if isinstance(payload.get("alarm"), dict) else {}
    return {
        "delivery": delivery.pk,
        "channel": delivery.channel_id,
        "kind": delivery.kind,
        "reason": delivery.reason,
        "alarm": delivery.alarm_id,
        "device": alarm.get("device") or payload.get("device"),
        "status": delivery.status,
        "attempts": delivery.attempts,
        "response_code": delivery.response_code,
        "error": delivery.last_error or None,
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other 3xx: not followed (it would turn the POST into a GET)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _post(channel: NotificationChannel, delivery: NotificationDelivery) -> int:
    body = webhook_body(delivery)
    request = urllib.request.Request(  # the scheme was checked (http or https) when the channel was saved
        channel.url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(channel.secret, body),
            DELIVERY_HEADER: str(delivery.pk),
            EVENT_HEADER: str(delivery.payload.get("event", "")),
        },
        method="POST",
    )
    timeout = min(max(int(channel.timeout or 1), 1), conf.webhook_max_timeout())
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(ERROR_MAX_CHARS).decode("utf-8", "replace") if exc.fp else ""
        message = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
        if exc.code in (408, 429) or exc.code >= 500:
            raise Retryable(message, exc.code) from exc
        raise Permanent(f"{message} (not retried)", exc.code) from exc
    except urllib.error.URLError as exc:
        raise Retryable(f"Could not connect: {exc.reason}") from exc
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise Retryable(f"{type(exc).__name__}: {exc}") from exc


def recipients(channel: NotificationChannel) -> list[str]:
    """The channel's addresses, its users' and its groups' members' (active users with an address),
    each once (case-insensitively), in that order."""
    user_model = get_user_model()
    found = list(channel.email_addresses or [])
    found += channel.users.filter(is_active=True).exclude(email="").order_by("pk").values_list("email", flat=True)
    found += (
        user_model.objects.filter(groups__in=channel.groups.all(), is_active=True)
        .exclude(email="")
        .order_by("pk")
        .values_list("email", flat=True)
    )
    seen: dict[str, str] = {}
    for address in found:
        seen.setdefault(address.lower(), address)
    return list(seen.values())


def email_content(delivery: NotificationDelivery) -> tuple[str, str]:
    """The subject and plain-text body of a delivery's email."""
    prefix = conf.email_subject_prefix()
    payload = delivery.payload
    if delivery.reason == DeliveryReason.MESSAGE:
        return prefix + str(payload.get("subject", "")), str(payload.get("text", ""))
    alarm = payload.get("alarm", {})
    device = alarm.get("device_name") or alarm.get("device")
    if alarm.get("device_name") and alarm.get("device_name") != alarm.get("device"):
        device = f"{alarm['device_name']} ({alarm['device']})"
    reason = str(payload.get("reason", ""))
    subject = f"{prefix}{str(alarm.get('severity', '')).upper()} {alarm.get('type')} on {device}: {reason}"
    lines = [
        f"Alarm {alarm.get('type')} on device {device} was {reason}.",
        "",
        f"Severity:  {alarm.get('severity')}",
        f"Status:    {str(alarm.get('status', '')).replace('_', ', ')}",
        f"Started:   {alarm.get('started_at')}",
        f"Count:     {alarm.get('count')}",
    ]
    if alarm.get("ended_at"):
        reason_text = f" ({alarm['clear_reason']})" if alarm.get("clear_reason") else ""
        lines.append(f"Cleared:   {alarm['ended_at']}{reason_text}")
    if alarm.get("source"):
        lines.append(f"Source:    {alarm['source']}")
    if alarm.get("details"):
        lines += ["", "Details:", json.dumps(alarm["details"], indent=2, sort_keys=True, default=str)]
    if payload.get("url"):
        lines += ["", str(payload["url"])]
    return subject[:SUBJECT_MAX_LENGTH], "\n".join(lines) + "\n"


def _email(channel: NotificationChannel, delivery: NotificationDelivery) -> None:
    to = recipients(channel)
    if not to:
        raise Permanent("No recipient: no address, and no active user with an email address.")
    subject, body = email_content(delivery)
    message = EmailMessage(
        subject=subject.replace("\n", " ").replace("\r", " "),
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=to,
        headers={DELIVERY_HEADER: str(delivery.pk)},
        connection=get_connection(timeout=conf.email_timeout()),
    )
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused as exc:
        raise Permanent(f"Every recipient was refused: {', '.join(exc.recipients)[:300]}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        code = getattr(exc, "smtp_code", None)
        raise Retryable(f"{type(exc).__name__}: {exc}", code if isinstance(code, int) else None) from exc
    return None


# --- Housekeeping --------------------------------------------------------------------------------


def sweep(now: datetime | None = None) -> dict[str, int]:
    """The beat's work: queue again deliveries whose attempt is overdue by ``NOTIFY_SWEEP_GRACE_SECONDS``
    (their task was lost: broker down when it was queued, worker killed) and, when tasks run
    in-process (the embedded mode), failed ones whose next attempt is due; delete finished deliveries
    older than ``NOTIFY_DELIVERY_RETENTION_DAYS``."""
    now = now or timezone.now()
    due = Q(status__in=OPEN_DELIVERY_STATUSES, next_attempt_at__lt=now - timedelta(seconds=conf.sweep_grace()))
    if current_app.conf.task_always_eager:
        # No worker holds retries for later here (the embedded mode): the sweep makes them when due.
        due |= Q(status=DeliveryStatus.FAILED, next_attempt_at__lte=now)
    overdue = list(
        NotificationDelivery.objects.filter(due).order_by("next_attempt_at").values_list("pk", "attempts")[:SWEEP_CHUNK]
    )
    if overdue:
        NotificationDelivery.objects.filter(pk__in=[pk for pk, _ in overdue]).update(next_attempt_at=now)
        for pk, attempts in overdue:
            queue([pk], attempts)
        logger.warning("%d overdue notification deliveries queued again", len(overdue))
    deleted = 0
    days = conf.delivery_retention_days()
    if days > 0:
        deleted, _ = NotificationDelivery.objects.filter(
            status__in=[DeliveryStatus.SENT, DeliveryStatus.DEAD], created_at__lt=now - timedelta(days=days)
        ).delete()
    return {"requeued": len(overdue), "deleted": deleted}
