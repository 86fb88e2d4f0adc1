"""The raise_alarm, clear_alarm and notify actions, in real rules run by the real ingest; and the
alarm storm: 1,000 messages over a threshold from one device make one alarm and one notification
per channel."""

from __future__ import annotations

import json
import time

import pytest

from alarms import notifications
from alarms.models import Alarm, NotificationChannel, NotificationDelivery, NotificationRule
from devices.choices import ActivationState
from rules import actions as rule_actions
from rules import services as rule_services
from rules.choices import Trigger
from rules.models import Rule
from telemetry import services as ingest
from tests.alarms.conftest import SECRET
from tests.factories import DeviceFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_celery", "fast_retries")]

HOT = "telemetry.temperature > 30.0"


def item(device_id: str, payload: dict) -> list:
    return [f"devices/{device_id}/telemetry", json.dumps(payload).encode(), int(time.time() * 1000)]


@pytest.fixture
def boiler(db):
    return DeviceFactory(id="boiler-1", name="Boiler", activation_state=ActivationState.ACTIVE)


def make_rule(committed, condition: str, actions: list[dict], **fields) -> Rule:
    fields.setdefault("name", f"rule-{Rule.objects.count() + 1}")
    with committed():  # the rule set reloads once the change commits
        return rule_services.create_rule(
            None, trigger=Trigger.TELEMETRY, condition=condition, actions=actions, **fields
        )


def channels(receiver) -> list[NotificationChannel]:
    mail = notifications.save_channel(
        NotificationChannel(name="on-call", kind="email", email_addresses=["oncall@example.com"])
    )
    hook = notifications.save_channel(
        NotificationChannel(name="hook", kind="webhook", url=receiver.url, secret=SECRET, timeout=2)
    )
    notifications.save_rule(NotificationRule(name="everything"), channels=[mail, hook])
    return [mail, hook]


def test_the_actions_are_registered_with_valid_examples():
    catalogue = {spec["type"]: spec for spec in rule_actions.catalogue()}
    assert {"raise_alarm", "clear_alarm", "notify"} <= set(catalogue)
    for name in ("raise_alarm", "clear_alarm", "notify"):
        spec = rule_actions.get(name)
        assert spec.validate(spec.example) == [], name


def test_bad_params_are_refused_when_the_rule_is_saved(boiler):
    errors = rule_actions.validate_actions(
        [
            {"type": "raise_alarm", "params": {"type": "bad type", "severity": "major"}},
            {"type": "raise_alarm", "params": {"type": "hot", "severity": "loud"}},
            {"type": "clear_alarm", "params": {"type": "hot", "device": "nope"}},
            {"type": "notify", "params": {"channel": 0, "subject": "x"}},
        ]
    )
    assert len(errors) == 4
    assert "actions[0] (raise_alarm): type:" in errors[0]
    assert "severity" in errors[1] and "no device 'nope'" in errors[2] and "channel" in errors[3]


def test_the_alarm_storm_makes_one_alarm_and_one_notification_per_channel(boiler, smtp_server, receiver, committed):
    channels(receiver)
    make_rule(
        committed,
        HOT,
        [{"type": "raise_alarm", "params": {"type": "overheat", "severity": "major", "details": {"limit": 30}}}],
    )
    with committed():
        for _ in range(4):
            ingest.ingest_batch([item("boiler-1", {"temperature": 31 + (n % 7)}) for n in range(250)])

    alarm = Alarm.objects.get()
    assert (alarm.device_id, alarm.type, alarm.severity, alarm.count) == ("boiler-1", "overheat", "major", 1000)
    assert alarm.details["limit"] == 30 and alarm.details["rule"]["name"] == "rule-1"
    assert alarm.details["telemetry"]["temperature"] >= 31 and alarm.source.startswith("rule:")
    assert Rule.objects.get().matched == 1000
    assert sorted(NotificationDelivery.objects.values_list("kind", "status")) == [
        ("email", "sent"),
        ("webhook", "sent"),
    ]
    assert len(smtp_server.messages) == 1 and len(receiver.requests) == 1
    assert receiver.verified(receiver.requests[0])["alarm"]["count"] == 1


def test_a_rule_clears_the_alarm_when_the_value_is_back(boiler, receiver, committed):
    channels(receiver)
    NotificationRule.objects.update(transitions=["raised", "cleared"])
    make_rule(committed, HOT, [{"type": "raise_alarm", "params": {"type": "overheat", "severity": "minor"}}])
    make_rule(committed, "telemetry.temperature <= 30.0", [{"type": "clear_alarm", "params": {"type": "overheat"}}])
    with committed():
        ingest.ingest_batch([item("boiler-1", {"temperature": t}) for t in (35, 36, 20, 21, 40)])
    first, second = Alarm.objects.order_by("pk")
    assert first.count == 2 and not first.active and first.clear_reason == "Cleared by rule-2."
    assert second.active and second.count == 1
    reasons = list(NotificationDelivery.objects.filter(kind="webhook").order_by("pk").values_list("reason", flat=True))
    assert reasons == ["raised", "cleared", "raised"]


def test_raise_alarm_on_another_device(boiler, committed):
    other = DeviceFactory(id="pump-9")
    make_rule(
        committed,
        HOT,
        [{"type": "raise_alarm", "params": {"type": "downstream_hot", "severity": "warning", "device": "pump-9"}}],
    )
    ingest.ingest_batch([item("boiler-1", {"temperature": 50})])
    assert Alarm.objects.get().device_id == other.id


def test_notify_sends_a_one_off_message(boiler, smtp_server, committed):
    mail = notifications.save_channel(
        NotificationChannel(name="lab", kind="email", email_addresses=["lab@example.com"])
    )
    make_rule(
        committed,
        HOT,
        [{"type": "notify", "params": {"channel": mail.pk, "subject": "{device} is hot", "text": "See {device}."}}],
    )
    with committed():
        ingest.ingest_batch([item("boiler-1", {"temperature": 50})])
    message = smtp_server.messages[0]
    assert message["Subject"] == "[FluxIoT] boiler-1 is hot" and "See boiler-1." in message.get_content()
    delivery = NotificationDelivery.objects.get()
    assert delivery.reason == "message" and delivery.payload["device"] == "boiler-1"


def test_a_notify_to_a_deleted_channel_fails_the_action(boiler, committed):
    mail = notifications.save_channel(NotificationChannel(name="lab", kind="email", email_addresses=["a@b.example"]))
    rule = make_rule(committed, HOT, [{"type": "notify", "params": {"channel": mail.pk, "subject": "hot"}}])
    mail.delete()
    ingest.ingest_batch([item("boiler-1", {"temperature": 50})])
    rule.refresh_from_db()
    assert rule.failed == 1 and "channel" in rule.last_error
    assert not NotificationDelivery.objects.exists()


def test_dry_runs_say_what_would_happen(boiler):
    result = rule_services.test_rule(
        {
            "condition": HOT,
            "trigger": "telemetry",
            "actions": [
                {"type": "raise_alarm", "params": {"type": "overheat", "severity": "major"}},
                {"type": "clear_alarm", "params": {"type": "overheat"}},
                {"type": "notify", "params": {"channel": 999, "subject": "x"}},
            ],
        },
        {"device": "boiler-1", "telemetry": {"temperature": 50.0}},
    )
    outcome = result["actions"]
    assert outcome[0]["would"].startswith("would raise a major overheat alarm on device boiler-1")
    assert outcome[1]["would"].startswith("would clear the active overheat alarm of device boiler-1")
    assert "no notification channel 999" in outcome[2]["error"]
    assert not Alarm.objects.exists()
