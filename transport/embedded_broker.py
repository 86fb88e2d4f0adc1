"""The embedded MQTT broker of ``make run``: amqtt in a background thread of the platform's process.

No external service is needed: devices log in with their id and secret, checked against the registry
(``devices.services.verify_device_secret``), and may publish, subscribe and receive only under
``devices/{id}/``; the bridge logs in as ``MQTT_BRIDGE_USERNAME`` and may use all of ``devices/``.

What amqtt 0.12 gives (checked with paho clients, see tests/transport/test_embedded_broker.py):

- MQTT 3.1.1 only: amqtt misreads an MQTT 5 CONNECT and never answers it (no CONNACK; the client
  times out), so clients of the embedded broker must speak 3.1.1.
- Shared subscriptions: amqtt has none; this broker strips ``$share/{group}/`` from a filter, so a
  single bridge subscribing ``$share/fluxiot/devices/+/telemetry`` gets every message. Several
  subscribers of one group would each get a copy (embedded mode runs one bridge).
- QoS 1 towards a subscriber: no in-flight limit (no Receive Maximum), delivery at the
  subscription's QoS, and amqtt waits only 5 seconds for each PUBACK, then forgets the message.
  Messages in flight when the subscriber's connection drops are lost too: manual acknowledgements do
  not give at-least-once delivery here. Messages published while a persistent session
  (clean session off) is disconnected are queued and delivered when it comes back.
- A refused publish is dropped silently (the PUBACK still says success, the client stays
  connected); a refused subscription gets SUBACK 0x80; a refused login CONNACK 5.
- Logins are checked when made; a rotation, disable or deletion in this process also drops the
  device's open sessions (``devices.hooks.credentials_changed``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from django.conf import settings
from django.db import connection

from devices import hooks

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
KICK_TIMEOUT = 5.0
PORT_ATTEMPTS = 50  # EMBEDDED_BROKER_PORT taken: try the next ones
DEVICES_PREFIX = "devices/"

# Registry lookups are synchronous Django calls: they run on these threads, never on the event loop.
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _lookup_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="embedded-broker-auth")
        return _executor


def _verify_device(device_id: str, secret: str) -> bool:
    from devices.services import verify_device_secret

    try:
        return verify_device_secret(device_id, secret)
    finally:
        # A pool thread must not keep a database connection open (nobody would ever close it);
        # successful checks are cached by verify_device_secret, so logins rarely get here twice.
        connection.close()


def strip_shared(topic_filter: str) -> str:
    """``$share/{group}/{filter}`` → ``{filter}``; any other filter unchanged."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3 and parts[1] and parts[2]:
            return parts[2]
    return topic_filter


def device_may_use(device_id: str, topic: str) -> bool:
    """A device may publish to, subscribe to and receive from its own ``devices/{id}/`` only."""
    return topic.startswith(f"{DEVICES_PREFIX}{device_id}/")


def bridge_may_use(topic: str) -> bool:
    return topic.startswith(DEVICES_PREFIX)


class DeviceAuthPlugin(BaseAuthPlugin):
    """Logins: the bridge account from the settings, devices from the registry. Nobody else."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool:
        username, password = session.username, session.password
        if not username or not password:
            return False
        if username == settings.MQTT_BRIDGE_USERNAME:
            expected = settings.MQTT_BRIDGE_PASSWORD
            return bool(expected) and hmac.compare_digest(password.encode(), expected.encode())
        if username == settings.MQTT_DYNSEC_USERNAME:
            return False  # no dynamic security here; the name is nobody's
        loop = asyncio.get_running_loop()
        try:
            allowed = await loop.run_in_executor(_lookup_executor(), _verify_device, username, password)
        except Exception:
            logger.exception("embedded broker: could not check the secret of %r", username)
            return False
        if not allowed:
            logger.info("embedded broker: refused login of %r", username)
        return allowed


class DeviceTopicPlugin(BaseTopicPlugin):
    """Topic ACL: a device only under ``devices/{its id}/``, the bridge anywhere under ``devices/``."""

    @dataclass
    class Config:
        pass

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or not topic or not session.username:
            return False
        if session.username == settings.MQTT_BRIDGE_USERNAME:
            allowed = bridge_may_use(topic)
        else:
            allowed = device_may_use(session.username, topic)
        if not allowed and action != Action.RECEIVE:
            logger.info("embedded broker: %s of %r refused to %r", action, topic, session.username)
        return allowed


class EmbeddedBroker(Broker):
    """amqtt's broker, reading ``$share/{group}/{filter}`` as ``{filter}`` (see the module's docstring)."""

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, qos = subscription
        return await super().add_subscription((strip_shared(topic_filter), qos), session)

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        return super()._del_subscription(strip_shared(a_filter), session)

    async def kick(self, username: str) -> int:
        """Drop every connected session logged in as ``username`` (as Mosquitto does when an account
        is disabled or re-keyed); returns how many. Their Last Will is published."""
        kicked = 0
        for session, handler in list(self._sessions.values()):
            if session.username == username and session.transitions.is_connected():
                await handler.handle_connection_closed()
                kicked += 1
        return kicked

    def bound_port(self) -> int:
        server = self._servers["default"].instance
        return int(server.sockets[0].getsockname()[1])


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "timeout_disconnect_delay": 0,
        # Disconnected persistent sessions (and the messages queued for them) are dropped after this.
        "session_expiry_interval": settings.BRIDGE_SESSION_EXPIRY,
        "plugins": {
            f"{__name__}.DeviceAuthPlugin": {},
            f"{__name__}.DeviceTopicPlugin": {},
        },
    }


async def _shutdown(broker: EmbeddedBroker) -> None:
    await broker.shutdown()
    # Connections amqtt never finished (an MQTT 5 CONNECT it cannot parse waits for bytes forever).
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _quiet_chatty_loggers() -> None:
    """amqtt logs every connection, and the state machine library it uses every state change, at
    INFO; keep them at WARNING unless the logging configuration says otherwise."""
    for name in ("amqtt", "transitions"):
        chatty = logging.getLogger(name)
        if chatty.level == logging.NOTSET:
            chatty.setLevel(logging.WARNING)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


async def _start_broker(host: str, port: int) -> EmbeddedBroker:
    """Start on ``port``, or the next free port when it is taken (0: any free port)."""
    last_error: Exception | None = None
    for candidate in [0] if port == 0 else range(port, port + PORT_ATTEMPTS):
        # Probe first: a failed start leaves a half-built amqtt broker behind.
        if candidate and _port_in_use(host, candidate):
            continue
        broker = EmbeddedBroker(broker_config(host, candidate))
        try:
            await broker.start()
        except BrokerError as exc:
            last_error = exc
            continue
        return broker
    raise BrokerError(f"no free port for the embedded MQTT broker on {host} from {port}: {last_error}")


def start_embedded_broker(host: str | None = None, port: int | None = None) -> tuple[str, int, Callable[[], None]]:
    """Start the embedded broker in a background thread with its own event loop.

    Binds ``host:port`` (``EMBEDDED_BROKER_HOST`` / ``EMBEDDED_BROKER_PORT`` by default), or the next
    free port when that one is taken; port 0 takes any free port. Returns ``(host, port, stop)``;
    ``stop()`` shuts the broker down and may be called more than once.

    The bridge logs in with ``MQTT_BRIDGE_USERNAME`` / ``MQTT_BRIDGE_PASSWORD``; when that password
    is empty, a random one is generated and put into ``settings.MQTT_BRIDGE_PASSWORD`` so the bridge
    running in the same process can use it."""
    host = host if host is not None else settings.EMBEDDED_BROKER_HOST
    port = port if port is not None else settings.EMBEDDED_BROKER_PORT
    _quiet_chatty_loggers()
    if not settings.MQTT_BRIDGE_PASSWORD:
        settings.MQTT_BRIDGE_PASSWORD = secrets.token_urlsafe(24)
        logger.info("embedded broker: generated a bridge password for this process")

    loop = asyncio.new_event_loop()
    started = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome["broker"] = loop.run_until_complete(_start_broker(host, port))
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            outcome["error"] = exc
            started.set()
            loop.close()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name="embedded-mqtt-broker", daemon=True)
    thread.start()
    if not started.wait(START_TIMEOUT):
        loop.call_soon_threadsafe(loop.stop)
        raise RuntimeError(f"the embedded MQTT broker did not start within {START_TIMEOUT:g}s")
    if "error" in outcome:
        raise RuntimeError(f"the embedded MQTT broker did not start: {outcome['error']}") from outcome["error"]
    broker: EmbeddedBroker = outcome["broker"]
    bound = broker.bound_port()
    logger.info("embedded MQTT broker listening on %s:%d (MQTT 3.1.1)", host, bound)
    stopped = threading.Lock()

    def on_credentials_changed(device_id: str, secret: str | None, action: str) -> None:
        """Logins are checked against the registry, but sessions already open outlive a rotation,
        a disable or a deletion: drop them."""
        if action == "activated" or not thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(broker.kick(device_id), loop)
        kicked = future.result(KICK_TIMEOUT)
        if kicked:
            logger.info("embedded broker: dropped %d sessions of %s (%s)", kicked, device_id, action)

    hooks.credentials_changed.append(on_credentials_changed)

    def stop() -> None:
        if not stopped.acquire(blocking=False):
            return
        if on_credentials_changed in hooks.credentials_changed:
            hooks.credentials_changed.remove(on_credentials_changed)
        if not thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(_shutdown(broker), loop)
        try:
            future.result(STOP_TIMEOUT)
        except Exception:
            logger.exception("embedded broker: unclean shutdown")
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT)
        logger.info("embedded MQTT broker on %s:%d stopped", host, bound)

    return host, bound, stop
