"""Start the platform's own processes for end-to-end tests: bounded in time, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.brokers import free_port  # noqa: F401 (re-exported for the e2e tests)

ROOT = Path(__file__).resolve().parents[2]


def celery_worker_command(concurrency: int | str = 1, loglevel: str = "INFO") -> list[str]:
    """A Celery worker for the platform's queue, without the cluster chatter tests don't need."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "fluxiot",
        "worker",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def stop_process(proc: subprocess.Popen, timeout: float = 10, group: bool = False) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` (its whole process group with
    ``group``, e.g. a Celery worker and its pool)."""
    if proc.poll() is not None:
        return

    def send(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(5)


def manage(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr
    return result


@contextmanager
def web_process(env: dict, port: int, timeout: float = 30, extra_args: tuple[str, ...] = ()):
    """Run ``manage.py serve`` until the block ends; yields the base URL once /healthz answers."""
    log = open(Path(env.get("FLUXIOT_VAR_DIR", "/tmp")) / f"serve-{port}.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"web process did not start:\n{log.read()}")
            time.sleep(0.2)
        yield base
    finally:
        stop_process(process)
        log.close()


def base_env(**overrides: str) -> dict:
    """The environment of a platform process: the production settings module, configured only by
    what the test passes (nothing leaks in from the test run's own settings)."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY"}}
    env["DJANGO_SETTINGS_MODULE"] = "fluxiot.settings"
    env.update(overrides)
    return env


def call(method: str, url: str, body=None, token: str | None = None, headers: dict | None = None):
    """One JSON request; returns (status, parsed body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw.decode(errors="replace")
