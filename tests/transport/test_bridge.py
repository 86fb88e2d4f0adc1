"""The transport bridge (transport/bridge.py) against a private Mosquitto with real paho device clients.

The hand-off here is a recording callable (``Recorder``), which can be told to fail; the real Celery
path is exercised end to end in tests/e2e/test_ingest.py. ``kill -9`` runs ``manage.py run_bridge``
as a subprocess with a hand-off that appends to a file (``append_to_file`` below).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokers import MosquittoBroker, free_port, mosquitto
from tests.e2e.servers import ROOT, base_env
from transport.bridge import OVERSIZE, Bridge, broker_address

pytestmark = pytest.mark.timeout(60)

HANDOFF_FILE_ENV = "FLUXIOT_TEST_HANDOFF_FILE"


def append_to_file(items: list[list[Any]]) -> None:
    """The hand-off of the ``run_bridge`` subprocess: one JSON line per item, one write per batch."""
    lines = "".join(json.dumps([item[0], item[1].hex(), *item[2:]]) + "\n" for item in items)
    with open(os.environ[HANDOFF_FILE_ENV], "a") as out:
        out.write(lines)


def wait_for(check: Callable[[], object], timeout: float = 10, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Recorder:
    """A hand-off that records each batch; ``fail = True`` makes it raise (and count the attempt)."""

    def __init__(self) -> None:
        self.batches: list[list[list[Any]]] = []
        self.batch_times: list[float] = []
        self.attempts = 0
        self.fail = False
        self._lock = threading.Lock()

    def __call__(self, items: list[list[Any]]) -> None:
        with self._lock:
            self.attempts += 1
            if self.fail:
                raise ConnectionError("the task queue is down")
            self.batches.append(list(items))
            self.batch_times.append(time.monotonic())

    @property
    def items(self) -> list[list[Any]]:
        with self._lock:
            return [item for batch in self.batches for item in batch]

    def payloads(self) -> list[bytes]:
        return [item[1] for item in self.items]

    def wait_items(self, n: int, timeout: float = 10) -> list[list[Any]]:
        wait_for(lambda: len(self.items) >= n, timeout, f"{n} items (have {len(self.items)})")
        return self.items


class Devices:
    """Device clients publishing QoS 1 (MQTT 3.1.1, as most devices do)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"device-{secrets.token_hex(4)}", protocol=mqtt.MQTTv311
        )
        self.client.max_inflight_messages_set(100)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "device connection")

    def publish(self, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
        infos = [self.client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def telemetry(n: int, start: int = 0, devices: int = 5) -> list[tuple[str, bytes]]:
    return [(f"devices/dev-{i % devices}/telemetry", b'{"seq": %d}' % i) for i in range(start, start + n)]


@pytest.fixture
def broker(request) -> Iterator[MosquittoBroker]:
    """A private Mosquitto (no auth, unlimited queues). Parametrized indirectly, the parameter is its
    ``max_inflight_messages`` (0: no limit), the in-flight window of MQTT 3.1.1 subscribers."""
    inflight = getattr(request, "param", None)
    with mosquitto(dynsec=False, max_queued_messages=0, max_inflight_messages=inflight) as running:
        yield running


@pytest.fixture
def devices(broker: MosquittoBroker) -> Iterator[Devices]:
    client = Devices(broker)
    yield client
    client.close()


@pytest.fixture
def make_bridge(broker: MosquittoBroker) -> Iterator[Callable[..., Bridge]]:
    """``make_bridge(handoff, **options)``: a started, subscribed bridge (``start=False``: neither)."""
    bridges: list[Bridge] = []

    def make(handoff: Callable[[list[list[Any]]], None], start: bool = True, **options: Any) -> Bridge:
        options.setdefault("client_id", f"test-bridge-{secrets.token_hex(4)}")
        options.setdefault("host", broker.host)
        options.setdefault("port", broker.port)
        options.setdefault("share_group", "fluxiot")
        options.setdefault("reconnect_min_delay", 0.1)
        options.setdefault("reconnect_max_delay", 1.0)
        options.setdefault("handoff_retry_max_delay", 0.5)
        bridge = Bridge(handoff=handoff, **options)
        bridges.append(bridge)
        if start:
            bridge.start()
            assert bridge.wait_ready(10), "the bridge did not connect and subscribe"
        return bridge

    yield make
    for bridge in bridges:
        bridge.stop(timeout=2)


# --- Batching and items ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast-paths", "paho-as-is"])
def test_batches_are_cut_by_size(make_bridge, devices, fast_paths):
    recorder = Recorder()
    make_bridge(recorder, batch_size=10, batch_ms=60_000, fast_paths=fast_paths)
    devices.publish(telemetry(30))
    recorder.wait_items(30, timeout=5)  # long before the 60 s timer
    assert [len(batch) for batch in recorder.batches] == [10, 10, 10]
    assert recorder.payloads() == [payload for _, payload in telemetry(30)]


def test_batches_are_cut_by_time(make_bridge, devices):
    recorder = Recorder()
    make_bridge(recorder, batch_size=1000, batch_ms=300)
    sent = time.monotonic()
    devices.publish(telemetry(3))
    recorder.wait_items(3, timeout=5)
    waited = recorder.batch_times[0] - sent
    assert [len(batch) for batch in recorder.batches] == [3]
    assert 0.2 <= waited < 2.0, waited


@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast-paths", "paho-as-is"])
def test_items_are_topic_payload_and_receive_time_of_uplink_topics_only(make_bridge, devices, fast_paths):
    recorder = Recorder()
    make_bridge(recorder, batch_size=100, batch_ms=50, fast_paths=fast_paths)
    before = int(time.time() * 1000)
    devices.publish(
        [
            ("devices/d1/telemetry", b'{"t": 1}'),
            ("devices/d1/attributes", b'{"firmware": "1.0"}'),
            ("devices/d1/status", b"online"),
            ("devices/d1/commands/c-17/reply", b'{"status": "success"}'),
            ("devices/d1/commands/c-18", b"{}"),  # downlink: not the bridge's
            ("devices/d1/config", b"{}"),  # downlink
            ("other/d1/telemetry", b"{}"),
        ]
    )
    items = recorder.wait_items(4)
    time.sleep(0.3)  # nothing else comes
    after = int(time.time() * 1000)
    assert [item[:2] for item in recorder.items] == [
        ["devices/d1/telemetry", b'{"t": 1}'],
        ["devices/d1/attributes", b'{"firmware": "1.0"}'],
        ["devices/d1/status", b"online"],
        ["devices/d1/commands/c-17/reply", b'{"status": "success"}'],
    ]
    for topic, payload, received_ms in items:
        assert isinstance(topic, str) and isinstance(payload, bytes) and isinstance(received_ms, int)
        assert before <= received_ms <= after


def test_an_oversize_payload_becomes_a_marker_item(make_bridge, devices):
    recorder = Recorder()
    make_bridge(recorder, batch_ms=50, max_payload_bytes=2048)
    at_limit, over = b"a" * 2048, bytes(range(256)) * 20  # 5,120 bytes
    devices.publish([("devices/d1/telemetry", at_limit), ("devices/d2/telemetry", over)])
    first, second = recorder.wait_items(2)
    assert len(first) == 3 and first[:2] == ["devices/d1/telemetry", at_limit]
    assert len(second) == 4
    assert second[0] == "devices/d2/telemetry"
    assert second[1] == over[:1024]
    assert isinstance(second[2], int)
    assert second[3] == OVERSIZE == "oversize"


def test_garbage_payloads_pass_through_untouched(make_bridge, devices):
    recorder = Recorder()
    make_bridge(recorder, batch_ms=50)
    garbage = [b"\xff\xfe\x00\x80 not utf-8", b"", b"{broken json", b"\x00" * 100]
    devices.publish([(f"devices/d{i}/telemetry", payload) for i, payload in enumerate(garbage)])
    devices.publish([("devices/d9/telemetry", b"qos 0")], qos=0)
    recorder.wait_items(5)
    assert recorder.payloads() == [*garbage, b"qos 0"]


# --- Acknowledgements ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast-paths", "paho-as-is"])
def test_nothing_is_acknowledged_before_the_hand_off_succeeds(make_bridge, devices, fast_paths):
    """With a Receive Maximum of 5 the broker sends a 6th QoS 1 message only after a PUBACK: while the
    hand-off fails the bridge holds exactly 5 (none acknowledged); once it works, all 20 arrive in
    order, each once."""
    recorder = Recorder()
    recorder.fail = True
    bridge = make_bridge(recorder, batch_size=5, batch_ms=50, receive_maximum=5, fast_paths=fast_paths)
    devices.publish(telemetry(20))
    wait_for(lambda: recorder.attempts >= 3, 5, "hand-off retries")
    time.sleep(0.5)
    assert bridge.pending() == 5
    assert recorder.items == []
    recorder.fail = False
    recorder.wait_items(20)
    time.sleep(0.3)
    assert recorder.payloads() == [payload for _, payload in telemetry(20)]
    assert bridge.handoff_failures >= 3


@pytest.mark.parametrize("broker", [0], indirect=True, ids=["no-inflight-limit"])
def test_without_a_receive_maximum_the_bridge_holds_at_most_max_pending(make_bridge, devices):
    """MQTT 3.1.1 with no in-flight limit at the broker (amqtt has none): while the hand-off fails the
    bridge stops reading at ``max_pending`` messages, and TCP pushes back; nothing is lost."""
    recorder = Recorder()
    recorder.fail = True
    bridge = make_bridge(recorder, protocol="3.1.1", batch_size=5, batch_ms=50, max_pending=10)
    devices.publish(telemetry(50))
    wait_for(lambda: recorder.attempts >= 3, 5, "hand-off retries")
    time.sleep(0.3)
    assert bridge.pending() == 10
    recorder.fail = False
    recorder.wait_items(50)
    time.sleep(0.3)
    assert recorder.payloads() == [payload for _, payload in telemetry(50)]


def test_a_batch_never_handed_off_is_delivered_again_to_the_next_session(make_bridge, devices):
    failing = Recorder()
    failing.fail = True
    first = make_bridge(failing, client_id="bridge-a", batch_size=100, batch_ms=50)
    devices.publish(telemetry(10))
    wait_for(lambda: failing.attempts >= 2, 5, "hand-off retries")
    assert first.stop(timeout=0.5) is False  # could not flush: nothing acknowledged

    recorder = Recorder()
    make_bridge(recorder, client_id="bridge-a", batch_size=100, batch_ms=50)
    recorder.wait_items(10)
    time.sleep(0.3)
    assert recorder.payloads() == [payload for _, payload in telemetry(10)]
    assert failing.items == []


class CuttableProxy:
    """A TCP proxy in front of the broker whose connections the test can cut (a network failure the
    bridge sees as a dropped connection, without DISCONNECT)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.connections += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            connections, self.connections = self.connections, []
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast-paths", "paho-as-is"])
def test_a_dropped_connection_discards_the_held_batch_and_the_broker_redelivers_it(
    broker, make_bridge, devices, fast_paths
):
    proxy = CuttableProxy(broker.host, broker.port)
    try:
        recorder = Recorder()
        recorder.fail = True
        bridge = make_bridge(recorder, port=proxy.port, batch_size=100, batch_ms=50, fast_paths=fast_paths)
        devices.publish(telemetry(10))
        wait_for(lambda: recorder.attempts >= 2, 5, "hand-off retries")
        proxy.cut()
        wait_for(lambda: bridge.discarded >= 10, 5, "the held batch to be discarded")
        assert bridge.wait_ready(10), "the bridge did not reconnect"
        recorder.fail = False
        recorder.wait_items(10)
        time.sleep(0.5)
        assert recorder.payloads() == [payload for _, payload in telemetry(10)]  # each exactly once
    finally:
        proxy.close()


def test_graceful_stop_hands_off_and_acknowledges_the_current_batch(make_bridge, devices):
    recorder = Recorder()
    bridge = make_bridge(recorder, client_id="bridge-g", batch_size=1000, batch_ms=60_000)
    devices.publish(telemetry(7))
    wait_for(lambda: bridge.pending() == 7, 5, "7 messages held")
    assert recorder.items == []
    assert bridge.stop() is True
    assert [len(batch) for batch in recorder.batches] == [7]

    again = Recorder()
    make_bridge(again, client_id="bridge-g", batch_size=1000, batch_ms=50)
    time.sleep(1.0)
    assert again.items == []  # all 7 were acknowledged before the DISCONNECT


# --- Sessions, sharing, reconnection ---------------------------------------------------------------------


def test_messages_published_while_the_bridge_is_stopped_arrive_when_it_returns(make_bridge, devices):
    first = make_bridge(Recorder(), client_id="bridge-p")
    first.stop()
    devices.publish(telemetry(50))
    recorder = Recorder()
    make_bridge(recorder, client_id="bridge-p", batch_ms=50)
    recorder.wait_items(50)
    assert recorder.payloads() == [payload for _, payload in telemetry(50)]


def test_two_bridges_share_the_load(make_bridge, devices):
    one, two = Recorder(), Recorder()
    make_bridge(one, client_id="bridge-1", batch_ms=50)
    make_bridge(two, client_id="bridge-2", batch_ms=50)
    devices.publish(telemetry(200, devices=20))
    wait_for(lambda: len(one.items) + len(two.items) >= 200, 10, "200 messages")
    time.sleep(0.3)
    a, b = set(one.payloads()), set(two.payloads())
    assert a and b, (len(a), len(b))
    assert not a & b
    assert a | b == {payload for _, payload in telemetry(200, devices=20)}
    assert len(one.items) + len(two.items) == 200


def test_release_session_hands_the_share_to_the_remaining_bridges(make_bridge, devices):
    stays, leaves = Recorder(), Recorder()
    make_bridge(stays, client_id="bridge-stays", batch_ms=50)
    leaving = make_bridge(leaves, client_id="bridge-leaves", batch_ms=50)
    assert leaving.stop(timeout=5, release_session=True) is True
    devices.publish(telemetry(40))
    stays.wait_items(40)
    back = Recorder()
    make_bridge(back, client_id="bridge-leaves", batch_ms=50)  # a new, empty session
    time.sleep(0.5)
    assert back.items == [] and leaves.items == []


def test_the_bridge_reconnects_and_subscribes_again_after_a_broker_restart(broker, make_bridge, devices):
    recorder = Recorder()
    bridge = make_bridge(recorder, batch_ms=50)
    devices.publish(telemetry(3))
    recorder.wait_items(3)
    devices.close()
    broker.restart()  # without persistence: the session and its subscriptions are gone
    wait_for(lambda: not bridge.connected, 5, "the bridge to notice")
    assert bridge.wait_ready(10), "no reconnection"
    again = Devices(broker)
    try:
        again.publish(telemetry(3, start=3))
    finally:
        again.close()
    recorder.wait_items(6)
    assert recorder.payloads() == [payload for _, payload in telemetry(6)]


def test_mqtt_3_1_1_shares_and_keeps_its_session_on_mosquitto(make_bridge, devices):
    one, two = Recorder(), Recorder()
    make_bridge(one, client_id="v3-1", protocol="3.1.1", batch_size=10, batch_ms=50)
    second = make_bridge(two, client_id="v3-2", protocol="3.1.1", batch_size=10, batch_ms=50)
    assert second.protocol == "3.1.1"
    devices.publish(telemetry(40))
    wait_for(lambda: len(one.items) + len(two.items) >= 40, 10, "40 messages")
    assert one.items and two.items  # $share works for 3.1.1 clients too
    second.stop()
    devices.publish(telemetry(40, start=40))
    back = Recorder()
    make_bridge(back, client_id="v3-2", protocol="3.1.1", batch_size=10, batch_ms=50)
    wait_for(lambda: len(one.items) + len(back.items) >= 60, 10, "80 messages")
    got = set(one.payloads()) | set(two.payloads()) | set(back.payloads())
    assert got == {payload for _, payload in telemetry(80)}
    assert back.items  # its share, queued in its session while it was away


class Mqtt311OnlyBroker:
    """Answers an MQTT 5 CONNECT as a 3.1.1-only broker does (CONNACK 1, unacceptable protocol
    version) and accepts a 3.1.1 one; records the protocol level of each CONNECT."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.levels: list[int] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(sock)
            data = sock.recv(1024)
            level = data[data.index(b"MQTT") + 4]
            self.levels.append(level)
            if level == 5:
                sock.sendall(b"\x20\x02\x00\x01")
                sock.close()
            else:
                sock.sendall(b"\x20\x02\x00\x00")

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_auto_protocol_falls_back_to_3_1_1_when_the_broker_refuses_mqtt_5(make_bridge):
    fake = Mqtt311OnlyBroker()
    try:
        bridge = make_bridge(Recorder(), start=False, port=fake.port, protocol="auto")
        bridge.start()
        wait_for(lambda: fake.levels[:2] == [5, 4], 10, f"a 3.1.1 CONNECT (levels {fake.levels})")
        wait_for(lambda: bridge.connected, 5, "the 3.1.1 connection")
        assert bridge.protocol == "3.1.1"
    finally:
        fake.close()


# --- Settings and the management command ---------------------------------------------------------------


def test_broker_address_from_settings(settings):
    settings.MQTT_URL = "mqtt://user:p%40ss@broker.example:1884"
    settings.EMBEDDED_BROKER = False
    settings.MQTT_BRIDGE_PASSWORD = ""
    assert broker_address() == broker_address(None, None)
    address = broker_address()
    assert (address.host, address.port, address.username, address.password, address.tls) == (
        "broker.example",
        1884,
        "user",
        "p@ss",
        False,
    )
    settings.MQTT_BRIDGE_USERNAME, settings.MQTT_BRIDGE_PASSWORD = "fluxiot-bridge", "secret"
    settings.MQTT_URL = "mqtts://broker.example"
    address = broker_address(port=9999)
    assert (address.port, address.username, address.password, address.tls) == (9999, "fluxiot-bridge", "secret", True)

    settings.MQTT_URL, settings.EMBEDDED_BROKER = "", True
    settings.EMBEDDED_BROKER_HOST, settings.EMBEDDED_BROKER_PORT = "127.0.0.1", 1999
    settings.BRIDGE_BATCH_SIZE, settings.BRIDGE_BATCH_MS = 321, 40
    bridge = Bridge.from_settings(handoff=Recorder(), batch_ms=25)
    assert (bridge.host, bridge.port, bridge.protocol) == ("127.0.0.1", 1999, "3.1.1")
    assert (bridge.batch_size, bridge.batch_seconds) == (321, 0.025)


@pytest.mark.django_db(transaction=True)
def test_the_bridge_from_settings_works_with_the_embedded_broker(settings):
    """No MQTT_URL: the embedded amqtt broker (3.1.1 only, ``$share/`` stripped), the bridge's account
    from the settings, a device logging in with its registry secret."""
    from devices import services
    from tests.factories import DeviceFactory
    from transport.embedded_broker import start_embedded_broker

    settings.MQTT_URL, settings.EMBEDDED_BROKER = "", True
    settings.MQTT_BRIDGE_USERNAME, settings.MQTT_BRIDGE_PASSWORD = "fluxiot-bridge", "bridge-secret"
    host, port, stop_broker = start_embedded_broker("127.0.0.1", 0)
    recorder = Recorder()
    bridge = Bridge.from_settings(port=port, handoff=recorder, batch_ms=50, client_id="embedded-bridge")
    device = None
    try:
        assert (bridge.host, bridge.protocol) == ("127.0.0.1", "3.1.1")
        bridge.start()
        assert bridge.wait_ready(10), "the bridge did not connect and subscribe"
        secret = services.activate_device(DeviceFactory(id="emb-1"), actor=None)
        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="emb-1", protocol=mqtt.MQTTv311)
        device.username_pw_set("emb-1", secret)
        device.connect(host, port)
        device.loop_start()
        for kind, payload in (("telemetry", b'{"t": 1}'), ("status", b"online")):
            device.publish(f"devices/emb-1/{kind}", payload, qos=1).wait_for_publish(10)
        items = recorder.wait_items(2)
        assert [item[:2] for item in items] == [
            ["devices/emb-1/telemetry", b'{"t": 1}'],
            ["devices/emb-1/status", b"online"],
        ]
        assert bridge.stop() is True
    finally:
        if device is not None:
            device.disconnect()
            device.loop_stop()
        bridge.stop(timeout=2)
        stop_broker()


def _run_bridge(broker: MosquittoBroker, tmp_path: Path, log_name: str, **extra_env: str) -> subprocess.Popen:
    env = base_env(
        **extra_env,
        SECRET_KEY="test-bridge-subprocess",
        FLUXIOT_VAR_DIR=str(tmp_path),
        MQTT_URL=broker.url,
        BRIDGE_CLIENT_ID="bridge-killed",
        BRIDGE_SHARE_GROUP="fluxiot",
        BRIDGE_BATCH_SIZE="50",
        BRIDGE_BATCH_MS="20",
        LOG_LEVEL="INFO",
        **{HANDOFF_FILE_ENV: str(tmp_path / "handed-off.jsonl")},
    )
    log = open(tmp_path / log_name, "wb")
    try:
        return subprocess.Popen(
            [sys.executable, "manage.py", "run_bridge", "--handoff", "tests.transport.test_bridge.append_to_file"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def _handed_off(tmp_path: Path) -> list[bytes]:
    path = tmp_path / "handed-off.jsonl"
    if not path.exists():
        return []
    return [bytes.fromhex(json.loads(line)[1]) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(120)
def test_kill_9_of_run_bridge_mid_stream_loses_nothing(broker, devices, tmp_path):
    total = 2000
    messages = telemetry(total, devices=10)
    process = _run_bridge(broker, tmp_path, "bridge-1.log")
    try:
        wait_for(lambda: "subscribed" in (tmp_path / "bridge-1.log").read_text(), 30, "the bridge to subscribe")

        def publish() -> None:
            for start in range(0, total, 20):
                devices.publish(messages[start : start + 20])
                time.sleep(0.005)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        wait_for(lambda: len(_handed_off(tmp_path)) > 200, 30, "the stream to start")
        process.kill()  # SIGKILL: no flush, no DISCONNECT
        process.wait(10)
        publisher.join(60)
        assert not publisher.is_alive()

        metrics_port = free_port()
        process = _run_bridge(broker, tmp_path, "bridge-2.log", BRIDGE_METRICS_PORT=str(metrics_port))
        expected = {payload for _, payload in messages}
        wait_for(lambda: set(_handed_off(tmp_path)) >= expected, 30, f"all {total} messages")
        assert set(_handed_off(tmp_path)) == expected

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'fluxiot_bridge_messages_total{kind="telemetry"}' in metrics
        assert "fluxiot_bridge_batches_total" in metrics and "fluxiot_bridge_handoff_seconds_bucket" in metrics

        process.send_signal(signal.SIGTERM)  # graceful this time
        assert process.wait(20) == 0
        assert "stopped" in (tmp_path / "bridge-2.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
