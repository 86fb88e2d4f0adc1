"""The PostgreSQL store: one COPY when nothing is there yet, the deduplicating path otherwise."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction

from telemetry.models import LatestValue, TelemetryPoint
from telemetry.store import PostgresStore, get_store, latest_values
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def store():
    assert connection.vendor == "postgresql"
    DeviceFactory(id="s-1")
    DeviceFactory(id="s-2")
    return get_store()


def stored(device_id: str, key: str) -> list:
    return [p.value for p in TelemetryPoint.objects.filter(device_id=device_id, key=key).order_by("ts")]


def test_new_points_are_stored_with_their_types(store):
    points = [
        ("s-1", "t", at(0), 21.5),
        ("s-1", "n", at(0), 3),
        ("s-1", "on", at(0), True),
        ("s-1", "mode", at(0), "eco\ttab\\slash\nline"),
        ("s-1", "pos", at(0), {"x": [1, 2]}),
    ]
    assert store.write(points) == 5
    assert stored("s-1", "t") == [21.5] and stored("s-1", "n") == [3] and stored("s-1", "on") == [True]
    assert stored("s-1", "mode") == ["eco\ttab\\slash\nline"] and stored("s-1", "pos") == [{"x": [1, 2]}]


def test_a_batch_overlapping_stored_points_stores_only_the_new_ones(store):
    first = [("s-1", "t", at(n), float(n)) for n in range(10)]
    assert store.write(first) == 10
    overlapping = [("s-1", "t", at(n), float(n)) for n in range(5, 15)]
    assert store.write(overlapping) == 5
    assert stored("s-1", "t") == [float(n) for n in range(15)]
    assert LatestValue.objects.get(device_id="s-1", key="t").value == 14.0


def test_the_same_point_twice_in_one_batch_is_stored_once(store):
    # Two messages of one device in one millisecond without "ts" get the same receive time.
    assert store.write([("s-1", "t", at(0), 1.0), ("s-1", "t", at(0), 1.0), ("s-2", "t", at(0), 2.0)]) == 2
    assert stored("s-1", "t") == [1.0] and stored("s-2", "t") == [2.0]


def test_a_conflict_leaves_the_callers_transaction_usable(store):
    store.write([("s-1", "t", at(0), 1.0)])
    with transaction.atomic():
        assert store.write([("s-1", "t", at(0), 1.0), ("s-1", "t", at(1), 2.0)]) == 1
        assert store.write([("s-1", "t", at(2), 3.0)]) == 1
        assert TelemetryPoint.objects.filter(device_id="s-1").count() == 3


def test_latest_values_never_go_back_in_time(store):
    store.write([("s-1", "t", at(10), 10.0), ("s-1", "t", at(5), 5.0)])
    assert LatestValue.objects.get(device_id="s-1", key="t").value == 10.0
    store.write([("s-1", "t", at(7), 7.0)])
    assert LatestValue.objects.get(device_id="s-1", key="t").value == 10.0
    store.write([("s-1", "t", at(11), {"a": 1})])
    assert LatestValue.objects.get(device_id="s-1", key="t").value == {"a": 1}


def test_latest_values_come_in_one_lock_order():
    points = [("b", "y", at(1), 1), ("a", "z", at(1), 2), ("b", "x", at(2), 3), ("a", "z", at(0), 4)]
    assert list(latest_values(points).items()) == [
        (("a", "z"), (at(1), 2)),
        (("b", "x"), (at(2), 3)),
        (("b", "y"), (at(1), 1)),
    ]


def test_a_dropped_partition_is_created_again(store):
    store.write([("s-1", "t", at(0), 1.0)])
    day = at(0).date()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE telemetry_point_p{day:%Y%m%d}")
    PostgresStore._known_partitions.add(day)  # as after a commit: the store believes in it
    try:
        assert store.write([("s-1", "t", at(1), 2.0)]) == 1
    finally:
        PostgresStore._known_partitions.discard(day)
    assert stored("s-1", "t") == [2.0]


def test_integers_past_64_bits_are_kept_as_latest_values(store):
    store.write([("s-1", "big", at(0), 2**70)])
    assert LatestValue.objects.get(device_id="s-1", key="big").value == 2**70
