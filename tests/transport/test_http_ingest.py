"""HTTP ingest through the real stack: device secret as bearer token, same validation as MQTT.

The suite runs Celery against Redis, so a 202 means the batch is queued; these tests run the queued
batch the way a worker does (telemetry.services.ingest_batch) by reading it back from the broker."""

import json

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection

from devices import services as device_services
from fluxiot.celery import app as celery_app
from telemetry.models import LatestValue
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def device_secret():
    device = DeviceFactory(id="http-1")
    return device_services.activate_device(device, actor=None)


@pytest.fixture
def worker():
    """A real Celery worker thread consuming the Redis queue of this test run."""
    # Celery's Django fixup closes the socket of every connection the starting thread holds (meant
    # for connections a forked child inherited) and hands it back: with a pool, a broken connection
    # would go back into the pool. A worker process starts without one; so does this thread.
    connection.close()
    with start_worker(celery_app, perform_ping_check=False, pool="solo", loglevel="WARNING", shutdown_timeout=10):
        yield


def post(client, path, body, secret):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")


def test_telemetry_over_http_is_accepted_and_stored(client, device_secret, worker):
    import time

    response = post(client, "/api/v1/devices/http-1/telemetry/", {"temperature": 19.5}, device_secret)
    assert response.status_code == 202
    attributes = post(client, "/api/v1/devices/http-1/attributes/", {"firmware": "2.0"}, device_secret)
    assert attributes.status_code == 202
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not LatestValue.objects.filter(device_id="http-1").exists():
        time.sleep(0.1)
    assert LatestValue.objects.get(device_id="http-1", key="temperature").value == 19.5
    from devices.models import Device

    while time.monotonic() < deadline and not Device.objects.get(pk="http-1").attributes:
        time.sleep(0.1)
    assert Device.objects.get(pk="http-1").attributes == {"firmware": "2.0"}


def test_wrong_or_missing_secrets_are_401(client, device_secret):
    other = DeviceFactory(id="http-2")
    other_secret = device_services.activate_device(other, actor=None)
    for headers in [{}, {"HTTP_AUTHORIZATION": "Bearer nope"}, {"HTTP_AUTHORIZATION": f"Basic {device_secret}"}]:
        response = client.post("/api/v1/devices/http-1/telemetry/", b"{}", content_type="application/json", **headers)
        assert response.status_code == 401
    assert post(client, "/api/v1/devices/http-1/telemetry/", {"t": 1}, other_secret).status_code == 401
    assert post(client, "/api/v1/devices/ghost/telemetry/", {"t": 1}, device_secret).status_code == 401


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{oops", "malformed_json"),
        (b"[1]", "not_an_object"),
        (b'{"t": null}', "unsupported_value"),
        (b'{"t": 1, "ts": 99999999999999}', "future_timestamp"),
    ],
)
def test_bad_payloads_are_400_with_the_reason(client, device_secret, body, reason):
    response = post(client, "/api/v1/devices/http-1/telemetry/", body, device_secret)
    assert response.status_code == 400 and response.json()["reason"] == reason


def test_oversize_payload_is_413(client, device_secret, settings):
    settings.INGEST_MAX_PAYLOAD_BYTES = 100
    response = post(client, "/api/v1/devices/http-1/telemetry/", {"t": "x" * 200}, device_secret)
    assert response.status_code == 413


def test_bad_attributes_are_400(client, device_secret):
    assert post(client, "/api/v1/devices/http-1/attributes/", b"[]", device_secret).status_code == 400
