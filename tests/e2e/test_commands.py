"""Device commands end to end, every part real: the web process (Daphne) takes the API call and
publishes, Mosquitto with dynamic security carries the command to a device (a paho MQTT 5 client
logged in with its issued secret), the device's replies travel back through the bridge and the Celery
worker, and the beat times out what gets no answer."""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices import services as device_services
from devices.models import Device
from telemetry.models import DeadLetter
from tests.e2e.platform import wait_for
from tests.e2e.servers import call
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


class CommandDevice:
    """A device that takes commands: MQTT 5, subscribed to ``devices/{id}/commands/+``, answering
    on the response topic with the correlation data — ``executing`` then ``success`` (echoing the
    params as the result), or ``failed``, or nothing (``silent``)."""

    def __init__(self, broker: Any, device_id: str, secret: str, mode: str = "success") -> None:
        self.device_id, self.mode = device_id, mode
        self.received: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(device_id, secret)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "device connection")
        _, mid = self.client.subscribe(f"devices/{device_id}/commands/+", qos=1)
        time.sleep(0.2)  # SUBACK

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received.put(message)
        if self.mode == "silent":
            return
        command = json.loads(message.payload)
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = message.properties.CorrelationData
        topic = message.properties.ResponseTopic
        if self.mode == "success":
            client.publish(topic, json.dumps({"status": "executing"}), qos=1, properties=properties)
            result = {"echo": command["params"]}
            client.publish(topic, json.dumps({"status": "success", "result": result}), qos=1, properties=properties)
        else:
            client.publish(topic, json.dumps({"status": "failed", "error": "jammed"}), qos=1, properties=properties)

    def reply(self, command_id: str, body: dict | bytes, device_id: str | None = None) -> Any:
        payload = body if isinstance(body, bytes) else json.dumps(body)
        topic = f"devices/{device_id or self.device_id}/commands/{command_id}/reply"
        return self.client.publish(topic, payload, qos=1)

    def telemetry(self, values: dict) -> None:
        self.client.publish(f"devices/{self.device_id}/telemetry", json.dumps(values), qos=1).wait_for_publish(10)

    def next_command(self, timeout: float = 10) -> dict:
        return json.loads(self.received.get(timeout=timeout).payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def web(platform: Any, settings: Any) -> Any:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # what the server uses
    platform.env.update(COMMAND_SWEEP_SECONDS="1")
    platform.start("web")
    UserFactory(username="op", password="op-password", roles=["Operator"])
    status, body = call(
        "POST", f"{platform.base_url}/api/v1/auth/token/", {"username": "op", "password": "op-password"}
    )
    assert status == 200, body
    platform.token = body["access"]
    return platform


@contextmanager
def command_device(platform: Any, device_id: str, mode: str = "success", **fields: Any) -> Iterator[CommandDevice]:
    DeviceFactory(id=device_id, device_type="actuator", **fields)
    secret = device_services.activate_device(device_id, actor=None)
    client = CommandDevice(platform.broker, device_id, secret, mode)
    try:
        yield client
    finally:
        client.close()


def api(platform: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return call(method, f"{platform.base_url}/api/v1/{path}", body, token=platform.token)


def status_of(platform: Any, command_id: str) -> str:
    return api(platform, "GET", f"commands/{command_id}/")[1]["status"]


def go_online(dev: CommandDevice) -> None:
    dev.telemetry({"temperature": 21})
    wait_for(lambda: Device.objects.get(pk=dev.device_id).status == "online", 20, "online")


def test_a_command_travels_to_the_device_and_its_replies_come_back(web):
    with command_device(web, "e2e-fan") as fan:
        go_online(fan)
        status, body = api(web, "POST", "devices/e2e-fan/commands/", {"type": "set_state", "params": {"state": True}})
        assert status == 201 and body["status"] == "sent", body
        assert fan.next_command() == {
            "id": body["id"],
            "type": "set_state",
            "params": {"state": True},
            "expires_at": body["expires_at"].replace("Z", "+00:00"),
        }
        wait_for(lambda: status_of(web, body["id"]) == "success", 20, "success")
        detail = api(web, "GET", f"commands/{body['id']}/")[1]
        assert detail["result"] == {"echo": {"state": True}}
        assert [r["status"] for r in detail["replies"]] == ["executing", "success"]
        assert detail["delivered_at"] and detail["completed_at"]


def test_commands_wait_for_an_offline_device_and_go_out_in_order_when_it_connects(web):
    DeviceFactory(id="e2e-sleeper", device_type="actuator")
    secret = device_services.activate_device("e2e-sleeper", actor=None)
    ids = []
    for state in (True, False):
        status, body = api(
            web, "POST", "devices/e2e-sleeper/commands/", {"type": "set_state", "params": {"state": state}}
        )
        assert status == 201 and body["status"] == "pending"
        ids.append(body["id"])
    sleeper = CommandDevice(web.broker, "e2e-sleeper", secret)
    try:
        go_online(sleeper)  # the worker marks it online and sends what waited, oldest first
        assert [sleeper.next_command()["id"] for _ in ids] == ids
        wait_for(lambda: all(status_of(web, i) == "success" for i in ids), 20, "both succeeded")
    finally:
        sleeper.close()


def test_a_silent_device_times_out_and_its_late_reply_changes_nothing(web):
    web.start("beat")
    with command_device(web, "e2e-mute", mode="silent") as mute:
        go_online(mute)
        status, body = api(web, "POST", "devices/e2e-mute/commands/", {"type": "reboot", "timeout": 1})
        assert status == 201
        mute.next_command()
        wait_for(lambda: status_of(web, body["id"]) == "timeout", 20, "timeout by the beat")
        mute.reply(body["id"], {"status": "success"}).wait_for_publish(10)
        wait_for(lambda: len(api(web, "GET", f"commands/{body['id']}/")[1]["replies"]) == 1, 20, "late reply")
        detail = api(web, "GET", f"commands/{body['id']}/")[1]
        assert detail["status"] == "timeout" and detail["replies"][0]["applied"] is False


def test_failures_cancel_and_rejected_replies(web):
    with command_device(web, "e2e-broken", mode="failed") as broken, command_device(web, "e2e-other") as other:
        go_online(broken)
        status, body = api(web, "POST", "devices/e2e-broken/commands/", {"type": "set_value", "params": {"value": 2}})
        wait_for(lambda: status_of(web, body["id"]) == "failed", 20, "failed")
        assert api(web, "GET", f"commands/{body['id']}/")[1]["error"] == "jammed"
        assert api(web, "DELETE", f"commands/{body['id']}/")[0] == 409

        # Under its own topic, a reply for a command that is not its own, or no command at all, or
        # no JSON, reaches the platform and is dead-lettered with the reason.
        other.reply(body["id"], {"status": "success"}).wait_for_publish(10)
        other.reply(str(uuid.uuid4()), {"status": "success"}).wait_for_publish(10)
        other.reply(str(uuid.uuid4()), b"{nope").wait_for_publish(10)
        wait_for(lambda: DeadLetter.objects.filter(device_id="e2e-other").count() == 3, 20, "3 dead letters")
        reasons = sorted(DeadLetter.objects.filter(device_id="e2e-other").values_list("reason", flat=True))
        assert reasons == ["malformed_json", "unknown_command", "wrong_device"]

        # The broker refuses a device publishing under another device's topics (Mosquitto answers
        # "not authorized" or drops the connection): nothing reaches the platform.
        other.reply(body["id"], {"status": "success"}, device_id="e2e-broken")
        time.sleep(1)
        assert DeadLetter.objects.filter(device_id="e2e-other").count() == 3
        assert status_of(web, body["id"]) == "failed"


def test_a_batch_to_a_group_reaches_every_device_as_it_comes_online(web):
    group = DeviceGroupFactory(name="fans")
    with (
        command_device(web, "e2e-b1", group=group) as b1,
        command_device(web, "e2e-b2", group=group) as b2,
    ):
        for dev in (b1, b2):
            go_online(dev)
        DeviceFactory(id="e2e-b3", device_type="actuator", group=group)
        secret = device_services.activate_device("e2e-b3", actor=None)
        status, batch = api(
            web,
            "POST",
            "devices/batch/commands/",
            {"type": "set_state", "params": {"state": True}, "targets": {"group": group.pk}},
        )
        assert status == 201 and batch["total"] == 3, batch
        wait_for(lambda: api(web, "GET", f"command-batches/{batch['id']}/")[1]["counts"]["success"] == 2, 20, "2 of 3")
        assert api(web, "GET", f"command-batches/{batch['id']}/")[1]["counts"]["pending"] == 1
        late = CommandDevice(web.broker, "e2e-b3", secret)
        try:
            go_online(late)
            wait_for(lambda: api(web, "GET", f"command-batches/{batch['id']}/")[1]["finished"] == 3, 20, "all 3")
        finally:
            late.close()
