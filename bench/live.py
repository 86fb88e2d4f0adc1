"""WebSocket live-updates benchmark: MQTT publish → bridge → Celery → event bus (Redis) → web process
(Daphne, /ws/events/) → many WebSocket clients.

Figures, in one run on this machine:

1. Latency: ``--clients`` WebSocket clients (one asyncio loop in this process, a real TCP connection
   each, tests/live/wsclient.py), all subscribed to ``telemetry.received`` of every device at the
   default rate (4 updates per second per device), while ``--devices`` simulated devices
   (``python -m sdk.simulator`` in a process of its own, MQTT 3.1.1, QoS 1) publish ``--rate``
   messages per second each. Every message carries ``ts``, the epoch milliseconds of its publish; for
   every device update a client receives, latency = arrival time − that ``ts`` (one clock: everything
   runs on this machine). Coalescing means a client gets at most 4 updates per second per device, the
   newest values: the latency is that of what arrives. Measured over ``--duration`` seconds once the
   flow is established (``--warmup`` seconds after the first event: the devices connecting and coming
   online cost the ingest path a burst of status changes, reported apart). p50, p95, p99, max, and
   the same for a channel-layer listener in this process (the part spent before the WebSocket
   server). Target: p99 < 500 ms.
2. Memory: the web process's resident set size (VmRSS) before the clients connect, once they are
   subscribed, at the first event, then every 5 s of the measured window; the least-squares slope (MB
   per minute) over the window and over its second half. Stable = no steady growth.

Everything runs on 127.0.0.1: a private Mosquitto (tests/brokers.py, no authentication), the bench's
own PostgreSQL database (``BENCH_DATABASE_URL``, dropped and created again at each run) and Redis
database (``BENCH_REDIS_URL``, db 6), one web process (``manage.py serve``), one bridge and one Celery
worker; all of them are stopped at the end, and the run is bounded in time.

    .venv/bin/python bench/live.py [--clients 200] [--devices 100] [--rate 10] [--duration 60]
        [--warmup 10] [--name-devices] [--group-filter]
        [--keep-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fluxiot_bench_live")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
from bench.common import fresh_database, platform_env, process, setup_django, wait_for  # noqa: E402
from tests.e2e.servers import celery_worker_command, free_port, stop_process  # noqa: E402
from tests.live.wsclient import ConnectionClosed, WebSocket  # noqa: E402

DEVICE_PREFIX = "bench-live-"
BENCH_USER = "bench-viewer"
KEY = "temperature"  # on every simulated device's every message
TARGET_P99_MS = 500.0
SAMPLE_EVERY_S = 5.0
MAX_LATENCY_MS = 60_000  # histogram of whole milliseconds up to this (later ones count in the last bucket)
CONNECT_CONCURRENCY = 20
# What the server sends for an event, and where a device's KEY time stands in it.
EVENT_PREFIX = b'{"type":"event",'
KEY_TS = re.compile(rb'"' + KEY.encode() + rb'":\{"ts":(\d+)')
VALIDATE_EVERY = 50
FILTER_NAMES = {
    (False, False): "",
    (True, False): " (named one by one)",
    (False, True): " (by their group)",
    (True, True): " (named one by one, and by their group)",
}

logger = logging.getLogger("bench.live")


# --- Environment, database, processes -----------------------------------------------------------


def bench_env(mqtt_url: str, var_dir: Path) -> dict[str, str]:
    return platform_env(
        DATABASE_URL,
        REDIS_URL,
        mqtt_url,
        var_dir,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        BRIDGE_CLIENT_ID="bench-live-bridge",
        API_THROTTLE_USER="1000000/min",
    )


def http_json(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    except OSError:
        return 0, None
    finally:
        conn.close()


def web(env: dict[str, str], port: int) -> Any:
    command = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return process(command, env, "web", lambda _log: http_json(port, "GET", "/healthz")[0] == 200)


def worker(env: dict[str, str]) -> Any:
    concurrency = env.get("BENCH_WORKER_CONCURRENCY", "2")
    return process(celery_worker_command(concurrency, loglevel="INFO"), env, "worker", lambda log: "ready." in log)


def bridge(env: dict[str, str]) -> Any:
    # At INFO it says when it has subscribed (what is published before that is dropped).
    env = {**env, "LOG_LEVEL": "INFO"}
    return process([sys.executable, "manage.py", "run_bridge"], env, "bridge", lambda log: "subscribed:" in log)


def group_of(device_ids: list[str]) -> int:
    """A group holding the devices (for --group-filter)."""
    from devices.models import Device, DeviceGroup

    group = DeviceGroup(name="bench-live")
    group.save()
    Device.objects.filter(pk__in=device_ids).update(group=group)
    return group.pk


def seed(devices: int, credentials_file: Path) -> tuple[str, list[str]]:
    """The simulated devices (created and activated through the registry) and a Viewer; returns the
    Viewer's password and the devices' ids."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from fluxiot.roles import VIEWER
    from sdk.simulator import provision_devices, save_credentials

    credentials = provision_devices(devices, prefix=DEVICE_PREFIX)
    save_credentials(credentials_file, credentials)
    password = secrets.token_urlsafe(16)
    user = get_user_model().objects.create_user(BENCH_USER, password=password)
    user.groups.add(Group.objects.get(name=VIEWER))
    return password, [c.id for c in credentials]


# --- Measurements -------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of a process group (a Celery worker and its
    pool, say)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return float("nan")
    xs, ys = [t for t, _ in samples], [m for _, m in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


class Histogram:
    """Latencies in whole milliseconds (bucket i: i ms); percentiles exact to the millisecond."""

    def __init__(self) -> None:
        self.counts = [0] * (MAX_LATENCY_MS + 1)
        self.n = 0
        self.max = 0

    def add(self, ms: int) -> None:
        ms = 0 if ms < 0 else min(ms, MAX_LATENCY_MS)
        self.counts[ms] += 1
        self.n += 1
        self.max = max(self.max, ms)

    def pct(self, q: float) -> float:
        if not self.n:
            return float("nan")
        rank, seen = q / 100 * self.n, 0
        for ms, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return float(ms)
        return float(self.max)


class Clients:
    """``count`` WebSocket clients on one event loop in a thread of its own."""

    def __init__(self, url: str, count: int, filters: dict[str, Any]) -> None:
        self.url, self.count, self.filters = url, count, filters
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ws-clients", daemon=True)
        self.sockets: list[WebSocket] = []
        self.tasks: list[asyncio.Task] = []
        self.warmup = Histogram()  # before measure_from
        self.measured = Histogram()  # measure_from <= arrival < measure_until
        self.bus = Histogram()  # the same window, straight from the channel layer
        self.frames = [0] * count
        self.other_frames = 0
        self.validated = 0
        self.invalid = 0
        self.closed: list[tuple[int | None, str]] = []
        self.first_event: float | None = None
        self.measure_from = float("inf")  # epoch seconds
        self.measure_until = float("inf")
        self.max_lag = 0.0  # the client loop's worst scheduling delay (its own share of the latency)

    def _run(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self._run(self._connect_all(), timeout=300)

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(index: int) -> WebSocket:
            async with gate:
                ws = await WebSocket.connect(self.url, timeout=30)
                await ws.send_json({"type": "subscribe", "id": "telemetry", "filters": self.filters})
                answer = await ws.recv_json(timeout=30)
                if answer.get("type") != "subscribed":
                    raise RuntimeError(f"client {index}: {answer}")
                return ws

        self.sockets = list(await asyncio.gather(*(one(i) for i in range(self.count))))
        self.tasks = [asyncio.create_task(self._read(i, ws)) for i, ws in enumerate(self.sockets)]
        self.tasks.append(asyncio.create_task(self._watch_lag()))
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("events.telemetry.received", channel)
        self.tasks.append(asyncio.create_task(self._listen_bus(layer, channel)))

    async def _listen_bus(self, layer: Any, channel: str) -> None:
        """The same events straight from the channel layer (Redis), as the web process gets them: the
        part of the latency spent before the WebSocket server."""
        while True:
            message = await layer.receive(channel)
            now = time.time()
            if not self.measure_from <= now < self.measure_until:
                continue
            now_ms = now * 1000
            for entry in message["event"]["data"]["devices"].values():
                value = entry["values"].get(KEY)
                if value is not None:
                    self.bus.add(int(now_ms - value["ts"]))

    async def _read(self, index: int, ws: WebSocket) -> None:
        """Take every frame as it comes. Parsing 200 clients' frames with json.loads (25 KB, 100
        devices each) would cost this process more than the server spends sending them: the ``ts`` of
        KEY are read with a regular expression, and every VALIDATE_EVERY-th frame is parsed in full
        and checked."""
        try:
            while True:
                raw = await ws.recv(decode=False)
                now = time.time()
                if not raw.startswith(EVENT_PREFIX):
                    self.other_frames += 1
                    continue
                self.frames[index] += 1
                if self.frames[index] % VALIDATE_EVERY == 1:
                    self._validate(raw)
                if self.first_event is None:
                    self.first_event = now
                if now < self.measure_from:
                    into = self.warmup
                elif now < self.measure_until:
                    into = self.measured
                else:
                    continue
                now_ms = now * 1000
                for ts in KEY_TS.findall(raw):
                    into.add(int(now_ms - int(ts)))
        except ConnectionClosed as closed:
            self.closed.append((closed.code, closed.reason))

    def _validate(self, raw: bytes) -> None:
        frame = json.loads(raw)
        devices = frame["event"]["data"]["devices"]
        expected = sum(1 for entry in devices.values() if KEY in entry["values"])
        if (
            frame["subscriptions"] != ["telemetry"]
            or frame["event"]["type"] != "telemetry.received"
            or expected != len(KEY_TS.findall(raw))
        ):
            self.invalid += 1
        self.validated += 1

    async def _watch_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            self.max_lag = max(self.max_lag, time.monotonic() - before - 0.1)

    def stop(self) -> None:
        async def close_all() -> None:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await asyncio.gather(*(ws.close(timeout=2) for ws in self.sockets), return_exceptions=True)

        try:
            self._run(close_all(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


# --- Main ---------------------------------------------------------------------------------------


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def run(args: argparse.Namespace, broker: Any, var_dir: Path, stack: ExitStack) -> None:
    env = bench_env(f"mqtt://{broker.host}:{broker.port}", var_dir)
    fresh_database(DATABASE_URL)
    setup_django(env)
    credentials_file = var_dir / "credentials.json"
    password, device_ids = seed(args.devices, credentials_file)
    port = free_port()
    worker_proc = stack.enter_context(worker(env))
    bridge_proc = stack.enter_context(bridge(env))
    web_proc = stack.enter_context(web(env, port))
    status, tokens = http_json(port, "POST", "/api/v1/auth/token/", {"username": BENCH_USER, "password": password})
    if status != 200:
        raise RuntimeError(f"token: {status} {tokens}")
    logger.info("web on 127.0.0.1:%d (pid %d), bridge and worker ready; logs in %s", port, web_proc.pid, var_dir)

    rss_idle = rss_mb(web_proc.pid)
    filters: dict[str, Any] = {"event_types": ["telemetry.received"]}
    if args.name_devices:
        filters["devices"] = device_ids
    if args.group_filter:
        filters["groups"] = [group_of(device_ids)]
    clients = Clients(f"ws://127.0.0.1:{port}/ws/events/?token={tokens['access']}", args.clients, filters)
    started = time.monotonic()
    clients.start()
    stack.callback(clients.stop)
    rss_connected = rss_mb(web_proc.pid)
    logger.info("%d clients connected and subscribed in %.1fs", args.clients, time.monotonic() - started)

    load_before = load()
    # Publishing lasts the warm-up, the measured window and a margin (the window ends while the
    # devices still publish).
    publish_for = args.warmup + args.duration + 3
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdk.simulator",
            "--credentials",
            str(credentials_file),
            "--devices",
            str(args.devices),
            "--rate",
            str(args.rate),
            "--duration",
            str(publish_for),
            "--mqtt-version",
            "3",
            "--broker",
            env["MQTT_URL"],
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    stack.callback(stop_process, simulator, 10, True)
    wait_for(lambda: clients.first_event is not None or simulator.poll() is not None, 120, "the first event")
    if clients.first_event is None:
        raise RuntimeError(f"no event reached a client; simulator: {simulator.communicate()[0][-2000:]}")
    t0 = clients.first_event + args.warmup
    clients.measure_from, clients.measure_until = t0, t0 + args.duration
    rss_first_event = rss_mb(web_proc.pid)
    groups = {
        "web": web_proc.pid,
        "bridge": bridge_proc.pid,
        "worker": worker_proc.pid,
        "simulator": simulator.pid,
        "bench (clients)": os.getpgrp(),
    }
    while time.time() < t0:
        time.sleep(0.01)
    cpu0 = {name: cpu_seconds(pgid) for name, pgid in groups.items()}
    samples: list[tuple[float, float]] = []
    for k in range(int(args.duration // SAMPLE_EVERY_S) + 1):
        while time.time() < t0 + k * SAMPLE_EVERY_S:
            time.sleep(0.01)
        if simulator.poll() is not None:
            raise RuntimeError(f"the simulator stopped early: {simulator.communicate()[0][-2000:]}")
        samples.append((time.time() - t0, rss_mb(web_proc.pid)))
    window = time.time() - t0
    cpu = {name: (cpu_seconds(pgid) - cpu0[name]) / window for name, pgid in groups.items()}
    summary = simulator.communicate(timeout=60)[0].strip().splitlines()
    web_alive = web_proc.poll() is None

    measured, warmup, bus = clients.measured, clients.warmup, clients.bus
    per_client = sorted(clients.frames)
    bound = args.devices * 4 * args.duration
    print(
        f"Figure 1 - publish -> WebSocket client latency, {args.clients} clients subscribed to telemetry.received of "
        f"all {args.devices} devices{FILTER_NAMES[(args.name_devices, args.group_filter)]} (rate 4/s per device), "
        f"{args.devices} devices x {args.rate:g} msg/s = "
        f"{args.devices * args.rate:,.0f} msg/s, measured over {args.duration:g}s after a {args.warmup:g}s warm-up, "
        f"load average {load_before} -> {load()}:\n"
        f"  simulator ({publish_for:g}s): {summary[-1] if summary else '(no summary)'}\n"
        f"  latency p50={measured.pct(50):.0f}ms p95={measured.pct(95):.0f}ms p99={measured.pct(99):.0f}ms "
        f"max={measured.max}ms over {measured.n:,} device updates ({measured.n / args.clients:,.0f} per client, at "
        f"most {bound:,.0f} at rate 4)  (target p99 < {TARGET_P99_MS:.0f} ms: "
        f"{'ok' if measured.pct(99) < TARGET_P99_MS else 'MISSED'})\n"
        f"  of which to the bus (publish -> a channel-layer listener in this process, same window): "
        f"p50={bus.pct(50):.0f}ms p95={bus.pct(95):.0f}ms p99={bus.pct(99):.0f}ms max={bus.max}ms\n"
        f"  warm-up (devices connecting and coming online): p50={warmup.pct(50):.0f}ms p99={warmup.pct(99):.0f}ms "
        f"max={warmup.max}ms over {warmup.n:,} updates\n"
        f"  frames per client (whole run) min {per_client[0]:,} median {per_client[len(per_client) // 2]:,} max "
        f"{per_client[-1]:,}; heartbeats and other frames {clients.other_frames}; frames checked in full "
        f"{clients.validated:,}, wrong {clients.invalid}; connections closed early {len(clients.closed)}\n"
        f"  client loop's worst scheduling delay {clients.max_lag * 1000:.0f} ms; CPU in the window (% of one core, "
        f"{os.cpu_count()} cores): " + ", ".join(f"{name} {share * 100:.0f}%" for name, share in cpu.items())
    )
    second_half = [sample for sample in samples if sample[0] >= args.duration / 2]
    growth = samples[-1][1] - samples[0][1]
    print(
        f"Figure 2 - web process memory (VmRSS): {rss_idle:.1f} MB before the clients, {rss_connected:.1f} MB with "
        f"{args.clients} clients subscribed ({(rss_connected - rss_idle) * 1024 / args.clients:.0f} KB per client), "
        f"{rss_first_event:.1f} MB at the first event; every {SAMPLE_EVERY_S:g}s of the measured window:\n"
        "  " + ", ".join(f"{t:.0f}s {m:.1f}" for t, m in samples) + " MB\n"
        f"  slope {slope_mb_per_min(samples):+.2f} MB/min over the window, {slope_mb_per_min(second_half):+.2f} "
        f"MB/min over its second half; first -> last {growth:+.1f} MB; web process {'alive' if web_alive else 'DEAD'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second per device")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of publishing before the measurement")
    parser.add_argument(
        "--name-devices",
        action="store_true",
        help="subscribe with filters.devices listing every device (a coalescer per connection instead of the "
        "process's shared one)",
    )
    parser.add_argument(
        "--group-filter",
        action="store_true",
        help="subscribe with filters.groups naming a group that holds every device (a coalescer per connection)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path printed)")
    args = parser.parse_args()
    if args.clients < 1 or args.devices < 1 or args.rate <= 0 or args.duration < SAMPLE_EVERY_S:
        parser.error(f"--clients and --devices at least 1, --rate above 0, --duration at least {SAMPLE_EVERY_S:g}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)

    from tests.brokers import mosquitto  # the private-broker helper the tests use

    var_dir = Path(tempfile.mkdtemp(prefix="fluxiot-bench-live-"))
    failed = True
    try:
        with mosquitto(dynsec=False, max_queued_messages=0, max_inflight_messages=0) as broker, ExitStack() as stack:
            run(args, broker, var_dir, stack)
        failed = False
    finally:
        if failed or args.keep_logs:
            print(f"process logs: {var_dir}", file=sys.stderr)
        else:
            shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
