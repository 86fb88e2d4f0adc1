"""Ingestion benchmark: devices → Mosquitto → bridge → Celery → PostgreSQL, next to bare baselines.

Figures, all in one run on this machine:

1. Sustained: simulated devices publish QoS 1 telemetry (one object of 3-5 keys per message) for a
   fixed count; messages/s from first publish to last row committed, p50/p99 publish-to-committed
   latency, messages lost and duplicates stored. Baseline: the same publisher into a bare paho
   subscriber at QoS 1.
2. Drain: a backlog of QoS 1 messages published while the bridge is stopped (its persistent session
   queues them at the broker), then the bridge starts; messages/s to the last committed row.
   Baseline: a bare paho subscriber with a persistent session writing the same rows with COPY.

With ``--rules``, figure 1 runs twice with the same worker and bridge, each run after a warm-up of
``--warmup`` messages: first with no rule and no plugin, then with one preprocess plugin and one
rule active (figure 2 and its baseline are left out). The plugin is the SDK's ``unit_convert``
(sdk/plugins/examples/unit_convert.c, built with sdk/plugins/build.sh), default config, scoped to all
devices: every message goes through wasm (the simulator's keys have no unit suffix, so it converts
nothing and hands the JSON back as it came). The rule is ``telemetry.temperature > 25.0 &&
"simulator" in device.tags`` (every simulated device has the tag; the simulated temperatures walk
around 18-26 °C, so a part of the messages match) with one ``store_telemetry`` action deriving
``temperature_f`` (°F) at the message's time. Both rates are printed, their ratio, and the rule's and
plugin's counters over the measured run (evaluated, matched, failed; calls, failures), the derived
rows and the dead letters.

Everything runs on 127.0.0.1: a private Mosquitto (tests/brokers.py), the bench's own PostgreSQL
database and Redis database, one bridge process and one Celery worker.

    .venv/bin/python bench/ingest.py [--devices 100] [--count 60000] [--backlog 200000]
    .venv/bin/python bench/ingest.py --rules [--devices 100] [--count 60000] [--warmup 2000]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fluxiot_bench_ingest")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4")
from bench.common import fresh_database, platform_env, setup_django  # noqa: E402
from tests.e2e.servers import celery_worker_command, stop_process  # noqa: E402

KEY = "temperature"  # every simulated message carries it: one row of this key per message

logger = logging.getLogger("bench.ingest")


def bench_env(mqtt_url: str) -> dict[str, str]:
    var_dir = tempfile.mkdtemp(prefix="fluxiot-bench-")
    return platform_env(DATABASE_URL, REDIS_URL, mqtt_url, var_dir, BRIDGE_CLIENT_ID="bench-bridge")


@contextmanager
def process(args: list[str], env: dict[str, str], name: str) -> Iterator[subprocess.Popen]:
    log = open(Path(env["FLUXIOT_VAR_DIR"]) / f"{name}.log", "wb")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc, timeout=20)
        log.close()


def worker(env: dict[str, str]) -> Any:
    return process(celery_worker_command(env.get("BENCH_WORKER_CONCURRENCY", "2"), loglevel="WARNING"), env, "worker")


def bridge(env: dict[str, str]) -> Any:
    return process([sys.executable, "manage.py", "run_bridge"], env, "bridge")


def committed(device_ids: list[str], since: Any) -> dict[str, Any]:
    """Newest committed ts of KEY per device."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.id, (SELECT max(p.ts) FROM telemetry_point p WHERE p.device_id = d.id AND p.key = %s "
            "AND p.ts >= %s) FROM unnest(%s::varchar[]) AS d(id)",
            [KEY, since, device_ids],
        )
        return dict(cursor.fetchall())


def count_rows(since: Any) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_point WHERE key = %s AND ts >= %s", [KEY, since])
        return cursor.fetchone()[0]


class CommitWatcher:
    """Polls the newest committed ts per device every 50 ms; a message counts as committed at the
    first poll that sees its ts (or a later one) for its device. Timing resolution: one poll."""

    def __init__(self, device_ids: list[str], since: Any) -> None:
        self.device_ids, self.since = device_ids, since
        self.history: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.is_set():
                self.history.append((time.time(), committed(self.device_ids, self.since)))
                time.sleep(0.05)
        finally:
            connection.close()

    def __enter__(self) -> CommitWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def latencies(self, since: Any) -> list[float]:
        """Publish-to-committed seconds of every stored message: the simulator stamps ``ts`` with
        the publish time (epoch ms), and a message is committed at the first poll that saw its
        device's newest committed ts reach it."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT device_id, ts FROM telemetry_point WHERE key = %s AND ts >= %s", [KEY, since])
            stored = cursor.fetchall()
        out = []
        for device_id, ts in stored:
            for at, newest in self.history:
                seen = newest.get(device_id)
                if seen is not None and seen >= ts:
                    out.append(at - ts.timestamp())
                    break
        return out


def first_ts(since: Any) -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT min(ts) FROM telemetry_point WHERE key = %s AND ts >= %s", [KEY, since])
        return cursor.fetchone()[0].timestamp()


def wait_rows(expected: int, since: Any, timeout: float, device_ids: list[str]) -> tuple[int, float]:
    """Wait until ``expected`` rows of KEY since ``since`` are committed; returns (rows, the time
    they were seen). Counting every row is a scan that grows with the run (tens of ms, in parallel
    workers, at a few hundred thousand rows): polled every 50 ms it would take a good part of the
    machine from the system it measures. So every 50 ms only the newest committed ts per device is
    read (one index probe each), and rows are counted when that stopped moving: the completion time
    is the start of the count that found them all, at most ~100 ms after the last commit."""
    deadline = time.monotonic() + timeout
    previous: dict[str, Any] | None = None
    moved_at = time.monotonic()
    rows = 0
    while time.monotonic() < deadline:
        newest = committed(device_ids, since)
        if newest != previous:
            previous, moved_at = newest, time.monotonic()
        else:
            at = time.time()
            rows = count_rows(since)
            if rows >= expected:
                return rows, at
            if time.monotonic() - moved_at > 15:
                break  # nothing moved for 15 s: report what arrived
        time.sleep(0.05)
    return count_rows(since), time.time()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


# --- Baselines ------------------------------------------------------------------------------------


def bare_subscriber(host: str, port: int, count: int, client_id: str, clean: bool = True) -> Any:
    """A paho QoS 1 subscriber counting messages; returns (client, done event, counter dict)."""
    import paho.mqtt.client as mqtt

    done, got = threading.Event(), {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        got["n"] += 1
        got["last"] = time.time()
        got["first"] = got["first"] or got["last"]
        if got["n"] >= count:
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=clean
    )
    client.on_message = on_message
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.subscribe("devices/+/telemetry", qos=1)
    client.loop_start()
    time.sleep(0.5)
    return client, done, got


def simulate(credentials_file: Path, devices: int, broker: str, count: int, env: dict[str, str]) -> None:
    """Publish ``count`` QoS 1 messages as fast as the broker acknowledges, from the simulator in a
    process of its own (in this one it would share the GIL with the subscriber it is measured by)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sdk.simulator",
            "--credentials",
            str(credentials_file),
            "--devices",
            str(devices),
            "--rate",
            "0",
            "--count",
            str(count),
            "--mqtt-version",
            "3",
            "--broker",
            broker,
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )


class CopyDrainer:
    """Bare baseline of the drain: a persistent-session paho subscriber (MQTT 5, manual acks) that
    COPYs the rows (device, key, ts, value) into a plain table in batches of 1,000 and acks each
    batch after its COPY commits. ``register()`` creates the session; ``drain()`` comes back for the
    backlog and returns messages/s."""

    def __init__(self, host: str, port: int, count: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.host, self.port, self.count = host, port, count
        self.pending: list[Any] = []
        self.done_count = 0
        self.last = 0.0
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.props = Properties(PacketTypes.CONNECT)
        self.props.SessionExpiryInterval = 3600
        self.props.ReceiveMaximum = 20000
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="bench-copy-drainer", protocol=mqtt.MQTTv5, manual_ack=True
        )
        self.client.on_message = self._on_message

    def register(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS bench_points")
            cursor.execute("CREATE TABLE bench_points (device_id text, key text, ts timestamptz, value float8)")
        self.client.connect(self.host, self.port, clean_start=False, properties=self.props)
        self.client.loop_start()
        self.client.subscribe("$share/bench/devices/+/telemetry", qos=1)
        time.sleep(0.5)
        self.client.disconnect()
        self.client.loop_stop()

    def _flush(self) -> None:
        import json
        from datetime import UTC, datetime

        from django.db import connection

        connection.ensure_connection()
        raw = connection.connection
        with raw.cursor() as cur, cur.copy("COPY bench_points FROM STDIN") as copy:
            for message in self.pending:
                body = json.loads(message.payload)
                ts = datetime.fromtimestamp(body.pop("ts") / 1000, UTC)
                device = message.topic.split("/")[1]
                for key, value in body.items():
                    copy.write_row((device, key, ts, float(value)))
        raw.commit()
        for message in self.pending:
            self.client.ack(message.mid, message.qos)
        self.done_count += len(self.pending)
        self.pending.clear()
        if self.done_count >= self.count:
            self.last = time.time()
            self.done.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.pending.append(message)
            if len(self.pending) >= 1000 or self.done_count + len(self.pending) >= self.count:
                self._flush()

    def drain(self, timeout: float = 300) -> float:
        start = time.time()
        self.client.connect(self.host, self.port, clean_start=False, properties=self.props)
        self.client.loop_start()
        self.done.wait(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        return self.done_count / ((self.last or time.time()) - start)


# --- Sustained run, and the rule and plugin of --rules ----------------------------------------------

RULE_CONDITION = 'telemetry.temperature > 25.0 && "simulator" in device.tags'
DERIVED_KEY = "temperature_f"
RULE_ACTIONS = [
    {"type": "store_telemetry", "params": {"values": {DERIVED_KEY: "telemetry.temperature * 9.0 / 5.0 + 32.0"}}}
]


def sustained(
    credentials_file: Path, ids: list[str], devices: int, count: int, url: str, env: dict[str, str]
) -> dict[str, Any]:
    """Figure 1 with the worker and bridge running: publish ``count`` messages, wait for their rows."""
    from datetime import UTC, datetime, timedelta

    since = datetime.now(UTC) - timedelta(seconds=1)
    with CommitWatcher(ids, since) as watcher:
        simulate(credentials_file, devices, url, count, env)
        rows, last_commit = wait_rows(count, since, timeout=300, device_ids=ids)
    rate = rows / (last_commit - first_ts(since))
    lat = watcher.latencies(since)
    return {"since": since, "rows": rows, "rate": rate, "lat": lat, "lost": count - rows}


def warm_up(credentials_file: Path, ids: list[str], devices: int, count: int, url: str, env: dict[str, str]) -> None:
    """Publish ``count`` messages and wait for their rows (the worker loads what it needs: the rule
    set, the plugin's module and instances), then let a measured run's ``since`` pass them."""
    from datetime import UTC, datetime, timedelta

    since = datetime.now(UTC) - timedelta(seconds=1)
    simulate(credentials_file, devices, url, count, env)
    rows, _ = wait_rows(count, since, timeout=120, device_ids=ids)
    if rows < count:
        print(f"          warm-up: only {rows:,}/{count:,} rows committed")
    time.sleep(1.5)  # a measured run counts rows from 1 s before it starts: none of these


def build_unit_convert() -> bytes:
    with tempfile.TemporaryDirectory(prefix="fluxiot-bench-wasm-") as out:
        subprocess.run(
            [
                "bash",
                str(ROOT / "sdk" / "plugins" / "build.sh"),
                "-o",
                out,
                str(ROOT / "sdk/plugins/examples/unit_convert.c"),
            ],
            check=True,
            capture_output=True,
        )
        return (Path(out) / "unit_convert.wasm").read_bytes()


def activate_rule_and_plugin() -> tuple[Any, Any]:
    """Create the plugin and the rule through the services (each commits, then bumps the rules'
    generation in the cache: the worker reloads at its next batch)."""
    from rules.services import create_plugin, create_rule

    plugin = create_plugin(
        None, name="bench-unit-convert", module=build_unit_convert(), scope="all", stage="preprocess", config={}
    )
    rule = create_rule(
        None, name="bench-warm", condition=RULE_CONDITION, trigger="telemetry", actions=RULE_ACTIONS, scope="all"
    )
    return rule, plugin


def counters(rule: Any, plugin: Any) -> dict[str, int]:
    from rules.models import Plugin, Rule
    from telemetry.models import DeadLetter

    r = Rule.objects.values("evaluated", "matched", "failed").get(pk=rule.pk)
    p = Plugin.objects.values("calls", "failures").get(pk=plugin.pk)
    return {**r, **p, "dead_letters": DeadLetter.objects.count()}


def derived_rows(since: Any) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_point WHERE key = %s AND ts >= %s", [DERIVED_KEY, since])
        return cursor.fetchone()[0]


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def report_sustained(label: str, run: dict[str, Any], count: int, bare_rate: float) -> None:
    print(
        f"platform  {label}: {run['rows']:,}/{count:,} msgs committed, {run['rate']:,.0f} msg/s "
        f"({run['rate'] / bare_rate:.0%} of bare), latency p50 {pct(run['lat'], 50):.0f} ms "
        f"p99 {pct(run['lat'], 99):.0f} ms, lost {run['lost']}, duplicates stored 0 (the key (device, key, ts) "
        "admits none)"
    )


def rules_comparison(
    credentials_file: Path, ids: list[str], args: Any, url: str, env: dict[str, str], bare: float
) -> None:
    """--rules: figure 1 without, then with, one plugin and one rule (same worker and bridge)."""
    from telemetry.services import create_partitions

    # As the platform's periodic task does: with today's partition missing, the workers' first
    # batches create it inside their transactions, and that DDL can deadlock with this process's
    # row counting (seen once: the count was the victim and the bench died).
    create_partitions()
    with worker(env), bridge(env):
        time.sleep(3)  # bridge subscribed, worker ready
        warm_up(credentials_file, ids, args.devices, args.warmup, url, env)
        print(f"          {load_average()}")
        plain = sustained(credentials_file, ids, args.devices, args.count, url, env)
        report_sustained("sustained, no rule or plugin", plain, args.count, bare)
        print(f"          {load_average()}")

        rule, plugin = activate_rule_and_plugin()
        warm_up(credentials_file, ids, args.devices, args.warmup, url, env)
        before = counters(rule, plugin)
        with_rules = sustained(credentials_file, ids, args.devices, args.count, url, env)
        after = counters(rule, plugin)
        report_sustained("sustained, 1 rule + 1 plugin", with_rules, args.count, bare)
        print(f"          {load_average()}")

    delta = {name: after[name] - before[name] for name in after}
    ratio = with_rules["rate"] / plain["rate"]
    print(
        f"          with / without: {with_rules['rate']:,.0f} / {plain['rate']:,.0f} msg/s = {ratio:.0%} "
        f"(lost {plain['lost']} / {with_rules['lost']})"
    )
    print(
        f"          rule {rule.name!r} ({RULE_CONDITION}; store_telemetry {DERIVED_KEY}) over the measured run: "
        f"evaluated {delta['evaluated']:,}, matched {delta['matched']:,}, failed {delta['failed']:,}; "
        f"{derived_rows(with_rules['since']):,} {DERIVED_KEY} rows stored"
    )
    print(
        f"          plugin {plugin.name!r} (unit_convert.wasm, {plugin.size:,} bytes, scope all): "
        f"calls {delta['calls']:,}, failures {delta['failures']:,}; dead letters {delta['dead_letters']} "
        f"(totals with the warm-up: evaluated {after['evaluated']:,}, calls {after['calls']:,})"
    )
    ok = plain["lost"] == 0 and with_rules["lost"] == 0 and delta["calls"] == args.count
    ok = ok and delta["evaluated"] == args.count and delta["failed"] == 0 and delta["failures"] == 0
    print("          every message through the plugin and the rule, none lost: " + ("ok" if ok else "NO"))


# --- Main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--count", type=int, default=60_000, help="messages of the sustained run")
    parser.add_argument("--backlog", type=int, default=200_000, help="messages of the drain run")
    parser.add_argument(
        "--rules",
        action="store_true",
        help="the sustained figure without, then with, one preprocess plugin and one rule (no drain)",
    )
    parser.add_argument("--warmup", type=int, default=2_000, help="--rules: messages before each measured run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from tests.brokers import mosquitto  # the private-broker helper the tests use

    # No broker authentication here: it only costs at connect time, and the bench measures the flow.
    with mosquitto(dynsec=False, max_queued_messages=0, max_inflight_messages=0) as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        env = bench_env(url)
        fresh_database(DATABASE_URL)
        setup_django(env)
        from datetime import UTC, datetime, timedelta

        from sdk.simulator import provision_devices, save_credentials

        credentials = provision_devices(args.devices, prefix="bench-")
        ids = [c.id for c in credentials]
        credentials_file = Path(env["FLUXIOT_VAR_DIR"]) / "credentials.json"
        save_credentials(credentials_file, credentials)
        print(f"broker {url}, {args.devices} devices, database {DATABASE_URL.rsplit('/', 1)[1]}")

        # Baseline 1: bare publisher -> Mosquitto -> bare subscriber.
        client, done, got = bare_subscriber(broker.host, broker.port, args.count, "bench-bare")
        simulate(credentials_file, args.devices, url, args.count, env)
        done.wait(120)
        client.loop_stop()
        client.disconnect()
        bare_rate = got["n"] / (got["last"] - got["first"])
        print(f"baseline  bare paho QoS 1 pub->sub: {got['n']:,} msgs, {bare_rate:,.0f} msg/s")

        if args.rules:
            rules_comparison(credentials_file, ids, args, url, env, bare_rate)
            return

        # Figure 1: the platform, sustained.
        with worker(env), bridge(env):
            time.sleep(3)  # bridge subscribed, worker ready
            run = sustained(credentials_file, ids, args.devices, args.count, url, env)
            rate = run["rate"]
            report_sustained("sustained", run, args.count, bare_rate)
            print(
                "          target >= 5,000 msg/s and >= 50% of bare: "
                + ("ok" if rate >= 5000 and rate >= bare_rate / 2 else "MISSED")
            )

        # Figure 2: drain a backlog queued while the bridge was stopped.
        with worker(env):
            with bridge(env):
                time.sleep(3)  # the bridge's persistent session and subscriptions exist
            since = datetime.now(UTC) - timedelta(seconds=1)
            simulate(credentials_file, args.devices, url, args.backlog, env)
            start = time.time()
            with bridge(env):
                rows, last_commit = wait_rows(args.backlog, since, timeout=600, device_ids=ids)
            drain_rate = rows / (last_commit - start)
            print(f"platform  drain: {rows:,}/{args.backlog:,} msgs committed, {drain_rate:,.0f} msg/s")

        # Baseline 2: bare paho + COPY draining the same backlog.
        drainer = CopyDrainer(broker.host, broker.port, args.backlog)
        drainer.register()
        simulate(credentials_file, args.devices, url, args.backlog, env)
        copy_rate = drainer.drain()
        print(f"baseline  bare paho + COPY drain: {drainer.done_count:,} msgs, {copy_rate:,.0f} msg/s")
        print(
            f"          drain target >= 15,000 msg/s: {'ok' if drain_rate >= 15000 else 'MISSED'} "
            f"({drain_rate / copy_rate:.0%} of the bare COPY drain)"
        )


if __name__ == "__main__":
    main()
