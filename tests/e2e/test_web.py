"""The web process as users meet it: Daphne serving the admin and the API over real HTTP."""

import http.cookiejar
import re
import time
import urllib.parse
import urllib.request

import pytest
from django.db import connection

from devices import services
from tests.e2e.servers import base_env, call, free_port, manage, web_process
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = pytest.mark.slow


def _token(base, username, password):
    status, body = call("POST", f"{base}/api/v1/auth/token/", {"username": username, "password": password})
    assert status == 200, body
    return body["access"]


def _admin_login(base, username, password):
    """Log in to the admin like a browser: GET the form for the CSRF cookie, POST it back."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login_url = f"{base}/admin/login/?next=/admin/"
    opener.open(login_url, timeout=10).read()
    csrf = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": csrf, "next": "/admin/"}
    ).encode()
    request = urllib.request.Request(login_url, data=form, headers={"Referer": login_url})
    with opener.open(request, timeout=10) as response:
        return response.geturl(), response.read().decode(), opener


def test_embedded_mode_from_nothing(tmp_path):
    """What `make run` does: SQLite under var/, migrate, demo data with printed credentials, serve."""
    env = base_env(DEBUG="1", FLUXIOT_VAR_DIR=str(tmp_path))
    manage(env, "migrate", "--noinput")
    seeded = manage(env, "seed_demo").stdout
    username, password = re.search(r"Admin login: (\S+) / (\S+)", seeded).groups()
    assert "Demo scenes: 2 created" in seeded and "Demo alarm rules: 2 created" in seeded
    assert (tmp_path / "fluxiot.sqlite3").exists() and (tmp_path / "secret_key").exists()

    env["EMBEDDED_BROKER_PORT"] = str(free_port())
    with web_process(env, free_port(), extra_args=("--simulate",)) as base:
        status, ready = call("GET", f"{base}/readyz")
        assert status == 200 and ready["checks"] == {"database": "ok"}
        token = _token(base, username, password)
        status, page = call("GET", f"{base}/api/v1/devices/?tags=lab&ordering=id", token=token)
        assert status == 200 and [d["id"] for d in page["results"]] == ["fan_01", "temp_sensor_01"]
        status, groups = call("GET", f"{base}/api/v1/device-groups/?root=true", token=token)
        hq = next(g for g in groups["results"] if g["name"] == "Headquarters")
        status, tree = call("GET", f"{base}/api/v1/device-groups/{hq['id']}/devices/?descendants=true", token=token)
        assert status == 200 and tree["count"] == 4
        status, activated = call("POST", f"{base}/api/v1/devices/camera_01/activate/", token=token)
        assert status == 200 and activated["secret"]

        # The simulated demo devices publish through the embedded broker and bridge.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, metrics = call("GET", f"{base}/api/v1/devices/temp_sensor_01/metrics/", token=token)
            if metrics["values"].get("temperature"):
                break
            time.sleep(0.5)
        assert isinstance(metrics["values"]["temperature"]["value"], float)
        assert call("GET", f"{base}/api/v1/devices/temp_sensor_01/", token=token)[1]["status"] == "online"

        # Commands go out through the embedded broker to the simulated devices, whose replies come
        # back through the bridge thread.
        deadline = time.monotonic() + 30
        while call("GET", f"{base}/api/v1/devices/fan_01/", token=token)[1]["status"] != "online":
            assert time.monotonic() < deadline, "fan_01 never came online"
            time.sleep(0.5)
        status, command = call(
            "POST",
            f"{base}/api/v1/devices/temp_sensor_01/commands/",
            {"type": "read_value", "params": {"key": "temperature"}},
            token=token,
        )
        assert status == 201 and command["status"] == "sent", command
        status, batch = call(
            "POST",
            f"{base}/api/v1/devices/batch/commands/",
            {"type": "set_state", "params": {"state": True}, "targets": {"tags": ["hvac"]}},
            token=token,
        )
        assert status == 201 and batch["total"] == 2, batch
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = call("GET", f"{base}/api/v1/commands/{command['id']}/", token=token)[1]
            progress = call("GET", f"{base}/api/v1/command-batches/{batch['id']}/", token=token)[1]
            if done["status"] == "success" and progress["counts"]["success"] == 2:
                break
            time.sleep(0.5)
        assert done["status"] == "success" and isinstance(done["result"]["value"], float), done
        assert progress["counts"]["success"] == 2, progress

        final_url, html, opener = _admin_login(base, username, password)
        assert final_url.endswith("/admin/")
        assert "Devices by status (7 in all)" in html
        with opener.open(f"{base}/admin/devices/device/temp_sensor_01/change/", timeout=10) as page:
            assert 'id="live-telemetry"' in page.read().decode()

        with urllib.request.urlopen(f"{base}/static/admin/css/base.css", timeout=10) as css:
            assert css.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as metrics:
            assert b"django_http_requests_total_by_method_total" in metrics.read()


@pytest.mark.django_db(transaction=True)
def test_production_mode_on_postgresql_and_redis(tmp_path, settings):
    """The same process against the machine's PostgreSQL and Redis (the test database)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # what the server uses
    db = connection.settings_dict
    database_url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    UserFactory(username="integrator", roles=["Viewer"])
    group = DeviceGroupFactory(name="site")
    DeviceFactory(id="pg-1", group=DeviceGroupFactory(name="floor", parent=group), tags=["lab"])
    DeviceFactory(id="pg-2", tags=["lab"])
    env = base_env(
        DEBUG="0",
        SECRET_KEY="e2e-" + "k" * 50,
        DATABASE_URL=database_url,
        REDIS_URL="redis://127.0.0.1:6379/1",
        FLUXIOT_VAR_DIR=str(tmp_path),
    )
    with web_process(env, free_port()) as base:
        status, ready = call("GET", f"{base}/readyz")
        assert status == 200 and ready["checks"] == {"database": "ok", "redis": "ok"}
        token = _token(base, "integrator", "pw-for-tests")
        status, page = call("GET", f"{base}/api/v1/devices/?in_group={group.pk}&tags=lab", token=token)
        assert status == 200 and [d["id"] for d in page["results"]] == ["pg-1"]
        assert call("POST", f"{base}/api/v1/devices/pg-1/activate/", token=token)[0] == 403
        assert call("GET", f"{base}/api/v1/devices/")[0] == 401
        status, missing = call("GET", f"{base}/api/v1/nothing-here/", token=token)
        assert status == 404 and missing == {"detail": "Not found."}
    services.activate_device("pg-2", actor=None)  # the database is still ours after the process ends
