"""The points table: partitioned by day on PostgreSQL (partitions are created ahead by a beat task
and on demand by the writer), a plain table on SQLite. Both keyed by (device, key, ts)."""

from django.db import migrations

POSTGRES = """
CREATE TABLE IF NOT EXISTS telemetry_point (
    device_id varchar(64) NOT NULL,
    key varchar(128) NOT NULL,
    ts timestamptz NOT NULL,
    value_num double precision,
    value_bool boolean,
    value_str text,
    value_json jsonb,
    PRIMARY KEY (device_id, key, ts)
) PARTITION BY RANGE (ts)
"""

SQLITE = """
CREATE TABLE IF NOT EXISTS telemetry_point (
    device_id varchar(64) NOT NULL,
    key varchar(128) NOT NULL,
    ts datetime NOT NULL,
    value_num real,
    value_bool bool,
    value_str text,
    value_json text,
    PRIMARY KEY (device_id, key, ts)
) WITHOUT ROWID
"""


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    schema_editor.execute(POSTGRES if vendor == "postgresql" else SQLITE)


def drop(apps, schema_editor):
    schema_editor.execute("DROP TABLE IF EXISTS telemetry_point")


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0001_initial")]
    operations = [migrations.RunPython(create, drop)]
