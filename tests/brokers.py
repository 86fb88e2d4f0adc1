"""A private Mosquitto for tests: a free 127.0.0.1 port, a generated configuration in a temporary
directory, optionally the dynamic security plugin with the platform's admin and bridge accounts.
The machine's own broker (port 1883) is never touched.

    with mosquitto(dynsec=True) as broker:
        broker.host, broker.port, broker.admin, broker.bridge

Fixtures: ``mosquitto_broker`` (no auth, anonymous allowed), ``dynsec_broker`` (dynamic security on)
and ``dynsec_settings`` (``dynsec_broker`` plus the Django settings that point the platform at it).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import queue
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = os.environ.get("MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def find_dynsec_plugin() -> str:
    """The dynamic security plugin of the installed Mosquitto (``MOSQUITTO_DYNSEC_PLUGIN`` overrides)."""
    candidates = [os.environ.get("MOSQUITTO_DYNSEC_PLUGIN", "")]
    candidates += sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    candidates += ["/usr/lib/mosquitto_dynamic_security.so", "/usr/local/lib/mosquitto_dynamic_security.so"]
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError(
        "Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) was not found; "
        "install the mosquitto package or set MOSQUITTO_DYNSEC_PLUGIN"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Account:
    username: str
    password: str


def _pbkdf2_client(account: Account, role: str, iterations: int = 101) -> dict[str, Any]:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", account.password.encode(), salt, iterations)
    return {
        "username": account.username,
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
        "roles": [{"rolename": role}],
    }


def initial_dynsec_config(admin: Account, bridge: Account) -> dict[str, Any]:
    """A dynamic-security.json with only the admin and bridge accounts (what ``sync_broker
    --write-config`` writes for an empty registry). Built here, independently of the platform's code,
    so the tests check that code against a broker configured by other means."""
    allow = lambda acltype, topic: {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}  # noqa: E731
    control = "$CONTROL/dynamic-security/#"
    return {
        "clients": [_pbkdf2_client(admin, "fluxiot-dynsec-admin"), _pbkdf2_client(bridge, "fluxiot-bridge")],
        "groups": [],
        "roles": [
            {
                "rolename": "fluxiot-dynsec-admin",
                "acls": [
                    allow(kind, control)
                    for kind in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
                ],
            },
            {
                "rolename": "fluxiot-bridge",
                "acls": [
                    allow("subscribePattern", "$share/+/devices/#"),
                    allow("subscribePattern", "devices/#"),
                    allow("unsubscribePattern", "$share/+/devices/#"),
                    allow("unsubscribePattern", "devices/#"),
                    allow("publishClientReceive", "devices/#"),
                    allow("publishClientSend", "devices/#"),
                ],
            },
        ],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
    }


@dataclass
class MosquittoBroker:
    """A running private Mosquitto. ``restart()`` keeps the port (and, unless told otherwise, the
    dynamic security file the plugin has been saving)."""

    host: str
    port: int
    workdir: Path
    dynsec: bool
    admin: Account | None = None
    bridge: Account | None = None
    max_queued_messages: int = 0
    max_inflight_messages: int | None = None
    extra_config: str = ""
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def dynsec_path(self) -> Path:
        return self.workdir / "dynamic-security.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def dynsec_config(self) -> dict[str, Any]:
        """The plugin's file as the broker last saved it."""
        return json.loads(self.dynsec_path.read_text())

    def write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            "persistence false",
            f"max_queued_messages {self.max_queued_messages}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if self.max_inflight_messages is not None:
            lines.append(f"max_inflight_messages {self.max_inflight_messages}")
        if os.geteuid() == 0:
            # As root Mosquitto would switch to the "mosquitto" user, who cannot use this directory.
            lines.append("user root")
        if self.dynsec:
            lines += [
                "allow_anonymous false",
                f"plugin {find_dynsec_plugin()}",
                f"plugin_opt_config_file {self.dynsec_path}",
            ]
        else:
            lines.append("allow_anonymous true")
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        assert self.process is None, "already running"
        self.write_config()
        log = open(self.log_path, "ab")  # the process keeps its own copy of the descriptor
        try:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"mosquitto exited with {code} at start:\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout:g}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def restart(self, dynsec_config: dict[str, Any] | None = None) -> None:
        """Stop, optionally replace the dynamic security file, start again on the same port."""
        self.stop()
        if dynsec_config is not None:
            self.dynsec_path.write_text(json.dumps(dynsec_config))
        self.start()


@contextmanager
def mosquitto(
    *,
    dynsec: bool = True,
    max_queued_messages: int = 0,
    max_inflight_messages: int | None = None,
    extra_config: str = "",
    dynsec_config: dict[str, Any] | None = None,
    admin: Account | None = None,
    bridge: Account | None = None,
) -> Iterator[MosquittoBroker]:
    """Run a private Mosquitto for the block. With ``dynsec``, anonymous logins are refused and the
    plugin starts from ``dynsec_config`` (default: just the admin and bridge accounts, generated
    unless given). ``max_queued_messages`` 0 is unlimited; ``max_inflight_messages`` None keeps
    Mosquitto's default."""
    workdir = Path(tempfile.mkdtemp(prefix="fluxiot-mosquitto-"))
    broker = MosquittoBroker(
        host="127.0.0.1",
        port=free_port(),
        workdir=workdir,
        dynsec=dynsec,
        max_queued_messages=max_queued_messages,
        max_inflight_messages=max_inflight_messages,
        extra_config=extra_config,
    )
    if dynsec:
        broker.admin = admin or Account("fluxiot-admin", secrets.token_urlsafe(16))
        broker.bridge = bridge or Account("fluxiot-bridge", secrets.token_urlsafe(16))
        config = dynsec_config if dynsec_config is not None else initial_dynsec_config(broker.admin, broker.bridge)
        broker.dynsec_path.write_text(json.dumps(config))
    try:
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            try:
                broker.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                broker.port = free_port()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def mosquitto_broker() -> Iterator[MosquittoBroker]:
    """A private Mosquitto without authentication."""
    with mosquitto(dynsec=False) as broker:
        yield broker


@pytest.fixture
def dynsec_broker() -> Iterator[MosquittoBroker]:
    """A private Mosquitto with dynamic security: only the admin and bridge accounts exist."""
    with mosquitto(dynsec=True) as broker:
        yield broker


@pytest.fixture
def dynsec_settings(dynsec_broker: MosquittoBroker, settings: Any) -> MosquittoBroker:
    """``dynsec_broker``, with the platform's settings pointing at it and broker sync enabled."""
    assert dynsec_broker.admin and dynsec_broker.bridge
    settings.MQTT_URL = dynsec_broker.url
    settings.EMBEDDED_BROKER = False
    settings.MQTT_DYNSEC_ENABLED = True
    settings.MQTT_DYNSEC_USERNAME = dynsec_broker.admin.username
    settings.MQTT_DYNSEC_PASSWORD = dynsec_broker.admin.password
    settings.MQTT_BRIDGE_USERNAME = dynsec_broker.bridge.username
    settings.MQTT_BRIDGE_PASSWORD = dynsec_broker.bridge.password
    return dynsec_broker


@pytest.fixture
def command_broker(mosquitto_broker: Any, settings: Any) -> Iterator[Any]:
    """A private Mosquitto (no auth) that this process's command publisher uses (its settings point
    there; the publisher is recreated before and after)."""
    from control import publisher

    settings.MQTT_URL = mosquitto_broker.url
    settings.EMBEDDED_BROKER = False
    settings.MQTT_BRIDGE_PASSWORD = ""
    settings.COMMAND_PUBLISH_TIMEOUT = 3.0
    publisher.reset_publisher()
    yield mosquitto_broker
    publisher.reset_publisher()


# --- An MQTT client for assertions ----------------------------------------------------------------


class MqttProbe:
    """A paho client that waits for each answer, for tests: ``connect()`` returns the CONNACK reason
    code (None when none came), ``subscribe()`` the SUBACK codes, ``publish()`` the PUBACK code
    (MQTT 5; 0 on 3.1.1), ``message()`` the next message on a topic."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        protocol: int = 5,
        client_id: str | None = None,
        clean: bool = True,
        timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.protocol = mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"clean_session": clean} if protocol != 5 else {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{secrets.token_hex(4)}",
            protocol=self.protocol,
            reconnect_on_failure=False,
            **kwargs,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: Any = None
        self.disconnects: list[Any] = []
        self.messages: queue.Queue = queue.Queue()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)

    def _on_connect(self, client, userdata, flags, reason, properties):
        self.connack = reason
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.disconnects.append(reason)
        self._disconnected.set()
        self._connected.set()

    def _ack(self, mid, value):
        with self._acked:
            self._acks[mid] = value
            self._acked.notify_all()

    def _on_subscribe(self, client, userdata, mid, reasons, properties):
        self._ack(mid, [reason.value for reason in reasons])

    def _on_publish(self, client, userdata, mid, reason, properties):
        self._ack(mid, reason.value)

    def _wait_ack(self, mid):
        deadline = time.monotonic() + self.timeout
        with self._acked:
            while mid not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._disconnected.is_set():
                    return None
                self._acked.wait(min(remaining, 0.1))
            return self._acks.pop(mid)

    def connect(self) -> Any:
        """Connect and wait for the CONNACK; returns its reason code (``.value`` 0 on success, 135 not
        authorized), or None when the broker sent none in time."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._connected.wait(self.timeout)
        return self.connack

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def subscribe(self, topic: str, qos: int = 1) -> list[int] | None:
        """SUBACK codes: the granted QoS, or 0x80 (3.1.1) / 0x87 not authorized (MQTT 5)."""
        _rc, mid = self.client.subscribe(topic, qos=qos)
        return self._wait_ack(mid)

    def publish(self, topic: str, payload: bytes | str = b"{}", qos: int = 1) -> int | None:
        """PUBACK reason code (MQTT 5: 0 success, 16 no matching subscribers, 135 not authorized;
        always 0 on 3.1.1), or None when none came (connection dropped)."""
        info = self.client.publish(topic, payload, qos=qos)
        return self._wait_ack(info.mid)

    def message(self, timeout: float | None = None) -> Any:
        """The next message received, or None."""
        try:
            return self.messages.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            return None

    def wait_disconnected(self, timeout: float | None = None) -> bool:
        return self._disconnected.wait(self.timeout if timeout is None else timeout)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listener(MqttProbe):
    """A device-side MQTT client subscribed to a device's commands."""

    def commands(self, count: int, timeout: float = 5.0) -> list[Any]:
        got = []
        for _ in range(count):
            message = self.message(timeout)
            if message is None:
                break
            got.append(message)
        return got

    @staticmethod
    def payload(message: Any) -> dict[str, Any]:
        return json.loads(message.payload)


@pytest.fixture
def listen(command_broker: Any) -> Iterator[Any]:
    """``listen(device_id)``: a subscribed MQTT 5 client receiving that device's commands."""
    probes: list[Listener] = []

    def make(device_id: str, protocol: int = 5) -> Listener:
        probe = Listener(command_broker.host, command_broker.port, protocol=protocol)
        assert probe.connect() is not None
        assert probe.subscribe(f"devices/{device_id}/commands/+") is not None
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.close()
