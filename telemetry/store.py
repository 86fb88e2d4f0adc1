"""Writing points: one interface, a backend per database.

PostgreSQL: a batch is COPYed into a temporary staging table, then moved into the partitioned
points table with ``ON CONFLICT DO NOTHING`` (a redelivered message stores nothing twice), and the
latest values are upserted from the same staging rows in one statement. SQLite (embedded mode):
``INSERT OR IGNORE`` and an upsert, row by row in one transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection, transaction
from psycopg.errors import CheckViolation

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
        if not points:
            return 0
        days = {p[2].astimezone(UTC).date() for p in points}
        self.ensure_partitions(days)
        try:
            return self._write(points)
        except CheckViolation:
            # A partition we believed in is gone (dropped by retention, or its creation rolled
            # back): forget what we knew, create again, retry once.
            logger.warning("telemetry: missing partition for %s; recreating", sorted(days))
            self._known_partitions.clear()
            self.ensure_partitions(days)
            return self._write(points)

    def _write(self, points: list[Point]) -> int:
        connection.ensure_connection()
        raw = connection.connection
        with transaction.atomic(), raw.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS telemetry_staging "
                "(LIKE telemetry_point INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cursor.copy(
                "COPY telemetry_staging (device_id, key, ts, value_num, value_bool, value_str, value_json) FROM STDIN"
            ) as copy:
                for device_id, key, ts, value in points:
                    copy.write_row((device_id, key, ts, *split_value(value)))
            cursor.execute("INSERT INTO telemetry_point SELECT * FROM telemetry_staging ON CONFLICT DO NOTHING")
            inserted = cursor.rowcount
            cursor.execute(
                """
                INSERT INTO telemetry_latestvalue (device_id, key, ts, value)
                SELECT DISTINCT ON (device_id, key) device_id, key, ts,
                       COALESCE(to_jsonb(value_num), to_jsonb(value_bool), to_jsonb(value_str), value_json)
                FROM telemetry_staging
                ORDER BY device_id, key, ts DESC
                ON CONFLICT (device_id, key) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value
                WHERE telemetry_latestvalue.ts <= EXCLUDED.ts
                """
            )
        return inserted


class SQLiteStore:
    def ensure_partitions(self, days: Iterable[date]) -> None:
        """SQLite keeps one table."""

    def write(self, points: list[Point]) -> int:
        if not points:
            return 0
        ops = connection.ops
        rows = [(d, k, ops.adapt_datetimefield_value(ts), *split_value(v)) for d, k, ts, v in points]
        latest: dict[tuple[str, str], tuple[str, Any]] = {}
        for p, row in zip(points, rows, strict=True):
            current = latest.get((p[0], p[1]))
            if current is None or current[0] <= row[2]:
                latest[(p[0], p[1])] = (row[2], p[3])
        with transaction.atomic(), connection.cursor() as cursor:
            before = _sqlite_changes(cursor)
            cursor.executemany(
                "INSERT OR IGNORE INTO telemetry_point "
                "(device_id, key, ts, value_num, value_bool, value_str, value_json) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
            inserted = _sqlite_changes(cursor) - before
            cursor.executemany(
                "INSERT INTO telemetry_latestvalue (device_id, key, ts, value) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, value = excluded.value "
                "WHERE telemetry_latestvalue.ts <= excluded.ts",
                [(device_id, key, ts, json.dumps(value)) for (device_id, key), (ts, value) in latest.items()],
            )
        return inserted


def _sqlite_changes(cursor: Any) -> int:
    cursor.execute("SELECT total_changes()")
    return cursor.fetchone()[0]


def get_store() -> PostgresStore | SQLiteStore:
    return PostgresStore() if connection.vendor == "postgresql" else SQLiteStore()
