"""Test settings: the real PostgreSQL and Redis of the machine unless the environment says otherwise."""

import os
import secrets

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fluxiot")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
# A throwaway key per run; exported so servers the tests start share it.
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
# This run's own Celery queue (runs on one machine share the Redis server); exported for the
# workers and bridges the tests start.
os.environ.setdefault("CELERY_QUEUE", f"fluxiot-test-{os.getpid()}")

from fluxiot.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# One test database per run, so concurrent runs on one machine (a developer and CI) never collide.
DATABASES["default"]["TEST"] = {"NAME": f"test_fluxiot_{os.getpid()}"}  # noqa: F405
# Per-run Redis namespaces: concurrent runs on one machine share the Redis server.
CACHES["default"]["KEY_PREFIX"] = f"fluxiot-test-{os.getpid()}"  # noqa: F405
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"fluxiot-test-{os.getpid()}"  # noqa: F405

# The test process is many servers at once (live server threads, in-process bridges, WebSocket
# communicators, thread pools) and threads that end keep their connection out of the pool until it is
# reclaimed: a larger pool than a production process needs. Processes the tests start keep their own.
if "pool" in DATABASES["default"].get("OPTIONS", {}):  # noqa: F405
    DATABASES["default"]["OPTIONS"]["pool"]["max_size"] = 40  # noqa: F405

# The embedded mode's database, for tests of code that differs by backend (tag lookups, migrations).
DATABASES["embedded"] = {  # noqa: F405
    "ENGINE": "django_prometheus.db.backends.sqlite3",
    "NAME": ":memory:",
    "TEST": {"NAME": ":memory:"},
}
