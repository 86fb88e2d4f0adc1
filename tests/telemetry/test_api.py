import json
import time
from datetime import UTC, datetime

import pytest

from devices import services as device_services
from telemetry import services
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored():
    device = DeviceFactory(id="t-1")
    device_services.activate_device(device, actor=None)
    base = int(time.time() * 1000) - 60_000
    services.ingest_batch(
        [
            [
                "devices/t-1/telemetry",
                json.dumps({"temp": 20 + n, "on": n % 2 == 0, "ts": base + n * 1000}).encode(),
                base,
            ]
            for n in range(10)
        ]
    )
    return base


def test_latest_values(viewer_client, stored):
    data = viewer_client.get("/api/v1/devices/t-1/metrics/").json()
    assert data["device"] == "t-1" and data["last_seen_at"]
    assert data["values"]["temp"]["value"] == 29 and data["values"]["on"]["value"] is False


def test_range_query(viewer_client, stored):
    start = datetime.fromtimestamp((stored + 2000) / 1000, UTC).isoformat().replace("+00:00", "Z")
    end = datetime.fromtimestamp((stored + 5000) / 1000, UTC).isoformat().replace("+00:00", "Z")
    data = viewer_client.get(f"/api/v1/telemetry/?device=t-1&key=temp&start={start}&end={end}").json()
    assert [p["value"] for p in data["points"]] == [22, 23, 24] and data["truncated"] is False
    limited = viewer_client.get("/api/v1/telemetry/?device=t-1&key=on&limit=3").json()
    assert [p["value"] for p in limited["points"]] == [True, False, True] and limited["truncated"] is True


def test_range_query_bad_input(viewer_client, stored):
    for query in [
        "",
        "device=t-1",
        "device=t-1&key=temp&start=nope",
        "device=t-1&key=temp&limit=0",
        "device=t-1&key=temp&start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",
    ]:
        assert viewer_client.get(f"/api/v1/telemetry/?{query}").status_code == 400, query
    assert viewer_client.get("/api/v1/telemetry/?device=ghost&key=temp").status_code == 404
    assert viewer_client.get("/api/v1/devices/ghost/metrics/").status_code == 404


def test_reads_need_the_view_permission(api_client, nobody_client, stored):
    assert api_client.get("/api/v1/devices/t-1/metrics/").status_code == 401
    assert nobody_client.get("/api/v1/devices/t-1/metrics/").status_code == 403
    assert nobody_client.get("/api/v1/telemetry/?device=t-1&key=temp").status_code == 403
