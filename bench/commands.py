"""Device command benchmark: API → web process → Mosquitto → device, and batches through Celery.

Figures, all in one run on this machine:

1. Single command latency: one active, online actuator and a real paho MQTT 5 device client
   subscribed (QoS 1) to ``devices/{id}/commands/+``. Commands (``set_state``) are sent one after
   another through ``POST /api/v1/devices/{id}/commands/`` (JWT, one keep-alive connection); the
   latency of each runs from just before the request is written to the moment the device's
   ``on_message`` has that command (matched by the command id of the payload and of the 201 body; the
   message may come before the HTTP answer). p50/p95/p99/max, and the HTTP round trip. Target: p99 <
   100 ms. A short warm-up is not counted.
2. Batch: ``--batch-devices`` active, online actuators with one tag, and an observer (paho MQTT 5,
   QoS 1) subscribed to ``devices/+/commands/+``. One ``POST /api/v1/devices/batch/commands/``
   targeting the tag; the HTTP answer time, the time from the POST to the observer having every
   command ("all published"), the time until the database shows them all ``sent``, and the dispatch
   rate. Target: all published within 10 s.

Everything runs on 127.0.0.1: a private Mosquitto (tests/brokers.py, no authentication), the bench's
own PostgreSQL database (``BENCH_DATABASE_URL``, dropped and created again at each run) and Redis
database (``BENCH_REDIS_URL``, db 5), one web process (``manage.py serve``, Daphne) and one Celery
worker; all of them are stopped at the end.

    .venv/bin/python bench/commands.py [--single 500] [--batch-devices 10000]
        [--broker-max-inflight 0] [--keep-logs]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fluxiot_bench_commands")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
from bench.common import fresh_database, platform_env, process, setup_django, wait_for  # noqa: E402
from tests.e2e.servers import celery_worker_command, free_port  # noqa: E402

SINGLE_DEVICE = "bench-cmd-single"
BATCH_PREFIX = "bench-cmd-"
BATCH_TAG = "bench-batch"
BENCH_USER = "bench-operator"
COMMAND = {"type": "set_state", "params": {"state": True}}
WARMUP = 20
ARRIVAL_TIMEOUT = 5.0  # seconds a sent command may take to reach the device
BATCH_TIMEOUT = 120.0  # seconds the whole batch may take
SINGLE_TARGET_MS = 100.0
BATCH_TARGET_S = 10.0

logger = logging.getLogger("bench.commands")


# --- Environment, database, processes -----------------------------------------------------------


def bench_env(mqtt_url: str, var_dir: Path, batch_devices: int) -> dict[str, str]:
    return platform_env(
        DATABASE_URL,
        REDIS_URL,
        mqtt_url,
        var_dir,
        LOG_LEVEL="INFO",  # the production default (Procfile): one line per command in the web log
        ALLOWED_HOSTS="127.0.0.1,localhost",
        API_THROTTLE_USER="1000000/min",
        COMMAND_BATCH_MAX_DEVICES=str(max(batch_devices, 10_000)),
    )


def web(env: dict[str, str], port: int) -> Any:
    def answers(_log: str) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    command = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return process(command, env, "web", answers)


def worker(env: dict[str, str]) -> Any:
    concurrency = env.get("BENCH_WORKER_CONCURRENCY", "2")
    return process(celery_worker_command(concurrency, loglevel="INFO"), env, "worker", lambda log: "ready." in log)


# --- Seeding ------------------------------------------------------------------------------------


def seed(batch_devices: int) -> str:
    """The single-command device, the batch's devices (one tag) and an Operator; returns its password."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.utils import timezone

    from devices.models import Device
    from fluxiot.roles import OPERATOR

    now = timezone.now()

    def device(device_id: str, tags: list[str]) -> Device:
        return Device(
            id=device_id,
            name=device_id,
            device_type="actuator",
            status="online",
            activation_state="active",
            activated_at=now,
            last_seen_at=now,
            tags=tags,
        )

    Device.objects.bulk_create([device(SINGLE_DEVICE, ["bench-single"])])
    Device.objects.bulk_create(
        (device(f"{BATCH_PREFIX}{n:05d}", [BATCH_TAG]) for n in range(batch_devices)), batch_size=2000
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE devices_device")
    password = secrets.token_urlsafe(16)
    user = get_user_model().objects.create_user(BENCH_USER, password=password)
    user.groups.add(Group.objects.get(name=OPERATOR))
    return password


# --- HTTP and MQTT clients ----------------------------------------------------------------------


class Client:
    """A keep-alive JSON client on one connection (reconnecting only if the server closes it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.token = ""
        self.reconnects = 0
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: Any = None, started: list[float] | None = None) -> tuple[int, Any]:
        """One request; returns (status, parsed body). ``started`` gets the perf_counter() of the
        moment just before the request is written."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (1, 2):
            try:
                if started is not None:
                    started.append(time.perf_counter())
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt == 2:
                    raise
                self.conn.close()
                self.reconnects += 1
        raise AssertionError("unreachable")

    def login(self, username: str, password: str) -> None:
        status, body = self.request("POST", "/api/v1/auth/token/", {"username": username, "password": password})
        if status != 200:
            raise RuntimeError(f"token: {status} {body}")
        self.token = body["access"]

    def close(self) -> None:
        self.conn.close()


class Subscriber:
    """A paho MQTT 5 client subscribed with QoS 1 to one filter; records, per command id (the last
    topic level, which the platform sets to the payload's id), the perf_counter() of its arrival."""

    def __init__(self, host: str, port: int, client_id: str, topic: str, *, parse_payload: bool) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.parse_payload = parse_payload
        self.arrivals: dict[str, float] = {}
        self.expected = 0
        self.all_arrived = threading.Event()
        self.duplicates = 0
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = 65535  # let the broker send as many QoS 1 messages as it can
        self.client.connect(host, port, keepalive=30, properties=properties)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, f"{client_id} connected")
        self.client.subscribe(topic, qos=1)
        if not self._subscribed.wait(10):
            raise RuntimeError(f"{client_id}: no SUBACK")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        at = time.perf_counter()
        command_id = json.loads(message.payload)["id"] if self.parse_payload else message.topic.rsplit("/", 1)[1]
        with self._cond:
            if command_id in self.arrivals:
                self.duplicates += 1
                return
            self.arrivals[command_id] = at
            self._cond.notify_all()
            if self.expected and len(self.arrivals) >= self.expected:
                self.all_arrived.set()

    def wait(self, command_id: str, timeout: float) -> float | None:
        """The arrival time of a command, waiting up to ``timeout`` seconds for it."""
        with self._cond:
            self._cond.wait_for(lambda: command_id in self.arrivals, timeout)
            return self.arrivals.get(command_id)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# --- Figure 1: single commands ------------------------------------------------------------------


def send_one(client: Client, device: Subscriber) -> tuple[float, float, str]:
    """One command through the API; returns (ms to the device, ms HTTP round trip, status answered)."""
    started: list[float] = []
    status, body = client.request("POST", f"/api/v1/devices/{SINGLE_DEVICE}/commands/", COMMAND, started)
    answered = time.perf_counter()
    if status != 201:
        raise RuntimeError(f"POST command: {status} {body}")
    arrived = device.wait(body["id"], ARRIVAL_TIMEOUT)
    if arrived is None:
        raise RuntimeError(f"command {body['id']} ({body['status']}) did not reach the device in {ARRIVAL_TIMEOUT}s")
    return (arrived - started[-1]) * 1000, (answered - started[-1]) * 1000, body["status"]


def load() -> str:
    """The 1-minute load average (other processes on the machine skew the figures)."""
    return f"{os.getloadavg()[0]:.2f}"


def figure_single(client: Client, host: str, port: int, count: int) -> dict[str, float]:
    load_before = load()
    device = Subscriber(host, port, SINGLE_DEVICE, f"devices/{SINGLE_DEVICE}/commands/+", parse_payload=True)
    try:
        for _ in range(WARMUP):
            send_one(client, device)
        latencies, round_trips, not_sent = [], [], 0
        started = time.perf_counter()
        for _ in range(count):
            latency, round_trip, status = send_one(client, device)
            latencies.append(latency)
            round_trips.append(round_trip)
            not_sent += status != "sent"
        wall = time.perf_counter() - started
        early = sum(1 for lat, rt in zip(latencies, round_trips, strict=True) if lat < rt)
    finally:
        device.close()
    figures = {
        "p50": pct(latencies, 50),
        "p95": pct(latencies, 95),
        "p99": pct(latencies, 99),
        "max": max(latencies),
        "http_p50": pct(round_trips, 50),
        "http_p99": pct(round_trips, 99),
    }
    print(
        f"Figure 1 - single command, POST /api/v1/devices/{{id}}/commands/ to the device's on_message "
        f"({count} commands after {WARMUP} warm-up, one keep-alive connection, reconnects {client.reconnects}, "
        f"{count / wall:.0f} commands/s, load average {load_before} -> {load()}):\n"
        f"  latency   p50={figures['p50']:.1f}ms p95={figures['p95']:.1f}ms p99={figures['p99']:.1f}ms "
        f"max={figures['max']:.1f}ms  (target p99 < {SINGLE_TARGET_MS:.0f} ms: "
        f"{'ok' if figures['p99'] < SINGLE_TARGET_MS else 'MISSED'})\n"
        f"  HTTP round trip p50={figures['http_p50']:.1f}ms p99={figures['http_p99']:.1f}ms; "
        f"{early} of {count} commands reached the device before the HTTP answer; "
        f"answered other than 'sent': {not_sent}; duplicates at the device: {device.duplicates}"
    )
    return figures


# --- Figure 2: a batch --------------------------------------------------------------------------


def sent_count(batch_id: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM control_devicecommand WHERE batch_id = %s AND status = 'sent'", [batch_id])
        return cursor.fetchone()[0]


def chunk_timeline(batch_id: str, posted_at: float) -> list[tuple[float, int]]:
    """Each dispatch round's ``sent_at`` (taken after its SELECT ... FOR UPDATE, before the publish)
    as seconds after the POST, with its number of commands."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM sent_at), count(*) FROM control_devicecommand "
            "WHERE batch_id = %s AND sent_at IS NOT NULL GROUP BY sent_at ORDER BY sent_at",
            [batch_id],
        )
        return [(float(at) - posted_at, n) for at, n in cursor.fetchall()]


def figure_batch(client: Client, host: str, port: int, devices: int) -> dict[str, float]:
    load_before = load()
    observer = Subscriber(host, port, "bench-observer", "devices/+/commands/+", parse_payload=False)
    observer.expected = devices
    try:
        body = {**COMMAND, "targets": {"tags": [BATCH_TAG]}}
        posted_at = time.time()
        started: list[float] = []
        status, batch = client.request("POST", "/api/v1/devices/batch/commands/", body, started)
        answered = time.perf_counter()
        t0 = started[-1]
        if status != 201:
            raise RuntimeError(f"POST batch: {status} {batch}")
        if batch["total"] != devices:
            raise RuntimeError(f"the batch went to {batch['total']} devices, not {devices}")
        logger.info("batch %s created (%d commands); waiting for the dispatch", batch["id"], batch["total"])
        db_done: float | None = None
        deadline = t0 + BATCH_TIMEOUT
        while time.perf_counter() < deadline:
            if db_done is None and sent_count(batch["id"]) >= devices:
                db_done = time.perf_counter()
            if db_done is not None and observer.all_arrived.is_set():
                break
            time.sleep(0.02)
        arrivals = sorted(observer.arrivals.values())
    finally:
        observer.close()
    status, detail = client.request("GET", f"/api/v1/command-batches/{batch['id']}/")
    if status != 200:
        raise RuntimeError(f"GET batch: {status} {detail}")
    counts = {k: v for k, v in detail["counts"].items() if v}
    if len(arrivals) < devices or db_done is None:
        raise RuntimeError(
            f"after {BATCH_TIMEOUT:g}s: {len(arrivals)} of {devices} commands at the observer, counts {counts}"
        )
    published = arrivals[-1] - t0
    first = arrivals[0] - t0
    figures = {
        "http": (answered - t0) * 1000,
        "first": first,
        "published": published,
        "db_sent": db_done - t0,
        "rate_end_to_end": devices / published,
        "rate_dispatch": devices / max(arrivals[-1] - arrivals[0], 1e-6),
    }
    timeline = chunk_timeline(batch["id"], posted_at)
    print(
        f"Figure 2 - batch of {devices:,} commands by tag, POST /api/v1/devices/batch/commands/ to one observer "
        f"subscribed to devices/+/commands/+ (QoS 1), load average {load_before} -> {load()}:\n"
        f"  POST answered in {figures['http']:.0f} ms; first command at the observer after {first:.2f}s; "
        f"all {devices:,} published after {published:.2f}s  (target < {BATCH_TARGET_S:.0f} s: "
        f"{'ok' if published < BATCH_TARGET_S else 'MISSED'})\n"
        f"  all 'sent' in the database after {figures['db_sent']:.2f}s (polled every 20 ms); "
        f"API counts {counts}; duplicates at the observer: {observer.duplicates}\n"
        f"  rate: {figures['rate_end_to_end']:,.0f} commands/s from the POST, "
        f"{figures['rate_dispatch']:,.0f} commands/s from first to last at the observer\n"
        f"  dispatch rounds (sent_at after the POST, commands): " + ", ".join(f"{at:.2f}s/{n}" for at, n in timeline)
    )
    return figures


# --- Main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=500, help="commands of figure 1 (0: skip)")
    parser.add_argument("--batch-devices", type=int, default=10_000, help="devices of the batch (0: skip)")
    parser.add_argument(
        "--broker-max-inflight",
        type=int,
        default=0,
        help="Mosquitto's max_inflight_messages (0: no limit, as bench/ingest.py; Mosquitto's own default is 20)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path printed)")
    args = parser.parse_args()
    if args.single < 0 or args.batch_devices < 0 or (0 < args.single < 2):
        parser.error("--single is 0 or at least 2, --batch-devices at least 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)

    from tests.brokers import mosquitto  # the private-broker helper the tests use

    var_dir = Path(tempfile.mkdtemp(prefix="fluxiot-bench-commands-"))
    failed = True
    try:
        # No broker authentication: it only costs at connect time. Unlimited queues and, by default,
        # in-flight windows, as in bench/ingest.py, so the broker never holds back the observer.
        broker_options = {"max_queued_messages": 0, "max_inflight_messages": args.broker_max_inflight}
        with mosquitto(dynsec=False, **broker_options) as broker, ExitStack() as stack:
            env = bench_env(f"mqtt://{broker.host}:{broker.port}", var_dir, args.batch_devices)
            fresh_database(DATABASE_URL)
            setup_django(env)
            started = time.perf_counter()
            password = seed(args.batch_devices)
            logger.info(
                "broker %s (max_inflight_messages %d), database %s, %d devices seeded in %.1fs, logs in %s",
                env["MQTT_URL"],
                args.broker_max_inflight,
                DATABASE_URL.rsplit("/", 1)[1],
                args.batch_devices + 1,
                time.perf_counter() - started,
                var_dir,
            )
            port = free_port()
            stack.enter_context(worker(env))
            stack.enter_context(web(env, port))
            client = Client(port)
            stack.callback(client.close)
            client.login(BENCH_USER, password)
            logger.info("web on 127.0.0.1:%d and worker ready", port)
            if args.single:
                figure_single(client, broker.host, broker.port, args.single)
            if args.batch_devices:
                figure_batch(client, broker.host, broker.port, args.batch_devices)
        failed = False
    finally:
        if failed or args.keep_logs:
            print(f"process logs: {var_dir}", file=sys.stderr)
        else:
            shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
