"""What the platform benchmarks share: the environment of the processes they start, a fresh
database, Django set up on it, and polling. Each benchmark keeps its own database and Redis database
(``BENCH_DATABASE_URL``, ``BENCH_REDIS_URL``) so they never disturb the tests or each other."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def platform_env(
    database_url: str, redis_url: str, mqtt_url: str, var_dir: Path | str, **overrides: str
) -> dict[str, str]:
    """This process's environment with production settings (``DEBUG`` off) pointed at the bench's
    database, Redis database and broker; ``overrides`` last."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="fluxiot.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MQTT_URL=mqtt_url,
        SECRET_KEY=os.environ.get("SECRET_KEY") or secrets.token_urlsafe(50),
        DEBUG="0",
        LOG_LEVEL="WARNING",
        FLUXIOT_VAR_DIR=str(var_dir),
    )
    env.update(overrides)
    return env


def fresh_database(database_url: str) -> None:
    """Drop and create the bench's database (connections to it are cut)."""
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(env: dict[str, str]) -> None:
    """Django in this process on ``env``: migrated, and the bench's Redis database emptied."""
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def process(
    args: list[str], env: dict[str, str], name: str, ready: Callable[[str], bool]
) -> Iterator[subprocess.Popen]:
    """Run a platform process (its own session, so its children stop with it) until the block ends,
    its output in ``FLUXIOT_VAR_DIR/<name>.log``; yields it once ``ready(log text)`` holds."""
    from tests.e2e.servers import stop_process

    path = Path(env["FLUXIOT_VAR_DIR"]) / f"{name}.log"
    log = open(path, "wb")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def started() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
            return ready(path.read_text(errors="replace"))

        wait_for(started, 60, f"{name} ready")
        yield proc
    finally:
        stop_process(proc, timeout=20, group=True)
        log.close()
