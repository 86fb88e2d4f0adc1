import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from devices import services as device_services
from devices.choices import DeviceStatus
from devices.models import Device, DeviceStatusChange
from fluxiot import events
from telemetry import services
from telemetry.models import DeadLetter, LatestValue, TelemetryPoint
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def now_ms() -> int:
    return int(time.time() * 1000)


def item(device_id, kind, payload, received_ms=None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return [f"devices/{device_id}/{kind}", body, received_ms or now_ms()]


@pytest.fixture
def device():
    d = DeviceFactory(id="dev-1")
    device_services.activate_device(d, actor=None)
    return d


def values(device_id, key):
    return [p.value for p in TelemetryPoint.objects.filter(device_id=device_id, key=key).order_by("ts")]


def test_points_keep_their_types_and_latest_values_follow(device):
    ts = now_ms() - 5000
    result = services.ingest_batch(
        [
            item(
                "dev-1",
                "telemetry",
                {"temperature": 21.5, "count": 3, "on": True, "mode": "eco", "pos": {"x": 1}, "ts": ts},
            ),
            item("dev-1", "telemetry", {"temperature": 22.0, "ts": ts + 1000}),
        ]
    )
    assert (result.messages, result.points, result.stored, result.duplicates) == (2, 6, 6, 0)
    assert values("dev-1", "temperature") == [21.5, 22.0]
    assert (
        values("dev-1", "on") == [True] and values("dev-1", "mode") == ["eco"] and values("dev-1", "pos") == [{"x": 1}]
    )
    latest = {lv.key: lv.value for lv in LatestValue.objects.filter(device=device)}
    assert latest == {"temperature": 22.0, "count": 3, "on": True, "mode": "eco", "pos": {"x": 1}}


def test_a_redelivered_batch_stores_nothing_twice(device):
    batch = [item("dev-1", "telemetry", {"t": n, "ts": now_ms() - 10_000 + n}) for n in range(50)]
    assert services.ingest_batch(batch).stored == 50
    again = services.ingest_batch(batch)
    assert (again.points, again.stored, again.duplicates) == (50, 0, 50)
    assert TelemetryPoint.objects.filter(device_id="dev-1").count() == 50


def test_an_older_message_does_not_replace_a_newer_latest_value(device):
    services.ingest_batch([item("dev-1", "telemetry", {"t": 2, "ts": now_ms()})])
    services.ingest_batch([item("dev-1", "telemetry", {"t": 1, "ts": now_ms() - 60_000})])
    assert LatestValue.objects.get(device=device, key="t").value == 2


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1_700_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (1_700_000_000_123, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        ("2023-11-14T22:13:20Z", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-14T23:13:20+01:00", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-14T22:13:20", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ],
)
def test_timestamps_are_normalised(ts, expected):
    now = datetime(2023, 11, 15, tzinfo=UTC)
    assert services.parse_timestamp(ts, now) == expected


def test_missing_timestamp_means_receive_time(device):
    received = now_ms() - 3000
    services.ingest_batch([item("dev-1", "telemetry", {"t": 1}, received_ms=received)])
    point = TelemetryPoint.objects.get(device_id="dev-1", key="t")
    assert point.ts == datetime.fromtimestamp(received / 1000, UTC)


BAD = [
    (b"{not json", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"hello"', "not_an_object"),
    (b"[]", "not_an_object"),
    (json.dumps({"t": None}).encode(), "unsupported_value"),
    (b'{"t": NaN}', "malformed_json"),  # NaN is not JSON (RFC 8259)
    (b'{"t": 1e400}', "malformed_json"),  # infinity
    (b'{"t": "\\ud800"}', "malformed_json"),  # a lone surrogate has no UTF-8
    (b'{"t": "a\\u0000b"}', "unsupported_value"),  # PostgreSQL text cannot hold NUL
    (b'{"t": {"nested": ["\\u0000"]}}', "unsupported_value"),  # nor can jsonb
    (json.dumps({"t": "x" * 5000}).encode(), "unsupported_value"),
    (json.dumps({"": 1}).encode(), "bad_key"),
    (json.dumps({f"k{i}": i for i in range(201)}).encode(), "too_many_keys"),
    (json.dumps({"t": 1, "ts": "yesterday-ish"}).encode(), "bad_timestamp"),
    (json.dumps({"t": 1, "ts": True}).encode(), "bad_timestamp"),
    (json.dumps({"t": 1, "ts": int(time.time() * 1000) + 86_400_000}).encode(), "future_timestamp"),
    (json.dumps({"t": 1, "ts": 1_000_000_000}).encode(), "old_timestamp"),
    (b"x" * (64 * 1024 + 1), "payload_too_large"),
]


@pytest.mark.parametrize(("payload", "reason"), BAD)
def test_bad_messages_are_dead_lettered_without_disturbing_the_batch(device, payload, reason):
    result = services.ingest_batch(
        [
            item("dev-1", "telemetry", {"good": 1}),
            item("dev-1", "telemetry", payload),
            item("dev-1", "telemetry", {"good": 2, "ts": now_ms() + 1}),
        ]
    )
    assert result.rejected == {reason: 1}
    assert values("dev-1", "good") == [1, 2]
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.device_id, letter.topic) == (reason, "dev-1", "devices/dev-1/telemetry")
    assert len(letter.payload) <= 2048 * 4


def test_topic_device_and_oversize_rejections(device):
    DeviceFactory(id="registered-only")
    disabled = DeviceFactory(id="was-active")
    device_services.activate_device(disabled, actor=None)
    device_services.disable_device(disabled, actor=None)
    result = services.ingest_batch(
        [
            ["devices/dev-1/somewhere", b"{}", now_ms()],
            ["not/the/contract", b"{}", now_ms()],
            ["devices/dev-1/telemetry/extra", b"{}", now_ms()],
            item("ghost", "telemetry", {"t": 1}),
            item("registered-only", "telemetry", {"t": 1}),
            item("was-active", "telemetry", {"t": 1}),
            ["devices/dev-1/telemetry", b'{"t": 1', now_ms(), "oversize"],
            item("dev-1", "status", b"sleeping"),
            item("dev-1", "attributes", b"[1]"),
        ]
    )
    assert result.rejected == {
        "bad_topic": 3,
        "unknown_device": 1,
        "device_not_active": 2,
        "payload_too_large": 1,
        "bad_status": 1,
        "not_an_object": 1,
    }
    assert DeadLetter.objects.count() == 9 and not TelemetryPoint.objects.exists()


def test_telemetry_marks_online_and_updates_last_seen(device, bus, django_capture_on_commit_callbacks):
    listener = bus(events.DEVICE_STATUS_CHANGED, events.TELEMETRY_RECEIVED)
    received = now_ms()
    with django_capture_on_commit_callbacks(execute=True):
        services.ingest_batch(
            [item("dev-1", "telemetry", {"t": 1}, received), item("dev-1", "telemetry", {"t": 2}, received + 5)]
        )
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    assert device.last_seen_at == datetime.fromtimestamp((received + 5) / 1000, UTC)
    got = {e["type"]: e for e in listener.received()}
    assert got["device.status_changed"]["data"]["new_status"] == "online"
    assert got["telemetry.received"]["data"]["devices"]["dev-1"]["values"]["t"]["value"] == 2


def test_status_messages_and_last_will(device):
    services.ingest_batch([item("dev-1", "status", b"online")])
    device.refresh_from_db()
    assert device.status == "online"
    services.ingest_batch([item("dev-1", "telemetry", {"t": 1}), item("dev-1", "status", b"offline")])
    device.refresh_from_db()
    assert device.status == "offline"  # the last word in the batch wins
    reasons = list(DeviceStatusChange.objects.filter(device=device).values_list("new_status", flat=True))
    assert reasons == ["offline", "online"]


def test_automatic_status_never_overrides_maintenance(device):
    device_services.set_status(device, DeviceStatus.MAINTENANCE)
    services.ingest_batch([item("dev-1", "telemetry", {"t": 1}), item("dev-1", "status", b"online")])
    device.refresh_from_db()
    assert device.status == DeviceStatus.MAINTENANCE and device.last_seen_at is not None


def test_attributes_with_a_nul_character_are_dead_lettered_and_the_rest_is_kept(device):
    result = services.ingest_batch(
        [
            item("dev-1", "attributes", b'{"firmware": "1.0\\u0000"}'),
            item("dev-1", "attributes", {"model": "X"}),
            item("dev-1", "telemetry", {"t": 1}),
        ]
    )
    assert result.rejected == {"unsupported_value": 1}
    device.refresh_from_db()
    assert device.attributes == {"model": "X"} and values("dev-1", "t") == [1]


def test_attributes_merge_apart_from_metadata(device):
    Device.objects.filter(pk="dev-1").update(metadata={"room": 4})
    services.ingest_batch([item("dev-1", "attributes", {"firmware": "1.0", "model": "X"})])
    services.ingest_batch([item("dev-1", "attributes", {"firmware": "1.1"})])
    device.refresh_from_db()
    assert device.attributes == {"firmware": "1.1", "model": "X"} and device.metadata == {"room": 4}


def test_silent_devices_go_offline_after_their_heartbeat_timeout(device, settings):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 60
    quick = DeviceFactory(id="quick", heartbeat_timeout=5)
    device_services.activate_device(quick, actor=None)
    now = timezone.now()
    services.ingest_batch([item("dev-1", "telemetry", {"t": 1}), item("quick", "telemetry", {"t": 1})])
    assert services.mark_silent_devices_offline(now + timedelta(seconds=30)) == 1
    assert Device.objects.get(pk="quick").status == "offline"
    assert Device.objects.get(pk="dev-1").status == "online"
    assert services.mark_silent_devices_offline(now + timedelta(seconds=90)) == 1
    change = DeviceStatusChange.objects.filter(device_id="dev-1").first()
    assert change.new_status == "offline" and "heartbeat" in change.reason


def test_partitions_are_created_ahead_and_on_demand(device):
    from django.db import connection

    services.create_partitions(days_ahead=3)
    old = now_ms() - 20 * 86_400_000
    services.ingest_batch([item("dev-1", "telemetry", {"t": 1, "ts": old})])
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'telemetry_point'::regclass")
        assert cursor.fetchone()[0] >= 5
    assert TelemetryPoint.objects.filter(device_id="dev-1").count() == 1


def test_dead_letters_are_bounded(settings):
    settings.DEAD_LETTER_MAX_ROWS = 5
    services.ingest_batch([["bad/topic", b"x", now_ms()] for _ in range(12)])
    assert services.trim_dead_letters() == 7
    assert DeadLetter.objects.count() == 5
    assert services.trim_dead_letters() == 0


def test_binary_payloads_are_dead_lettered_with_their_nul_bytes_escaped(device):
    """PostgreSQL text refuses NUL: a raw frame must not fail the whole batch."""
    result = services.ingest_batch(
        [item(device.id, "telemetry", b"\x00\x01\xff binary"), item(device.id, "telemetry", {"t": 1})]
    )
    assert dict(result.rejected) == {"malformed_json": 1}
    letter = DeadLetter.objects.get()
    assert letter.payload.startswith("\\x00\x01\\xff") and "\x00" not in letter.payload
    assert LatestValue.objects.get(device_id=device.id, key="t").value == 1
