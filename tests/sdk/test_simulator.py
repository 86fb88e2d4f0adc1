"""The device simulator against a real Mosquitto (started here on a free port) and a real paho
subscriber."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sdk.simulator import (
    DeviceCredentials,
    DeviceState,
    SimulatedDevice,
    Simulator,
    TelemetryGenerator,
    load_credentials,
    parse_broker_url,
    provision_devices,
    save_credentials,
)
from tests.brokers import free_port, mosquitto

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def broker():
    """A private Mosquitto: anonymous, no persistence, stopped after the module."""
    with mosquitto(dynsec=False) as private:
        yield f"mqtt://{private.host}:{private.port}"


class Subscriber:
    """A real paho client recording what it receives."""

    def __init__(self, url: str, *topics: str) -> None:
        address = parse_broker_url(url)
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_connect = lambda client, *args: client.subscribe([(t, 1) for t in topics])
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber did not subscribe"

    def _on_message(self, client, userdata, message):
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0) -> list[mqtt.MQTTMessage]:
        with self._cond:
            self._cond.wait_for(lambda: predicate(self.messages), timeout)
            return list(self.messages)

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribe():
    subscribers: list[Subscriber] = []

    def make(url: str, *topics: str) -> Subscriber:
        subscriber = Subscriber(url, *topics)
        subscribers.append(subscriber)
        return subscriber

    yield make
    for subscriber in subscribers:
        subscriber.close()


def _creds(count: int, prefix: str | None = None) -> list[DeviceCredentials]:
    prefix = prefix or f"t{uuid.uuid4().hex[:6]}-"
    return [DeviceCredentials(id=f"{prefix}{n}", secret=f"secret-{n}") for n in range(1, count + 1)]


# --- Unit level -----------------------------------------------------------------------------------


def test_parse_broker_url():
    assert parse_broker_url("mqtt://10.0.0.1:1999").host == "10.0.0.1"
    assert parse_broker_url("mqtt://10.0.0.1:1999").port == 1999
    assert parse_broker_url("broker.local").port == 1883
    secure = parse_broker_url("mqtts://user:pw@broker.local")
    assert (secure.host, secure.port, secure.tls) == ("broker.local", 8883, True)
    with pytest.raises(ValueError):
        parse_broker_url("http://broker.local")


def test_credentials_file_round_trip(tmp_path):
    path = tmp_path / "creds.json"
    save_credentials(path, [DeviceCredentials("a", "s1"), DeviceCredentials("b", "s2")])
    assert load_credentials(path) == [DeviceCredentials("a", "s1"), DeviceCredentials("b", "s2")]
    assert path.stat().st_mode & 0o077 == 0  # secrets: owner only
    path.write_text('[{"id": "a"}]')
    with pytest.raises(ValueError):
        load_credentials(path)


def test_generated_values_stay_in_bounds():
    import random

    for seed in range(20):
        generator = TelemetryGenerator(random.Random(seed))
        assert 3 <= len(generator.keys) <= 5
        for _ in range(2000):
            values = generator.next()
            assert set(values) == set(generator.keys)
            assert isinstance(values["temperature"], float) and -20 <= values["temperature"] <= 60
            assert isinstance(values["battery"], int) and 0 <= values["battery"] <= 100
            assert isinstance(values["door_open"], bool)
            if "humidity" in values:
                assert isinstance(values["humidity"], float) and 5 <= values["humidity"] <= 95
            if "rssi" in values:
                assert type(values["rssi"]) is int and -110 <= values["rssi"] <= -30


# --- Against Mosquitto ----------------------------------------------------------------------------


def test_devices_publish_valid_telemetry(broker, subscribe):
    credentials = _creds(3)
    ids = {c.id for c in credentials}
    subscriber = subscribe(broker, "devices/+/telemetry")
    simulator = Simulator(credentials, broker, rate=20, count=30, seed=1)
    summary = simulator.run()

    assert summary.published == 30
    assert summary.acked == 30
    assert simulator.stats.outstanding == 0
    messages = subscriber.wait_for(lambda ms: len([m for m in ms if m.topic.split("/")[1] in ids]) >= 30)
    ours = [m for m in messages if m.topic.split("/")[1] in ids]
    assert len(ours) == 30
    now_ms = time.time() * 1000
    received_keys = set()
    for message in ours:
        assert message.qos == 1
        payload = json.loads(message.payload)
        assert isinstance(payload, dict)
        ts = payload.pop("ts")
        assert isinstance(ts, int) and now_ms - 60_000 < ts <= now_ms + 1000
        assert 3 <= len(payload) <= 5
        kinds = {type(v) for v in payload.values()}
        assert {float, int, bool} <= kinds
        received_keys.add((message.topic.split("/")[1], ts))
    # Every message is keyed (device, ts) with its publish time, for latency measurements.
    assert received_keys == set(simulator.stats.sent_times)
    assert len(simulator.stats.ack_latencies) == 30


@pytest.mark.parametrize("version", [5, 3])
def test_online_retained_attributes_once_and_last_will_on_kill(broker, subscribe, version):
    (cred,) = _creds(1)
    status = f"devices/{cred.id}/status"
    attributes = f"devices/{cred.id}/attributes"
    early = subscribe(broker, status, attributes)
    device = SimulatedDevice(cred, broker, mqtt_version=version, attributes={"firmware": "9.9.9", "model": "T-1"})
    device.connect()
    try:
        early.wait_for(lambda ms: any(m.topic == attributes for m in ms) and any(m.topic == status for m in ms))
        assert [m.payload for m in early.on(status)] == [b"online"]
        assert [json.loads(m.payload) for m in early.on(attributes)] == [{"firmware": "9.9.9", "model": "T-1"}]

        # A late subscriber gets the retained status.
        late = subscribe(broker, status)
        messages = late.wait_for(lambda ms: len(ms) >= 1)
        assert [(m.payload, m.retain) for m in messages] == [(b"online", True)]

        device.kill()
        assert device.state is DeviceState.KILLED
        # The broker publishes the Last Will: nobody sent "offline" but the broker.
        early.wait_for(lambda ms: any(m.topic == status and m.payload == b"offline" for m in ms))
        assert [m.payload for m in early.on(status)] == [b"online", b"offline"]
        assert [m.payload for m in early.on(attributes)] == [b'{"firmware":"9.9.9","model":"T-1"}']
        after = subscribe(broker, status)
        assert [(m.payload, m.retain) for m in after.wait_for(lambda ms: len(ms) >= 1)] == [(b"offline", True)]
    finally:
        if device.state is not DeviceState.KILLED:
            device.kill()


def test_stop_publishes_offline_and_disconnects(broker, subscribe):
    (cred,) = _creds(1)
    status = f"devices/{cred.id}/status"
    subscriber = subscribe(broker, status)
    device = SimulatedDevice(cred, broker)
    device.connect()
    assert device.publish_telemetry() is not None
    device.stop()
    assert device.state is DeviceState.STOPPED
    assert device.acked == 1
    messages = subscriber.wait_for(lambda ms: len(ms) >= 2)
    assert [m.payload for m in messages] == [b"online", b"offline"]
    time.sleep(0.3)  # a Last Will would arrive now if the DISCONNECT had been missed
    assert [m.payload for m in subscriber.on(status)] == [b"online", b"offline"]
    assert device.publish_telemetry() is None  # stopped devices do not publish


def test_device_subscribes_to_its_commands(broker, subscribe):
    (cred,) = _creds(1)
    received: list[tuple[str, bytes]] = []
    device = SimulatedDevice(cred, broker, command_handler=lambda d, cid, msg: received.append((cid, msg.payload)))
    device.connect()
    try:
        deadline = time.monotonic() + 10
        while not device.commands_subscribed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert device.commands_subscribed
        commander = subscribe(broker, "unused/topic")
        commander.client.publish(f"devices/{cred.id}/commands/cmd-1", b'{"id":"cmd-1","type":"reboot"}', qos=1)
        commander.client.publish(f"devices/{cred.id}/commands/cmd-1/reply", b"{}", qos=1)  # not a command
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert received == [("cmd-1", b'{"id":"cmd-1","type":"reboot"}')]
        assert device.commands_received == 1
    finally:
        device.stop()


def test_rate_is_roughly_respected(broker):
    # 5 devices × 10 msg/s × 1 s ≈ 50 messages.
    simulator = Simulator(_creds(5), broker, rate=10, duration=1.0)
    summary = simulator.run()
    assert 25 <= summary.published <= 60
    assert summary.acked == summary.published
    per_device = [d.published for d in simulator.devices]
    assert all(5 <= n <= 12 for n in per_device), per_device

    # A total rate is shared by the devices: 4 devices, 20 msg/s in total, 1 s ≈ 20 messages.
    simulator = Simulator(_creds(4), broker, total_rate=20, duration=1.0)
    summary = simulator.run()
    assert 10 <= summary.published <= 26
    assert summary.acked == summary.published


def test_as_fast_as_acked_until_count(broker):
    simulator = Simulator(_creds(10), broker, rate=0, count=2000, mqtt_version=3)
    summary = simulator.run()
    assert summary.published == 2000
    assert summary.acked == 2000
    assert summary.connected == 10
    assert len(simulator.stats.sent_times) == 2000


def test_connection_refused_is_reported():
    port = free_port()  # nothing listens there
    device = SimulatedDevice(_creds(1)[0], f"mqtt://127.0.0.1:{port}", reconnect=False)
    with pytest.raises(ConnectionError):
        device.connect(timeout=5)
    assert device.state is DeviceState.FAILED


@pytest.mark.django_db(transaction=True)
def test_create_provisions_real_devices(broker, tmp_path, subscribe):
    from devices.choices import ActivationState
    from devices.models import Device
    from devices.services import verify_device_secret
    from sdk.simulator.__main__ import main

    prefix = f"simt{uuid.uuid4().hex[:4]}-"
    path = tmp_path / "creds.json"
    subscriber = subscribe(broker, "devices/+/telemetry")
    argv = ["--create", "3", "--prefix", prefix, "--credentials", str(path), "--broker", broker]
    assert main([*argv, "--count", "6", "--rate", "0"]) == 0

    credentials = json.loads(path.read_text())
    assert [c["id"] for c in credentials] == [f"{prefix}0001", f"{prefix}0002", f"{prefix}0003"]
    for item in credentials:
        device = Device.objects.get(pk=item["id"])
        assert device.activation_state == ActivationState.ACTIVE
        assert verify_device_secret(item["id"], item["secret"])
    subscriber.wait_for(lambda ms: len([m for m in ms if m.topic.split("/")[1].startswith(prefix)]) >= 6)

    # Again: the same devices, active already, get new secrets (the old ones stop working).
    again = provision_devices(3, prefix)
    assert [c.id for c in again] == [c["id"] for c in credentials]
    for old, new in zip(credentials, again, strict=True):
        assert verify_device_secret(new.id, new.secret)
        assert not verify_device_secret(old["id"], old["secret"])


def test_cli_runs_as_a_subprocess(broker, tmp_path):
    path = tmp_path / "creds.json"
    save_credentials(path, _creds(2))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-m", "sdk.simulator", "--credentials", str(path), "--broker", broker]
        + ["--count", "10", "--rate", "50", "--mqtt-version", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "published=10 acked=10" in result.stdout
    assert result.stdout.count("\n") == 1  # only the summary line on stdout; logs go to stderr
