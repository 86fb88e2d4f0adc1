"""The platform's processes for end-to-end tests (web, bridge, Celery worker and beat), started
and killed by the test, and devices as plain paho clients logging in with the secrets the registry
issued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
from django.db import connection

from devices import services as device_services
from tests.e2e.servers import ROOT, base_env, celery_worker_command, free_port, stop_process
from tests.factories import DeviceFactory


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
            # This run's cache and channel-layer namespaces (fluxiot/settings_test.py): the processes
            # see the rule generation the test bumps, and their events reach the test's listeners.
            CACHE_KEY_PREFIX=f"fluxiot-test-{os.getpid()}",
            CHANNEL_LAYER_PREFIX=f"fluxiot-test-{os.getpid()}",
        )
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}
        self.web_port: int | None = None

    def start(self, name: str) -> subprocess.Popen:
        if name == "web" and self.web_port is None:
            self.web_port = free_port()
        command = {
            "bridge": [sys.executable, "manage.py", "run_bridge"],
            "worker": celery_worker_command(concurrency=1),
            "beat": [sys.executable, "-m", "celery", "-A", "fluxiot", "beat", "--loglevel", "INFO"],
            "web": [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.web_port)],
        }[name]
        log = open(self.tmp_path / f"{name}.log", "ab")
        offset = log.tell()
        proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        # Ready means subscribed (a message published before that has no subscriber and is dropped)
        # or, for the worker, consuming its queue.
        ready = {"bridge": "subscribed:", "worker": "ready.", "beat": "beat: Starting", "web": "FluxIoT on http"}[name]
        wait_for(lambda: ready in self.log(name)[offset:] or proc.poll() is not None, 30, f"{name} ready")
        assert proc.poll() is None, self.log(name)
        if name == "web":
            wait_for(self._web_answers, 30, "web /healthz")
        return proc

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def _web_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

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
