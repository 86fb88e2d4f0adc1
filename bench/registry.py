"""Benchmark of the device registry on PostgreSQL, with two figures:

1. the filtered device list (``in_group`` + ``tags`` + ``status``) through the real HTTP stack:
   ``manage.py serve`` (Daphne) as a subprocess, JWT auth, a keep-alive client; target p95 < 50 ms;
2. device secret checks (``devices.services.verify_device_secret``) in this process; target > 5,000/s.

It uses its own database (``BENCH_DATABASE_URL``, default ``fluxiot_bench`` on 127.0.0.1), created,
migrated and seeded (1,000 groups, 100,000 devices) when needed; ``--reseed`` seeds again,
``--explain`` also prints EXPLAIN ANALYZE of the list request's queries.

    .venv/bin/python bench/registry.py [--reseed] [--explain]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/fluxiot_bench"

SEED = 20240601
ROOTS, CHILDREN, GRANDCHILDREN = 10, 9, 10  # 10 + 90 + 900 = 1,000 groups
GROUPS = ROOTS + ROOTS * CHILDREN + ROOTS * CHILDREN * GRANDCHILDREN
DEVICES = 100_000
BATCH_SIZE = 2_000
TAG_NAMES = [f"tag{i:02d}" for i in range(50)]
STATUS_WEIGHTS = {"online": 60, "offline": 25, "fault": 5, "maintenance": 10}
TYPE_WEIGHTS = {"sensor": 50, "camera": 10, "actuator": 15, "gateway": 10, "industrial": 10, "custom": 5}
PROTOCOL_WEIGHTS = {"mqtt": 60, "http": 20, "coap": 10, "modbus": 5, "opcua": 5}

LIST_WARMUP, LIST_REQUESTS, PAGE_SIZE = 20, 500, 50
VERIFY_DEVICES, VERIFY_MAX_CALLS, VERIFY_MAX_SECONDS = 1_000, 30_000, 5.0
BENCH_USER = "bench-viewer"


# --- Environment and database --------------------------------------------------------------------


def bench_env(database_url: str) -> dict[str, str]:
    """The environment of this process and of the web server: production settings, bench database."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="fluxiot.settings",
        DATABASE_URL=database_url,
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="0",
        REDIS_URL="redis://127.0.0.1:6379/2",
        API_THROTTLE_USER="1000000/min",
        ALLOWED_HOSTS="127.0.0.1,localhost",
    )
    return env


def ensure_database(database_url: str) -> None:
    """Create the bench database if it does not exist (through the ``postgres`` maintenance db)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(database_url)
    name = params["dbname"]
    with psycopg.connect(**{**params, "dbname": "postgres"}, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}")


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    logging.getLogger("devices.services").setLevel(logging.WARNING)  # not a line per activation
    call_command("migrate", interactive=False, verbosity=0)


# --- Seeding -------------------------------------------------------------------------------------


def is_seeded() -> bool:
    from devices.models import Device, DeviceGroup

    return DeviceGroup.objects.count() == GROUPS and Device.objects.count() == DEVICES


def truncate_registry() -> None:
    from django.db import connection

    from devices.models import Device, DeviceCredential, DeviceGroup, DeviceStatusChange

    tables = ", ".join(m._meta.db_table for m in (DeviceStatusChange, DeviceCredential, Device, DeviceGroup))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def seed_groups() -> list[int]:
    """The group tree, one bulk insert per level; paths are ``<parent path><own pk>/`` as in
    ``DeviceGroup.save``. Returns every group's pk."""
    from devices.models import DeviceGroup

    def create_level(specs: list[tuple[str, DeviceGroup | None]]) -> list[DeviceGroup]:
        groups = DeviceGroup.objects.bulk_create([DeviceGroup(name=name, parent=parent) for name, parent in specs])
        for group in groups:
            group.path = f"{group.parent.path if group.parent else '/'}{group.pk}/"
        DeviceGroup.objects.bulk_update(groups, ["path"])
        return groups

    roots = create_level([(f"Region {r:02d}", None) for r in range(ROOTS)])
    sites = create_level([(f"Site {i:02d}", root) for root in roots for i in range(CHILDREN)])
    lines = create_level([(f"Line {i:02d}", site) for site in sites for i in range(GRANDCHILDREN)])
    return [g.pk for g in roots + sites + lines]


def device_rows(group_ids: list[int], rng: random.Random) -> Iterator[Any]:
    from django.utils import timezone

    from devices.models import Device

    now = timezone.now()
    types, type_weights = list(TYPE_WEIGHTS), list(TYPE_WEIGHTS.values())
    statuses, status_weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    protocols, protocol_weights = list(PROTOCOL_WEIGHTS), list(PROTOCOL_WEIGHTS.values())
    for n in range(DEVICES):
        device_type = rng.choices(types, type_weights)[0]
        status = rng.choices(statuses, status_weights)[0]
        yield Device(
            id=f"bench-{n:06d}",
            name=f"{device_type} {n}",
            device_type=device_type,
            custom_type="weather-station" if device_type == "custom" else "",
            protocol=rng.choices(protocols, protocol_weights)[0],
            status=status,
            tags=rng.sample(TAG_NAMES, rng.randint(1, 3)),
            group_id=rng.choice(group_ids),
            metadata={"firmware": f"1.{rng.randint(0, 9)}.{rng.randint(0, 20)}", "floor": n % 12},
            last_seen_at=now - timedelta(seconds=rng.randint(0, 7 * 86400)) if status != "offline" else None,
        )


def seed() -> float:
    """Empty the registry tables and fill them again; returns the seconds it took."""
    from django.db import connection, transaction

    from devices.models import Device

    started = time.perf_counter()
    rng = random.Random(SEED)
    truncate_registry()
    with transaction.atomic():
        group_ids = seed_groups()
        rows = device_rows(group_ids, rng)
        while batch := list(islice(rows, BATCH_SIZE)):
            Device.objects.bulk_create(batch, batch_size=BATCH_SIZE)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE devices_devicegroup")
        cursor.execute("VACUUM ANALYZE devices_device")
    return time.perf_counter() - started


# --- Figure 1: the filtered device list over HTTP ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(log: IO[bytes], lines: int = 40) -> str:
    log.seek(0)
    return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])


@contextmanager
def web_server(env: dict[str, str], timeout: float = 30) -> Iterator[int]:
    """Run ``manage.py serve`` on a free 127.0.0.1 port until the block ends; yields the port once
    /healthz answers. The process is always stopped (terminate, then kill)."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout
            while not healthy(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the web server did not start:\n{tail(log)}")
                time.sleep(0.2)
            yield port
        except BaseException:
            print(f"web server log (last lines):\n{tail(log)}", file=sys.stderr)
            raise
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def bench_user_credentials() -> tuple[str, str]:
    """A user with the Viewer role and a fresh password."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from fluxiot.roles import VIEWER

    password = secrets.token_urlsafe(16)
    user, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    user.set_password(password)
    user.save()
    user.groups.add(Group.objects.get(name=VIEWER))
    return BENCH_USER, password


def list_queries(count: int, rng: random.Random) -> list[str]:
    """Query strings for the device list: a mid-level group with its subtree, one tag, online;
    only combinations that have devices, so every page has results."""
    from devices.models import Device, DeviceGroup

    sites = list(DeviceGroup.objects.filter(parent__isnull=False, parent__parent__isnull=True))
    queries: list[str] = []
    while len(queries) < count:
        site, tag = rng.choice(sites), rng.choice(TAG_NAMES)
        matching = Device.objects.filter(status="online", tags__has_any=[tag], group__path__startswith=site.path)
        if matching.exists():
            params = {"in_group": site.pk, "tags": tag, "status": "online", "page_size": PAGE_SIZE}
            queries.append(f"/api/v1/devices/?{urlencode(params)}")
    return queries


class Client:
    """A keep-alive JSON client on one connection (reconnecting only if the server closes it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.token = ""
        self.reconnects = 0
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt == 2:
                    raise
                self.conn.close()
                self.reconnects += 1
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def get_list(client: Client, path: str) -> float:
    """One list request; returns its latency in ms after checking the answer."""
    started = time.perf_counter()
    status, raw = client.request("GET", path)
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {raw[:300]!r}")
    page = json.loads(raw)
    if not page["results"] or page["count"] < 1:
        raise RuntimeError(f"GET {path}: no results")
    return elapsed


def figure_list(env: dict[str, str], queries: list[str]) -> None:
    username, password = bench_user_credentials()
    with web_server(env) as port:
        client = Client(port)
        try:
            status, raw = client.request("POST", "/api/v1/auth/token/", {"username": username, "password": password})
            if status != 200:
                raise RuntimeError(f"token: {status} {raw[:300]!r}")
            client.token = json.loads(raw)["access"]
            for i in range(LIST_WARMUP):
                get_list(client, queries[i % len(queries)])
            started = time.perf_counter()
            latencies = [get_list(client, queries[i % len(queries)]) for i in range(LIST_REQUESTS)]
            wall = time.perf_counter() - started
        finally:
            client.close()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"Figure 1 - GET /api/v1/devices/?in_group&tags&status (page_size={PAGE_SIZE}, {len(queries)} variants, "
        f"keep-alive, reconnects {client.reconnects}): count={len(latencies)} p50={cuts[49]:.1f}ms "
        f"p95={cuts[94]:.1f}ms p99={cuts[98]:.1f}ms max={max(latencies):.1f}ms "
        f"{len(latencies) / wall:.0f} req/s  (target p95 < 50 ms: {'ok' if cuts[94] < 50 else 'MISSED'})"
    )


def explain_list(query: str) -> None:
    """Run one list request in-process and print EXPLAIN ANALYZE of its registry queries."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIRequestFactory, force_authenticate

    from devices.api.views import DeviceViewSet

    request = APIRequestFactory().get(query, HTTP_HOST="127.0.0.1")
    force_authenticate(request, user=get_user_model().objects.get(username=BENCH_USER))
    view = DeviceViewSet.as_view({"get": "list"})
    with CaptureQueriesContext(connection) as captured:
        response = view(request)
        response.render()
    print(f"\nEXPLAIN of {query} ({len(captured.captured_queries)} queries, status {response.status_code})")
    for entry in captured.captured_queries:
        print(f"\n-- {entry['time']}s: {entry['sql']}")
        if "devices_device" in entry["sql"] and entry["sql"].lstrip().upper().startswith("SELECT"):
            with connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {entry['sql']}")
                print("\n".join(row[0] for row in cursor.fetchall()))


# --- Figure 2: device secret checks --------------------------------------------------------------


def activate_devices(rng: random.Random) -> list[tuple[str, str]]:
    """Put ~1,000 devices back to registered and activate them; returns (device id, secret) pairs."""
    from devices import services
    from devices.models import Device, DeviceCredential

    ids = [f"bench-{n:06d}" for n in rng.sample(range(DEVICES), VERIFY_DEVICES)]
    DeviceCredential.objects.filter(device_id__in=ids).delete()
    Device.objects.filter(pk__in=ids).update(activation_state="registered", activated_at=None)
    return [(device_id, services.activate_device(device_id, actor=None)) for device_id in ids]


def figure_verify(credentials: list[tuple[str, str]], cache_seconds: float) -> None:
    """Secret checks with the in-process cache on (the default, 5 s) or off (0: every check is a
    database query; the figure then says what one PostgreSQL round trip costs here)."""
    from django.conf import settings

    from devices.services import _verified, verify_device_secret

    settings.DEVICE_AUTH_CACHE_SECONDS = cache_seconds
    _verified.clear()
    wrong = secrets.token_urlsafe(32)
    calls = errors = 0
    started = time.perf_counter()
    deadline = started + VERIFY_MAX_SECONDS
    while calls < VERIFY_MAX_CALLS and time.perf_counter() < deadline:
        device_id, secret = credentials[calls % len(credentials)]
        expected = calls % 10 != 9  # every tenth check uses a wrong secret
        if verify_device_secret(device_id, secret if expected else wrong) is not expected:
            errors += 1
        calls += 1
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{errors} of {calls} secret checks gave the wrong answer")
    rate = calls / elapsed
    print(
        f"Figure 2 - verify_device_secret, cache {cache_seconds:g}s, one process, {len(credentials)} devices, "
        "10% wrong secrets: "
        f"{calls} checks in {elapsed:.2f}s = {rate:,.0f} checks/s  (target > 5,000/s: "
        f"{'ok' if rate > 5000 else 'MISSED'})"
    )


# --- Main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reseed", action="store_true", help="empty and seed the bench database again")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the list request")
    args = parser.parse_args()

    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    env = bench_env(database_url)
    ensure_database(database_url)
    setup_django(env)

    if args.reseed or not is_seeded():
        print(f"seeding {GROUPS:,} groups and {DEVICES:,} devices ...")
        print(f"seeded in {seed():.1f}s")
    else:
        print(f"already seeded ({GROUPS:,} groups, {DEVICES:,} devices); --reseed to seed again")

    rng = random.Random(SEED + 1)
    queries = list_queries(100, rng)
    figure_list(env, queries)

    started = time.perf_counter()
    credentials = activate_devices(rng)
    print(f"activated {len(credentials)} devices in {time.perf_counter() - started:.1f}s")
    figure_verify(credentials, cache_seconds=5.0)
    figure_verify(credentials, cache_seconds=0)

    if args.explain:
        explain_list(queries[0])


if __name__ == "__main__":
    main()
