"""Messages the server does not take, floods, and heartbeats."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from fluxiot import events
from live.hub import Hub
from tests.live.conftest import asynctest, closed, frames, subscribe, ws

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "a JSON object is expected"),
        ('"ping"', "a JSON object is expected"),
        ("{}", "no message type (subscribe, unsubscribe, ping)"),
        ('{"type": "dance"}', "unknown message type 'dance' (subscribe, unsubscribe, ping)"),
        ('{"type": 5}', "unknown message type '5' (subscribe, unsubscribe, ping)"),
        (b"\x00binary", "binary frames are not accepted: send JSON text"),
        (json.dumps({"type": "ping", "pad": "x" * 16 * 1024}), "message too large (more than 16384 bytes)"),
        (json.dumps({"type": "ping", "pad": "é" * 8200}), "message too large (more than 16384 bytes)"),
    ],
)
@asynctest
async def test_bad_messages_are_answered_and_the_connection_stays(viewer, frame, detail):
    async with ws(user=viewer) as c:
        if isinstance(frame, bytes):
            await c.send_to(bytes_data=frame)
        else:
            await c.send_to(text_data=frame)
        assert await c.receive_json_from(timeout=5) == {"type": "error", "code": "bad_message", "detail": detail}
        await c.send_json_to({"type": "ping"})
        assert await c.receive_json_from(timeout=5) == {"type": "pong"}


@asynctest
async def test_a_message_just_under_the_limit_is_taken(viewer):
    async with ws(user=viewer) as c:
        message = json.dumps({"type": "ping", "pad": ""})
        await c.send_to(text_data=message[:-2] + "x" * (16 * 1024 - len(message)) + '"}')
        assert await c.receive_json_from(timeout=5) == {"type": "pong"}


@asynctest
async def test_more_than_20_bad_messages_in_10_s_close_the_connection(viewer):
    async with ws(user=viewer) as c:
        for _ in range(21):
            await c.send_to(text_data="nonsense")
        errors = 0
        while True:
            output = await c.receive_output(timeout=5)
            if output["type"] == "websocket.close":
                break
            errors += 1
        assert errors == 20
        assert (output["code"], output["reason"]) == (4429, "more than 20 bad messages in 10 s")


@asynctest
async def test_bad_subscriptions_count_as_bad_messages(viewer):
    async with ws(user=viewer) as c:
        for _ in range(21):
            await c.send_json_to({"type": "subscribe", "id": "x", "rate": 0})
        assert await closed(c) == (4429, "more than 20 bad messages in 10 s")


@asynctest
async def test_more_than_50_subscribe_messages_in_10_s_close_the_connection(viewer):
    async with ws(user=viewer) as c:
        for _ in range(50):
            assert (await subscribe(c, "same"))["type"] == "subscribed"
        await c.send_json_to({"type": "subscribe", "id": "same"})
        assert await closed(c) == (4429, "more than 50 subscribe messages in 10 s")


@asynctest
async def test_more_than_20_active_subscriptions_close_the_connection(viewer):
    async with ws(user=viewer) as c:
        for n in range(20):
            assert (await subscribe(c, f"s{n}"))["type"] == "subscribed"
        assert (await subscribe(c, "s0"))["type"] == "subscribed"  # replacing one is fine
        await c.send_json_to({"type": "subscribe", "id": "one-too-many"})
        assert await closed(c) == (4429, "more than 20 active subscriptions")


@asynctest
async def test_flood_limits_follow_the_settings(viewer, settings):
    settings.LIVE_MAX_SUBSCRIBES_PER_WINDOW = 2
    async with ws(user=viewer) as c:
        await subscribe(c, "a")
        await subscribe(c, "b")
        await c.send_json_to({"type": "subscribe", "id": "c"})
        assert await closed(c) == (4429, "more than 2 subscribe messages in 10 s")


@asynctest
async def test_heartbeats_come_at_the_configured_interval(viewer, settings):
    settings.LIVE_HEARTBEAT_SECONDS = 0.2
    async with ws(user=viewer) as c:
        first = await c.receive_json_from(timeout=2)
        second = await c.receive_json_from(timeout=2)
    assert first["type"] == second["type"] == "heartbeat"
    gap = datetime.fromisoformat(second["time"]) - datetime.fromisoformat(first["time"])
    assert 0.1 < gap.total_seconds() < 1.0


@asynctest
async def test_no_heartbeat_before_authentication(db, settings):
    settings.LIVE_HEARTBEAT_SECONDS = 0.1
    settings.LIVE_AUTH_TIMEOUT_SECONDS = 0.5
    async with ws() as c:
        assert await closed(c, timeout=2) == (
            4401,
            "not authenticated within 0.5 s: send {type: auth, token} first",
        )


@asynctest
async def test_a_client_that_does_not_read_is_closed_when_its_queue_is_full(viewer, settings):
    settings.LIVE_MAX_QUEUED_FRAMES = 3
    async with ws(user=viewer) as c:
        await subscribe(c, "all")
        (consumer,) = Hub.current().members
        for _ in range(4):  # queued in one go, before the writer could send any
            consumer.send_raw('{"type": "pong"}')
        assert await closed(c) == (4503, "too slow: the send queue is full")


@asynctest
async def test_an_event_heard_on_both_bus_groups_is_delivered_once(viewer):
    async with ws(user=viewer) as c:
        await subscribe(c, "all")
        event = events.build_event(events.DEVICE_STATUS_CHANGED, {"device": "x"})
        hub = Hub.current()
        hub.dispatch({"type": "bus.event", "event": event})
        hub.dispatch({"type": "bus.event", "event": event})
        hub.dispatch({"type": "something.else"})
        got = await frames(c)
    assert [f["event"]["id"] for f in got] == [event["id"]]
