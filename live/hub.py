"""One receiver of bus events per process (per event loop), fanning them out to its connections.

Each connection joining the bus groups itself would make every event travel through Redis once per
connection (200 browsers: 200 copies of every telemetry batch, each read and decoded apart). The hub
joins the ``events.<type>`` groups (or ``events``) that its connections need, once, and hands each
event to the connections in the process. It also runs the shared coalescers: connections whose
telemetry subscriptions at one rate select the same devices (all, the same ids, the same groups) share
one coalescer, so a telemetry batch is merged and encoded once for them all, not once per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from channels.layers import InMemoryChannelLayer, get_channel_layer

from fluxiot import events
from live.coalescing import Coalescer, telemetry_event
from live.filters import TELEMETRY, event_device_ids

logger = logging.getLogger(__name__)

# Channels groups expire (channels_redis: after a day); joined groups are renewed this often.
GROUP_RENEW_SECONDS = 3600.0
# Events come on both ``events`` and ``events.<type>``; while both are joined (the moment the hub
# switches between them) the copies are told apart by event id.
RECENT_EVENT_IDS = 1024
# The in-memory layer (embedded mode) is fed from the event bus's own thread, which cannot wake this
# loop; a short timer makes sure the loop looks at what arrived.
IN_MEMORY_POLL_SECONDS = 0.05

Interest = frozenset[str] | None  # event types, None: all


class Member(Protocol):
    def deliver(self, event: dict[str, Any], device_ids: list[str] | None) -> None: ...

    def send_raw(self, frame: str) -> None: ...


# A shared coalescer serves the connections whose telemetry subscriptions at one rate all select the
# same devices: (rate, the devices named or None, the groups named or None).
SharedKey = tuple[int, frozenset[str] | None, tuple[int, ...] | None]
# What a member brings: the JSON list of its subscription ids, and (with groups) a function telling
# whether it selects a device. Subscriptions naming the same groups follow the same membership events,
# so any member's function serves them all.
SharedPlan = tuple[str, Callable[[str], bool] | None]


class _Shared:
    """A coalescer shared by connections."""

    def __init__(self, key: SharedKey, max_devices: int) -> None:
        _rate, self.devices, self.groups = key
        self.members: dict[Member, SharedPlan] = {}
        self.coalescer = Coalescer(key[0], self._flush, max_devices=max_devices)

    def add(self, devices: dict[str, Any], event: dict[str, Any]) -> None:
        if self.groups is None:
            self.coalescer.add(devices, event, only=self.devices)
        else:
            _ids, select = next(iter(self.members.values()))
            self.coalescer.add(devices, event, select=select)

    def _flush(self, devices: dict[str, dict[str, Any]], newest: dict[str, Any]) -> None:
        event_json = json.dumps(telemetry_event(devices, newest), separators=(",", ":"), default=str)
        for member, (ids_json, _select) in list(self.members.items()):
            try:
                member.send_raw(f'{{"type":"event","subscriptions":{ids_json},"event":{event_json}}}')
            except Exception:
                logger.exception("live: could not queue a telemetry frame")


class Hub:
    _hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()

    @classmethod
    def current(cls) -> Hub:
        """The hub of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        hub = cls._hubs.get(loop)
        if hub is None:
            hub = cls._hubs[loop] = cls()
        return hub

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.members: dict[Member, Interest] = {}
        self.joined: set[str] = set()
        self.shared: dict[SharedKey, _Shared] = {}
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._recent: deque[str] = deque()
        self._recent_set: set[str] = set()
        self.received = 0

    # --- Membership -------------------------------------------------------------------------------

    async def set_interest(self, member: Member, interest: Interest) -> None:
        """Register ``member`` (or change what it listens to) and join the groups that takes. Returns
        once the groups are joined: events published from then on reach the member."""
        self.members[member] = interest
        await self._sync()

    def detach(self, member: Member) -> None:
        """Stop handing events to ``member`` at once (the groups are left by ``leave``)."""
        self.members.pop(member, None)
        self.set_shared(member, {}, max_devices=0)

    async def leave(self, member: Member) -> None:
        self.detach(member)
        await self._sync()

    def set_shared(self, member: Member, plans: dict[SharedKey, SharedPlan], *, max_devices: int) -> None:
        """Put ``member`` in the shared coalescers of ``plans`` and take it out of the others."""
        for key, shared in list(self.shared.items()):
            if key not in plans and member in shared.members:
                del shared.members[member]
                if not shared.members:
                    shared.coalescer.close()
                    del self.shared[key]
        for key, plan in plans.items():
            shared = self.shared.get(key)
            if shared is None:
                shared = self.shared[key] = _Shared(key, max_devices)
            shared.members[member] = plan

    def _groups(self) -> set[str]:
        interests = [i for i in self.members.values() if i is None or i]
        if any(i is None for i in interests):
            return {events.ALL_EVENTS_GROUP}
        types: set[str] = set().union(*interests) if interests else set()
        return {events.group_for(t) for t in types}

    async def _sync(self) -> None:
        async with self._lock:
            if self.layer is None:
                return
            wanted = self._groups()
            if wanted and self.channel is None:
                self.channel = await self.layer.new_channel()
            for group in sorted(wanted - self.joined):
                await self.layer.group_add(group, self.channel)
                self.joined.add(group)
            for group in sorted(self.joined - wanted):
                await self.layer.group_discard(group, self.channel)
                self.joined.discard(group)
            if self.joined and not self._tasks:
                self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._renew())]
                if isinstance(self.layer, InMemoryChannelLayer):
                    self._tasks.append(asyncio.create_task(self._poll()))
            elif not self.joined and self._tasks:
                for task in self._tasks:
                    task.cancel()
                for task in self._tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self._tasks = []
                self.channel = None

    # --- Receiving --------------------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self.layer is not None and self.channel is not None
        channel = self.channel
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("live: receiving from the channel layer failed; retrying in 1 s")
                await asyncio.sleep(1)
                await self._rejoin()  # a restarted Redis has forgotten the groups
                continue
            self.received += 1
            self.dispatch(message)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(GROUP_RENEW_SECONDS)
            await self._rejoin()

    async def _rejoin(self) -> None:
        """Join the joined groups again (group_add is idempotent and renews the membership)."""
        for group in sorted(self.joined):
            try:
                await self.layer.group_add(group, self.channel)
            except Exception:
                logger.exception("live: could not renew the group %s", group)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(IN_MEMORY_POLL_SECONDS)

    def dispatch(self, message: dict[str, Any]) -> None:
        """Hand one bus message to the shared coalescers and every member."""
        event = message.get("event") if isinstance(message, dict) else None
        if not isinstance(event, dict) or message.get("type") != "bus.event" or not isinstance(event.get("type"), str):
            logger.warning("live: ignoring a channel message that is not a bus event: %.200r", message)
            return
        event_id = event.get("id")
        if isinstance(event_id, str):
            if event_id in self._recent_set:
                return
            self._recent.append(event_id)
            self._recent_set.add(event_id)
            if len(self._recent) > RECENT_EVENT_IDS:
                self._recent_set.discard(self._recent.popleft())
        data = event.get("data")
        if event["type"] == TELEMETRY:
            device_ids = None
            devices = data.get("devices") if isinstance(data, dict) else None
            if isinstance(devices, dict):
                for shared in list(self.shared.values()):
                    shared.add(devices, event)
        else:
            device_ids = event_device_ids(data)
        for member in list(self.members):
            try:
                member.deliver(event, device_ids)
            except Exception:
                logger.exception("live: delivering %s to a connection failed", event["type"])
