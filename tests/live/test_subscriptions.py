"""Subscriptions: filters by device, group (with descendants) and event type, permission scoping,
and the refusals of subscriptions the server cannot or may not serve."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from devices.models import Device
from fluxiot import events
from live.hub import Hub
from tests.factories import DeviceFactory, DeviceGroupFactory
from tests.live.conftest import asynctest, frames, publish, subscribe, telemetry, token_for, ws

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(db):
    """root > child > grandchild, a device in the grandchild and one in no group."""
    root = DeviceGroupFactory(name="root")
    child = DeviceGroupFactory(name="child", parent=root)
    grandchild = DeviceGroupFactory(name="grandchild", parent=child)
    other = DeviceGroupFactory(name="other")
    return {
        "root": root,
        "child": child,
        "grandchild": grandchild,
        "other": other,
        "deep": DeviceFactory(id="deep", group=grandchild),
        "loose": DeviceFactory(id="loose"),
    }


def status_changed(device_id: str) -> dict:
    return {"device": device_id, "old_status": "offline", "new_status": "online", "reason": "", "at": "", "actor": None}


def types_of(got: list[dict]) -> list[str]:
    return [f["event"]["type"] for f in got if f["type"] == "event"]


@asynctest
async def test_an_event_arrives_as_the_bus_published_it_with_the_subscription_ids(viewer, fleet):
    async with ws(user=viewer) as c:
        answer = await subscribe(c, "mine", filters={"devices": ["deep"]})
        assert answer == {
            "type": "subscribed",
            "id": "mine",
            "filters": {"devices": ["deep"], "groups": None, "event_types": None, "severity": None},
            "rate": 4,
        }
        event = await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("loose"))
        assert await frames(c) == [{"type": "event", "subscriptions": ["mine"], "event": event}]


@asynctest
async def test_without_filters_a_viewer_gets_every_event(viewer, fleet):
    async with ws(user=viewer) as c:
        await subscribe(c, "all")
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("loose"))
        await publish(events.GROUP_CREATED, {"group": {"id": 99, "name": "x", "parent": None, "path": "/99/"}})
        await publish(events.COMMAND_BATCH_CREATED, {"batch": "b", "type": "reboot", "total": 1, "skipped": 0})
        assert types_of(await frames(c)) == ["device.status_changed", "group.created", "command.batch_created"]


@asynctest
async def test_a_group_filter_takes_the_descendants_devices_and_groups(viewer, fleet):
    async with ws(user=viewer) as c:
        answer = await subscribe(c, "tree", filters={"groups": [fleet["root"].pk]})
        assert answer["filters"]["groups"] == [fleet["root"].pk]
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("loose"))
        await publish(events.GROUP_UPDATED, {"group": {"id": fleet["grandchild"].pk, "name": "g", "parent": 1}})
        await publish(events.GROUP_UPDATED, {"group": {"id": fleet["other"].pk, "name": "o", "parent": None}})
        got = await frames(c)
    assert [(f["event"]["type"], f["event"]["data"].get("device")) for f in got] == [
        ("device.status_changed", "deep"),
        ("group.updated", None),
    ]
    assert got[1]["event"]["data"]["group"]["id"] == fleet["grandchild"].pk


@asynctest
async def test_a_group_filter_follows_devices_moved_in_and_out(viewer, fleet):
    async with ws(user=viewer) as c:
        await subscribe(c, "tree", filters={"groups": [fleet["child"].pk], "event_types": ["device.status_changed"]})
        moved_in = await publish(events.DEVICES_MOVED, {"devices": ["loose"], "group": fleet["grandchild"].pk})
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("loose"))
        moved_out = await publish(events.DEVICES_MOVED, {"devices": ["deep"], "group": None})
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        got = await frames(c)
    # The moves themselves are not asked for; the status change of the device moved in is.
    assert types_of(got) == ["device.status_changed"]
    assert got[0]["event"]["data"]["device"] == "loose"
    assert moved_in and moved_out


@asynctest
async def test_a_group_filter_sees_the_moves_themselves_when_it_asks_for_them(viewer, fleet):
    async with ws(user=viewer) as c:
        await subscribe(c, "tree", filters={"groups": [fleet["child"].pk], "event_types": ["device.moved"]})
        await publish(events.DEVICES_MOVED, {"devices": ["deep"], "group": None})  # leaving: still news
        await publish(events.DEVICES_MOVED, {"devices": ["loose"], "group": fleet["other"].pk})  # not ours
        got = await frames(c)
    assert [f["event"]["data"]["devices"] for f in got] == [["deep"]]


@asynctest
async def test_a_group_filter_looks_the_registry_up_again_after_an_import(viewer, fleet, monkeypatch):
    monkeypatch.setattr("live.consumers.GROUP_REFRESH_DELAY", 0.1)
    async with ws(user=viewer) as c:
        await subscribe(c, "tree", filters={"groups": [fleet["root"].pk], "event_types": ["device.status_changed"]})
        await database_sync_to_async(DeviceFactory)(id="imported", group=fleet["child"])
        await publish(events.DEVICES_IMPORTED, {"count": 1, "devices": ["imported"], "actor": None})
        await asyncio.sleep(0.4)  # the refresh gathers changes for GROUP_REFRESH_DELAY
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("imported"))
        got = await frames(c)
    assert [f["event"]["data"]["device"] for f in got] == ["imported"]


@asynctest
async def test_event_types_filter_exact_and_by_prefix(viewer, fleet):
    async with ws(user=viewer) as c:
        answer = await subscribe(c, "t", filters={"event_types": ["command.*", "device.created"]})
        assert answer["filters"]["event_types"] == ["command.*", "device.created"]
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        await publish(events.DEVICE_CREATED, {"device": {"id": "new", "group": None}, "actor": None})
        await publish(events.COMMAND_BATCH_CREATED, {"batch": "b", "type": "reboot", "total": 1, "skipped": 0})
        await publish(events.COMMAND_STATUS_CHANGED, {"commands": [], "at": ""})
        got = await frames(c)
    assert types_of(got) == ["device.created", "command.batch_created", "command.status_changed"]


@asynctest
async def test_telemetry_and_commands_are_cut_down_to_the_selected_devices(viewer, fleet):
    commands = [
        {"id": "1", "device": "deep", "type": "reboot", "batch": None, "old_status": "pending", "status": "sent"},
        {"id": "2", "device": "loose", "type": "reboot", "batch": None, "old_status": "pending", "status": "sent"},
    ]
    async with ws(user=viewer) as c:
        await subscribe(c, "one", filters={"devices": ["deep"]})
        await publish(
            events.TELEMETRY_RECEIVED, {"devices": {"deep": telemetry("deep", 1, t=1), "loose": telemetry("loose", 1)}}
        )
        await publish(events.COMMAND_STATUS_CHANGED, {"commands": commands, "at": "now"})
        got = await frames(c)
    by_type = {f["event"]["type"]: f["event"]["data"] for f in got}
    assert list(by_type["telemetry.received"]["devices"]) == ["deep"]
    assert by_type["command.status_changed"] == {"commands": [commands[0]], "at": "now"}


@asynctest
async def test_one_frame_names_every_subscription_it_matches(viewer, fleet):
    async with ws(user=viewer) as c:
        await subscribe(c, "a", filters={"devices": ["deep"]})
        await subscribe(c, "b", filters={"event_types": ["device.*"]})
        await subscribe(c, "c", filters={"devices": ["loose"]})
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        got = await frames(c)
    assert [f["subscriptions"] for f in got] == [["a", "b"]]


@asynctest
async def test_unsubscribe_stops_the_events(viewer, fleet):
    async with ws(user=viewer) as c:
        await subscribe(c, "a")
        await c.send_json_to({"type": "unsubscribe", "id": "a"})
        assert await c.receive_json_from(timeout=5) == {"type": "unsubscribed", "id": "a"}
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        assert await frames(c) == []
        await c.send_json_to({"type": "unsubscribe", "id": "a"})
        assert await c.receive_json_from(timeout=5) == {
            "type": "error",
            "id": "a",
            "code": "bad_subscription",
            "detail": "no active subscription with this id",
        }


@asynctest
async def test_subscribing_again_with_the_same_id_replaces_the_subscription(viewer, fleet):
    async with ws(user=viewer) as c:
        await subscribe(c, "a", filters={"devices": ["deep"]})
        await subscribe(c, "a", filters={"devices": ["loose"]})
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("loose"))
        got = await frames(c)
    assert [f["event"]["data"]["device"] for f in got] == ["loose"]


# --- Permissions ----------------------------------------------------------------------------------


@asynctest
async def test_a_user_without_view_permissions_is_refused(nobody, fleet):
    async with ws(token=token_for(nobody)) as c:
        assert await subscribe(c, "all") == {
            "type": "error",
            "id": "all",
            "code": "forbidden",
            "detail": "you may not view any kind of event",
        }
        answer = await subscribe(c, "dev", filters={"devices": ["deep"]})
        assert answer["code"] == "bad_subscription" and "may not view devices" in answer["detail"]
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        assert await frames(c) == []


@asynctest
async def test_without_devices_view_permission_device_and_telemetry_events_never_arrive(user_with, fleet):
    user = await database_sync_to_async(user_with)("control.view_devicecommand")
    async with ws(token=token_for(user)) as c:
        answer = await subscribe(c, "t", filters={"event_types": ["telemetry.received"]})
        assert answer["code"] == "forbidden"
        answer = await subscribe(c, "mixed", filters={"event_types": ["telemetry.received", "command.*"]})
        assert answer["type"] == "subscribed" and answer["filters"]["event_types"] == ["command.*"]
        assert (await subscribe(c, "all"))["type"] == "subscribed"
        await publish(events.TELEMETRY_RECEIVED, {"devices": {"deep": telemetry("deep", 1, t=1)}})
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        await publish(events.GROUP_CREATED, {"group": {"id": 5, "name": "x", "parent": None, "path": "/5/"}})
        await publish(events.COMMAND_STATUS_CHANGED, {"commands": [], "at": ""})
        got = await frames(c, wait=0.7)
    assert [(f["event"]["type"], f["subscriptions"]) for f in got] == [("command.status_changed", ["mixed", "all"])]


@asynctest
async def test_a_rule_match_needs_the_rule_and_the_device_permission(user_with, fleet):
    user = await database_sync_to_async(user_with)("rules.view_rule")
    async with ws(token=token_for(user)) as c:
        assert (await subscribe(c, "rules", filters={"event_types": ["rule.*"]}))["type"] == "subscribed"
        await publish("rule.matched", {"rule": {"id": 1}, "device": "deep", "trigger": "telemetry"})
        await publish("rule.changed", {"rule": 1, "version": 2, "action": "updated", "actor": None})
        got = await frames(c)
    assert types_of(got) == ["rule.changed"]


# --- Refusals -------------------------------------------------------------------------------------


@asynctest
async def test_unknown_devices_and_groups_are_refused(viewer, fleet):
    async with ws(user=viewer) as c:
        answer = await subscribe(c, "x", filters={"devices": ["deep", "ghost"]})
        assert answer == {"type": "error", "id": "x", "code": "bad_subscription", "detail": "unknown device(s): ghost"}
        answer = await subscribe(c, "y", filters={"groups": [fleet["root"].pk, 987654]})
        assert answer["code"] == "bad_subscription" and answer["detail"] == "unknown group(s): 987654"
        await c.send_json_to({"type": "ping"})
        assert await c.receive_json_from(timeout=5) == {"type": "pong"}  # still open


@asynctest
async def test_groups_holding_too_many_devices_are_refused(viewer, fleet, settings):
    settings.LIVE_MAX_DEVICES_PER_SUBSCRIPTION = 2
    await database_sync_to_async(Device.objects.filter(pk="loose").update)(group=fleet["child"])
    await database_sync_to_async(DeviceFactory)(id="third", group=fleet["root"])
    async with ws(user=viewer) as c:
        answer = await subscribe(c, "big", filters={"groups": [fleet["root"].pk]})
        assert answer["code"] == "bad_subscription" and "more than 2 devices" in answer["detail"]
        answer = await subscribe(c, "ok", filters={"groups": [fleet["grandchild"].pk]})
        assert answer["type"] == "subscribed"


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        ({"type": "subscribe"}, "id must be a string of 1 to 64 characters"),
        ({"type": "subscribe", "id": ""}, "id must be a string of 1 to 64 characters"),
        ({"type": "subscribe", "id": "x" * 65}, "id must be a string of 1 to 64 characters"),
        ({"type": "subscribe", "id": 7}, "id must be a string of 1 to 64 characters"),
        ({"type": "subscribe", "id": "s", "filter": {}}, "unknown key(s): filter"),
        ({"type": "subscribe", "id": "s", "filters": []}, "filters must be an object"),
        ({"type": "subscribe", "id": "s", "filters": {"tags": ["a"]}}, "unknown filter(s): tags"),
        ({"type": "subscribe", "id": "s", "filters": {"devices": "deep"}}, "filters.devices must be a list"),
        ({"type": "subscribe", "id": "s", "filters": {"devices": []}}, "filters.devices is empty"),
        ({"type": "subscribe", "id": "s", "filters": {"devices": [1]}}, "filters.devices must be a list"),
        ({"type": "subscribe", "id": "s", "filters": {"devices": ["x" * 65]}}, "device ids are 1 to 64"),
        ({"type": "subscribe", "id": "s", "filters": {"groups": ["1"]}}, "filters.groups must be a list of group"),
        ({"type": "subscribe", "id": "s", "filters": {"groups": [True]}}, "filters.groups must be a list of group"),
        ({"type": "subscribe", "id": "s", "filters": {"event_types": ["Device.Created"]}}, "is not an event type"),
        ({"type": "subscribe", "id": "s", "filters": {"event_types": ["device*"]}}, "is not an event type"),
        ({"type": "subscribe", "id": "s", "filters": {"event_types": ["weather.rain"]}}, "unknown event type"),
        ({"type": "subscribe", "id": "s", "filters": {"severity": ["LOUD"]}}, "filters.severity"),
        ({"type": "subscribe", "id": "s", "rate": 0}, "rate must be an integer from 1 to 20"),
        ({"type": "subscribe", "id": "s", "rate": 21}, "rate must be an integer from 1 to 20"),
        ({"type": "subscribe", "id": "s", "rate": "4"}, "rate must be an integer from 1 to 20"),
        ({"type": "subscribe", "id": "s", "rate": True}, "rate must be an integer from 1 to 20"),
        ({"type": "subscribe", "id": "s", "rate": 2.5}, "rate must be an integer from 1 to 20"),
    ],
)
@asynctest
async def test_malformed_subscriptions_are_refused_and_the_connection_stays(viewer, message, detail):
    async with ws(user=viewer) as c:
        await c.send_json_to(message)
        answer = await c.receive_json_from(timeout=5)
        assert answer["type"] == "error" and answer["code"] == "bad_subscription"
        assert detail in answer["detail"]
        sid = message.get("id")
        assert answer["id"] == (sid if isinstance(sid, str) and 1 <= len(sid) <= 64 else None)
        await c.send_json_to({"type": "ping"})
        assert await c.receive_json_from(timeout=5) == {"type": "pong"}


@asynctest
async def test_the_process_hub_switches_bus_groups_as_connections_come_and_go(viewer, operator, fleet):
    async with ws(user=viewer) as narrow:
        await subscribe(narrow, "created", filters={"event_types": ["device.created"]})
        hub = Hub.current()
        assert hub.joined == {"events.device.created"}
        async with ws(user=operator) as wide:
            await subscribe(wide, "all")
            assert hub.joined == {"events"}
            await publish(events.DEVICE_CREATED, {"device": {"id": "n1", "group": None}, "actor": None})
            assert types_of(await frames(narrow)) == ["device.created"]
            assert types_of(await frames(wide)) == ["device.created"]
        assert hub.joined == {"events.device.created"}
        await publish(events.DEVICE_CREATED, {"device": {"id": "n2", "group": None}, "actor": None})
        got = await frames(narrow)
        assert [f["event"]["data"]["device"]["id"] for f in got] == ["n2"]
        await narrow.send_json_to({"type": "unsubscribe", "id": "created"})
        assert (await narrow.receive_json_from(timeout=5))["type"] == "unsubscribed"
        for _ in range(50):  # the groups are left just after the answer
            if not hub.joined:
                break
            await asyncio.sleep(0.02)
        assert hub.joined == set() and not hub._tasks


@asynctest
async def test_a_severity_filter_selects_alarm_events_only_by_their_severity(viewer, fleet):
    async with ws(user=viewer) as c:
        answer = await subscribe(c, "alarms", filters={"severity": ["major", "critical", "major"]})
        assert answer["filters"]["severity"] == ["critical", "major"]
        await publish("alarm.raised", {"alarm": 1, "device": "deep", "severity": "minor", "transition": "raised"})
        await publish("alarm.raised", {"alarm": 2, "device": "deep", "severity": "critical", "transition": "raised"})
        await publish(events.DEVICE_STATUS_CHANGED, status_changed("deep"))
        got = await frames(c)
    assert [(f["event"]["type"], f["event"]["data"].get("alarm")) for f in got] == [
        ("alarm.raised", 2),
        ("device.status_changed", None),
    ]
