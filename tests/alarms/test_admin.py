"""Admin pages of alarms (badges, filters, search, acknowledge and clear as actions and buttons),
notification channels (the secret never shown), rules and the delivery log."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

from alarms import notifications, services
from alarms.choices import AlarmStatus
from alarms.models import Alarm, NotificationChannel, NotificationDelivery, NotificationRule
from fluxiot import roles
from tests.alarms.conftest import SECRET
from tests.conftest import login_staff
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db

ALARMS = reverse("admin:alarms_alarm_changelist")
CHANNELS = reverse("admin:alarms_notificationchannel_changelist")
RULES = reverse("admin:alarms_notificationrule_changelist")
DELIVERIES = reverse("admin:alarms_notificationdelivery_changelist")


@pytest.fixture
def alarms(db):
    group = DeviceGroupFactory(name="plant")
    pump = DeviceFactory(id="pump-7", name="Feed pump", group=group)
    fan = DeviceFactory(id="fan-2")
    return [
        services.raise_alarm(pump, "leak", "critical"),
        services.raise_alarm(fan, "overheat", "warning"),
    ]


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_the_list_shows_badges_filters_and_searches(viewer_staff, alarms):
    response = viewer_staff.get(ALARMS)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="alarm-badge alarm-severity-critical"' in html and "Active, unacknowledged" in html
    assert "alarms/admin.css" in html and finders.find("alarms/admin.css")
    assert "Acknowledge selected alarms" not in html  # a viewer may not act
    assert "pump-7" in viewer_staff.get(ALARMS, {"q": "Feed"}).content.decode()
    assert "pump-7" not in viewer_staff.get(ALARMS, {"q": "fan"}).content.decode()
    group = DeviceGroupFactory(name="elsewhere")
    plant = alarms[0].device.group
    assert "pump-7" in viewer_staff.get(ALARMS, {"group": plant.pk}).content.decode()
    assert "pump-7" not in viewer_staff.get(ALARMS, {"group": group.pk}).content.decode()
    assert "fan-2" in viewer_staff.get(ALARMS, {"severity__exact": "warning", "active": "yes"}).content.decode()
    assert "fan-2" not in viewer_staff.get(ALARMS, {"type": "leak"}).content.decode()
    page = viewer_staff.get(reverse("admin:alarms_alarm_change", args=[alarms[0].pk])).content.decode()
    assert "Acknowledge</button>" not in page and 'name="_save"' not in page


def test_the_operator_acknowledges_and_clears_with_actions(operator_staff, alarms):
    pks = [alarm.pk for alarm in alarms]
    response = operator_staff.post(ALARMS, {"action": "acknowledge_alarms", ACTION_CHECKBOX_NAME: pks}, follow=True)
    assert "2 alarms acknowledged." in messages_of(response)
    assert set(Alarm.objects.values_list("status", flat=True)) == {AlarmStatus.ACTIVE_ACKNOWLEDGED}
    response = operator_staff.post(ALARMS, {"action": "acknowledge_alarms", ACTION_CHECKBOX_NAME: pks[:1]}, follow=True)
    assert "1 alarm was already acknowledged." in messages_of(response)
    operator_staff.post(ALARMS, {"action": "clear_alarms", ACTION_CHECKBOX_NAME: pks}, follow=True)
    assert set(Alarm.objects.values_list("status", flat=True)) == {AlarmStatus.CLEARED_ACKNOWLEDGED}
    assert Alarm.objects.filter(clear_reason="Cleared by ops.").count() == 2


def test_the_buttons_of_an_alarm_page(operator_staff, alarms):
    alarm = alarms[0]
    change = reverse("admin:alarms_alarm_change", args=[alarm.pk])
    html = operator_staff.get(change).content.decode()
    assert "Acknowledge</button>" in html and "Clear</button>" in html
    assert 'class="alarm-json"' not in html or "leak" in html
    response = operator_staff.post(reverse("admin:alarms_alarm_ack", args=[alarm.pk]))
    assert response.status_code == 302 and response["Location"] == change
    html = operator_staff.get(change).content.decode()
    assert "Acknowledge</button>" not in html and "Clear</button>" in html
    operator_staff.post(reverse("admin:alarms_alarm_clear", args=[alarm.pk]))
    alarm.refresh_from_db()
    assert alarm.status == AlarmStatus.CLEARED_ACKNOWLEDGED
    assert operator_staff.get(reverse("admin:alarms_alarm_clear", args=[alarm.pk])).status_code == 405


def test_a_viewer_cannot_press_the_buttons(client, alarms):
    login_staff(client, "watcher", roles.VIEWER)
    assert client.post(reverse("admin:alarms_alarm_ack", args=[alarms[0].pk])).status_code == 403
    assert client.post(reverse("admin:alarms_alarm_clear", args=[alarms[0].pk])).status_code == 403


def test_channels_never_show_their_secret(admin_staff):
    add = reverse("admin:alarms_notificationchannel_add")
    response = admin_staff.post(
        add,
        {
            "name": "hook",
            "kind": "webhook",
            "enabled": "on",
            "url": "ftp://x",
            "secret": SECRET,
            "timeout": 5,
            "max_attempts": 3,
        },
    )
    assert response.status_code == 200 and "An http:// or https:// URL with a host." in response.content.decode()
    response = admin_staff.post(
        add,
        {
            "name": "hook",
            "kind": "webhook",
            "enabled": "on",
            "url": "https://example.com/h",
            "secret": SECRET,
            "timeout": 5,
            "max_attempts": 3,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    channel = NotificationChannel.objects.get()
    change = reverse("admin:alarms_notificationchannel_change", args=[channel.pk])
    page = admin_staff.get(change).content.decode()
    assert SECRET not in page
    # Saved again with the secret left empty: kept.
    response = admin_staff.post(
        change,
        {
            "name": "hook",
            "kind": "webhook",
            "enabled": "on",
            "url": "https://example.com/other",
            "secret": "",
            "timeout": 5,
            "max_attempts": 3,
        },
    )
    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.secret == SECRET and channel.url == "https://example.com/other"

    response = admin_staff.post(add, {"name": "mail", "kind": "email", "timeout": 5, "max_attempts": 3})
    assert response.status_code == 200 and "needs at least one address" in response.content.decode()
    response = admin_staff.post(
        add,
        {
            "name": "mail",
            "kind": "email",
            "email_addresses": "a@example.com\nb@example.com",
            "timeout": 5,
            "max_attempts": 3,
        },
    )
    assert response.status_code == 302
    assert NotificationChannel.objects.get(name="mail").email_addresses == ["a@example.com", "b@example.com"]


def test_rules_are_edited_in_the_admin(admin_staff):
    channel = notifications.save_channel(
        NotificationChannel(name="mail", kind="email", email_addresses=["ops@example.com"])
    )
    add = reverse("admin:alarms_notificationrule_add")
    checked = re.findall(
        r'<input type="checkbox" name="transitions" value="(\w+)"[^>]*checked', admin_staff.get(add).content.decode()
    )
    assert checked == ["raised", "escalated"]
    response = admin_staff.post(
        add,
        {
            "name": "leaks",
            "alarm_types": "leak, flood",
            "min_severity": "major",
            "transitions": ["raised", "cleared"],
            "channels": [channel.pk],
            "enabled": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    rule = NotificationRule.objects.get()
    assert rule.alarm_types == ["leak", "flood"] and rule.transitions == ["raised", "cleared"]
    assert list(rule.channels.all()) == [channel]
    assert "leak, flood" in admin_staff.get(RULES).content.decode()
    response = admin_staff.post(
        add, {"name": "bad", "alarm_types": "bad type", "min_severity": "major", "channels": [channel.pk]}
    )
    assert response.status_code == 200 and "is not an alarm type" in response.content.decode()


def test_the_delivery_log_is_read_only_and_dead_ones_can_be_sent_again(admin_staff, alarms):
    channel = notifications.save_channel(
        NotificationChannel(name="hook", kind="webhook", url="https://example.com/h", secret=SECRET)
    )
    delivery = NotificationDelivery.objects.create(
        channel=channel,
        kind="webhook",
        target=channel.url,
        alarm=alarms[0],
        reason="raised",
        status="dead",
        attempts=5,
        last_error="HTTP 503: broken (gave up after 5 attempts)",
    )
    html = admin_staff.get(DELIVERIES).content.decode()
    assert "alarm-delivery-dead" in html and "HTTP 503" in html
    assert admin_staff.get(reverse("admin:alarms_notificationdelivery_add")).status_code == 403
    response = admin_staff.post(
        DELIVERIES, {"action": "retry_deliveries", ACTION_CHECKBOX_NAME: [delivery.pk]}, follow=True
    )
    assert "1 delivery queued again." in messages_of(response)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    viewer = Client()
    login_staff(viewer, "watcher", roles.VIEWER)
    assert "Send selected dead deliveries again" not in viewer.get(DELIVERIES).content.decode()
