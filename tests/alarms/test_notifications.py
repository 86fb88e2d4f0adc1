"""Notifications through a real SMTP server (aiosmtpd) and a real HTTP receiver: rules choosing the
channels, signed webhooks, retries with backoff as Celery retries, dead deliveries, the sweep."""

from __future__ import annotations

import hmac
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from prometheus_client import REGISTRY

from alarms import notifications, services
from alarms.models import NotificationChannel, NotificationDelivery, NotificationRule
from alarms.tasks import deliver_notification, sweep_deliveries
from devices import services as device_services
from devices.choices import DeviceStatus
from fluxiot import events
from tests.alarms.conftest import SECRET
from tests.brokers import free_port
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_celery", "fast_retries")]


def deliveries(kind: str, status: str) -> float:
    return REGISTRY.get_sample_value("fluxiot_notification_deliveries_total", {"kind": kind, "status": status}) or 0.0


def email_channel(**fields) -> NotificationChannel:
    users = fields.pop("users", None)
    groups = fields.pop("groups", None)
    fields.setdefault("name", "on-call email")
    fields.setdefault("email_addresses", ["oncall@example.com"])
    return notifications.save_channel(NotificationChannel(kind="email", **fields), users=users, groups=groups)


def webhook_channel(url: str, **fields) -> NotificationChannel:
    fields.setdefault("name", "ops webhook")
    fields.setdefault("secret", SECRET)
    fields.setdefault("timeout", 2)
    return notifications.save_channel(NotificationChannel(kind="webhook", url=url, **fields))


def rule(*channels, **fields) -> NotificationRule:
    fields.setdefault("name", f"rule-{NotificationRule.objects.count() + 1}")
    return notifications.save_rule(NotificationRule(**fields), channels=channels)


def test_an_offline_device_is_emailed_and_posted_once_and_its_return_too(device, smtp_server, receiver, committed):
    group = Group.objects.create(name="on-call")
    member = UserFactory(username="alice", email="alice@example.com")
    member.groups.add(group)
    UserFactory(username="gone", email="gone@example.com", is_active=False).groups.add(group)
    mail = email_channel(email_addresses=["ops@example.com", "ALICE@example.com"], groups=[group])
    hook = webhook_channel(receiver.url)
    rule(mail, hook, alarm_types=["device_offline"], min_severity="major", transitions=["raised", "cleared"])

    with committed():
        device_services.set_status(device, DeviceStatus.OFFLINE, reason="no heartbeat")
    assert len(smtp_server.messages) == 1 and len(receiver.requests) == 1

    message = smtp_server.messages[0]
    assert message["Subject"] == "[FluxIoT] MAJOR device_offline on Pump 1 (pump-1): raised"
    assert message["From"] == "alarms@fluxiot.test"
    # Addresses, then group members (active ones), each once however it is spelt.
    assert smtp_server.envelopes[0].rcpt_tos == ["ops@example.com", "ALICE@example.com"]
    body = message.get_content()
    assert "no heartbeat" in body and "Severity:  major" in body
    email_delivery = NotificationDelivery.objects.get(kind="email")
    assert message["X-FluxIoT-Delivery"] == str(email_delivery.pk)
    assert (email_delivery.status, email_delivery.attempts, email_delivery.reason) == ("sent", 1, "raised")

    request = receiver.requests[0]
    payload = receiver.verified(request)
    hook_delivery = NotificationDelivery.objects.get(kind="webhook")
    assert request["path"] == "/hook" and request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-FluxIoT-Delivery"] == str(hook_delivery.pk)
    assert request["headers"]["X-FluxIoT-Event"] == "alarm.raised"
    assert payload["delivery"] == hook_delivery.pk and payload["event"] == "alarm.raised"
    assert payload["alarm"]["device"] == "pump-1" and payload["alarm"]["type"] == "device_offline"
    assert payload["alarm"]["details"]["reason"] == "no heartbeat"
    assert (hook_delivery.status, hook_delivery.response_code, hook_delivery.target) == ("sent", 200, receiver.url)

    with committed():
        device_services.set_status(device, DeviceStatus.ONLINE)
    assert len(smtp_server.messages) == 2 and len(receiver.requests) == 2
    assert smtp_server.messages[1]["Subject"].endswith(": cleared")
    assert receiver.verified(receiver.requests[1])["alarm"]["status"] == "cleared_unacknowledged"


def test_rules_choose_types_severity_group_and_transitions(device, receiver, committed):
    parent = DeviceGroupFactory(name="plant")
    child = DeviceGroupFactory(name="hall", parent=parent)
    inside = DeviceFactory(id="inside", group=child)
    hook = webhook_channel(receiver.url)
    other = webhook_channel(receiver.url, name="second")
    rule(hook, other, alarm_types=["leak"], min_severity="major", group=parent)
    rule(hook, name="also", alarm_types=["leak"])  # the same channel again: still one delivery
    rule(other, name="off", enabled=False)

    with committed():
        services.raise_alarm(device, "leak", "critical")  # not in the group
        services.raise_alarm(inside, "smoke", "critical")  # another type
        services.raise_alarm(inside, "leak", "minor")  # "also" only (no severity floor, any group)
        services.raise_alarm(inside, "leak", "minor")  # repeated: nothing
        services.raise_alarm(inside, "leak", "critical")  # escalated: both rules
        services.raise_alarm(inside, "leak", "warning")  # repeated: nothing
        services.clear_alarm(inside, "leak")  # cleared: not asked for

    sent = [(d.channel.name, d.reason, d.alarm.device_id) for d in NotificationDelivery.objects.order_by("pk")]
    assert sent == [
        ("ops webhook", "raised", "pump-1"),  # "also" has no group: every device
        ("ops webhook", "raised", "inside"),
        ("ops webhook", "escalated", "inside"),
        ("second", "escalated", "inside"),
    ]
    assert len(receiver.requests) == 4
    escalated = receiver.verified(receiver.requests[2])
    assert escalated["event"] == "alarm.updated" and escalated["reason"] == "escalated"
    assert escalated["alarm"]["severity"] == "critical" and escalated["alarm"]["count"] == 3


def test_a_webhook_answering_500_twice_is_delivered_on_the_third_attempt(device, receiver, committed, bus):
    listener = bus(events.NOTIFICATION_DELIVERED, events.NOTIFICATION_FAILED, events.NOTIFICATION_DEAD)
    rule(webhook_channel(receiver.url))
    receiver.answers.extend([500, 500])
    failed_before, sent_before = deliveries("webhook", "failed"), deliveries("webhook", "sent")

    with committed():
        services.raise_alarm(device, "leak", "major")

    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_code) == ("sent", 3, 200)
    assert delivery.last_error == "" and delivery.sent_at is not None and delivery.next_attempt_at is None
    assert len(receiver.requests) == 3
    ids = {request["headers"]["X-FluxIoT-Delivery"] for request in receiver.requests}
    assert ids == {str(delivery.pk)}
    for request in receiver.requests:
        receiver.verified(request)  # every attempt signed
    assert deliveries("webhook", "failed") == failed_before + 2
    assert deliveries("webhook", "sent") == sent_before + 1
    outcome = [(event["type"], event["data"]["attempts"]) for event in listener.received()]
    assert outcome == [
        (events.NOTIFICATION_FAILED, 1),
        (events.NOTIFICATION_FAILED, 2),
        (events.NOTIFICATION_DELIVERED, 3),
    ]


def test_a_delivery_is_dead_after_max_attempts(device, receiver, committed):
    rule(webhook_channel(receiver.url, max_attempts=3))
    receiver.answers.extend([503] * 5)
    dead_before = deliveries("webhook", "dead")
    with committed():
        services.raise_alarm(device, "leak", "major")
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_code) == ("dead", 3, 503)
    assert "HTTP 503" in delivery.last_error and "gave up after 3 attempts" in delivery.last_error
    assert len(receiver.requests) == 3
    assert deliveries("webhook", "dead") == dead_before + 1

    # Sent again by hand, once the receiver is fixed, it gets through.
    receiver.answers.clear()
    with committed():
        notifications.retry_delivery(delivery)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1)


def test_in_the_embedded_mode_the_sweep_makes_the_retries(device, receiver, committed, embedded_celery):
    """Tasks in-process propagate a retry: nothing waits for the backoff, the beat's sweep makes the
    next attempt once it is due."""
    rule(webhook_channel(receiver.url))
    receiver.answers.append(500)
    with committed():
        services.raise_alarm(device, "leak", "major")
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert notifications.sweep(now=delivery.next_attempt_at - timedelta(seconds=1))["requeued"] == 0
    assert notifications.sweep(now=delivery.next_attempt_at)["requeued"] == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    assert len(receiver.requests) == 2


def test_a_4xx_answer_is_final_and_an_unreachable_host_is_retried(device, receiver, committed):
    rule(webhook_channel(receiver.url), alarm_types=["a"])
    rule(webhook_channel(f"http://127.0.0.1:{free_port()}/nobody", name="nobody", max_attempts=2), alarm_types=["b"])
    receiver.answers.append(404)
    with committed():
        services.raise_alarm(device, "a", "major")
        services.raise_alarm(device, "b", "major")
    final = NotificationDelivery.objects.get(alarm__type="a")
    assert (final.status, final.attempts, final.response_code) == ("dead", 1, 404)
    assert "not retried" in final.last_error
    unreachable = NotificationDelivery.objects.get(alarm__type="b")
    assert (unreachable.status, unreachable.attempts, unreachable.response_code) == ("dead", 2, None)
    assert "connect" in unreachable.last_error.lower() or "refused" in unreachable.last_error.lower()


def test_a_redirect_is_not_followed(device, receiver, committed):
    rule(webhook_channel(receiver.url))
    receiver.answers.append(302)
    with committed():
        services.raise_alarm(device, "leak", "major")
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.response_code) == ("dead", 302)


def test_an_email_channel_without_any_address_left_is_dead(device, smtp_server, committed):
    user = UserFactory(username="bob", email="bob@example.com")
    mail = email_channel(email_addresses=[], users=[user])
    rule(mail)
    user.is_active = False
    user.save()
    with committed():
        services.raise_alarm(device, "leak", "major")
    delivery = NotificationDelivery.objects.get()
    assert delivery.status == "dead" and "No recipient" in delivery.last_error
    assert smtp_server.messages == []


def test_an_smtp_server_that_is_down_is_retried_until_dead(device, settings, committed):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    rule(email_channel(max_attempts=2))
    with committed():
        services.raise_alarm(device, "leak", "major")
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("dead", 2)


def test_a_disabled_or_deleted_channel_kills_its_pending_deliveries(device, receiver, committed):
    hook = webhook_channel(receiver.url)
    rule(hook)
    with committed():
        services.raise_alarm(device, "leak", "major")
        NotificationChannel.objects.filter(pk=hook.pk).update(enabled=False)
    delivery = NotificationDelivery.objects.get()
    assert delivery.status == "dead" and "disabled" in delivery.last_error
    assert receiver.requests == []


def test_a_task_for_an_attempt_already_made_does_nothing(device, receiver, committed):
    rule(webhook_channel(receiver.url))
    with committed():
        services.raise_alarm(device, "leak", "major")
    delivery = NotificationDelivery.objects.get()
    assert deliver_notification.apply(args=[delivery.pk, 0]).get() is None  # already sent
    assert len(receiver.requests) == 1


def test_the_sweep_queues_lost_deliveries_and_trims_the_log(device, receiver, committed):
    hook = webhook_channel(receiver.url)
    rule(hook)
    with committed():
        services.raise_alarm(device, "leak", "major")
    old = NotificationDelivery.objects.get()
    NotificationDelivery.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    # A delivery whose task was lost (the broker was down): due long ago, never attempted.
    lost = NotificationDelivery.objects.create(
        channel=hook,
        kind="webhook",
        target=hook.url,
        reason="message",
        payload={"event": "notification.message", "subject": "hello", "text": ""},
        next_attempt_at=timezone.now() - timedelta(minutes=5),
    )
    assert sweep_deliveries.apply().get() == {"requeued": 1, "deleted": 1}
    lost.refresh_from_db()
    assert lost.status == "sent"
    assert not NotificationDelivery.objects.filter(pk=old.pk).exists()
    assert json.loads(receiver.requests[-1]["body"])["subject"] == "hello"


def test_send_message_is_a_one_off_delivery(device, smtp_server, committed):
    mail = email_channel()
    with committed():
        notifications.send_message(mail, "Door open", "The lab door is open.", device_id=device.id)
    message = smtp_server.messages[0]
    assert message["Subject"] == "[FluxIoT] Door open" and message.get_content().strip() == "The lab door is open."
    assert NotificationDelivery.objects.get().reason == "message"


def test_the_signature_is_an_hmac_of_the_exact_body():
    body = b'{"delivery":1}'
    assert notifications.sign("k" * 16, body) == "sha256=" + hmac.new(b"k" * 16, body, "sha256").hexdigest()
    assert notifications.backoff(1) < notifications.backoff(2) < notifications.backoff(3)
