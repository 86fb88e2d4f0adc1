"""The alarms and notifications API: filters, raise, ack and clear with their 409s, permissions per
role, channels (bad URLs refused, the secret write-only), rules and the delivery log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from alarms import notifications, services
from alarms.models import Alarm, NotificationChannel, NotificationDelivery, NotificationRule
from tests.alarms.conftest import SECRET
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db

ALARMS = "/api/v1/alarms/"
CHANNELS = "/api/v1/notification-channels/"
RULES = "/api/v1/notification-rules/"
DELIVERIES = "/api/v1/notification-deliveries/"


@pytest.fixture
def fleet(db):
    plant = DeviceGroupFactory(name="plant")
    hall = DeviceGroupFactory(name="hall", parent=plant)
    a = DeviceFactory(id="a-1", group=plant)
    b = DeviceFactory(id="b-1", group=hall)
    c = DeviceFactory(id="c-1")
    services.raise_alarm(a, "leak", "critical")
    services.raise_alarm(b, "leak", "minor")
    old = services.raise_alarm(c, "door_open", "warning", at=timezone.now() - timedelta(days=2))
    services.clear(old)
    services.acknowledge(services.raise_alarm(c, "leak", "major"))
    return {"plant": plant, "hall": hall}


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return sorted(f"{row['device']}:{row['type']}" for row in response.json()["results"])


def test_list_and_filters(viewer_client, fleet):
    assert ids(viewer_client.get(ALARMS)) == ["a-1:leak", "b-1:leak", "c-1:door_open", "c-1:leak"]
    assert ids(viewer_client.get(ALARMS, {"severity": ["critical", "minor"]})) == ["a-1:leak", "b-1:leak"]
    assert ids(viewer_client.get(ALARMS, {"status": "active_acknowledged"})) == ["c-1:leak"]
    assert ids(viewer_client.get(ALARMS, {"active": "false"})) == ["c-1:door_open"]
    assert ids(viewer_client.get(ALARMS, {"active": "true", "acknowledged": "false"})) == ["a-1:leak", "b-1:leak"]
    assert ids(viewer_client.get(ALARMS, {"device": "c-1"})) == ["c-1:door_open", "c-1:leak"]
    assert ids(viewer_client.get(ALARMS, {"group": fleet["plant"].pk})) == ["a-1:leak", "b-1:leak"]
    assert ids(viewer_client.get(ALARMS, {"group": fleet["hall"].pk})) == ["b-1:leak"]
    assert ids(viewer_client.get(ALARMS, {"type": "door_open"})) == ["c-1:door_open"]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(viewer_client.get(ALARMS, {"started_before": since})) == ["c-1:door_open"]
    assert len(ids(viewer_client.get(ALARMS, {"started_after": since}))) == 3
    assert viewer_client.get(ALARMS, {"severity": "loud"}).status_code == 400

    row = viewer_client.get(ALARMS, {"device": "b-1"}).json()["results"][0]
    assert row["group"] == fleet["hall"].pk and row["active"] and not row["acknowledged"]
    assert row["status"] == "active_unacknowledged" and row["count"] == 1 and row["device_name"]
    detail = viewer_client.get(f"{ALARMS}{row['id']}/")
    assert detail.status_code == 200 and detail.json()["type"] == "leak"


def test_operator_acknowledges_and_clears_with_409s(operator_client, fleet):
    alarm = Alarm.objects.get(device_id="a-1")
    response = operator_client.post(f"{ALARMS}{alarm.pk}/ack/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "active_acknowledged" and body["acknowledged_by"] == "operator"
    assert operator_client.post(f"{ALARMS}{alarm.pk}/ack/").status_code == 409

    response = operator_client.post(f"{ALARMS}{alarm.pk}/clear/", {"reason": "fixed the pipe"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cleared_acknowledged" and body["clear_reason"] == "fixed the pipe"
    assert body["cleared_by"] == "operator" and body["ended_at"]
    conflict = operator_client.post(f"{ALARMS}{alarm.pk}/clear/")
    assert conflict.status_code == 409 and "already cleared" in conflict.json()["detail"]
    assert operator_client.post(f"{ALARMS}999999/ack/").status_code == 404


def test_who_may_do_what(viewer_client, operator_client, nobody_client, admin_client_api, api_client, fleet):
    alarm = Alarm.objects.get(device_id="b-1")
    assert api_client.get(ALARMS).status_code == 401
    assert nobody_client.get(ALARMS).status_code == 403
    assert viewer_client.post(f"{ALARMS}{alarm.pk}/ack/").status_code == 403
    assert viewer_client.post(f"{ALARMS}{alarm.pk}/clear/").status_code == 403
    raise_body = {"device": "b-1", "type": "manual_check", "severity": "minor"}
    assert operator_client.post(ALARMS, raise_body, format="json").status_code == 403
    assert operator_client.get(CHANNELS).status_code == 200
    assert operator_client.post(CHANNELS, {"name": "x", "kind": "email"}, format="json").status_code == 403
    assert viewer_client.get(DELIVERIES).status_code == 200
    assert admin_client_api.post(ALARMS, raise_body, format="json").status_code == 201


def test_raise_by_hand(admin_client_api, fleet):
    body = {"device": "b-1", "type": "leak", "severity": "critical", "details": {"by": "hand"}}
    response = admin_client_api.post(ALARMS, body, format="json")
    assert response.status_code == 200  # b-1 had an active leak: raised again, escalated
    data = response.json()
    assert data["count"] == 2 and data["severity"] == "critical" and data["details"] == {"by": "hand"}

    response = admin_client_api.post(ALARMS, {**body, "type": "smoke"}, format="json")
    assert response.status_code == 201
    assert response.json()["source"] == "manual" and response.json()["raised_by"] == "administrator"

    bad = admin_client_api.post(ALARMS, {"device": "nope", "type": "bad type", "severity": "loud"}, format="json")
    assert bad.status_code == 400 and {"severity"} <= set(bad.json())
    bad = admin_client_api.post(ALARMS, {"device": "nope", "type": "smoke", "severity": "major"}, format="json")
    assert bad.status_code == 400 and "device" in bad.json()
    bad = admin_client_api.post(ALARMS, {"device": "b-1", "type": "bad type", "severity": "major"}, format="json")
    assert bad.status_code == 400 and "type" in bad.json()
    bad = admin_client_api.post(ALARMS, {**body, "details": [1]}, format="json")
    assert bad.status_code == 400 and "details" in bad.json()


def test_channels_refuse_bad_urls_and_never_show_the_secret(admin_client_api):
    for url in ["ftp://example.com/hook", "file:///etc/passwd", "example.com/hook", "http://", "http://a b/"]:
        response = admin_client_api.post(
            CHANNELS, {"name": "hook", "kind": "webhook", "url": url, "secret": SECRET}, format="json"
        )
        assert response.status_code == 400 and "url" in response.json(), url
    short = admin_client_api.post(
        CHANNELS, {"name": "hook", "kind": "webhook", "url": "https://example.com/h", "secret": "short"}, format="json"
    )
    assert short.status_code == 400 and "secret" in short.json()

    response = admin_client_api.post(
        CHANNELS,
        {"name": "hook", "kind": "webhook", "url": "https://example.com/h", "secret": SECRET, "timeout": 5},
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert "secret" not in created and created["has_secret"] is True
    channel_id = created["id"]
    assert "secret" not in admin_client_api.get(f"{CHANNELS}{channel_id}/").json()

    # An update without the secret keeps it; with one, replaces it.
    response = admin_client_api.patch(f"{CHANNELS}{channel_id}/", {"timeout": 7}, format="json")
    assert response.status_code == 200 and NotificationChannel.objects.get().secret == SECRET
    admin_client_api.patch(f"{CHANNELS}{channel_id}/", {"secret": "another-secret-long-enough"}, format="json")
    assert NotificationChannel.objects.get().secret == "another-secret-long-enough"
    too_slow = admin_client_api.patch(f"{CHANNELS}{channel_id}/", {"timeout": 3600}, format="json")
    assert too_slow.status_code == 400 and "timeout" in too_slow.json()


def test_email_channels_need_recipients(admin_client_api, operator):
    response = admin_client_api.post(CHANNELS, {"name": "mail", "kind": "email"}, format="json")
    assert response.status_code == 400 and "email_addresses" in response.json()
    response = admin_client_api.post(
        CHANNELS, {"name": "mail", "kind": "email", "email_addresses": ["not-an-address"]}, format="json"
    )
    assert response.status_code == 400 and "email_addresses" in response.json()
    response = admin_client_api.post(
        CHANNELS,
        {"name": "mail", "kind": "email", "email_addresses": ["ops@example.com"], "users": [operator.pk]},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["users"] == [operator.pk] and not NotificationChannel.objects.get().url


def test_notification_rules(admin_client_api):
    channel = notifications.save_channel(
        NotificationChannel(name="mail", kind="email", email_addresses=["ops@example.com"])
    )
    group = DeviceGroupFactory()
    body = {
        "name": "critical plant",
        "alarm_types": ["leak", "device_offline"],
        "min_severity": "major",
        "group": group.pk,
        "transitions": ["raised", "cleared"],
        "channels": [channel.pk],
    }
    response = admin_client_api.post(RULES, body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["transitions"] == ["raised", "cleared"]
    rule = NotificationRule.objects.get()
    assert list(rule.channels.all()) == [channel] and rule.group == group

    for bad in (
        {"transitions": ["exploded"]},
        {"transitions": []},
        {"alarm_types": ["bad type"]},
        {"channels": []},
        {"min_severity": "loud"},
    ):
        response = admin_client_api.post(RULES, {**body, "name": "other", **bad}, format="json")
        assert response.status_code == 400, bad
    # A group in use by a rule cannot be deleted.
    assert admin_client_api.delete(f"/api/v1/device-groups/{group.pk}/").status_code == 409


def test_the_delivery_log_and_retry(admin_client_api, viewer_client, device, django_capture_on_commit_callbacks):
    channel = notifications.save_channel(
        NotificationChannel(name="hook", kind="webhook", url="http://127.0.0.1:9/", secret=SECRET)
    )
    notifications.save_rule(NotificationRule(name="all"), channels=[channel])
    services.raise_alarm(device, "leak", "major")  # not committed: the delivery stays pending
    delivery = NotificationDelivery.objects.get()
    rows = viewer_client.get(DELIVERIES, {"status": "pending", "kind": "webhook"}).json()["results"]
    assert [row["id"] for row in rows] == [delivery.pk]
    assert rows[0]["reason"] == "raised" and rows[0]["alarm"] == delivery.alarm_id
    assert viewer_client.get(DELIVERIES, {"status": "sent"}).json()["results"] == []
    assert viewer_client.post(f"{DELIVERIES}{delivery.pk}/retry/").status_code == 403
    assert admin_client_api.post(f"{DELIVERIES}{delivery.pk}/retry/").status_code == 409

    NotificationDelivery.objects.filter(pk=delivery.pk).update(status="dead", attempts=5)
    response = admin_client_api.post(f"{DELIVERIES}{delivery.pk}/retry/")
    assert response.status_code == 200 and response.json()["status"] == "pending"
    assert response.json()["attempts"] == 0
