"""Telemetry is coalesced per device and connection: at most ``rate`` deliveries per second per
device, the latest value of each key winning, nothing of the latest state lost."""

from __future__ import annotations

import time

import pytest

from fluxiot import events
from live.hub import Hub
from tests.factories import DeviceFactory, DeviceGroupFactory
from tests.live.conftest import asynctest, frames, publish, subscribe, telemetry, ws

pytestmark = pytest.mark.django_db

ALL_DEVICES = {"event_types": ["telemetry.received"]}  # the process's shared coalescer for all devices
ONE_DEVICE = {"devices": ["chatty"]}  # the shared one for this selection
IN_GROUP = "group"  # the shared one for this group
MIXED = "mixed"  # another subscription at the same rate selecting other devices: the connection's own


@pytest.fixture
def devices(db):
    group = DeviceGroupFactory(name="noisy")
    return [DeviceFactory(id="chatty", group=group), DeviceFactory(id="quiet")]


def filters_for(kind, devices):
    if kind == IN_GROUP:
        return {"groups": [devices[0].group_id]}
    if kind == MIXED:
        return ONE_DEVICE
    return kind


def states(got: list[dict]) -> dict:
    """The client's view after applying every delivery in order: device -> key -> value."""
    view: dict = {}
    for frame in got:
        for device_id, entry in frame["event"]["data"]["devices"].items():
            for key, value in entry["values"].items():
                view.setdefault(device_id, {})[key] = value["value"]
    return view


@pytest.mark.parametrize(
    "kind", [ALL_DEVICES, ONE_DEVICE, IN_GROUP, MIXED], ids=["shared-all", "shared-listed", "shared-group", "own"]
)
@asynctest
async def test_a_burst_of_100_updates_in_200_ms_is_delivered_a_few_times_with_the_last_values(viewer, devices, kind):
    async with ws(user=viewer) as c:
        await subscribe(c, "t", filters=filters_for(kind, devices))
        if kind == MIXED:
            await subscribe(c, "other", filters={"devices": ["quiet"]})
        assert len(Hub.current().shared) == (0 if kind == MIXED else 1)
        started = time.monotonic()
        base = int(time.time() * 1000)
        for n in range(100):
            key = "a" if n % 2 == 0 else "b"
            last = await publish(
                events.TELEMETRY_RECEIVED, {"devices": {"chatty": telemetry("chatty", base + n, **{key: n})}}
            )
        elapsed = time.monotonic() - started
        got = await frames(c, wait=0.4)
    assert got, "nothing delivered"
    assert len(got) <= 4 * elapsed + 1, f"{len(got)} deliveries for a burst of {elapsed:.3f}s at rate 4"
    assert states(got) == {"chatty": {"a": 98, "b": 99}}
    assert got[-1]["subscriptions"] == ["t"]
    assert got[-1]["event"]["id"] == last["id"] and got[-1]["event"]["type"] == "telemetry.received"
    assert got[-1]["event"]["data"]["devices"]["chatty"]["last_seen"] == base + 99


@asynctest
async def test_deliveries_of_a_device_are_at_least_a_window_apart(viewer, devices):
    async with ws(user=viewer) as c:
        await subscribe(c, "t", filters=ONE_DEVICE, rate=10)
        arrivals = []
        for n in range(12):
            await publish(events.TELEMETRY_RECEIVED, {"devices": {"chatty": telemetry("chatty", n, v=n)}})
            while not await c.receive_nothing(timeout=0.05):
                await c.receive_json_from()
                arrivals.append(time.monotonic())
        for frame in await frames(c):
            arrivals.append(time.monotonic())
            assert frame["type"] == "event"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) >= 3
    assert min(gaps) >= 0.08  # 1/rate = 0.1 s, less the timing noise of the receiving side


@asynctest
async def test_a_value_older_than_the_one_pending_does_not_win(viewer, devices):
    async with ws(user=viewer) as c:
        await subscribe(c, "t", filters=ONE_DEVICE)
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"chatty": telemetry("chatty", 2000, t=2)}})
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"chatty": telemetry("chatty", 1000, t=1)}})
        got = await frames(c)
    assert len(got) == 1
    assert got[0]["event"]["data"]["devices"]["chatty"] == {
        "last_seen": 2000,
        "values": {"t": {"ts": 2000, "value": 2}},
    }


@asynctest
async def test_devices_of_one_window_share_a_frame(viewer, devices):
    async with ws(user=viewer) as c:
        await subscribe(c, "t", filters=ALL_DEVICES)
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"chatty": telemetry("chatty", 1, t=1)}})
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"quiet": telemetry("quiet", 1, t=5)}})
        got = await frames(c)
    assert states(got) == {"chatty": {"t": 1}, "quiet": {"t": 5}}
    assert len(got) == 1


@asynctest
async def test_connections_sharing_a_coalescer_each_get_their_own_subscription_ids(viewer, operator, devices):
    async with ws(user=viewer) as first, ws(user=operator) as second:
        await subscribe(first, "mine", filters=ALL_DEVICES)
        await subscribe(second, "yours", filters=ALL_DEVICES)
        await subscribe(second, "also", filters={})
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"chatty": telemetry("chatty", 1, t=1)}})
        got_first, got_second = await frames(first), await frames(second)
    assert [f["subscriptions"] for f in got_first] == [["mine"]]
    assert [f["subscriptions"] for f in got_second] == [["yours", "also"]]
    assert got_first[0]["event"] == got_second[0]["event"]


@asynctest
async def test_rates_are_per_subscription_group(viewer, devices):
    async with ws(user=viewer) as c:
        await subscribe(c, "slow", filters=ONE_DEVICE, rate=1)
        await subscribe(c, "fast", filters=ONE_DEVICE, rate=20)
        started = time.monotonic()
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"chatty": telemetry("chatty", 1, t=1)}})
        first = await c.receive_json_from(timeout=2)
        fast_after = time.monotonic() - started
        second = await c.receive_json_from(timeout=2)
    assert first["subscriptions"] == ["fast"] and fast_after < 0.5
    assert second["subscriptions"] == ["slow"]


@asynctest
async def test_past_the_pending_bound_the_window_is_cut_short(viewer, db, settings):
    settings.LIVE_MAX_PENDING_DEVICES = 5
    async with ws(user=viewer) as c:
        await subscribe(c, "t", filters=ALL_DEVICES, rate=1)
        many = {f"d{n}": telemetry(f"d{n}", 1, t=n) for n in range(8)}
        started = time.monotonic()
        await publish(events.TELEMETRY_RECEIVED, {"devices": many})
        got = await c.receive_json_from(timeout=2)
        assert time.monotonic() - started < 0.5  # not the 1 s window
    assert sorted(got["event"]["data"]["devices"]) == sorted(many)


@asynctest
async def test_connections_watching_the_same_devices_share_a_coalescer(viewer, operator, devices):
    async with ws(user=viewer) as first, ws(user=operator) as second, ws(user=operator) as third:
        await subscribe(first, "page", filters={"devices": ["quiet", "chatty"]})
        await subscribe(second, "tab", filters={"devices": ["chatty", "quiet"]})
        await subscribe(third, "other", filters={"devices": ["chatty"]})
        assert sorted(sorted(selection) for _rate, selection, _groups in Hub.current().shared) == [
            ["chatty"],
            ["chatty", "quiet"],
        ]
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"chatty": telemetry("chatty", 1, t=1)}})
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"quiet": telemetry("quiet", 1, t=2)}})
        got = [await frames(c) for c in (first, second, third)]
    assert [states(g) for g in got] == [
        {"chatty": {"t": 1}, "quiet": {"t": 2}},
        {"chatty": {"t": 1}, "quiet": {"t": 2}},
        {"chatty": {"t": 1}},
    ]
    assert [g[0]["subscriptions"] for g in got] == [["page"], ["tab"], ["other"]]


@asynctest
async def test_different_selections_at_one_rate_share_the_connections_windows(viewer, devices):
    async with ws(user=viewer) as c:
        await subscribe(c, "chatty", filters={"devices": ["chatty"]})
        await subscribe(c, "both", filters={"devices": ["chatty", "quiet"]})
        await subscribe(c, "slow", filters={"devices": ["quiet"]}, rate=2)
        await publish(
            events.TELEMETRY_RECEIVED,
            {"devices": {"chatty": telemetry("chatty", 1, t=1), "quiet": telemetry("quiet", 1, t=2)}},
        )
        got = await frames(c, wait=0.7)
    by_subscriptions = {tuple(f["subscriptions"]): sorted(f["event"]["data"]["devices"]) for f in got}
    assert by_subscriptions == {("chatty", "both"): ["chatty"], ("both",): ["quiet"], ("slow",): ["quiet"]}


@asynctest
async def test_connections_watching_one_group_share_a_coalescer_that_follows_the_group(viewer, operator, devices):
    group = devices[0].group_id
    async with ws(user=viewer) as first, ws(user=operator) as second:
        await subscribe(first, "g", filters={"groups": [group], "event_types": ["telemetry.received"]})
        await subscribe(second, "g2", filters={"groups": [group], "event_types": ["telemetry.received"]})
        assert list(Hub.current().shared) == [(4, None, (group,))]
        await publish(events.DEVICES_MOVED, {"devices": ["quiet"], "group": group, "actor": None})
        await publish(
            events.TELEMETRY_RECEIVED,
            {"devices": {"chatty": telemetry("chatty", 1, t=1), "quiet": telemetry("quiet", 1, t=2)}},
        )
        got = [await frames(c) for c in (first, second)]
    assert [states(g) for g in got] == [{"chatty": {"t": 1}, "quiet": {"t": 2}}] * 2
    assert [g[0]["subscriptions"] for g in got] == [["g"], ["g2"]]
