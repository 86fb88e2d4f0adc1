"""The ingest path end to end, and its faults, with every part real: a private Mosquitto with dynamic
security, the bridge (`manage.py run_bridge`) and a Celery worker as processes, PostgreSQL and
Redis, and devices as paho clients logging in with the secrets the registry issued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import psycopg
import pytest
from django.db import connection

from devices import services as device_services
from devices.models import Device
from telemetry.models import DeadLetter, LatestValue, TelemetryPoint
from tests.e2e.servers import ROOT, base_env, celery_worker_command, stop_process
from tests.factories import DeviceFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def wait_for(check: Callable[[], object], timeout: float = 30, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Platform:
    """The processes of the ingest path, started and killed by the test."""

    def __init__(self, broker, tmp_path) -> None:
        db = connection.settings_dict
        self.broker = broker
        self.env = base_env(
            DEBUG="0",
            SECRET_KEY=os.environ["SECRET_KEY"],
            DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            REDIS_URL="redis://127.0.0.1:6379/1",
            MQTT_URL=f"mqtt://{broker.host}:{broker.port}",
            MQTT_BRIDGE_USERNAME=broker.bridge.username,
            MQTT_BRIDGE_PASSWORD=broker.bridge.password,
            BRIDGE_CLIENT_ID=f"e2e-bridge-{os.getpid()}",
            BRIDGE_SHARE_GROUP=f"e2e{os.getpid()}",
            BRIDGE_BATCH_MS="50",
            CELERY_VISIBILITY_TIMEOUT="4",
            INGEST_MAX_PAYLOAD_BYTES="2048",
            LAST_SEEN_RESOLUTION_SECONDS="0",  # every batch writes last_seen_at (the worker test needs it)
            FLUXIOT_VAR_DIR=str(tmp_path),
            LOG_LEVEL="INFO",
        )
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> subprocess.Popen:
        command = {
            "bridge": [sys.executable, "manage.py", "run_bridge"],
            "worker": celery_worker_command(concurrency=1),
        }[name]
        log = open(self.tmp_path / f"{name}.log", "ab")
        offset = log.tell()
        proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        # Ready means subscribed (a message published before that has no subscriber and is dropped)
        # or, for the worker, consuming its queue.
        ready = {"bridge": "subscribed:", "worker": "ready."}[name]
        wait_for(lambda: ready in self.log(name)[offset:] or proc.poll() is not None, 30, f"{name} ready")
        assert proc.poll() is None, self.log(name)
        return proc

    def kill(self, name: str) -> None:
        """kill -9 the process and its children (a Celery worker's pool processes too)."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for name, proc in list(self.procs.items()):
            stop_process(proc, timeout=15, group=True)
            self.procs.pop(name, None)

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def platform(dynsec_settings, tmp_path) -> Iterator[Platform]:
    p = Platform(dynsec_settings, tmp_path)
    p.start("worker")
    p.start("bridge")
    try:
        yield p
    finally:
        p.stop_all()


class DeviceClient:
    """A device as a plain paho client: its id and secret, a Last Will, QoS 1 publishes."""

    def __init__(self, broker, device_id: str, secret: str) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(device_id, secret)
        self.client.will_set(f"devices/{device_id}/status", "offline", qos=1, retain=True)
        self.client.max_inflight_messages_set(200)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "device connection")

    def publish(self, kind: str, payload: bytes | str | dict) -> mqtt.MQTTMessageInfo:
        body = json.dumps(payload) if isinstance(payload, dict) else payload
        return self.client.publish(f"devices/{self.device_id}/{kind}", body, qos=1)

    def telemetry(self, n: int, base_ms: int, pace: float = 0.0) -> None:
        infos = []
        for i in range(n):
            infos.append(self.publish("telemetry", {"seq": i, "temperature": 20 + i % 7, "ts": base_ms + i}))
            if pace:
                time.sleep(pace)
        for info in infos:
            info.wait_for_publish(30)

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the Last Will."""
        self.client.loop_stop()
        self.client.socket().close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def device(broker, device_id: str) -> Iterator[DeviceClient]:
    DeviceFactory(id=device_id)
    secret = device_services.activate_device(device_id, actor=None)  # creates the broker account
    client = DeviceClient(broker, device_id, secret)
    try:
        yield client
    finally:
        client.close()


def stored_seqs(device_id: str) -> list[int]:
    return sorted(
        int(v)
        for v in TelemetryPoint.objects.filter(device_id=device_id, key="seq").values_list("value_num", flat=True)
    )


def publish_in_background(dev: DeviceClient, total: int, base: int) -> threading.Thread:
    thread = threading.Thread(target=dev.telemetry, args=(total, base, 0.002), daemon=True)
    thread.start()
    return thread


def test_telemetry_status_and_last_will(platform):
    base = int(time.time() * 1000) - 60_000
    with device(platform.broker, "e2e-dev") as dev:
        dev.publish("attributes", {"firmware": "1.2.3"}).wait_for_publish(10)
        dev.telemetry(50, base)
        wait_for(lambda: len(stored_seqs("e2e-dev")) == 50, 30, "50 points")
        assert LatestValue.objects.get(device_id="e2e-dev", key="seq").value == 49
        wait_for(lambda: Device.objects.get(pk="e2e-dev").status == "online", 10, "online")
        wait_for(lambda: Device.objects.get(pk="e2e-dev").attributes == {"firmware": "1.2.3"}, 10, "attributes")
        dev.kill()
        wait_for(lambda: Device.objects.get(pk="e2e-dev").status == "offline", 20, "offline by last will")
    change = Device.objects.get(pk="e2e-dev").status_changes.first()
    assert change.new_status == "offline" and "reported offline" in change.reason


def test_bad_messages_are_dead_lettered_and_the_bridge_lives_on(platform):
    with device(platform.broker, "e2e-bad") as dev:
        for payload in [b"{broken", b"[1, 2]", b'{"t": null}', b"x" * 5000, b"\xff\xfe\xfd"]:
            dev.publish("telemetry", payload).wait_for_publish(10)
        dev.publish("status", "dancing").wait_for_publish(10)
        dev.telemetry(1, int(time.time() * 1000))
        wait_for(lambda: stored_seqs("e2e-bad") == [0], 30, "the good message after the bad ones")
    reasons = sorted(DeadLetter.objects.filter(device_id="e2e-bad").values_list("reason", flat=True))
    assert reasons == sorted(
        ["malformed_json", "not_an_object", "unsupported_value", "payload_too_large", "malformed_json", "bad_status"]
    )
    assert platform.procs["bridge"].poll() is None


def test_kill_9_the_bridge_mid_stream_loses_nothing_and_stores_nothing_twice(platform):
    total = 3000
    base = int(time.time() * 1000) - 120_000
    with device(platform.broker, "e2e-crash") as dev:
        publisher = publish_in_background(dev, total, base)
        wait_for(lambda: len(stored_seqs("e2e-crash")) > 300, 30, "the stream to start")
        platform.kill("bridge")  # unacked messages stay queued in its persistent session
        publisher.join(60)
        platform.start("bridge")
        wait_for(lambda: len(stored_seqs("e2e-crash")) == total, 60, f"all {total} messages")
    seqs = stored_seqs("e2e-crash")
    assert seqs == list(range(total))  # each exactly once


def test_a_worker_killed_mid_batch_has_its_batch_redone(platform):
    base = int(time.time() * 1000) - 30_000
    with device(platform.broker, "e2e-worker") as dev:
        dev.telemetry(5, base)
        wait_for(lambda: len(stored_seqs("e2e-worker")) == 5, 30, "first points")
        # Hold the device row: the next batch blocks on it inside the worker, mid-transaction.
        db = connection.settings_dict
        with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"]) as locker:
            locker.execute("SELECT 1 FROM devices_device WHERE id = 'e2e-worker' FOR UPDATE")
            dev.telemetry(20, base + 1000)
            time.sleep(2)  # the batch has been taken and is waiting on the lock
            assert len(stored_seqs("e2e-worker")) == 5
            platform.kill("worker")
            locker.rollback()
        time.sleep(5)  # past the visibility timeout (4 s here): the taken batch is up for redelivery
        platform.start("worker")
        wait_for(lambda: len(stored_seqs("e2e-worker")) == 25, 60, "the killed batch, redone")


def test_a_database_outage_under_load_is_caught_up(platform):
    total = 1500
    base = int(time.time() * 1000) - 90_000
    db_name = connection.settings_dict["NAME"]
    with device(platform.broker, "e2e-outage") as dev:
        publisher = publish_in_background(dev, total, base)
        wait_for(lambda: len(stored_seqs("e2e-outage")) > 100, 30, "the stream to start")
        db = connection.settings_dict
        # The database goes away for the platform's processes: no new connections, and the open
        # ones are cut (this test's own connection is spared). Done from the maintenance database.
        with psycopg.connect(
            host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS false')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                    [db_name, connection.connection.info.backend_pid],
                )
                time.sleep(4)
            finally:
                admin.execute(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS true')
        publisher.join(60)
        wait_for(lambda: len(stored_seqs("e2e-outage")) == total, 90, f"all {total} messages after the outage")
    assert stored_seqs("e2e-outage") == list(range(total))
