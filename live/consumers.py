"""``/ws/events/``: the event bus over WebSocket, per user and per subscription.

One ``EventsConsumer`` per connection. It authenticates (session cookie, ``?token=<jwt>`` or a first
``{"type": "auth"}`` message), keeps the connection's subscriptions, and gets the bus events from the
process's ``Hub``; what a subscription selects goes out as ``{"type": "event"}`` frames, telemetry
coalesced per device. Every frame to the client goes through one ordered send queue. docs/API.md
("WebSocket API") describes the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from live.auth import AuthError, authenticate_token
from live.coalescing import Coalescer, telemetry_event
from live.filters import (
    MEMBERSHIP_TYPES,
    TELEMETRY,
    Subscription,
    expand_groups,
    parse_subscribe,
    resolve,
    subscription_id,
)
from live.hub import Hub, Interest, SharedKey, SharedPlan
from live.permissions import Access, load_access
from live.protocol import (
    BAD_MESSAGE,
    BAD_SUBSCRIPTION,
    CLOSE_AUTH,
    CLOSE_FLOOD,
    CLOSE_TOO_SLOW,
    SUBSCRIPTION_ID_MAX_LENGTH,
    Limits,
    SubscriptionError,
)

logger = logging.getLogger(__name__)

# Membership changes a group filter cannot follow from the event alone are looked up again after
# this delay (a burst of changes costs one look-up).
GROUP_REFRESH_DELAY = 1.0
# A close frame's reason is at most 123 bytes.
MAX_REASON_BYTES = 123


class _Close:
    """The last item of a send queue: close the connection with this code and reason."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


class _Window:
    """Counts hits in a sliding window; ``hit()`` is False once more than ``limit`` fall in it."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.times: deque[float] = deque()

    def hit(self) -> bool:
        now = time.monotonic()
        while self.times and now - self.times[0] >= self.seconds:
            self.times.popleft()
        self.times.append(now)
        return len(self.times) <= self.limit


class EventsConsumer(AsyncWebsocketConsumer):
    # No channel of its own: the process's Hub receives the bus events for every connection (a
    # missing alias makes Channels skip the per-consumer channel).
    channel_layer_alias = "live.no-per-connection-channel"

    # --- Connection ---------------------------------------------------------------------------------

    async def connect(self) -> None:
        self.limits = Limits.current()
        self.hub = Hub.current()
        self.user: Any = None
        self.access = Access(())
        self.via = ""
        self.subs: dict[str, Subscription] = {}
        self._outbox: deque[str | _Close] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._subscribes = _Window(self.limits.max_subscribes_per_window, self.limits.flood_window_seconds)
        self._bad = _Window(self.limits.max_bad_messages_per_window, self.limits.flood_window_seconds)
        self._private: dict[int, Coalescer] = {}
        self._private_subs: dict[int, list[Subscription]] = {}
        self._group_subs: list[Subscription] = []

        # Accepted first in every case: a refusal is then a close frame with a code and a reason,
        # which a browser can read (a refused handshake is only an HTTP 403).
        await self.accept()
        self._tasks["writer"] = asyncio.create_task(self._write())

        token = self._query_token()
        if token is not None:
            await self._login_token(token, announce=False)
            return
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            await self._login(user, "session")
            return
        if settings.SESSION_COOKIE_NAME in (self.scope.get("cookies") or {}):
            self._close(CLOSE_AUTH, "not logged in: the session is anonymous or has expired")
            return
        self._timers["auth"] = asyncio.get_running_loop().call_later(
            self.limits.auth_timeout_seconds,
            self._close,
            CLOSE_AUTH,
            f"not authenticated within {self.limits.auth_timeout_seconds:g} s: send {{type: auth, token}} first",
        )

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "hub"):  # gone before connect() ran
            return
        self._stop()
        writer = self._tasks.pop("writer", None)
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        try:
            await self.hub.leave(self)
        except Exception:
            # The connection is gone either way; the groups are put right at the next change.
            logger.exception("live: leaving the bus groups failed")
        logger.debug("live: %s disconnected (%s)", self._who(), code)

    def _query_token(self) -> str | None:
        query = parse_qs((self.scope.get("query_string") or b"").decode("latin-1"))
        tokens = query.get("token")
        return tokens[0] if tokens else None

    def _who(self) -> str:
        return getattr(self.user, "username", None) or "anonymous"

    # --- Authentication -----------------------------------------------------------------------------

    async def _login_token(self, raw: Any, *, announce: bool) -> None:
        try:
            login = await authenticate_token(raw)
        except AuthError as exc:
            self._close(CLOSE_AUTH, exc.reason)
            return
        if self._closing:
            return
        if self.user is not None and login.user.pk != self.user.pk:
            self._close(CLOSE_AUTH, "the token is another user's")
            return
        if self.user is None:
            await self._login(login.user, "jwt")
        else:
            # Permissions may have changed since: the subscriptions follow them from now on.
            self.access = await load_access(login.user)
            for sub in self.subs.values():
                sub.reauthorise(self.access)
            self._rebuild()
        if self._closing:
            return
        # A token connection ends with its token, unless the client sends a fresh one in time.
        self._cancel_timer("expiry")
        self._timers["expiry"] = asyncio.get_running_loop().call_later(
            max(0.0, login.expires_at - time.time()), self._close, CLOSE_AUTH, "token expired"
        )
        if announce:
            self._send({"type": "authenticated", "user": login.user.get_username()})

    async def _login(self, user: Any, via: str) -> None:
        self._cancel_timer("auth")
        self.access = await load_access(user)
        self.user = user
        self.via = via
        if not self._closing:
            self._tasks["heartbeat"] = asyncio.create_task(self._heartbeat())
            logger.debug("live: %s connected (%s)", self._who(), via)

    # --- Messages from the client -------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closing:
            return
        message, problem = self._decode(text_data)
        if self.user is None:
            if message is not None and message.get("type") == "auth":
                self._cancel_timer("auth")
                await self._login_token(message.get("token"), announce=True)
            else:
                self._close(CLOSE_AUTH, "not authenticated: the first message must be {type: auth, token}")
            return
        if message is None:
            self._bad_message(problem)
            return
        kind = message.get("type")
        handlers: dict[Any, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "ping": self._ping,
            "auth": self._reauth,
        }
        handler = handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            what = "no message type" if kind is None else f"unknown message type {str(kind)[:64]!r}"
            self._bad_message(f"{what} (subscribe, unsubscribe, ping)")
            return
        await handler(message)

    def _decode(self, text: str | None) -> tuple[dict[str, Any] | None, str]:
        if text is None:
            return None, "binary frames are not accepted: send JSON text"
        limit = self.limits.max_message_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            return None, f"message too large (more than {limit} bytes)"
        try:
            message = json.loads(text)
        except ValueError:
            return None, "not JSON"
        if not isinstance(message, dict):
            return None, "a JSON object is expected"
        return message, ""

    async def _ping(self, message: dict[str, Any]) -> None:
        self._send({"type": "pong"})

    async def _reauth(self, message: dict[str, Any]) -> None:
        if self.via != "jwt":
            self._bad_message("already authenticated by the session")
            return
        await self._login_token(message.get("token"), announce=True)

    async def _subscribe(self, message: dict[str, Any]) -> None:
        if not self._subscribes.hit():
            self._close(
                CLOSE_FLOOD,
                f"more than {self.limits.max_subscribes_per_window} subscribe messages"
                f" in {self.limits.flood_window_seconds:g} s",
            )
            return
        limits = self.limits
        try:
            request = parse_subscribe(
                message,
                default_rate=limits.default_rate,
                max_rate=limits.max_rate,
                max_devices=limits.max_devices_per_subscription,
            )
            if request.id not in self.subs and len(self.subs) >= limits.max_subscriptions:
                self._close(CLOSE_FLOOD, f"more than {limits.max_subscriptions} active subscriptions")
                return
            sub = await database_sync_to_async(resolve)(request, self.access, limits.max_devices_per_subscription)
        except SubscriptionError as exc:
            self._refuse(exc)
            return
        if self._closing:
            return
        # Join the bus groups first, then start delivering: what is published after "subscribed"
        # reaches the subscription.
        await self.hub.set_interest(self, self._interest(sub))
        if self._closing:
            return
        replaced = self.subs.get(sub.id)
        self.subs[sub.id] = sub
        self._rebuild()
        self._send({"type": "subscribed", "id": sub.id, "filters": sub.normalised(), "rate": sub.rate})
        if replaced is not None:
            await self.hub.set_interest(self, self._interest())

    async def _unsubscribe(self, message: dict[str, Any]) -> None:
        sid = subscription_id(message)
        if sid is None:
            detail = f"id must be a string of 1 to {SUBSCRIPTION_ID_MAX_LENGTH} characters"
            self._refuse(SubscriptionError(BAD_SUBSCRIPTION, detail))
            return
        if self.subs.pop(sid, None) is None:
            self._refuse(SubscriptionError(BAD_SUBSCRIPTION, "no active subscription with this id", sid))
            return
        self._rebuild()
        self._send({"type": "unsubscribed", "id": sid})
        await self.hub.set_interest(self, self._interest())

    def _bad_message(self, detail: str) -> None:
        if self._count_bad():
            self._send({"type": "error", "code": BAD_MESSAGE, "detail": detail})

    def _refuse(self, error: SubscriptionError) -> None:
        if self._count_bad():
            self._send(error.message())

    def _count_bad(self) -> bool:
        if self._bad.hit():
            return True
        limits = self.limits
        self._close(
            CLOSE_FLOOD,
            f"more than {limits.max_bad_messages_per_window} bad messages in {limits.flood_window_seconds:g} s",
        )
        return False

    # --- Subscriptions ------------------------------------------------------------------------------

    def _interest(self, extra: Subscription | None = None) -> Interest:
        subs = [s for s in self.subs.values() if extra is None or s.id != extra.id]
        if extra is not None:
            subs.append(extra)
        types: set[str] = set()
        for sub in subs:
            interest = sub.interest()
            if interest is None:
                return None
            types |= interest
        return frozenset(types)

    def _rebuild(self) -> None:
        """Re-plan telemetry delivery after the subscriptions changed. Per rate, one coalescer: the
        process's shared one for that rate and selection when every telemetry subscription at that
        rate selects the same devices (all, the same listed ones, the same groups), else one of our
        own. Connections watching the same devices thus cost one merge and one encoding per window."""
        by_rate: dict[int, list[Subscription]] = {}
        for sub in self.subs.values():
            if sub.wants(TELEMETRY):
                by_rate.setdefault(sub.rate, []).append(sub)
        shared: dict[SharedKey, SharedPlan] = {}
        private: dict[int, list[Subscription]] = {}
        for rate, subs in by_rate.items():
            selections = {(s.devices, s.groups) for s in subs}
            if len(selections) == 1:
                devices, groups = selections.pop()
                select = subs[0].selects if groups is not None else None
                shared[(rate, devices, groups)] = (json.dumps([s.id for s in subs]), select)
            else:
                private[rate] = subs
        self.hub.set_shared(self, shared, max_devices=self.limits.max_pending_devices)
        for rate in list(self._private):
            if rate not in private:
                self._private.pop(rate).close()
        for rate in private:
            if rate not in self._private:
                self._private[rate] = Coalescer(
                    rate, partial(self._flush_private, rate), max_devices=self.limits.max_pending_devices
                )
        self._private_subs = private
        self._group_subs = [s for s in self.subs.values() if s.groups is not None]

    # --- Events from the hub ------------------------------------------------------------------------

    def deliver(self, event: dict[str, Any], device_ids: list[str] | None) -> None:
        """One bus event (called by the hub, synchronously, for every event it receives)."""
        if self._closing or not self.subs:
            return
        kind = event["type"]
        if kind == TELEMETRY:
            if self._private:
                devices = event["data"].get("devices") if isinstance(event.get("data"), dict) else None
                if isinstance(devices, dict):
                    for rate, coalescer in self._private.items():
                        subs = self._private_subs[rate]
                        select = subs[0].selects if len(subs) == 1 else partial(_any_selects, subs)
                        coalescer.add(devices, event, select)
            return
        before: list[Subscription] = []
        if kind in MEMBERSHIP_TYPES and self._group_subs:
            # A device leaving a group is still news to the subscriptions that had it.
            before = [s for s in self._group_subs if s.wants(kind) and s.matches(event, device_ids)]
            refresh = False
            for sub in self._group_subs:
                refresh = sub.update_membership(event) or refresh
            if refresh:
                self._schedule_refresh()
        matching = [s for s in self.subs.values() if s in before or (s.wants(kind) and s.matches(event, device_ids))]
        if matching:
            self._send({"type": "event", "subscriptions": [s.id for s in matching], "event": _cut(event, matching)})

    def _flush_private(self, rate: int, devices: dict[str, dict[str, Any]], newest: dict[str, Any]) -> None:
        subs = self._private_subs.get(rate)
        if not subs or self._closing:
            return
        frames: dict[tuple[str, ...], dict[str, Any]] = {}
        if len(subs) == 1:
            frames[(subs[0].id,)] = devices  # add() took only what it selects
        else:
            for device_id, entry in devices.items():
                ids = tuple(s.id for s in subs if s.selects(device_id))
                if ids:
                    frames.setdefault(ids, {})[device_id] = entry
        for ids, selected in frames.items():
            self._send({"type": "event", "subscriptions": list(ids), "event": telemetry_event(selected, newest)})

    def _schedule_refresh(self) -> None:
        task = self._tasks.get("refresh")
        if task is None or task.done():
            self._tasks["refresh"] = asyncio.create_task(self._refresh_groups())

    async def _refresh_groups(self) -> None:
        await asyncio.sleep(GROUP_REFRESH_DELAY)
        changed = False
        for sub in list(self._group_subs):
            if self.subs.get(sub.id) is not sub or sub.groups is None:
                continue
            try:
                group_ids, group_devices, _gone = await database_sync_to_async(expand_groups)(
                    sub.groups, self.limits.max_devices_per_subscription
                )
            except SubscriptionError as exc:
                if self.subs.get(sub.id) is sub:
                    del self.subs[sub.id]
                    changed = True
                    self._send(SubscriptionError(exc.code, f"{exc.detail}; subscription ended", sub.id).message())
                continue
            sub.group_ids, sub.group_devices = group_ids, group_devices
        if changed and not self._closing:
            self._rebuild()
            await self.hub.set_interest(self, self._interest())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.limits.heartbeat_seconds)
            self._send({"type": "heartbeat", "time": timezone.now().isoformat()})

    # --- Sending and closing ------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message, separators=(",", ":"), default=str))

    def send_raw(self, frame: str) -> None:
        """Queue one text frame (the writer task sends the queue in order)."""
        if self._closing:
            return
        if len(self._outbox) >= self.limits.max_queued_frames:
            self._outbox.clear()
            self._close(CLOSE_TOO_SLOW, "too slow: the send queue is full")
            return
        self._outbox.append(frame)
        self._wake.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                item = self._outbox.popleft()
                if isinstance(item, _Close):
                    await self.close(code=item.code, reason=item.reason)
                    return
                await self.send(text_data=item)

    def _close(self, code: int, reason: str) -> None:
        """Close after what is queued, with a code and a reason; nothing more is delivered."""
        if self._closing:
            return
        logger.info("live: closing the connection of %s: %d %s", self._who(), code, reason)
        self._stop()
        self._outbox.append(_Close(code, reason))
        self._wake.set()

    def _stop(self) -> None:
        self._closing = True
        for name in list(self._timers):
            self._cancel_timer(name)
        for name in ("heartbeat", "refresh"):
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
        for coalescer in self._private.values():
            coalescer.close()
        self._private = {}
        self.hub.detach(self)

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()


def _any_selects(subs: list[Subscription], device_id: str) -> bool:
    return any(s.selects(device_id) for s in subs)


def _cut(event: dict[str, Any], matching: list[Subscription]) -> dict[str, Any]:
    """A command event's ``data.commands`` cut down to the devices the subscriptions select."""
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("commands"), list):
        return event
    if not all(s.has_selection for s in matching):
        return event
    commands = [
        c for c in data["commands"] if isinstance(c, dict) and any(s.selects(c.get("device")) for s in matching)
    ]
    return {**event, "data": {**data, "commands": commands}}
