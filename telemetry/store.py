"""Writing points: one interface, a backend per database.

PostgreSQL: a batch is COPYed straight into the partitioned points table. When a point is there
already (a redelivered message), the COPY fails on the primary key and is rolled back to a savepoint,
and the batch goes through a temporary staging table and ``ON CONFLICT DO NOTHING`` instead: a
redelivered message stores nothing twice, and the common case costs one COPY. The latest values
(newest per device and key, found in Python) are upserted in one statement, last, so the rows every
worker shares stay locked only until the commit that follows. SQLite (embedded mode):
``INSERT OR IGNORE`` and an upsert, row by row in one transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from django.db import DatabaseError, connection, transaction
from psycopg.errors import CheckViolation, UniqueViolation

logger = logging.getLogger(__name__)


# One value of one key of one device at one time: (device_id, key, ts, value), value an int, float,
# bool, str, dict or list. A plain tuple: at tens of thousands per second a named tuple's
# constructor was the single largest cost of parsing.
Point = tuple[str, str, datetime, Any]


def split_value(value: Any) -> tuple[float | None, bool | None, str | None, str | None]:
    """(num, bool, str, json) columns of a value; exactly one is set."""
    if isinstance(value, bool):
        return None, value, None, None
    if isinstance(value, (int, float)):
        return float(value), None, None, None
    if isinstance(value, str):
        return None, None, value, None
    return None, None, None, json.dumps(value, separators=(",", ":"))


def partition_name(day: date) -> str:
    return f"telemetry_point_p{day:%Y%m%d}"


class PostgresStore:
    _known_partitions: set[date] = set()

    def ensure_partitions(self, days: Iterable[date]) -> None:
        """Create the daily partitions that do not exist yet (idempotent, safe under concurrency)."""
        missing = sorted(set(days) - self._known_partitions)
        for day in missing:
            sql = (
                f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF telemetry_point "
                f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
            )
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(sql)
            except DatabaseError as exc:  # another worker created it at the same moment
                logger.info("partition %s: %s", partition_name(day), exc)
            # Remember it only once committed: DDL rolls back with the transaction around it.
            transaction.on_commit(lambda day=day: self._known_partitions.add(day))

    def write(self, points: list[Point]) -> int:
        """Store points and update latest values; returns how many points were new."""
        inserted = self.write_points(points)
        self.write_latest(points)
        return inserted

    def write_points(self, points: list[Point]) -> int:
        """Store points (not the latest values); returns how many were new."""
        if not points:
            return 0
        days = {ts.astimezone(UTC).date() for ts in {p[2] for p in points}}
        self.ensure_partitions(days)
        try:
            return self._copy(points)
        except CheckViolation:
            # A partition we believed in is gone (dropped by retention, or its creation rolled
            # back): forget what we knew, create again, retry once.
            logger.warning("telemetry: missing partition for %s; recreating", sorted(days))
            self._known_partitions.clear()
            self.ensure_partitions(days)
            return self._copy(points)

    def _copy(self, points: list[Point]) -> int:
        connection.ensure_connection()
        raw = connection.connection
        # Each attempt in a savepoint (its own transaction in autocommit): a failed one leaves the
        # caller's transaction usable.
        with raw.cursor() as cursor:
            try:
                # The common case, nothing stored before: COPY straight into the points table.
                with transaction.atomic(), cursor.copy(f"COPY telemetry_point ({_COLUMNS}) FROM STDIN") as copy:
                    _copy_rows(copy, points)
                return len(points)
            except UniqueViolation:
                # A redelivered message (or two of one device in one millisecond without ``ts``): the
                # batch goes through a staging table and ``ON CONFLICT DO NOTHING`` instead.
                with transaction.atomic():
                    return self._write_deduplicated(cursor, points)

    def _write_deduplicated(self, cursor: Any, points: list[Point]) -> int:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS telemetry_staging "
            "(LIKE telemetry_point INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY telemetry_staging ({_COLUMNS}) FROM STDIN") as copy:
            _copy_rows(copy, points)
        cursor.execute("INSERT INTO telemetry_point SELECT * FROM telemetry_staging ON CONFLICT DO NOTHING")
        return cursor.rowcount

    def write_latest(self, points: list[Point]) -> None:
        """Upsert the newest value of each (device, key) among ``points``. These rows are shared by
        every worker's batches and stay locked until the commit: run it as late as possible."""
        if not points:
            return
        latest = latest_values(points)
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO telemetry_latestvalue (device_id, key, ts, value)
                SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::timestamptz[], %s::jsonb[])
                ON CONFLICT (device_id, key) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value
                WHERE telemetry_latestvalue.ts <= EXCLUDED.ts
                """,
                [
                    [device_id for device_id, _ in latest],
                    [key for _, key in latest],
                    [ts for ts, _ in latest.values()],
                    [_json(value) for _, value in latest.values()],
                ],
            )


_COLUMNS = "device_id, key, ts, value_num, value_bool, value_str, value_json"


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer past 64 bits (orjson's limit) from a caller other than the parser
        return json.dumps(value)


def _copy_rows(copy: Any, points: list[Point]) -> None:
    write_row = copy.write_row
    for device_id, key, ts, value in points:
        kind = type(value)
        if kind is float or kind is int:
            write_row((device_id, key, ts, float(value), None, None, None))
        else:
            write_row((device_id, key, ts, *split_value(value)))


def latest_values(points: list[Point]) -> dict[tuple[str, str], tuple[datetime, Any]]:
    """The newest value of each (device, key) among ``points``, in key order (a fixed lock order
    for the upsert: two workers' batches never deadlock on it)."""
    latest: dict[tuple[str, str], tuple[datetime, Any]] = {}
    for device_id, key, ts, value in points:
        current = latest.get((device_id, key))
        if current is None or current[0] <= ts:
            latest[(device_id, key)] = (ts, value)
    return dict(sorted(latest.items()))


class SQLiteStore:
    def ensure_partitions(self, days: Iterable[date]) -> None:
        """SQLite keeps one table."""

    def write(self, points: list[Point]) -> int:
        inserted = self.write_points(points)
        self.write_latest(points)
        return inserted

    def write_points(self, points: list[Point]) -> int:
        if not points:
            return 0
        adapt = connection.ops.adapt_datetimefield_value
        rows = [(d, k, adapt(ts), *split_value(v)) for d, k, ts, v in points]
        with transaction.atomic(), connection.cursor() as cursor:
            before = _sqlite_changes(cursor)
            cursor.executemany(
                "INSERT OR IGNORE INTO telemetry_point "
                "(device_id, key, ts, value_num, value_bool, value_str, value_json) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
            return _sqlite_changes(cursor) - before

    def write_latest(self, points: list[Point]) -> None:
        if not points:
            return
        adapt = connection.ops.adapt_datetimefield_value
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO telemetry_latestvalue (device_id, key, ts, value) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, value = excluded.value "
                "WHERE telemetry_latestvalue.ts <= excluded.ts",
                [
                    (device_id, key, adapt(ts), json.dumps(value))
                    for (device_id, key), (ts, value) in latest_values(points).items()
                ],
            )


def _sqlite_changes(cursor: Any) -> int:
    cursor.execute("SELECT total_changes()")
    return cursor.fetchone()[0]


def get_store() -> PostgresStore | SQLiteStore:
    return PostgresStore() if connection.vendor == "postgresql" else SQLiteStore()
