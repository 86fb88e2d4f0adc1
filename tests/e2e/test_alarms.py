"""The offline alarm end to end, every part real: a device (paho, its issued secret, a Last Will) drops
its connection, Mosquitto publishes the Last Will, the bridge and the Celery worker mark the device
offline, the built-in check raises a major alarm, and the on-call group is emailed (a real SMTP
server) and a webhook receiver is posted to (a real HTTP server) — once; when the device is back the
alarm clears itself and both hear of that, once."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Group

from alarms import notifications
from alarms.models import Alarm, NotificationChannel, NotificationDelivery, NotificationRule
from devices import services as device_services
from devices.models import Device
from tests.alarms.conftest import receiver, smtp_server  # noqa: F401 (fixtures)
from tests.e2e.platform import DeviceClient, wait_for
from tests.factories import DeviceFactory, UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

SECRET = "an-e2e-webhook-secret"
TRANSITIONS = ["raised", "cleared"]


def test_a_device_going_offline_is_notified_once_and_its_return_too(platform, smtp_server, receiver):  # noqa: F811
    # The worker sends the notifications: it gets the test's SMTP server.
    platform.env.update(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(smtp_server.port),
        DEFAULT_FROM_EMAIL="alarms@fluxiot.test",
    )
    platform.stop_all()
    platform.start("worker")
    platform.start("bridge")

    on_call = Group.objects.create(name="on-call")
    UserFactory(username="alice", email="alice@example.com").groups.add(on_call)
    mail = notifications.save_channel(NotificationChannel(name="on-call", kind="email"), groups=[on_call])
    hook = notifications.save_channel(
        NotificationChannel(name="ops", kind="webhook", url=receiver.url, secret=SECRET, timeout=2)
    )
    notifications.save_rule(
        NotificationRule(
            name="offline", alarm_types=["device_offline"], min_severity="major", transitions=["raised", "cleared"]
        ),
        channels=[mail, hook],
    )

    DeviceFactory(id="e2e-pump", name="Pump")
    secret = device_services.activate_device("e2e-pump", actor=None)
    pump = DeviceClient(platform.broker, "e2e-pump", secret)
    for n in range(3):
        pump.publish("telemetry", {"pressure": 2.0 + n}).wait_for_publish(10)
    wait_for(lambda: Device.objects.get(pk="e2e-pump").status == "online", 30, "online")
    pump.kill()  # no DISCONNECT: the broker publishes the Last Will
    wait_for(lambda: len(smtp_server.messages) == 1 and len(receiver.requests) == 1, 30, "the raise notified")

    alarm = Alarm.objects.get()
    assert (alarm.type, alarm.severity, alarm.device_id) == ("device_offline", "major", "e2e-pump")
    assert smtp_server.messages[0]["Subject"].endswith(": raised")
    assert smtp_server.envelopes[0].rcpt_tos == ["alice@example.com"]
    assert receiver.verified(receiver.requests[0], SECRET)["alarm"]["type"] == "device_offline"

    back = DeviceClient(platform.broker, "e2e-pump", secret)
    try:
        back.publish("telemetry", {"pressure": 2.5}).wait_for_publish(10)
        wait_for(lambda: len(smtp_server.messages) == 2 and len(receiver.requests) == 2, 30, "the clear notified")
    finally:
        back.close()
    time.sleep(1)  # nothing more comes
    assert len(smtp_server.messages) == 2 and len(receiver.requests) == 2
    assert smtp_server.messages[1]["Subject"].endswith(": cleared")
    alarm.refresh_from_db()
    assert alarm.status == "cleared_unacknowledged" and alarm.count == 1
    assert set(NotificationDelivery.objects.values_list("status", flat=True)) == {"sent"}
