"""Simulated MQTT devices speaking the FluxIoT device contract (see DESIGN.md, "Device-facing contract").

Threading model: every paho client of a simulator is driven by one ``EventLoop`` thread that
multiplexes all device sockets with a selector (epoll on Linux) through paho's external-loop API
(``loop_read`` / ``loop_write`` / ``loop_misc`` and the ``on_socket_*`` callbacks). There is no thread
per device, so a few hundred or a few thousand devices cost one thread and one socket each; the
practical limits are the process's file descriptors (raised to the hard limit when needed) and one
CPU core for the loop.

All paho calls happen on the loop thread. The public methods of ``SimulatedDevice`` and ``Simulator``
may be called from any thread: they hand their work to the loop and wait for it.

Nothing here imports Django except ``provision_devices``, which does so lazily.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import json
import logging
import math
import os
import random
import selectors
import socket
import statistics
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

logger = logging.getLogger("sdk.simulator")

T = TypeVar("T")

#: A telemetry message is identified by its device and its ``ts`` (epoch ms, unique per device).
MessageKey = tuple[str, int]

DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"


# --- Broker address and credentials ---------------------------------------------------------------


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host:port``, ``mqtts://host:port`` (TLS), ``tcp://`` / ``ssl://`` or a bare ``host[:port]``.
    Credentials in the URL are ignored: each device logs in with its own."""
    text = url.strip()
    if "://" not in text:
        text = f"mqtt://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in {"mqtt", "tcp", "mqtts", "ssl", "tls"}:
        raise ValueError(f"Unsupported broker URL scheme {parts.scheme!r} (use mqtt:// or mqtts://).")
    tls = scheme in {"mqtts", "ssl", "tls"}
    if not parts.hostname:
        raise ValueError(f"No host in broker URL {url!r}.")
    return BrokerAddress(host=parts.hostname, port=parts.port or (8883 if tls else 1883), tls=tls)


@dataclass(frozen=True)
class DeviceCredentials:
    id: str
    secret: str


def load_credentials(path: str | os.PathLike[str]) -> list[DeviceCredentials]:
    """Read a JSON file of ``[{"id": ..., "secret": ...}, ...]``."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{'id', 'secret'}} objects.")
    result: list[DeviceCredentials] = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not isinstance(item.get("secret"), str):
            raise ValueError(f"{path}: entry {number} is not an object with string 'id' and 'secret'.")
        result.append(DeviceCredentials(id=item["id"], secret=item["secret"]))
    return result


def save_credentials(path: str | os.PathLike[str], credentials: Iterable[DeviceCredentials]) -> None:
    """Write the credentials file atomically, readable by its owner only (it holds secrets)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    payload = json.dumps([{"id": c.id, "secret": c.secret} for c in credentials], indent=2)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(payload + "\n")
    os.replace(tmp, target)


def provision_devices(count: int, prefix: str = "sim-", *, start: int = 1) -> list[DeviceCredentials]:
    """Create (or reuse) ``count`` devices ``{prefix}0001``… through the registry's services and
    return their credentials. Needs a configured Django (``DJANGO_SETTINGS_MODULE``, ``django.setup()``).

    A missing device is created and activated; an existing one that is not active is activated; an
    existing active one has its credentials rotated, since its old secret cannot be read back."""
    from devices.choices import ActivationState
    from devices.models import Device
    from devices.services import activate_device, create_device, rotate_credentials

    width = max(4, len(str(start + count - 1)))
    credentials: list[DeviceCredentials] = []
    for number in range(start, start + count):
        device_id = f"{prefix}{number:0{width}d}"
        device = Device.objects.filter(pk=device_id).first()
        if device is None:
            device = create_device(
                actor=None,
                id=device_id,
                name=f"Simulated device {number}",
                tags=["simulator"],
                metadata={"simulator": True},
            )
        if device.activation_state == ActivationState.ACTIVE:
            secret = rotate_credentials(device, actor=None)
        else:
            secret = activate_device(device, actor=None)
        credentials.append(DeviceCredentials(id=device_id, secret=secret))
    logger.info("provisioned %d simulated devices (%s…)", len(credentials), credentials[0].id if credentials else "-")
    return credentials


# --- The event loop -------------------------------------------------------------------------------


class Timer:
    """A scheduled call; ``cancel()`` is safe from any thread."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _raise_fd_limit(wanted: int) -> None:
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):
        logger.warning("could not raise the open-file limit from %d to %d", soft, new)
        return
    if new < wanted:
        logger.warning("open-file limit is %d: fewer than the %d sockets wanted", new, wanted)


class EventLoop:
    """One thread that drives many paho clients: sockets in a selector, timers in a heap, and a
    thread-safe queue of calls from other threads."""

    misc_interval = 1.0  # seconds between loop_misc() rounds (keepalive pings, timeouts)

    def __init__(self, name: str = "sdk-simulator-loop") -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._clients: set[mqtt.Client] = set()
        self._flush: dict[mqtt.Client, None] = {}  # clients with queued output, in order
        self._write_blocked: set[mqtt.Client] = set()  # clients whose socket buffer was full
        self._idle_hooks: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False

    # Life cycle

    def start(self) -> EventLoop:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop thread. Clients still attached are left as they are (stop them first)."""
        self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None:
            self._close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # Scheduling

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop thread (thread-safe)."""
        self._calls.append(callback)
        if not self.in_loop_thread():
            self._wake()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` at ``time.monotonic() == when`` (thread-safe)."""
        timer = Timer(when, callback)
        if self.in_loop_thread():
            heapq.heappush(self._timers, (when, next(self._seq), timer))
        else:
            self.call_soon(lambda: heapq.heappush(self._timers, (when, next(self._seq), timer)))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def run_sync(self, fn: Callable[[], T], timeout: float | None = 10.0) -> T:
        """Run ``fn`` on the loop thread and return its result (directly when already there)."""
        if self.in_loop_thread() or not self.running:
            return fn()
        future: Future[T] = Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(exc)

        self.call_soon(call)
        return future.result(timeout)

    def add_idle_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once per loop iteration (on the loop thread), after I/O and timers."""
        self.call_soon(lambda: self._idle_hooks.append(hook))

    def remove_idle_hook(self, hook: Callable[[], None]) -> None:
        def remove() -> None:
            if hook in self._idle_hooks:
                self._idle_hooks.remove(hook)

        self.call_soon(remove)

    # Clients

    def attach(self, client: mqtt.Client) -> None:
        """Let this loop drive ``client``; call before the client connects."""
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._clients.add(client)

    def detach(self, client: mqtt.Client) -> None:
        self._clients.discard(client)
        self._flush.pop(client, None)
        self._write_blocked.discard(client)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:  # small MQTT packets must not wait for Nagle's algorithm
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        self._flush.pop(client, None)
        self._write_blocked.discard(client)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Written at the end of this loop iteration, so that a burst of publishes is one send().
        self._flush[client] = None
        if not self.in_loop_thread():
            self._wake()

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._flush.pop(client, None)
        if client in self._write_blocked:
            self._write_blocked.discard(client)
            try:
                self._selector.modify(sock, selectors.EVENT_READ, client)
            except (KeyError, ValueError, OSError):
                pass

    # The loop

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closing

    def _timeout(self, next_misc: float) -> float:
        if self._calls or self._flush or self._stopping:
            return 0.0
        deadline = next_misc
        if self._timers:
            deadline = min(deadline, self._timers[0][0])
        return max(0.0, deadline - time.monotonic())

    def _run(self) -> None:
        next_misc = time.monotonic() + self.misc_interval
        try:
            while not self._stopping:
                events = self._selector.select(self._timeout(next_misc))
                for key, mask in events:
                    client = key.data
                    if client is None:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                        continue
                    if mask & selectors.EVENT_READ:
                        self._guard(client.loop_read)
                    if mask & selectors.EVENT_WRITE and client.socket() is not None:
                        self._guard(client.loop_write)
                while self._calls:
                    self._guard(self._calls.popleft())
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, timer = heapq.heappop(self._timers)
                    if not timer.cancelled:
                        self._guard(timer.callback)
                for hook in list(self._idle_hooks):
                    self._guard(hook)
                self._flush_writes()
                if now >= next_misc:
                    next_misc = now + self.misc_interval
                    for client in list(self._clients):
                        if client.socket() is not None:
                            self._guard(client.loop_misc)
        finally:
            self._close()

    def _flush_writes(self) -> None:
        if not self._flush:
            return
        clients = list(self._flush)
        self._flush.clear()
        for client in clients:
            sock = client.socket()
            if sock is None:
                continue
            self._guard(client.loop_write)
            if client.want_write() and client.socket() is not None and client not in self._write_blocked:
                # The socket buffer is full: wait until the selector says it is writable.
                self._write_blocked.add(client)
                try:
                    self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
                except (KeyError, ValueError, OSError):
                    self._write_blocked.discard(client)

    @staticmethod
    def _guard(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            logger.exception("error in the simulator loop")

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._selector.close()
        finally:
            self._wake_r.close()
            self._wake_w.close()


# --- Telemetry values -----------------------------------------------------------------------------


@dataclass
class _Walk:
    """A bounded random walk."""

    value: float
    low: float
    high: float
    step: float

    def next(self, rng: random.Random) -> float:
        value = self.value + rng.uniform(-self.step, self.step)
        if value < self.low:  # reflect at the bounds
            value = 2 * self.low - value
        elif value > self.high:
            value = 2 * self.high - value
        self.value = min(self.high, max(self.low, value))
        return self.value


class TelemetryGenerator:
    """Plausible sensor readings: every device reports ``temperature`` (float, °C), ``battery`` (int, %)
    and ``door_open`` (bool), and some also ``humidity`` (float, %) and ``rssi`` (int, dBm): 3 to 5
    keys, fixed per device, each a random walk within sane bounds."""

    BASE_KEYS = ("temperature", "battery", "door_open")
    OPTIONAL_KEYS = ("humidity", "rssi")

    def __init__(self, rng: random.Random, keys: Sequence[str] | None = None) -> None:
        self.rng = rng
        if keys is None:
            extra = rng.randint(0, len(self.OPTIONAL_KEYS))
            keys = [*self.BASE_KEYS, *rng.sample(self.OPTIONAL_KEYS, extra)]
        unknown = set(keys) - {*self.BASE_KEYS, *self.OPTIONAL_KEYS}
        if unknown:
            raise ValueError(f"Unknown telemetry keys: {sorted(unknown)}")
        self.keys = list(keys)
        self._temperature = _Walk(rng.uniform(18, 26), -20.0, 60.0, 0.3)
        self._humidity = _Walk(rng.uniform(35, 60), 5.0, 95.0, 1.0)
        self._rssi = _Walk(rng.uniform(-85, -55), -110.0, -30.0, 2.0)
        self._battery = rng.randint(40, 100)
        self._door_open = False
        self.pinned: dict[str, Any] = {}  # key → the value reported instead of the walk (``pin()``)

    def next(self) -> dict[str, Any]:
        rng = self.rng
        values: dict[str, Any] = {}
        for key in self.keys:
            if key in self.pinned:
                values[key] = self.pinned[key]
            elif key == "temperature":
                values[key] = round(self._temperature.next(rng), 2)
            elif key == "humidity":
                values[key] = round(self._humidity.next(rng), 1)
            elif key == "rssi":
                values[key] = int(round(self._rssi.next(rng)))
            elif key == "battery":
                if rng.random() < 0.02:
                    self._battery -= 1
                if self._battery <= 5:  # someone changed the batteries
                    self._battery = 100
                values[key] = self._battery
            elif key == "door_open":
                if rng.random() < 0.05:
                    self._door_open = not self._door_open
                values[key] = self._door_open
        return values

    def current(self) -> dict[str, Any]:
        """The latest value of every key, without advancing the walks."""
        return {key: self.current_value(key) for key in self.keys}

    def current_value(self, key: str) -> Any:
        """The latest value of ``key`` (as ``next()`` last reported it); ``KeyError`` if not simulated."""
        if key not in self.keys:
            raise KeyError(key)
        if key in self.pinned:
            return self.pinned[key]
        if key == "temperature":
            return round(self._temperature.value, 2)
        if key == "humidity":
            return round(self._humidity.value, 1)
        if key == "rssi":
            return int(round(self._rssi.value))
        if key == "battery":
            return self._battery
        return self._door_open

    def pin(self, key: str, value: float) -> Any:
        """Report ``value`` for ``key`` from now on (converted to the key's type: bool for
        ``door_open``, int for ``battery`` and ``rssi``, float otherwise) and return it. The walk goes
        on from there (within its bounds) after ``unpin()``. ``KeyError`` if ``key`` is not simulated."""
        if key not in self.keys:
            raise KeyError(key)
        pinned: Any
        if key == "door_open":
            pinned = self._door_open = bool(value)
        elif key == "battery":
            pinned = int(round(value))
            self._battery = min(100, max(6, pinned))
        elif key == "rssi":
            pinned = int(round(value))
            self._rssi.value = min(self._rssi.high, max(self._rssi.low, float(pinned)))
        else:
            pinned = float(value)
            walk = self._temperature if key == "temperature" else self._humidity
            walk.value = min(walk.high, max(walk.low, pinned))
        self.pinned[key] = pinned
        return pinned

    def unpin(self, key: str | None = None) -> None:
        """Let ``key`` (default: every key) follow its random walk again."""
        if key is None:
            self.pinned.clear()
        else:
            self.pinned.pop(key, None)


def default_attributes(rng: random.Random) -> dict[str, Any]:
    return {
        "firmware": f"1.{rng.randint(0, 4)}.{rng.randint(0, 9)}",
        "model": rng.choice(["FluxSim-TH1", "FluxSim-TH2", "FluxSim-DR1"]),
    }


# --- Publish statistics ---------------------------------------------------------------------------


@dataclass
class PublishStats:
    """Telemetry counters shared by the devices of a simulator (written on the loop thread only).

    ``sent_times`` maps each message key ``(device_id, ts)`` to the wall-clock time (``time.time()``)
    it was handed to the client; ``ack_latencies`` holds publish→PUBACK seconds (QoS 1; for QoS 0 it
    is publish→written)."""

    record_times: bool = True
    published: int = 0
    acked: int = 0
    rejected: int = 0  # PUBACK with a failure reason code (MQTT 5)
    failed: int = 0  # the client refused the publish
    skipped: int = 0  # a tick found the device disconnected
    first_publish_at: float | None = None
    last_publish_at: float | None = None
    last_ack_at: float | None = None
    sent_times: dict[MessageKey, float] = field(default_factory=dict)
    ack_latencies: list[float] = field(default_factory=list)

    @property
    def outstanding(self) -> int:
        """Published messages whose PUBACK has not arrived yet."""
        return self.published - self.acked - self.rejected

    def record_publish(self, key: MessageKey, at: float) -> None:
        self.published += 1
        if self.first_publish_at is None:
            self.first_publish_at = at
        self.last_publish_at = at
        if self.record_times:
            self.sent_times[key] = at

    def record_ack(self, sent_at: float, at: float, ok: bool) -> None:
        if ok:
            self.acked += 1
        else:
            self.rejected += 1
        self.last_ack_at = at
        if self.record_times:
            self.ack_latencies.append(at - sent_at)


# --- Commands -------------------------------------------------------------------------------------

#: The command types of the device contract (``control.choices.CommandType``, not imported here).
COMMAND_TYPES = frozenset(
    {
        "reboot",
        "reset",
        "update",
        "start_stream",
        "stop_stream",
        "take_snapshot",
        "ptz_control",
        "read_value",
        "set_sampling_rate",
        "set_state",
        "set_value",
        "custom",
    }
)

#: Commands whose final reply a device remembers, to send it again when the command comes again.
_REMEMBERED_REPLIES = 256


class CommandMode(enum.StrEnum):
    """How a simulated device answers commands."""

    SUCCESS = "success"  # carry the command out and reply success (after ``delay``)
    FAIL = "fail"  # reply failed, error "simulated failure" (after ``delay``)
    SLOW = "slow"  # like success, after ``delay`` (default 5 s)
    SILENT = "silent"  # never reply: the platform times the command out


@dataclass(frozen=True)
class CommandBehaviour:
    """How a device answers: an ``executing`` reply at once (unless ``executing`` is False), then,
    ``delay`` seconds later, the final reply (``success`` with a result, or ``failed``). ``delay``
    None means 5 s for ``slow`` and 0 otherwise. ``silent`` never replies at all."""

    mode: CommandMode = CommandMode.SUCCESS
    executing: bool = True
    delay: float | None = None
    error: str = "simulated failure"  # the error of every final reply in ``fail`` mode

    SLOW_DELAY = 5.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", CommandMode(self.mode))
        except ValueError:
            modes = ", ".join(m.value for m in CommandMode)
            raise ValueError(f"Unknown command mode {self.mode!r} (one of {modes}).") from None
        if self.delay is not None and not self.delay >= 0:  # also refuses NaN
            raise ValueError("The command delay must be >= 0 seconds.")

    @property
    def final_delay(self) -> float:
        """Seconds between receiving a command and its final reply."""
        if self.delay is not None:
            return float(self.delay)
        return self.SLOW_DELAY if self.mode is CommandMode.SLOW else 0.0

    @classmethod
    def of(cls, value: CommandBehaviour | CommandMode | str | None) -> CommandBehaviour:
        """A behaviour from a behaviour, a mode or a mode's name (None: the default, ``success``)."""
        if isinstance(value, CommandBehaviour):
            return value
        return cls() if value is None else cls(mode=value)  # type: ignore[arg-type]  # __post_init__ converts


BehaviourLike = CommandBehaviour | CommandMode | str


class CommandError(ValueError):
    """A command the simulated device cannot carry out; the message is the ``error`` of its reply."""


def parse_command(payload: bytes) -> tuple[str, dict[str, Any]]:
    """``(type, params)`` of a command payload ``{"id", "type", "params", "expires_at"}``;
    ``CommandError`` when it is not one (malformed JSON, no type, params not an object) or its type
    is not in ``COMMAND_TYPES``."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandError(f"malformed command payload: {exc}") from exc
    if not isinstance(data, dict):
        raise CommandError("malformed command payload: not a JSON object")
    command_type = data.get("type")
    if not isinstance(command_type, str) or not command_type:
        raise CommandError("malformed command payload: no type")
    if command_type not in COMMAND_TYPES:
        raise CommandError(f"unsupported command type {command_type[:64]!r}")
    params = data.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise CommandError("malformed command payload: params is not an object")
    return command_type, params


def _number(params: dict[str, Any], name: str, *, required: bool = True) -> float | None:
    value = params.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CommandError(f"{name} must be a number")
    return value


def _string(params: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise CommandError(f"{name} must be a non-empty string")
    return value


@dataclass
class _PendingCommand:
    """A command between its ``executing`` reply and its final one (loop thread)."""

    id: str
    type: str
    params: dict[str, Any]
    reply_topic: str
    correlation: bytes | None
    behaviour: CommandBehaviour
    timer: Timer | None = None


# --- One device -----------------------------------------------------------------------------------


class DeviceState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    KILLED = "killed"
    FAILED = "failed"


_FINAL_STATES = {DeviceState.STOPPED, DeviceState.KILLED, DeviceState.FAILED}

CommandHandler = Callable[["SimulatedDevice", str, mqtt.MQTTMessage], None]


def _protocol(mqtt_version: int | str) -> mqtt.MQTTProtocolVersion:
    text = str(mqtt_version).strip().lower()
    if text in {"5", "5.0", "mqttv5"}:
        return mqtt.MQTTv5
    if text in {"3", "3.1.1", "311", "4", "mqttv311"}:
        return mqtt.MQTTv311
    raise ValueError(f"Unsupported MQTT version {mqtt_version!r} (3 for 3.1.1, or 5).")


class SimulatedDevice:
    """One simulated device: a paho-mqtt 2 client logged in as ``id`` / ``secret``.

    On connect it subscribes to ``devices/{id}/commands/+``, publishes ``online`` (retained, QoS 1)
    to ``devices/{id}/status`` and, on its first connection, its attributes to
    ``devices/{id}/attributes``. Its Last Will is ``offline``, retained, QoS 1, on the status topic.
    ``publish_telemetry()`` sends one JSON object with a ``ts`` in epoch milliseconds.
    ``stop()`` publishes ``offline`` and disconnects; ``kill()`` drops the TCP connection without
    DISCONNECT so that the broker publishes the Last Will.

    Incoming commands go to ``handle_command()`` (override it, or pass ``command_handler``), which by
    default answers them on ``…/reply`` (or the MQTT 5 ResponseTopic, echoing the CorrelationData) as
    ``command_behaviour`` says: ``executing`` at once, then ``success`` with a result from
    ``execute_command()`` or ``failed``. See ``CommandBehaviour``.

    Without a ``loop`` the device runs its own ``EventLoop`` thread, stopped with the device.
    """

    def __init__(
        self,
        credentials: DeviceCredentials,
        broker: BrokerAddress | str = DEFAULT_BROKER_URL,
        *,
        mqtt_version: int | str = 5,
        qos: int = 1,
        keepalive: int = 30,
        loop: EventLoop | None = None,
        stats: PublishStats | None = None,
        seed: int | str | None = None,
        telemetry_keys: Sequence[str] | None = None,
        attributes: dict[str, Any] | None = None,
        reconnect: bool = True,
        max_inflight: int = 20,
        command_handler: CommandHandler | None = None,
        command_behaviour: BehaviourLike | None = None,
    ) -> None:
        if qos not in (0, 1):
            raise ValueError("Telemetry QoS must be 0 or 1.")
        self.credentials = credentials
        self.id = credentials.id
        self.broker = parse_broker_url(broker) if isinstance(broker, str) else broker
        self.protocol = _protocol(mqtt_version)
        self.qos = qos
        self.keepalive = keepalive
        self.stats = stats if stats is not None else PublishStats()
        self.rng = random.Random(f"{seed}:{self.id}") if seed is not None else random.Random()
        self.telemetry = TelemetryGenerator(self.rng, telemetry_keys)
        self.attributes = attributes if attributes is not None else default_attributes(self.rng)
        self.reconnect = reconnect
        self.max_inflight = max_inflight
        self.command_handler = command_handler
        self.command_behaviour = CommandBehaviour.of(command_behaviour)

        self.status_topic = f"devices/{self.id}/status"
        self.telemetry_topic = f"devices/{self.id}/telemetry"
        self.attributes_topic = f"devices/{self.id}/attributes"
        self.commands_filter = f"devices/{self.id}/commands/+"

        self._own_loop = loop is None
        self.loop = loop if loop is not None else EventLoop(name=f"sdk-simulator-{self.id}")
        self.state = DeviceState.NEW
        self.error: str | None = None
        self.published = 0  # telemetry messages of this device
        self.acked = 0
        self.connections = 0
        self.commands_received = 0
        self.commands_answered = 0  # commands that got their final reply (success or failed)
        self.commands_failed = 0  # of which failed
        self.replies_sent = 0  # reply publishes, executing ones included
        self.commands_subscribed = False  # True once the broker granted devices/{id}/commands/+
        # What commands changed (loop thread; read from any thread).
        self.sampling_rate: float | None = None  # messages per second set by set_sampling_rate; None: the simulator's
        self.outputs: dict[str, Any] = {}  # set_state ("state") and set_value of keys that are not telemetry
        self.firmware_version: str | None = (
            str(self.attributes["firmware"]) if self.attributes.get("firmware") is not None else None
        )
        self.streaming = False
        self.ptz: dict[str, float] = {"pan": 0.0, "tilt": 0.0, "zoom": 1.0}
        self.snapshots = 0
        self.reboots = 0
        self.resets = 0
        self.on_sampling_rate: Callable[[SimulatedDevice], None] | None = None  # loop thread, after a change
        self._commands: dict[str, _PendingCommand] = {}  # in progress: between executing and the final reply
        self._final_replies: OrderedDict[str, tuple[str, bytes, bytes | None]] = OrderedDict()
        self._pending: dict[int, tuple[MessageKey | None, float]] = {}  # mid → (key, sent_at); None: control
        self._inflight_telemetry = 0
        self.send_window = max_inflight  # QoS 1 messages in flight at most (lowered by Receive Maximum)
        self._last_ts = 0
        self._attributes_sent = False
        self._offline_mid: int | None = None
        self._reconnect_delay = 1.0
        self._reconnect_timer: Timer | None = None
        self._stop_timer: Timer | None = None
        self._connected = threading.Event()  # set on CONNACK (success or failure)
        self._closed = threading.Event()  # set when the connection is gone for good
        self.on_ack: Callable[[SimulatedDevice], None] | None = None  # loop thread, after each telemetry ack
        self.client = self._make_client()

    def __repr__(self) -> str:
        return f"<SimulatedDevice {self.id} {self.state.value}>"

    # Client set-up and callbacks (loop thread)

    def _make_client(self) -> mqtt.Client:
        kwargs: dict[str, Any] = {}
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = True
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.id, protocol=self.protocol, **kwargs)
        client.username_pw_set(self.credentials.id, self.credentials.secret)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.max_inflight_messages_set(self.max_inflight)
        if self.broker.tls:
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.message_callback_add(self.commands_filter, self._on_command_message)
        self.loop.attach(client)
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        if reason_code.is_failure:
            self.error = f"connection refused: {reason_code}"
            self.state = DeviceState.FAILED
            logger.error("%s: %s", self.id, self.error)
            self._connected.set()
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        # paho cannot change its in-flight limit on a live connection; the simulator's own window
        # (``send_window``) follows the broker's Receive Maximum instead.
        self.send_window = min(self.max_inflight, int(receive_maximum)) if receive_maximum else self.max_inflight
        self.state = DeviceState.CONNECTED
        self.commands_subscribed = False
        self.error = None
        self.connections += 1
        self._reconnect_delay = 1.0
        client.subscribe(self.commands_filter, qos=1)
        self._publish_control(self.status_topic, "online", retain=True)
        if not self._attributes_sent:
            self._publish_control(self.attributes_topic, json.dumps(self.attributes, separators=(",", ":")))
            self._attributes_sent = True
        if self.connections > 1:
            logger.info("%s reconnected", self.id)
        else:
            logger.debug("%s connected (%s)", self.id, "MQTT 5" if self.protocol == mqtt.MQTTv5 else "MQTT 3.1.1")
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # In-flight QoS 1 messages stay counted: paho sends them again after a reconnect.
        if self.state in (DeviceState.STOPPING, DeviceState.STOPPED):
            self._finish(DeviceState.STOPPED)
        elif self.state in (DeviceState.KILLED, DeviceState.FAILED):
            self._finish(self.state)
        elif self.reconnect and self.state in (
            DeviceState.CONNECTED,
            DeviceState.CONNECTING,
            DeviceState.RECONNECTING,
        ):
            logger.warning(
                "%s: connection lost (%s); reconnecting in %.0f s", self.id, reason_code, self._reconnect_delay
            )
            self._schedule_reconnect()
        else:
            self.error = self.error or f"disconnected: {reason_code}"
            logger.warning("%s: %s", self.id, self.error)
            self._finish(DeviceState.FAILED)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        pending = self._pending.pop(mid, None)
        if pending is None:
            return
        key, sent_at = pending
        if mid == self._offline_mid:
            self._offline_mid = None
            if self.state is DeviceState.STOPPING:
                client.disconnect()
            return
        if key is None:
            if reason_code.is_failure:
                logger.warning("%s: broker refused a status, attributes or reply publish: %s", self.id, reason_code)
            return
        self._inflight_telemetry -= 1
        ok = not reason_code.is_failure
        if ok:
            self.acked += 1
        elif self.stats.rejected == 0:
            logger.warning("%s: broker refused telemetry: %s", self.id, reason_code)
        self.stats.record_ack(sent_at, time.time(), ok)
        if self.on_ack is not None:
            self.on_ack(self)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failures = [code for code in reason_codes if code.is_failure]
        if failures:
            logger.warning("%s: subscription to %s refused: %s", self.id, self.commands_filter, failures[0])
        self.commands_subscribed = not failures

    def _on_command_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        command_id = message.topic.rsplit("/", 1)[-1]
        self.commands_received += 1
        try:
            self.handle_command(command_id, message)
        except Exception:
            logger.exception("%s: command handler failed for %s", self.id, command_id)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        logger.debug("%s: unexpected message on %s", self.id, message.topic)

    def handle_command(self, command_id: str, message: mqtt.MQTTMessage) -> None:
        """Called on the loop thread for each message on ``devices/{id}/commands/+``: the
        ``command_handler`` if there is one, else ``answer_command()``."""
        if self.command_handler is not None:
            self.command_handler(self, command_id, message)
            return
        self.answer_command(command_id, message)

    # Commands (loop thread)

    def reply_topic(self, message: mqtt.MQTTMessage) -> str:
        """Where to reply to a command: its MQTT 5 ResponseTopic, else its topic + ``/reply``."""
        properties = message.properties
        response_topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
        if isinstance(response_topic, str) and response_topic and not any(c in response_topic for c in "+#\0"):
            return response_topic
        return f"{message.topic}/reply"

    def answer_command(self, command_id: str, message: mqtt.MQTTMessage) -> None:
        """Answer a command as ``command_behaviour`` says (loop thread). A command already in progress
        that comes again is ignored; one already answered gets its final reply again."""
        behaviour = self.command_behaviour
        if command_id in self._commands:
            logger.debug("%s: command %s again while in progress: ignored", self.id, command_id)
            return
        previous = self._final_replies.get(command_id)
        if previous is not None:
            logger.debug("%s: command %s again: final reply sent again", self.id, command_id)
            self._send_reply(*previous)
            return
        if behaviour.mode is CommandMode.SILENT:
            logger.debug("%s: command %s not answered (silent)", self.id, command_id)
            return
        reply_topic = self.reply_topic(message)
        properties = message.properties
        correlation = getattr(properties, "CorrelationData", None) if properties is not None else None
        try:
            command_type, params = parse_command(message.payload)
        except CommandError as exc:
            # Refused at once, without an executing reply: the device cannot even tell what to do.
            self._final_reply(command_id, "?", reply_topic, correlation, {"status": "failed", "error": str(exc)})
            return
        command = _PendingCommand(command_id, command_type, params, reply_topic, correlation, behaviour)
        if behaviour.executing:
            self._send_reply(reply_topic, self._reply_payload({"status": "executing"}), correlation)
        delay = behaviour.final_delay
        if delay > 0:
            self._commands[command_id] = command
            command.timer = self.loop.call_later(delay, lambda: self._complete_command(command))
        else:
            self._complete_command(command)

    def execute_command(self, command_type: str, params: dict[str, Any]) -> dict[str, Any]:
        """Carry a command out on the simulated device and return its result; ``CommandError`` (its
        message becomes the reply's error) when the params do not fit. Loop thread; override to
        simulate other devices."""
        if command_type == "read_value":
            key = _string(params, "key")
            return {"key": key, "value": self.read_value(key)}
        if command_type == "set_value":
            value = _number(params, "value")
            key = _string(params, "key", required=False)
            if key is not None and key in self.telemetry.keys:
                value = self.telemetry.pin(key, value)
            else:
                self.outputs[key or "value"] = value
            return {"key": key, "value": value}
        if command_type == "set_state":
            state = params.get("state")
            if not isinstance(state, bool):
                raise CommandError("state must be true or false")
            self.outputs["state"] = state
            return {"state": state}
        if command_type == "set_sampling_rate":
            rate = _number(params, "rate")
            if rate <= 0:
                raise CommandError("rate must be above 0")
            self.set_sampling_rate(rate)
            return {"rate": rate}
        if command_type == "take_snapshot":
            self.snapshots += 1
            resolution = _string(params, "resolution", required=False) or "1920x1080"
            return {"url": f"snapshot://{self.id}/{self.snapshots}.jpg", "resolution": resolution}
        if command_type == "start_stream":
            quality = _string(params, "quality", required=False) or "medium"
            self.streaming = True
            return {"streaming": True, "quality": quality, "url": f"stream://{self.id}/live"}
        if command_type == "stop_stream":
            was_streaming, self.streaming = self.streaming, False
            return {"streaming": False, "was_streaming": was_streaming}
        if command_type == "ptz_control":
            moves = {axis: _number(params, axis, required=False) for axis in ("pan", "tilt", "zoom")}
            if all(value is None for value in moves.values()):
                raise CommandError("ptz_control needs pan, tilt or zoom")
            self.ptz.update({axis: float(value) for axis, value in moves.items() if value is not None})
            return dict(self.ptz)
        if command_type == "reboot":
            self.reboots += 1
            delay = _number(params, "delay", required=False)
            return {"rebooted": True, "delay": delay or 0}
        if command_type == "reset":
            factory = bool(params.get("factory", False))
            self.resets += 1
            self.outputs.clear()
            self.telemetry.unpin()
            self.streaming = False
            self.ptz = {"pan": 0.0, "tilt": 0.0, "zoom": 1.0}
            if factory and self.sampling_rate is not None:
                self.set_sampling_rate(None)
            return {"reset": True, "factory": factory}
        if command_type == "update":
            url, checksum, version = (_string(params, name) for name in ("url", "checksum", "version"))
            previous, self.firmware_version = self.firmware_version, version
            self.attributes["firmware"] = version
            if self.state is DeviceState.CONNECTED:
                attributes = {"firmware": version, "firmware_version": version}
                self._publish_control(self.attributes_topic, json.dumps(attributes, separators=(",", ":")))
            return {"version": version, "previous_version": previous}
        if command_type == "custom":
            name = _string(params, "name")
            return {"name": name, "params": {k: v for k, v in params.items() if k != "name"}}
        raise CommandError(f"unsupported command type {command_type[:64]!r}")

    def read_value(self, key: str) -> Any:
        """The current value of ``key``: a simulated telemetry key, or something a command set
        (``state``, a ``set_value`` key); None when the device knows no such key."""
        if key in self.telemetry.keys:
            return self.telemetry.current_value(key)
        return self.outputs.get(key)

    def set_sampling_rate(self, rate: float | None) -> None:
        """Publish ``rate`` telemetry messages per second from now on (None: the simulator's rate).
        Only a ``Simulator`` publishes on its own; a lone device just records it."""
        self.sampling_rate = float(rate) if rate else None
        if self.on_sampling_rate is not None:
            self.on_sampling_rate(self)

    def _complete_command(self, command: _PendingCommand) -> None:
        self._commands.pop(command.id, None)
        if self.state in _FINAL_STATES or self.state is DeviceState.STOPPING:
            logger.debug("%s: command %s dropped: the device is %s", self.id, command.id, self.state.value)
            return
        reply: dict[str, Any]
        if command.behaviour.mode is CommandMode.FAIL:
            reply = {"status": "failed", "error": command.behaviour.error}
        else:
            try:
                reply = {"status": "success", "result": self.execute_command(command.type, command.params)}
            except CommandError as exc:
                reply = {"status": "failed", "error": str(exc)}
            except Exception as exc:
                logger.exception("%s: command %s (%s) failed", self.id, command.id, command.type)
                reply = {"status": "failed", "error": f"simulator error: {type(exc).__name__}"}
        self._final_reply(command.id, command.type, command.reply_topic, command.correlation, reply)

    def _final_reply(
        self, command_id: str, command_type: str, topic: str, correlation: bytes | None, reply: dict[str, Any]
    ) -> None:
        payload = self._reply_payload(reply)
        self._send_reply(topic, payload, correlation)
        self.commands_answered += 1
        if reply["status"] == "failed":
            self.commands_failed += 1
        self._final_replies[command_id] = (topic, payload, correlation)
        while len(self._final_replies) > _REMEMBERED_REPLIES:
            self._final_replies.popitem(last=False)
        logger.debug(
            "%s: command %s (%s) %s: %s",
            self.id,
            command_id,
            command_type,
            reply["status"],
            reply.get("error") or reply.get("result"),
        )

    @staticmethod
    def _reply_payload(reply: dict[str, Any]) -> bytes:
        try:
            return json.dumps(reply, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError):  # a result an override made that JSON cannot carry
            error = "simulator error: the result is not JSON"
            return json.dumps({"status": "failed", "error": error}, separators=(",", ":")).encode()

    def _send_reply(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        properties = None
        if self.protocol == mqtt.MQTTv5 and correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        try:
            info = self.client.publish(topic, payload, qos=1, properties=properties)
        except ValueError as exc:  # a topic paho refuses
            logger.warning("%s: cannot reply on %r: %s", self.id, topic, exc)
            return
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            logger.warning("%s: reply on %s failed: %s", self.id, topic, mqtt.error_string(info.rc))
            return
        self._pending[info.mid] = (None, time.time())
        self.replies_sent += 1

    # Internals (loop thread)

    def _publish_control(self, topic: str, payload: str, *, retain: bool = False) -> int:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._pending[info.mid] = (None, time.time())
        return info.mid

    def _connect_now(self) -> None:
        if self.state in _FINAL_STATES:
            return
        self.state = DeviceState.CONNECTING
        try:
            if self.protocol == mqtt.MQTTv5:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = 0
                self.client.connect(
                    self.broker.host, self.broker.port, self.keepalive, clean_start=True, properties=properties
                )
            else:
                self.client.connect(self.broker.host, self.broker.port, self.keepalive)
        except (OSError, ValueError) as exc:
            self.error = f"cannot connect to {self.broker.url}: {exc}"
            if self.reconnect:
                logger.warning("%s: %s; retrying in %.0f s", self.id, self.error, self._reconnect_delay)
                self._schedule_reconnect()
            else:
                logger.error("%s: %s", self.id, self.error)
                self._finish(DeviceState.FAILED)
                self._connected.set()

    def _schedule_reconnect(self) -> None:
        self.state = DeviceState.RECONNECTING
        delay = self._reconnect_delay * self.rng.uniform(0.8, 1.2)
        self._reconnect_delay = min(self._reconnect_delay * 2, 30.0)
        self._reconnect_timer = self.loop.call_later(delay, self._reconnect_now)

    def _reconnect_now(self) -> None:
        self._reconnect_timer = None
        if self.state is not DeviceState.RECONNECTING:
            return
        if self.connections == 0:
            self._connect_now()
            return
        try:
            self.client.reconnect()
        except OSError as exc:
            logger.warning("%s: reconnect failed (%s); retrying in %.0f s", self.id, exc, self._reconnect_delay)
            self._schedule_reconnect()

    def _publish_telemetry_now(self, values: dict[str, Any] | None = None) -> MessageKey | None:
        if self.state is not DeviceState.CONNECTED:
            self.stats.skipped += 1
            return None
        now = time.time()
        ts = max(int(now * 1000), self._last_ts + 1)  # unique per device: (id, ts) is the message key
        self._last_ts = ts
        payload = dict(self.telemetry.next() if values is None else values)
        payload["ts"] = ts
        info = self.client.publish(self.telemetry_topic, json.dumps(payload, separators=(",", ":")), qos=self.qos)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.stats.failed += 1
            logger.warning("%s: publish failed: %s", self.id, mqtt.error_string(info.rc))
            return None
        key = (self.id, ts)
        self._pending[info.mid] = (key, now)
        self._inflight_telemetry += 1
        self.published += 1
        self.stats.record_publish(key, now)
        return key

    def _begin_stop(self, timeout: float) -> None:
        if self._reconnect_timer is not None:
            self._reconnect_timer.cancel()
            self._reconnect_timer = None
        if self.state is DeviceState.CONNECTED:
            self.state = DeviceState.STOPPING
            self._offline_mid = self._publish_control(self.status_topic, "offline", retain=True)
            # The offline PUBACK triggers the DISCONNECT; don't wait for it for ever.
            self._stop_timer = self.loop.call_later(timeout, self._force_disconnect)
        elif self.state in (DeviceState.CONNECTING, DeviceState.STOPPING):
            self.state = DeviceState.STOPPING
            self._force_disconnect()
        elif self.state not in _FINAL_STATES:
            self._finish(DeviceState.STOPPED)

    def _force_disconnect(self) -> None:
        if self.state is not DeviceState.STOPPING:
            return
        if self.client.socket() is None:
            self._finish(DeviceState.STOPPED)
        else:
            self.client.disconnect()

    def _kill_now(self) -> None:
        if self._reconnect_timer is not None:
            self._reconnect_timer.cancel()
            self._reconnect_timer = None
        previous = self.state
        self.state = DeviceState.KILLED
        sock = self.client.socket()
        if sock is None or previous in _FINAL_STATES:
            self._finish(DeviceState.KILLED)
            return
        # FIN without DISCONNECT: the broker sees an unexpected close and fires the Last Will. The
        # loop then reads EOF and paho closes the socket and calls on_disconnect.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _finish(self, state: DeviceState) -> None:
        self.state = state
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None
        for command in self._commands.values():
            if command.timer is not None:
                command.timer.cancel()
        self._commands.clear()
        self.loop.detach(self.client)
        self._connected.set()
        self._closed.set()
        if self._own_loop:
            self.loop.stop()  # from the loop thread: it ends after this iteration

    # Public API (any thread)

    @property
    def connected(self) -> bool:
        return self.state is DeviceState.CONNECTED

    @property
    def outstanding(self) -> int:
        """Telemetry messages of this device not acknowledged yet."""
        return self._inflight_telemetry

    def start_connect(self) -> None:
        """Begin connecting without waiting (see ``wait_connected``)."""
        if self._own_loop:
            self.loop.start()
        self.loop.call_soon(self._connect_now)

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait for the CONNACK; raise ``ConnectionError`` if refused, ``TimeoutError`` if none came."""
        if not self._connected.wait(timeout):
            raise TimeoutError(f"{self.id}: no CONNACK within {timeout} s")
        if self.state is not DeviceState.CONNECTED:
            raise ConnectionError(f"{self.id}: {self.error or self.state.value}")

    def connect(self, timeout: float = 10.0) -> SimulatedDevice:
        self.start_connect()
        self.wait_connected(timeout)
        return self

    def publish_telemetry(self, values: dict[str, Any] | None = None) -> MessageKey | None:
        """Publish one telemetry message (generated unless ``values`` is given); returns its key, or
        None when the device is not connected."""
        return self.loop.run_sync(lambda: self._publish_telemetry_now(values))

    def wait_for_acks(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._inflight_telemetry > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline`` (retained, QoS 1), wait for its PUBACK, and DISCONNECT."""
        self.loop.run_sync(lambda: self._begin_stop(timeout))
        self._wait_closed(timeout + 1.0)

    def kill(self, timeout: float = 5.0) -> None:
        """Drop the connection without DISCONNECT (a crash or a pulled cable)."""
        self.loop.run_sync(self._kill_now)
        self._wait_closed(timeout)

    def _wait_closed(self, timeout: float) -> None:
        if not self._closed.wait(timeout):
            logger.warning("%s: connection not closed within %.1f s", self.id, timeout)
        if self._own_loop:
            self.loop.stop()

    def __enter__(self) -> SimulatedDevice:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        if self.state not in _FINAL_STATES:
            self.stop()


# --- Many devices ---------------------------------------------------------------------------------


@dataclass
class SimulatorSummary:
    devices: int
    connected: int
    published: int
    acked: int
    rejected: int
    failed: int
    skipped: int
    elapsed: float  # seconds from the first publish to the last PUBACK (or the end)
    publish_rate: float  # messages per second offered
    ack_rate: float  # messages per second acknowledged
    ack_latency_p50_ms: float | None
    ack_latency_p99_ms: float | None
    commands_received: int = 0
    commands_answered: int = 0  # final replies sent (success or failed)

    def line(self) -> str:
        latency = (
            f" puback_p50={self.ack_latency_p50_ms:.1f}ms puback_p99={self.ack_latency_p99_ms:.1f}ms"
            if self.ack_latency_p50_ms is not None and self.ack_latency_p99_ms is not None
            else ""
        )
        return (
            f"devices={self.connected}/{self.devices} published={self.published} acked={self.acked}"
            f" rejected={self.rejected} failed={self.failed} skipped={self.skipped}"
            f" elapsed={self.elapsed:.2f}s rate={self.publish_rate:.1f}msg/s ack_rate={self.ack_rate:.1f}msg/s"
            f"{latency}"
            + (f" commands={self.commands_answered}/{self.commands_received}" if self.commands_received else "")
        )


class Simulator:
    """N simulated devices on one event loop, publishing telemetry at a rate.

    ``rate`` is messages per second per device, or ``total_rate`` across all devices; ``rate=0`` (or
    None with no ``total_rate``) publishes as fast as the broker acknowledges, keeping ``max_inflight``
    QoS 1 messages in flight per device. The run ends after ``duration`` seconds or ``count``
    telemetry messages in total, whichever comes first (neither: until ``stop()``).

    ``stats.sent_times`` maps each message key ``(device_id, ts)`` to its publish time (``time.time()``)
    and ``stats.acked`` / ``stats.outstanding`` say how many QoS 1 publishes the broker acknowledged;
    ``wait_for_acks()`` waits for all of them.

    Devices answer commands as ``command_behaviour`` says (default ``success``), or as
    ``device_command_behaviours[device_id]`` says for the devices listed there; see
    ``CommandBehaviour`` and ``set_command_behaviour()``. A ``set_sampling_rate`` command changes the
    rate of its device from then on.
    """

    def __init__(
        self,
        credentials: Sequence[DeviceCredentials],
        broker: BrokerAddress | str = DEFAULT_BROKER_URL,
        *,
        rate: float | None = 1.0,
        total_rate: float | None = None,
        duration: float | None = None,
        count: int | None = None,
        mqtt_version: int | str = 5,
        qos: int = 1,
        keepalive: int = 30,
        record_times: bool = True,
        seed: int | str | None = None,
        max_inflight: int = 20,
        connect_timeout: float = 30.0,
        device_factory: Callable[..., SimulatedDevice] = SimulatedDevice,
        command_behaviour: BehaviourLike | None = None,
        device_command_behaviours: Mapping[str, BehaviourLike] | None = None,
    ) -> None:
        if not credentials:
            raise ValueError("No device credentials.")
        if len({c.id for c in credentials}) != len(credentials):
            raise ValueError("Duplicate device ids in the credentials.")
        if count is not None and count < 0:
            raise ValueError("count must be >= 0.")
        if duration is not None and duration < 0:
            raise ValueError("duration must be >= 0.")
        self.broker = parse_broker_url(broker) if isinstance(broker, str) else broker
        per_device = total_rate / len(credentials) if total_rate else rate
        if per_device is not None and per_device < 0:
            raise ValueError("rate must be >= 0.")
        self.rate: float | None = per_device or None  # None: as fast as acknowledged
        self.duration = duration
        self.count = count
        self.connect_timeout = connect_timeout
        self.max_inflight = max_inflight
        self.stats = PublishStats(record_times=record_times)
        self.loop = EventLoop()
        self._rng = random.Random(seed)
        self.devices: list[SimulatedDevice] = [
            device_factory(
                c,
                self.broker,
                mqtt_version=mqtt_version,
                qos=qos,
                keepalive=keepalive,
                loop=self.loop,
                stats=self.stats,
                seed=seed,
                max_inflight=max_inflight,
            )
            for c in credentials
        ]
        self.command_behaviour = CommandBehaviour.of(command_behaviour)
        overrides = {key: CommandBehaviour.of(value) for key, value in (device_command_behaviours or {}).items()}
        unknown = set(overrides) - {device.id for device in self.devices}
        if unknown:
            raise ValueError(f"Command behaviours for unknown devices: {sorted(unknown)[:5]}")
        for device in self.devices:
            device.command_behaviour = overrides.get(device.id, self.command_behaviour)
            device.on_sampling_rate = self._sampling_rate_changed
        self._publishing = False
        self._done = threading.Event()
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._deadline_timer: Timer | None = None
        self._stopped = False
        self._ready: set[SimulatedDevice] = set()  # as-fast-as-acknowledged mode: devices to top up
        self._next_sweep = 0.0
        self._tick_timers: dict[str, Timer] = {}  # device id → its next telemetry tick (loop thread)

    def set_command_behaviour(self, behaviour: BehaviourLike, device_ids: Iterable[str] | None = None) -> None:
        """Answer the commands received from now on as ``behaviour`` says: on the devices
        ``device_ids`` (default: every device, and the simulator's default). Any thread."""
        resolved = CommandBehaviour.of(behaviour)
        by_id = {device.id: device for device in self.devices}
        if device_ids is None:
            self.command_behaviour = resolved
            targets = list(self.devices)
        else:
            wanted = list(device_ids)
            unknown = [device_id for device_id in wanted if device_id not in by_id]
            if unknown:
                raise ValueError(f"Unknown devices: {unknown[:5]}")
            targets = [by_id[device_id] for device_id in wanted]

        def apply() -> None:
            for device in targets:
                device.command_behaviour = resolved

        self.loop.run_sync(apply)

    # Running

    def start(self) -> Simulator:
        """Connect every device (waiting up to ``connect_timeout`` for their CONNACKs) and start
        publishing. Raises ``ConnectionError`` when no device could connect."""
        _raise_fd_limit(len(self.devices) + 64)
        self.loop.start()
        for device in self.devices:
            device.start_connect()
        deadline = time.monotonic() + self.connect_timeout
        for device in self.devices:
            device._connected.wait(max(0.0, deadline - time.monotonic()))
        connected = sum(1 for d in self.devices if d.connected)
        if connected < len(self.devices):
            errors = {d.error or d.state.value for d in self.devices if not d.connected}
            logger.warning("%d of %d devices connected; others: %s", connected, len(self.devices), sorted(errors)[:3])
        else:
            logger.info("%d devices connected to %s", connected, self.broker.url)
        if connected == 0:
            self.stop(drain_timeout=0)
            raise ConnectionError(f"No device could connect to {self.broker.url}.")
        self.loop.run_sync(self._start_publishing)
        return self

    def _start_publishing(self) -> None:
        self._publishing = True
        now = time.monotonic()
        self._started_at = now
        if self.count == 0 or self.duration == 0:
            self._finish()
            return
        if self.duration is not None:
            self._deadline_timer = self.loop.call_at(now + self.duration, self._finish)
        if self.rate is None:
            self._ready = {device for device in self.devices if device.sampling_rate is None}
            for device in self.devices:
                device.on_ack = self._mark_ready
            self.loop.add_idle_hook(self._flood)
        for device in self.devices:
            interval = self._interval(device)
            if interval is not None:
                first = now + self._rng.uniform(0, interval)  # spread the devices over one period
                self._schedule_tick(device, first)
        if self.rate is not None:
            logger.info(
                "publishing %.3g msg/s per device (%.4g msg/s in total)", self.rate, self.rate * len(self.devices)
            )
        else:
            logger.info("publishing as fast as the broker acknowledges (%d in flight per device)", self.max_inflight)

    def _interval(self, device: SimulatedDevice) -> float | None:
        """Seconds between two messages of ``device``; None: as fast as acknowledged."""
        rate = device.sampling_rate or self.rate
        return 1.0 / rate if rate else None

    def _schedule_tick(self, device: SimulatedDevice, when: float) -> None:
        self._tick_timers[device.id] = self.loop.call_at(when, lambda: self._tick(device, when))

    def _budget_left(self) -> bool:
        return self.count is None or self.stats.published < self.count

    def _tick(self, device: SimulatedDevice, due: float) -> None:
        self._tick_timers.pop(device.id, None)
        if not self._publishing or device.state in _FINAL_STATES:
            return
        if not self._budget_left():
            self._finish()
            return
        device._publish_telemetry_now()
        if not self._budget_left():
            self._finish()
            return
        interval = self._interval(device)
        if interval is None:  # back to as fast as acknowledged
            self._ready.add(device)
            return
        following = due + interval
        now = time.monotonic()
        if following < now - 1.0:  # more than a second behind: don't try to catch up
            following = now
        self._schedule_tick(device, following)

    def _sampling_rate_changed(self, device: SimulatedDevice) -> None:
        """A set_sampling_rate (or factory reset) changed the rate of ``device`` (loop thread):
        its next message follows the new rate."""
        if not self._publishing or device.state in _FINAL_STATES:
            return  # ``_start_publishing`` reads the device's rate
        timer = self._tick_timers.pop(device.id, None)
        if timer is not None:
            timer.cancel()
        interval = self._interval(device)
        if interval is None:
            self._ready.add(device)
        else:
            self._ready.discard(device)
            self._schedule_tick(device, time.monotonic() + interval)
        rate = device.sampling_rate or self.rate
        logger.info("%s: publishing %s", device.id, f"{rate:.3g} msg/s" if rate else "as fast as acknowledged")

    def _mark_ready(self, device: SimulatedDevice) -> None:
        if device.sampling_rate is None:
            self._ready.add(device)

    def _flood(self) -> None:
        """Idle hook of the as-fast-as-acknowledged mode: top up the in-flight window of every device
        that got an ack since the last iteration (and of all of them twice a second, to pick up
        devices that reconnected)."""
        if not self._publishing:
            return
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + 0.5
            self._ready.update(device for device in self.devices if device.sampling_rate is None)
        ready, self._ready = self._ready, set()
        for device in ready:
            if device.state is not DeviceState.CONNECTED or device.sampling_rate is not None:
                continue
            while device._inflight_telemetry < device.send_window:
                if not self._budget_left():
                    self._finish()
                    return
                if device._publish_telemetry_now() is None:
                    break

    def _finish(self) -> None:
        if not self._publishing and self._done.is_set():
            return
        self._publishing = False
        self._ended_at = time.monotonic()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        for timer in self._tick_timers.values():
            timer.cancel()
        self._tick_timers.clear()
        self.loop.remove_idle_hook(self._flood)
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the duration or the count is reached; False on timeout."""
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def wait_for_acks(self, timeout: float = 10.0) -> bool:
        """Wait until every telemetry publish so far has its PUBACK (or was refused)."""
        deadline = time.monotonic() + timeout
        while self.stats.outstanding > 0:
            if time.monotonic() >= deadline or all(d.state in _FINAL_STATES for d in self.devices):
                return self.stats.outstanding <= 0
            time.sleep(0.005)
        return True

    def stop(self, drain_timeout: float = 10.0, stop_timeout: float = 10.0) -> None:
        """Stop publishing, wait up to ``drain_timeout`` for outstanding PUBACKs, then stop every
        device cleanly (``offline`` + DISCONNECT) and the loop."""
        if self._stopped:
            return
        self._stopped = True
        if self.loop.running:
            self.loop.run_sync(self._finish)
            if drain_timeout > 0 and not self.wait_for_acks(drain_timeout):
                logger.warning("%d messages still unacknowledged after %.1f s", self.stats.outstanding, drain_timeout)

            def begin() -> None:
                for device in self.devices:
                    device._begin_stop(stop_timeout / 2)

            self.loop.run_sync(begin)
            deadline = time.monotonic() + stop_timeout
            for device in self.devices:
                if not device._closed.wait(max(0.0, deadline - time.monotonic())):
                    logger.warning("%s: not disconnected within %.1f s", device.id, stop_timeout)
                    break
        self.loop.stop()
        logger.info("simulator stopped: %s", self.summary().line())

    def run(self, drain_timeout: float = 10.0) -> SimulatorSummary:
        """Start, publish until the duration or count is reached, drain the acks, stop."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop(drain_timeout=drain_timeout)
        return self.summary()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Results

    def summary(self) -> SimulatorSummary:
        stats = self.stats
        end = stats.last_ack_at or stats.last_publish_at
        elapsed = (end - stats.first_publish_at) if stats.first_publish_at is not None and end is not None else 0.0
        if self._started_at is not None:
            window = (self._ended_at or time.monotonic()) - self._started_at
        else:
            window = 0.0
        latencies = stats.ack_latencies
        p50 = p99 = None
        if len(latencies) >= 2:
            cuts = statistics.quantiles(latencies, n=100, method="inclusive")
            p50, p99 = cuts[49] * 1000, cuts[98] * 1000
        elif latencies:
            p50 = p99 = latencies[0] * 1000
        return SimulatorSummary(
            devices=len(self.devices),
            connected=sum(1 for d in self.devices if d.connections > 0),
            published=stats.published,
            acked=stats.acked,
            rejected=stats.rejected,
            failed=stats.failed,
            skipped=stats.skipped,
            elapsed=elapsed,
            publish_rate=stats.published / window if window > 0 else 0.0,
            ack_rate=stats.acked / elapsed if elapsed > 0 else 0.0,
            ack_latency_p50_ms=p50,
            ack_latency_p99_ms=p99,
            commands_received=sum(d.commands_received for d in self.devices),
            commands_answered=sum(d.commands_answered for d in self.devices),
        )
