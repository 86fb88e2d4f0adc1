"""Who may connect: session, JWT in the query or in the first message; everything else is closed
with 4401 and a reason."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tests.live.conftest import asynctest, closed, subscribe, token_for, ws

pytestmark = pytest.mark.django_db


@asynctest
async def test_a_logged_in_session_connects_and_can_ping(viewer):
    async with ws(user=viewer) as c:
        await c.send_json_to({"type": "ping"})
        assert await c.receive_json_from(timeout=5) == {"type": "pong"}


@asynctest
async def test_an_anonymous_session_is_refused_at_once(db):
    async with ws(cookie="not-a-session") as c:
        code, reason = await closed(c, timeout=1)
    assert code == 4401
    assert "not logged in" in reason


@asynctest
async def test_a_token_in_the_query_authenticates(viewer):
    async with ws(token=token_for(viewer)) as c:
        answer = await subscribe(c, "all")
        assert answer["type"] == "subscribed"


@asynctest
async def test_a_token_in_the_first_message_authenticates(viewer):
    async with ws() as c:
        await c.send_json_to({"type": "auth", "token": token_for(viewer)})
        assert await c.receive_json_from(timeout=5) == {"type": "authenticated", "user": "viewer"}
        await c.send_json_to({"type": "ping"})
        assert await c.receive_json_from(timeout=5) == {"type": "pong"}


@pytest.mark.parametrize("where", ["query", "message"])
@asynctest
async def test_an_expired_token_is_refused(viewer, where):
    token = token_for(viewer, lifetime=timedelta(seconds=-30))
    async with ws(token=token if where == "query" else None) as c:
        if where == "message":
            await c.send_json_to({"type": "auth", "token": token})
        assert await closed(c) == (4401, "token expired")


@pytest.mark.parametrize("token", ["garbage", "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.bad-signature", 42, None])
@asynctest
async def test_an_invalid_token_is_refused(viewer, token):
    async with ws() as c:
        await c.send_json_to({"type": "auth", "token": token})
        assert await closed(c) == (4401, "invalid token")


@asynctest
async def test_a_token_of_an_inactive_user_is_refused(viewer):
    viewer.is_active = False
    from channels.db import database_sync_to_async

    await database_sync_to_async(viewer.save)()
    async with ws(token=token_for(viewer)) as c:
        code, reason = await closed(c)
    assert code == 4401 and reason.startswith("invalid token")


@asynctest
async def test_without_session_or_token_the_first_message_must_authenticate(viewer):
    async with ws() as c:
        await c.send_json_to({"type": "ping"})
        code, reason = await closed(c)
    assert code == 4401 and "first message" in reason


@asynctest
async def test_without_any_authentication_the_connection_is_closed_after_the_timeout(db, settings):
    settings.LIVE_AUTH_TIMEOUT_SECONDS = 0.3
    async with ws() as c:
        assert await c.receive_nothing(timeout=0.1)
        code, reason = await closed(c, timeout=2)
    assert code == 4401 and "not authenticated within 0.3 s" in reason


@asynctest
async def test_a_token_connection_ends_with_its_token_unless_a_fresh_one_comes(viewer):
    short = token_for(viewer, lifetime=timedelta(seconds=2))  # exp is in whole seconds: 1 to 2 s
    async with ws(token=short) as ending, ws(token=short) as renewed:
        await renewed.send_json_to({"type": "auth", "token": token_for(viewer)})
        assert await renewed.receive_json_from(timeout=5) == {"type": "authenticated", "user": "viewer"}
        assert await closed(ending, timeout=4) == (4401, "token expired")
        await asyncio.sleep(0.3)
        await renewed.send_json_to({"type": "ping"})
        assert await renewed.receive_json_from(timeout=5) == {"type": "pong"}


@asynctest
async def test_a_token_of_another_user_cannot_take_over_a_connection(viewer, operator):
    async with ws(token=token_for(viewer)) as c:
        await c.send_json_to({"type": "auth", "token": token_for(operator)})
        assert await closed(c) == (4401, "the token is another user's")


@asynctest
async def test_a_session_connection_does_not_take_tokens(viewer):
    async with ws(user=viewer) as c:
        await c.send_json_to({"type": "auth", "token": token_for(viewer)})
        answer = await c.receive_json_from(timeout=5)
    assert answer == {"type": "error", "code": "bad_message", "detail": "already authenticated by the session"}
