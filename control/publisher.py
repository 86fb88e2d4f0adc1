"""Publishing commands to devices: one long-lived MQTT client per process.

Web processes (a command sent from the API), workers (pending commands of a device that came online,
batches) and the embedded ``serve`` all publish through ``get_publisher()``. It logs in with the
bridge's account (``MQTT_URL`` / ``MQTT_BRIDGE_*``, or the embedded broker), speaks MQTT 5 where the
broker does (falling back to 3.1.1), and ``publish_many`` returns only once the broker has
acknowledged each message (QoS 1 PUBACK), so a command is marked sent only when the broker has it.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter

logger = logging.getLogger(__name__)

PUBLISHED = Counter("fluxiot_commands_published_total", "Commands the broker acknowledged", ["outcome"])
MAX_INFLIGHT = 1000


class PublishError(Exception):
    """The broker could not be reached or did not acknowledge in time."""


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    # MQTT 5 only: the reply topic, correlation data and message expiry (seconds; None: none).
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry_seconds: int | None = None
    retain: bool = False


class CommandPublisher:
    """A paho client that connects on first use, reconnects by itself and waits for each PUBACK."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        protocol: str = "5",
        connect_timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.username, self.password, self.tls = host, port, username, password, tls
        self.protocol = protocol
        self.connect_timeout = connect_timeout
        self.client_id = f"fluxiot-commands-{os.getpid()}-{secrets.token_hex(3)}"
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._refused: str | None = None

    @classmethod
    def from_settings(cls) -> CommandPublisher:
        from django.conf import settings

        from transport.bridge import broker_address

        address = broker_address()
        return cls(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            tls=address.tls,
            protocol="3.1.1" if settings.EMBEDDED_BROKER else "5",
            connect_timeout=settings.COMMAND_PUBLISH_TIMEOUT,
        )

    @property
    def mqtt5(self) -> bool:
        return self.protocol == "5"

    # --- Connection ----------------------------------------------------------------------------

    def _start(self) -> mqtt.Client:
        version = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=version)
        client.enable_logger(logging.getLogger("control.publisher.paho"))
        client.suppress_exceptions = True
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(0.2, 5)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: mqtt.ReasonCode, props: object
    ) -> None:
        if reason.is_failure:
            if self.mqtt5 and reason.value in {1, 0x84}:
                self._refused = "mqtt5"
            else:
                self._refused = str(reason)
                logger.error("command publisher: %s:%d refused the connection: %s", self.host, self.port, reason)
            self._connected.set()  # wake the waiter; it reads _refused
            return
        self._refused = None
        # MQTT 5: never more unacknowledged messages in flight than the broker's Receive Maximum.
        # paho 2.2 ignores it and refuses max_inflight_messages_set once connected, so the limit
        # goes straight into the attribute that setter writes (measured: no slower with 20).
        receive_maximum = getattr(props, "ReceiveMaximum", None) if self.mqtt5 else None
        if hasattr(client, "_max_inflight_messages"):
            client._max_inflight_messages = min(MAX_INFLIGHT, receive_maximum or MAX_INFLIGHT)
        logger.info(
            "command publisher %s connected to %s:%d (MQTT %s)", self.client_id, self.host, self.port, self.protocol
        )
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if self._refused is None:
            self._connected.clear()

    def _ensure_connected(self) -> mqtt.Client:
        with self._lock:
            if self._client is None:
                self._client = self._start()
            client = self._client
        deadline = time.monotonic() + self.connect_timeout
        while not client.is_connected():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._connected.wait(remaining):
                raise PublishError(
                    f"MQTT broker {self.host}:{self.port} not reachable within {self.connect_timeout:g}s"
                )
            if self._refused == "mqtt5":
                logger.warning("command publisher: %s:%d refused MQTT 5; using 3.1.1", self.host, self.port)
                self.close()
                self.protocol = "3.1.1"
                return self._ensure_connected()
            if self._refused is not None:
                raise PublishError(f"MQTT broker refused the command publisher: {self._refused}")
            if not client.is_connected():
                time.sleep(0.01)  # CONNACK handled, paho's state flips right after the callback
        return client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._connected.clear()
            self._refused = None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    # --- Publishing ----------------------------------------------------------------------------

    def _properties(self, message: Outgoing) -> Properties | None:
        if not self.mqtt5:
            return None
        properties = Properties(PacketTypes.PUBLISH)
        if message.response_topic:
            properties.ResponseTopic = message.response_topic
        if message.correlation_data:
            properties.CorrelationData = message.correlation_data
        if message.expiry_seconds is not None:
            properties.MessageExpiryInterval = max(1, message.expiry_seconds)
        return properties

    def publish_many(self, messages: list[Outgoing], timeout: float | None = None) -> list[bool]:
        """Publish each message with QoS 1; True for those the broker acknowledged within ``timeout``
        seconds (all of them together). Raises PublishError when the broker cannot be reached."""
        if not messages:
            return []
        client = self._ensure_connected()
        timeout = self.connect_timeout if timeout is None else timeout
        infos = []
        for message in messages:
            info = client.publish(
                message.topic, message.payload, qos=1, retain=message.retain, properties=self._properties(message)
            )
            # Not sent now (connection just dropped): counted as not acknowledged, so the command
            # stays pending and goes out again later; QoS 1 allows the rare duplicate that makes.
            infos.append(info if info.rc == mqtt.MQTT_ERR_SUCCESS else None)
        deadline = time.monotonic() + timeout
        outcome = []
        for info in infos:
            if info is None:
                outcome.append(False)
                continue
            remaining = deadline - time.monotonic()
            try:
                if not info.is_published() and remaining > 0:
                    info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):  # paho: the message was dropped (disconnect, queue full)
                outcome.append(False)
                continue
            outcome.append(info.is_published())
        acked = sum(outcome)
        PUBLISHED.labels("acked").inc(acked)
        if acked < len(outcome):
            PUBLISHED.labels("unacked").inc(len(outcome) - acked)
            logger.warning("command publisher: %d of %d commands not acknowledged", len(outcome) - acked, len(outcome))
        return outcome


_publisher: CommandPublisher | None = None
_publisher_pid: int | None = None
_publisher_lock = threading.Lock()


def get_publisher() -> CommandPublisher:
    """This process's publisher (a new one after a fork: a paho client does not survive it)."""
    global _publisher, _publisher_pid
    with _publisher_lock:
        if _publisher is None or _publisher_pid != os.getpid():
            _publisher, _publisher_pid = CommandPublisher.from_settings(), os.getpid()
        return _publisher


def reset_publisher() -> None:
    """Close this process's publisher; the next ``get_publisher()`` reads the settings again."""
    global _publisher
    with _publisher_lock:
        publisher, _publisher = _publisher, None
    if publisher is not None and _publisher_pid == os.getpid():
        publisher.close()
