"""The WebSocket API end to end, every part real: a device publishes telemetry over MQTT to a private
Mosquitto with dynamic security, the bridge and the Celery worker ingest it, the worker's event
travels through Redis to the web process (Daphne, ``manage.py serve``), and a WebSocket client over a
real TCP socket (tests/live/wsclient.py) receives it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.e2e.platform import Platform, device
from tests.e2e.servers import call
from tests.factories import UserFactory
from tests.live.conftest import token_for
from tests.live.wsclient import ConnectionClosed, HandshakeError, WebSocket

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


@pytest.fixture
def web(dynsec_settings: Any, tmp_path: Any, settings: Any) -> Iterator[Platform]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # what the server uses
    platform = Platform(dynsec_settings, tmp_path)
    try:
        platform.start("worker")
        platform.start("bridge")
        platform.start("web")
        yield platform
    finally:
        platform.stop_all()


async def next_event(client: WebSocket, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        frame = await client.recv_json(timeout=max(0.1, deadline - time.monotonic()))
        if frame["type"] == "event":
            return frame


def test_telemetry_published_over_mqtt_reaches_a_websocket_client(web):
    UserFactory(username="watcher", password="watcher-password", roles=["Viewer"])
    status, body = call(
        "POST", f"{web.base_url}/api/v1/auth/token/", {"username": "watcher", "password": "watcher-password"}
    )
    assert status == 200, body
    token = body["access"]
    expired = token_for(UserFactory(username="late", roles=["Viewer"]), lifetime=timedelta(seconds=-5))
    base = f"ws://127.0.0.1:{web.web_port}/ws/events/"

    with device(web.broker, "e2e-live") as dev:

        async def scenario() -> None:
            # A token in the query; the subscription names the device and the event type.
            client = await WebSocket.connect(f"{base}?token={token}")
            await client.send_json(
                {
                    "type": "subscribe",
                    "id": "e2e",
                    "filters": {"devices": ["e2e-live"], "event_types": ["telemetry.received"]},
                }
            )
            assert (await client.recv_json(timeout=10))["type"] == "subscribed"

            # A second client authenticating with its first message, subscribed to everything.
            second = await WebSocket.connect(base)
            await second.send_json({"type": "auth", "token": token})
            assert await second.recv_json(timeout=10) == {"type": "authenticated", "user": "watcher"}
            await second.send_json({"type": "subscribe", "id": "all"})
            assert (await second.recv_json(timeout=10))["type"] == "subscribed"

            sent = int(time.time() * 1000)
            dev.publish("telemetry", {"temperature": 21.5, "ts": sent}).wait_for_publish(10)
            frame = await next_event(client, 30)
            assert frame["subscriptions"] == ["e2e"]
            assert frame["event"]["type"] == "telemetry.received"
            assert frame["event"]["data"]["devices"]["e2e-live"]["values"]["temperature"] == {
                "ts": sent,
                "value": 21.5,
            }
            seen = set()
            while "telemetry.received" not in seen:  # the device also came online: status events first
                seen.add((await next_event(second, 30))["event"]["type"])

            await client.send_json({"type": "ping"})
            while (await client.recv_json(timeout=10))["type"] != "pong":
                pass
            await client.close()
            assert client.close_code == 1000
            await second.close()

            # Refusals over the real socket: an expired token, and a handshake from a foreign origin.
            refused = await WebSocket.connect(f"{base}?token={expired}")
            with pytest.raises(ConnectionClosed) as closed:
                await refused.recv(timeout=10)
            assert (closed.value.code, closed.value.reason) == (4401, "token expired")
            with pytest.raises(HandshakeError) as denied:
                await WebSocket.connect(f"{base}?token={token}", origin="http://evil.example")
            assert denied.value.status == 403

        asyncio.run(scenario())
