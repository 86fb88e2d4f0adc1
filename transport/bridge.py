"""The transport bridge: MQTT broker → Celery, the platform's hot path.

A ``Bridge`` holds one paho-mqtt 2 client with a persistent session (MQTT 5: clean start off and a
session expiry; 3.1.1: clean session off) and a QoS 1 shared subscription to every uplink topic
(``$share/<group>/devices/+/telemetry`` …), so several bridges with distinct client ids split the
load. Messages are gathered into batches, cut by count (``batch_size``) or by age of the oldest
message (``batch_ms``), and each batch is handed to ``handoff(items)`` (by default
``transport.handoff.hand_off``: one ``telemetry.tasks.ingest_batch`` Celery task, msgpack).
Items are ``[topic, payload, received_ms]``;
a payload over ``max_payload_bytes`` becomes ``[topic, first 1,024 bytes, received_ms, "oversize"]``.
The bridge never parses payloads: validation is downstream.

Delivery guarantee (at least once, nothing lost):

- Acknowledgements are manual. A batch's PUBACKs are queued only after ``handoff`` returned, so a
  bridge killed at any moment leaves every message it had not handed off unacknowledged in its
  persistent session, and the broker delivers it again when the same client id comes back.
- A failing ``handoff`` is retried with exponential backoff (0.05 s … ``handoff_retry_max_delay``),
  the batch kept in memory and never acknowledged; one log line on the first failure, then at most
  one every 30 s. While it fails no PUBACK leaves, so the broker stops sending once the Receive
  Maximum (MQTT 5) is reached: memory stays bounded.
- On a disconnect every batch not yet handed off is dropped from memory: its packet ids belonged to
  the old connection and cannot be acknowledged on the next one (an old id may by then name another
  message), and the broker redelivers those messages through the persistent session. A batch whose
  hand-off was in progress when the connection dropped is not acknowledged either, so the broker
  redelivers it too and the ingest task sees it twice; it stores by (device, key, ts) and so
  dedups. A "connection generation", bumped in ``on_disconnect`` under the ack lock before paho can
  reconnect (paho clears its outgoing queue in ``reconnect()``), guarantees no PUBACK of an old
  connection is ever sent on a new one.
- Graceful ``stop()`` stops taking messages (later ones stay unacknowledged in the session, for the
  next start), hands off and acknowledges what it holds, then sends DISCONNECT, which leaves after
  the PUBACKs on the same socket.

Notes on brokers:

- Mosquitto routes a shared subscription's messages to every member session, connected or not: a
  stopped bridge keeps receiving its share into its session until it returns or the session
  expires (``BRIDGE_SESSION_EXPIRY``), and messages still queued then are lost. Scale down with
  ``stop(release_session=True)`` (``run_bridge --release-session``): it unsubscribes, drains, and
  ends the session.
- With MQTT 3.1.1, Mosquitto limits QoS 1 messages in flight to a client to
  ``max_inflight_messages`` (default 20), which caps batches at that size unless the broker raises
  it; MQTT 5 uses our Receive Maximum instead. Mosquitto supports ``$share`` for 3.1.1 clients too.
- The embedded amqtt broker speaks 3.1.1 only, so ``from_settings`` picks 3.1.1 for it.

Performance: per message the network thread does one list append under a lock; the flusher thread
counts, hands off and acknowledges per batch. Three "fast paths" (on by default, off with
``fast_paths=False``) work around paho 2 costs that dominate past ~8,000 messages/s (measured by
bench/bridge_throughput.py): decoding an MQTT 5 PUBLISH with no properties without building paho's
property tables per message; queueing a batch's PUBACKs as one write instead of one socket write
each; reading up to 64 packets per readable socket instead of one select() per packet. They use paho
internals (``_packet.Properties``, ``Client._packet_queue``, ``Client._packet_read``), are checked
against the installed paho at start and skipped when it differs; the tests run both ways.
"""

from __future__ import annotations

import inspect
import logging
import signal
import ssl
import struct
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Counter, Gauge, Histogram

from transport.handoff import hand_off

log = logging.getLogger(__name__)
paho_log = logging.getLogger(__name__ + ".paho")


class _AfterDisconnectNoise(logging.Filter):
    """paho logs "Client is not connected" at ERROR once its loop runs past a disconnect, ours or the
    network's; ``on_disconnect`` has already said what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


paho_log.addFilter(_AfterDisconnectNoise())

UPLINK_TOPICS = (
    "devices/+/telemetry",
    "devices/+/attributes",
    "devices/+/status",
    "devices/+/commands/+/reply",
)
OVERSIZE = "oversize"
OVERSIZE_PREFIX_BYTES = 1024
LOG_EVERY_SECONDS = 30.0

Item = list[Any]
Handoff = Callable[[list[Item]], None]

# --- Metrics ----------------------------------------------------------------------------------------

MESSAGES = Counter("fluxiot_bridge_messages_total", "MQTT messages taken into a batch by the bridge, by kind", ["kind"])
OVERSIZE_MESSAGES = Counter(
    "fluxiot_bridge_oversize_messages_total", "Messages over INGEST_MAX_PAYLOAD_BYTES, handed off as markers"
)
BATCHES = Counter("fluxiot_bridge_batches_total", "Batches handed off")
HANDOFF_FAILURES = Counter("fluxiot_bridge_handoff_failures_total", "Failed hand-off attempts (each is retried)")
DISCARDED = Counter(
    "fluxiot_bridge_discarded_messages_total",
    "Unacknowledged messages dropped from memory on a disconnect (the broker redelivers them)",
)
BATCH_SIZE = Histogram(
    "fluxiot_bridge_batch_size",
    "Messages per batch handed off",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000),
)
HANDOFF_SECONDS = Histogram(
    "fluxiot_bridge_handoff_seconds",
    "Time of one successful hand-off",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CONNECTED = Gauge("fluxiot_bridge_connected", "1 while the bridge is connected to the broker")


# --- Broker address ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def broker_address(host: str | None = None, port: int | None = None) -> BrokerAddress:
    """Where the bridge connects, from the settings: ``MQTT_URL`` (``mqtt://user:pass@host:port``,
    ``mqtts://`` for TLS), or the embedded broker's host and port when it is empty; ``host`` and
    ``port`` override either. The bridge's own account (``MQTT_BRIDGE_USERNAME``/``PASSWORD``) wins
    over credentials in the URL when a password is set."""
    from django.conf import settings

    username = password = None
    tls = False
    if settings.MQTT_URL:
        url = urlsplit(settings.MQTT_URL)
        if url.scheme not in {"mqtt", "tcp", "mqtts", "ssl"}:
            raise ValueError(f"MQTT_URL: unsupported scheme {url.scheme!r} (use mqtt:// or mqtts://)")
        tls = url.scheme in {"mqtts", "ssl"}
        url_host, url_port = url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883)
        username = unquote(url.username) if url.username else None
        password = unquote(url.password) if url.password else None
    else:
        url_host, url_port = settings.EMBEDDED_BROKER_HOST, settings.EMBEDDED_BROKER_PORT
    if settings.MQTT_BRIDGE_PASSWORD:
        username, password = settings.MQTT_BRIDGE_USERNAME, settings.MQTT_BRIDGE_PASSWORD
    elif settings.EMBEDDED_BROKER and username is None:
        username = settings.MQTT_BRIDGE_USERNAME
    return BrokerAddress(host or url_host, port or url_port, username, password, tls)


# --- paho fast paths ----------------------------------------------------------------------------------

_fast_decode_installed = False
_fast_decode_lock = threading.Lock()


def _install_fast_publish_decode() -> bool:
    """Make paho decode an MQTT 5 PUBLISH that carries no properties (a device's usual message)
    without building its per-message property tables, which costs more than the rest of the decode.
    Process-wide and behaviour-preserving: the object is a ``Properties`` subclass sharing the
    (never mutated) name tables, and any non-empty property block takes paho's own path."""
    global _fast_decode_installed
    with _fast_decode_lock:
        if _fast_decode_installed:
            return True
        try:
            from paho.mqtt import _packet

            template = Properties(PacketTypes.PUBLISH)
            if (
                not paho.mqtt.__version__.startswith("2.")
                or getattr(_packet, "Properties", None) is not Properties
                or set(vars(template)) != {"packetType", "types", "names", "properties"}
            ):
                log.info("paho %s: fast MQTT 5 PUBLISH decode not installed", paho.mqtt.__version__)
                return False
        except Exception:
            log.info("fast MQTT 5 PUBLISH decode not installed", exc_info=True)
            return False

        class PublishProperties(Properties):
            def __init__(self, packetType: int) -> None:
                fields = self.__dict__
                fields["packetType"] = packetType
                fields["types"] = template.types
                fields["names"] = template.names
                fields["properties"] = template.properties

            def unpack(self, buffer: bytes) -> tuple[Properties, int]:
                if buffer[:1] == b"\x00":  # property length 0: nothing to decode
                    return self, 1
                return super().unpack(buffer)

        _packet.Properties = PublishProperties
        _fast_decode_installed = True
        return True


def _bulk_ack_supported() -> bool:
    queue_packet = getattr(mqtt.Client, "_packet_queue", None)
    if queue_packet is None or not paho.mqtt.__version__.startswith("2."):
        return False
    return list(inspect.signature(queue_packet).parameters)[:5] == ["self", "command", "packet", "mid", "qos"]


READ_BURST = 64


class _Client(mqtt.Client):
    """paho's client; with ``read_burst`` > 1 each readable socket is read for up to that many packets
    before paho selects again, instead of one (paho's ``loop_read`` reads one more packet per message
    in flight, and a manually acknowledging subscriber has none in paho's books)."""

    read_burst = 1

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        if self.read_burst <= 1:
            return super().loop_read(max_packets)
        for _ in range(self.read_burst):
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


def _read_burst_supported() -> bool:
    return (
        paho.mqtt.__version__.startswith("2.")
        and callable(getattr(mqtt.Client, "_packet_read", None))
        and callable(getattr(mqtt.Client, "_loop_rc_handle", None))
    )


def _pubacks(mids: list[int]) -> bytes:
    """PUBACK packets for ``mids``, back to back: 0x40, length 2, packet id (MQTT 3.1.1 and 5 alike;
    in MQTT 5 an omitted reason code means success)."""
    return struct.pack(f">{len(mids)}I", *[0x40020000 | mid for mid in mids])


# --- The bridge ---------------------------------------------------------------------------------------


class _Batch:
    __slots__ = ("count", "generation", "items", "mids")

    def __init__(self, items: list[Item], mids: list[int], count: int, generation: int) -> None:
        self.items, self.mids, self.count, self.generation = items, mids, count, generation


class _Throttle:
    """At most one log line per key per interval."""

    def __init__(self, interval: float = LOG_EVERY_SECONDS) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) >= self.interval:
            self._last[key] = now
            return True
        return False


class Bridge:
    """MQTT → hand-off bridge; see the module docstring. ``start()`` returns at once (the connection
    is made, and remade with backoff, in the background); ``stop()`` flushes and disconnects;
    ``run_forever()`` does both around SIGTERM/SIGINT."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        handoff: Handoff | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        share_group: str = "fluxiot",
        topics: tuple[str, ...] = UPLINK_TOPICS,
        protocol: str = "auto",
        session_expiry: int = 3600,
        receive_maximum: int = 20000,
        batch_size: int = 1000,
        batch_ms: int = 50,
        max_payload_bytes: int = 64 * 1024,
        keepalive: int = 30,
        reconnect_min_delay: float = 1.0,
        reconnect_max_delay: float = 30.0,
        handoff_retry_max_delay: float = 5.0,
        max_pending: int | None = None,
        fast_paths: bool = True,
    ) -> None:
        if protocol not in {"auto", "5", "3.1.1"}:
            raise ValueError(f"protocol must be 'auto', '5' or '3.1.1', not {protocol!r}")
        if batch_size < 1 or batch_ms < 1:
            raise ValueError("batch_size and batch_ms must be at least 1")
        self.host, self.port, self.client_id = host, port, client_id
        self.username, self.password, self.tls = username, password, tls
        self.share_group = share_group
        self.topics = tuple(f"$share/{share_group}/{topic}" if share_group else topic for topic in topics)
        self.protocol = "3.1.1" if protocol == "3.1.1" else "5"
        self._auto_protocol = protocol == "auto"
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.batch_size = batch_size
        self.batch_seconds = batch_ms / 1000
        self.max_payload_bytes = max_payload_bytes if max_payload_bytes > 0 else 1 << 62
        self.keepalive = keepalive
        self.reconnect_min_delay, self.reconnect_max_delay = reconnect_min_delay, reconnect_max_delay
        self.handoff_retry_max_delay = handoff_retry_max_delay
        # In-memory messages not yet handed off. MQTT 5's Receive Maximum already bounds them; this is
        # for brokers without one (amqtt): past it the network thread waits, and TCP pushes back.
        self.max_pending = max_pending or max(2 * receive_maximum, 4 * batch_size)
        self.fast_paths = fast_paths
        self._handoff: Handoff = handoff or hand_off

        self._lock = threading.Lock()  # the current batch, the ready queue, the flags below
        self._work = threading.Condition(self._lock)  # the flusher waits on it
        self._idle = threading.Condition(self._lock)  # stop() and room-waiting on_message wait on it
        self._ack_lock = threading.Lock()  # PUBACKs vs the connection generation
        self._items: list[Item] = []
        self._mids: list[int] = []
        self._count = 0  # messages in the current batch (an undecodable topic has a mid but no item)
        self._first_at = 0.0
        self._ready: deque[_Batch] = deque()
        self._pending = 0  # messages taken and not yet handed off or discarded
        self._generation = 0
        self._accepting = True
        self._flusher_exit = False
        self._delivering = 0  # messages of the batch being handed off
        self._switch_protocol = False
        self._abort = threading.Event()  # stop() gave up waiting: hand-off retries end
        self._subscribed = threading.Event()
        self._connected = False
        self._stopping = False
        self._started = False
        self._throttle = _Throttle()
        self._bulk_ack = False
        self._read_burst = False
        self._client: mqtt.Client | None = None
        self._retired: mqtt.Client | None = None  # the MQTT 5 client given up for 3.1.1
        self._flusher: threading.Thread | None = None
        self._unsubscribed = threading.Event()
        self._unsubscribe_mid: int | None = None
        self._last_message_at = 0.0
        self._had_session = False  # connected before: a new session now means the old one was lost
        # Counters of this instance (the Prometheus ones are per process), for tests and logs.
        self.received = 0
        self.handed_off = 0
        self.batches = 0
        self.handoff_failures = 0
        self.discarded = 0

    @classmethod
    def from_settings(
        cls,
        *,
        host: str | None = None,
        port: int | None = None,
        handoff: Handoff | None = None,
        **overrides: Any,
    ) -> Bridge:
        """A bridge configured by the ``MQTT_*``, ``BRIDGE_*`` and ``INGEST_MAX_PAYLOAD_BYTES``
        settings; keyword arguments that are not None override them."""
        from django.conf import settings

        address = broker_address(host, port)
        options: dict[str, Any] = {
            "host": address.host,
            "port": address.port,
            "username": address.username,
            "password": address.password,
            "tls": address.tls,
            "client_id": settings.BRIDGE_CLIENT_ID,
            "share_group": settings.BRIDGE_SHARE_GROUP,
            "session_expiry": settings.BRIDGE_SESSION_EXPIRY,
            "receive_maximum": settings.BRIDGE_RECEIVE_MAXIMUM,
            "batch_size": settings.BRIDGE_BATCH_SIZE,
            "batch_ms": settings.BRIDGE_BATCH_MS,
            "max_payload_bytes": settings.INGEST_MAX_PAYLOAD_BYTES,
            # amqtt never answers an MQTT 5 CONNECT, so there is nothing to fall back from.
            "protocol": "3.1.1" if settings.EMBEDDED_BROKER else "auto",
        }
        options.update({key: value for key, value in overrides.items() if value is not None})
        return cls(handoff=handoff, **options)

    # --- Life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the flusher."""
        if self._started:
            raise RuntimeError("bridge already started")
        self._started = True
        if self.fast_paths:
            if self.protocol == "5":
                _install_fast_publish_decode()
            self._bulk_ack = _bulk_ack_supported()
            self._read_burst = _read_burst_supported()
            if not self._bulk_ack:
                log.info("paho %s: PUBACKs are sent one by one", paho.mqtt.__version__)
        if self.receive_maximum < self.batch_size and self.protocol == "5":
            log.warning(
                "BRIDGE_RECEIVE_MAXIMUM (%d) < BRIDGE_BATCH_SIZE (%d): batches never fill and are cut by time only",
                self.receive_maximum,
                self.batch_size,
            )
        self._flusher = threading.Thread(target=self._flush_loop, name=f"bridge-flusher-{self.client_id}", daemon=True)
        self._flusher.start()
        self._connect(self.protocol)

    def wait_ready(self, timeout: float) -> bool:
        """True once connected and subscribed (after each reconnect, again)."""
        return self._subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected

    def pending(self) -> int:
        """Messages taken and not yet handed off (nor discarded)."""
        with self._lock:
            return self._pending

    def stop(self, timeout: float = 10.0, release_session: bool = False) -> bool:
        """Stop taking messages, hand off and acknowledge what is held, disconnect. True when all of it
        was handed off within ``timeout``; otherwise what is left stays unacknowledged, for the broker
        to deliver again (also False when a disconnect during the stop left messages to the broker).
        ``release_session``: leave the shared group for good (scale-down): unsubscribe, take what the
        session still delivers until it is quiet, then end the session (MQTT 5; with 3.1.1 an empty
        session without subscriptions stays)."""
        if not self._started or self._stopping:
            return True
        deadline = time.monotonic() + timeout
        if release_session:
            self._release_subscriptions(deadline)
        self._stopping = True
        discarded_before = self.discarded
        with self._lock:
            self._accepting = False
            if self._count:
                self._cut_locked()
            self._flusher_exit = True
            self._work.notify()
            self._idle.notify_all()
        assert self._flusher is not None
        self._flusher.join(max(0.0, deadline - time.monotonic()))
        flushed = not self._flusher.is_alive()
        if not flushed:
            log.warning("stop: hand-off did not finish in %.1f s; the broker will deliver the rest again", timeout)
            self._abort.set()
            self._flusher.join(1.0)
        client = self._client
        if client is not None:
            properties = None
            if self.protocol == "5" and release_session:
                properties = Properties(PacketTypes.DISCONNECT)
                properties.SessionExpiryInterval = 0
            client.disconnect(properties=properties)  # queued after the PUBACKs: they leave first
            client.loop_stop()
        self._connected = False
        CONNECTED.set(0)
        flushed = flushed and self.discarded == discarded_before
        log.info(
            "bridge %s stopped: %d messages in %d batches handed off, %d hand-off failures, %d discarded",
            self.client_id,
            self.handed_off,
            self.batches,
            self.handoff_failures,
            self.discarded,
        )
        return flushed

    def run_forever(self, stop_timeout: float = 30.0, release_session: bool = False) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully (a second signal gives up waiting)."""
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            if stop.is_set():
                log.warning("second signal: no longer waiting for the hand-off")
                self._abort.set()
            else:
                log.info("signal %s: stopping", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(1.0):
                pass
            self.stop(timeout=stop_timeout, release_session=release_session)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # --- Connection ----------------------------------------------------------------------------------

    def _connect(self, protocol: str) -> None:
        self.protocol = protocol
        if protocol == "3.1.1" and self.batch_size > 20:
            log.info(
                "MQTT 3.1.1: batches are capped by the broker's in-flight window (Mosquitto: max_inflight_messages)"
            )
        if protocol == "5":
            client = _Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True
            )
        else:
            client = _Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if self._read_burst:
            client.read_burst = READ_BURST
        client.enable_logger(paho_log)
        client.suppress_exceptions = True  # a bug in a callback must not end the network thread
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(self.reconnect_min_delay, self.reconnect_max_delay)  # type: ignore[arg-type]
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        if protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry
            properties.ReceiveMaximum = self.receive_maximum
            client.connect_async(
                self.host, self.port, keepalive=self.keepalive, clean_start=False, properties=properties
            )
        else:
            client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client = client
        client.loop_start()  # paho's thread: connects, and reconnects with backoff

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if self._auto_protocol and self.protocol == "5" and reason.value in {1, 0x84}:
                log.warning("broker %s:%d refused MQTT 5; falling back to MQTT 3.1.1", self.host, self.port)
                self._retired = client
                with self._lock:
                    self._switch_protocol = True
                    self._work.notify()
                client.disconnect()
                return
            log.error("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self._connected = True
        CONNECTED.set(1)
        log.info(
            "bridge %s connected to %s:%d (MQTT %s, session %s)",
            self.client_id,
            self.host,
            self.port,
            self.protocol,
            "resumed" if flags.session_present else "new",
        )
        if self._had_session and not flags.session_present:
            log.warning(
                "bridge %s: the broker did not keep its session (restart without persistence, or expiry "
                "after %d s): messages queued for it while away are lost",
                self.client_id,
                self.session_expiry,
            )
        self._had_session = True
        if self._stopping:
            return
        # Subscribing again to a subscription the session already has is harmless; it covers a
        # session the broker lost (restart without persistence, expiry).
        if self.protocol == "5":
            client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in self.topics])
        else:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if self._throttle.ready("connect_fail"):
            log.warning("bridge %s cannot reach %s:%d; retrying with backoff", self.client_id, self.host, self.port)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        refused = [topic for topic, reason in zip(self.topics, reasons, strict=False) if reason.is_failure]
        if refused:
            log.error("bridge %s: subscription refused for %s", self.client_id, ", ".join(refused))
        else:
            log.info("bridge %s subscribed: %s", self.client_id, ", ".join(self.topics))
            self._subscribed.set()

    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any
    ) -> None:
        if mid == self._unsubscribe_mid:
            self._unsubscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        # Runs in the network thread before paho reconnects (and clears its outgoing queue). Once
        # the generation moves on, no PUBACK for the old connection's packet ids can be queued.
        with self._ack_lock, self._lock:
            self._generation += 1
            dropped = self._count + sum(batch.count for batch in self._ready)
            unacked = dropped + self._delivering  # that batch is discarded (or left unacked) by the flusher
            self._items, self._mids, self._count = [], [], 0
            self._ready.clear()
            self._pending = max(0, self._pending - dropped)
            self._connected = False
            switching = client is self._retired
            self._subscribed.clear()
            self.discarded += dropped
            self._idle.notify_all()
        CONNECTED.set(0)
        if dropped:
            DISCARDED.inc(dropped)
        if self._stopping or switching:
            log.info("bridge %s disconnected", self.client_id)
        else:
            log.warning(
                "bridge %s lost the connection (%s); %d unacknowledged messages left to the broker; reconnecting",
                self.client_id,
                reason,
                unacked,
            )

    def _release_subscriptions(self, deadline: float) -> None:
        client = self._client
        if client is None or not self._connected:
            log.warning("release_session: not connected; the session stays until it expires")
            return
        _rc, mid = client.unsubscribe(list(self.topics))
        self._unsubscribe_mid = mid
        if not self._unsubscribed.wait(max(0.0, deadline - time.monotonic())):
            log.warning("release_session: no UNSUBACK in time")
            return
        # Messages already routed to this session keep coming while we acknowledge: take them until
        # quiet (or until half of what is left of the deadline).
        quiet = max(1.0, 4 * self.batch_seconds)
        give_up = time.monotonic() + max(0.0, deadline - time.monotonic()) / 2
        while time.monotonic() < give_up:
            with self._lock:
                idle = self._pending == 0 and time.monotonic() - self._last_message_at >= quiet
            if idle:
                return
            time.sleep(0.05)

    # --- Messages (paho's network thread) ------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            payload = message.payload
            received_ms = time.time_ns() // 1_000_000
            try:
                topic = message.topic
            except UnicodeDecodeError:
                item = None  # only a broken broker sends this; acknowledged with its batch, not handed off
                if self._throttle.ready("bad_topic"):
                    log.error("bridge %s: dropping a message whose topic is not UTF-8", self.client_id)
            else:
                if len(payload) > self.max_payload_bytes:
                    item = [topic, payload[:OVERSIZE_PREFIX_BYTES], received_ms, OVERSIZE]
                else:
                    item = [topic, payload, received_ms]
            qos = message.qos
            with self._lock:
                if self._pending >= self.max_pending:
                    while self._pending >= self.max_pending and self._accepting:
                        self._idle.wait(1.0)
                if not self._accepting:
                    return  # stopping: left unacknowledged, delivered again to the next session
                if item is not None:
                    self._items.append(item)
                if qos:
                    self._mids.append(message.mid)
                self._pending += 1
                self._count += 1
                if self._count == 1:
                    self._first_at = time.monotonic()
                    self._work.notify()
                elif self._count >= self.batch_size:
                    self._cut_locked()
        except Exception:
            if self._throttle.ready("on_message"):
                log.exception("bridge %s: unexpected error taking a message (it will be redelivered)", self.client_id)

    def _cut_locked(self) -> None:
        self._ready.append(_Batch(self._items, self._mids, self._count, self._generation))
        self.received += self._count
        self._last_message_at = time.monotonic()
        self._items, self._mids, self._count = [], [], 0
        self._work.notify()

    # --- Hand-off (the flusher thread) ------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._switch_protocol and not self._flusher_exit:
                        self._switch_protocol = False
                        batch = None
                        break
                    if self._ready:
                        batch = self._ready.popleft()
                        self._delivering = batch.count
                        break
                    timeout: float | None = None
                    if self._count:
                        timeout = self._first_at + self.batch_seconds - time.monotonic()
                        if timeout <= 0:
                            self._cut_locked()
                            continue
                    elif self._flusher_exit:
                        return
                    self._work.wait(timeout)
            if batch is None:
                self._fall_back_to_v311()
                continue
            try:
                self._deliver(batch)
            except Exception:  # a bug here must not end the flusher
                log.exception("bridge %s: unexpected error delivering a batch", self.client_id)
            finally:
                with self._lock:
                    self._delivering = 0
                    self._pending = max(0, self._pending - batch.count)
                    self._idle.notify_all()

    def _fall_back_to_v311(self) -> None:
        old = self._client
        if old is not None:
            old.loop_stop()
        self._auto_protocol = False
        self._connect("3.1.1")

    def _deliver(self, batch: _Batch) -> None:
        items = batch.items
        kinds = Tally(item[0][item[0].rfind("/") + 1 :] for item in items)
        for kind, n in kinds.items():
            MESSAGES.labels(kind if kind in {"telemetry", "attributes", "status", "reply"} else "other").inc(n)
        oversize = sum(1 for item in items if len(item) == 4)
        if oversize:
            OVERSIZE_MESSAGES.inc(oversize)
        delay, failures = 0.05, 0
        while items:
            if batch.generation != self._generation or self._abort.is_set():
                self._discard(batch)
                return
            started = time.perf_counter()
            try:
                self._handoff(items)
            except Exception as error:
                failures += 1
                self.handoff_failures += 1
                HANDOFF_FAILURES.inc()
                if failures == 1:
                    self._throttle.ready("handoff")  # starts the interval
                if failures == 1 or self._throttle.ready("handoff"):
                    log.warning(
                        "bridge %s: hand-off of %d messages failed (attempt %d, retrying in %.2f s): %r",
                        self.client_id,
                        len(items),
                        failures,
                        delay,
                        error,
                        exc_info=failures == 1,
                    )
                if self._abort.wait(delay):
                    self._discard(batch)
                    return
                delay = min(delay * 2, self.handoff_retry_max_delay)
                continue
            HANDOFF_SECONDS.observe(time.perf_counter() - started)
            BATCH_SIZE.observe(len(items))
            BATCHES.inc()
            self.batches += 1
            self.handed_off += len(items)
            if failures:
                log.info("bridge %s: hand-off recovered after %d failed attempts", self.client_id, failures)
            break
        self._ack(batch)

    def _ack(self, batch: _Batch) -> None:
        mids = batch.mids
        if not mids:
            return
        client = self._client
        with self._ack_lock:
            if batch.generation != self._generation or client is None:
                # Handed off, but its connection is gone: the broker redelivers, downstream dedups.
                return
            if self._bulk_ack:
                client._packet_queue(mqtt.PUBACK, _pubacks(mids), 0, 0)
            else:
                for mid in mids:
                    client.ack(mid, 1)

    def _discard(self, batch: _Batch) -> None:
        with self._lock:
            self.discarded += batch.count
        DISCARDED.inc(batch.count)
