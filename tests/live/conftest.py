"""Helpers of the WebSocket tests: the real ASGI application (origin check, session middleware,
routing) driven by Channels' WebsocketCommunicator, events published on the real (Redis) channel
layer of the test settings.

Tests are ``async def`` functions wrapped by ``asynctest``: they run under ``async_to_sync`` so that
the consumer's database calls come back to the test's thread and see the test's transaction."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework_simplejwt.tokens import AccessToken

from fluxiot import events
from fluxiot.asgi import application
from tests.factories import UserFactory

ORIGIN = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]


def asynctest(fn: Any) -> Any:
    """Run an ``async def`` test under async_to_sync (the fixtures stay as they are)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return async_to_sync(fn)(*args, **kwargs)

    return wrapper


def token_for(user: Any, lifetime: timedelta | None = None) -> str:
    token = AccessToken.for_user(user)
    if lifetime is not None:
        token.set_exp(lifetime=lifetime)
    return str(token)


def _session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@asynccontextmanager
async def ws(
    *, user: Any = None, token: str | None = None, cookie: str | None = None, query: str = ""
) -> AsyncIterator[WebsocketCommunicator]:
    """An open connection to /ws/events/: ``user`` logs in by session cookie, ``token`` goes in the
    query, ``cookie`` is sent as the session cookie as it is."""
    headers = list(ORIGIN)
    if user is not None:
        cookie = await database_sync_to_async(_session_cookie)(user)
    if cookie is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    path = "/ws/events/"
    if token is not None:
        query = f"token={token}"
    if query:
        path += f"?{query}"
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    try:
        yield communicator
    finally:
        await communicator.disconnect(timeout=5)


async def publish(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Send an event the way the bus does (both groups), from the test's own loop."""
    event = events.build_event(event_type, data)
    message = {"type": "bus.event", "event": event}
    layer = get_channel_layer()
    await layer.group_send(events.ALL_EVENTS_GROUP, message)
    await layer.group_send(events.group_for(event_type), message)
    return event


async def subscribe(communicator: WebsocketCommunicator, sid: str = "s", **fields: Any) -> dict[str, Any]:
    """Subscribe and return the server's answer (subscribed or error)."""
    await communicator.send_json_to({"type": "subscribe", "id": sid, **fields})
    return await communicator.receive_json_from(timeout=5)


async def frames(communicator: WebsocketCommunicator, wait: float = 0.3) -> list[dict[str, Any]]:
    """Every frame that arrives until none has for ``wait`` seconds."""
    got = []
    while not await communicator.receive_nothing(timeout=wait):
        got.append(await communicator.receive_json_from(timeout=1))
    return got


async def closed(communicator: WebsocketCommunicator, timeout: float = 3) -> tuple[int, str]:
    """Wait for the server's close (skipping frames before it); returns (code, reason)."""
    while True:
        output = await communicator.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return output.get("code"), output.get("reason", "")


def telemetry(device_id: str, ts: int, **values: Any) -> dict[str, Any]:
    return {"last_seen": ts, "values": {key: {"ts": ts, "value": value} for key, value in values.items()}}


@pytest.fixture(autouse=True)
def _keep_the_test_connection(monkeypatch: Any) -> None:
    """Channels closes "old" database connections around every database_sync_to_async call; in a
    test that would close the connection holding the test's transaction."""
    import channels.db

    monkeypatch.setattr(channels.db, "close_old_connections", lambda **kwargs: None)


@pytest.fixture(autouse=True)
def _fresh_channel_layer() -> Any:
    """A channel layer object of its own for every test: channels_redis keeps per-channel locks that
    belong to the event loop that made them, and every test runs on a loop of its own (a server
    process has one loop for its whole life)."""
    from channels.layers import channel_layers

    channel_layers.backends.pop("default", None)
    yield
    channel_layers.backends.pop("default", None)


@pytest.fixture
def user_with(db: Any) -> Any:
    """``user_with("control.view_devicecommand", ...)``: a user with exactly these permissions."""

    def make(*perms: str, username: str = "limited") -> Any:
        user = UserFactory(username=username)
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        return user

    return make
