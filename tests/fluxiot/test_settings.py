"""Settings come from the environment; these run Django in a fresh process to see it boot."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _django(env_overrides: dict, code: str = "import django; django.setup()") -> subprocess.CompletedProcess:
    from tests.e2e.servers import base_env

    env = base_env(**env_overrides)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_secret_key_is_required_when_debug_is_off(tmp_path):
    result = _django({"DEBUG": "0", "FLUXIOT_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_secret_key_is_generated_once_in_debug(tmp_path):
    code = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
    first = _django({"DEBUG": "1", "FLUXIOT_VAR_DIR": str(tmp_path)}, code)
    second = _django({"DEBUG": "1", "FLUXIOT_VAR_DIR": str(tmp_path)}, code)
    assert first.returncode == 0, first.stderr
    key = (tmp_path / "secret_key").read_text()
    assert first.stdout.strip() == second.stdout.strip() == key and len(key) >= 50
    assert oct((tmp_path / "secret_key").stat().st_mode)[-3:] == "600"


def test_embedded_defaults_and_production_switches(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], "
        "s.CELERY_TASK_ALWAYS_EAGER, s.CACHES['default']['BACKEND'])"
    )
    embedded = _django({"DEBUG": "1", "FLUXIOT_VAR_DIR": str(tmp_path)}, code)
    assert embedded.stdout.split() == [
        "django_prometheus.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
        "True",
        "django.core.cache.backends.locmem.LocMemCache",
    ]
    production = _django(
        {
            "SECRET_KEY": "x" * 50,
            "FLUXIOT_VAR_DIR": str(tmp_path),
            "DATABASE_URL": "postgres://u@127.0.0.1:5432/db",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        },
        code,
    )
    assert production.stdout.split() == [
        "django_prometheus.db.backends.postgresql",
        "channels_redis.core.RedisChannelLayer",
        "False",
        "django.core.cache.backends.redis.RedisCache",
    ]
