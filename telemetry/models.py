"""Time-series storage: points (partitioned by day on PostgreSQL), latest values, dead letters."""

from __future__ import annotations

from typing import Any

from django.db import models

from devices.models import Device
from telemetry.choices import RejectReason


class TelemetryPoint(models.Model):
    """One value of one key of one device at one time. The table is created by the migration:
    on PostgreSQL partitioned by day on ``ts`` and written with COPY (see ``telemetry.store``).
    The composite key (device, key, ts) makes a redelivered message a no-op."""

    pk = models.CompositePrimaryKey("device_id", "key", "ts")
    device_id = models.CharField(max_length=64)
    key = models.CharField(max_length=128)
    ts = models.DateTimeField()
    value_num = models.FloatField(null=True)
    value_bool = models.BooleanField(null=True)
    value_str = models.TextField(null=True)
    value_json = models.JSONField(null=True)

    class Meta:
        managed = False
        db_table = "telemetry_point"
        ordering = ["device_id", "key", "ts"]

    def __str__(self) -> str:
        return f"{self.device_id}.{self.key}@{self.ts.isoformat()}"

    @property
    def value(self) -> Any:
        for value in (self.value_num, self.value_bool, self.value_str, self.value_json):
            if value is not None:
                return value
        return None


class LatestValue(models.Model):
    """The most recent value of each key of each device, updated once per ingested batch."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="latest_values")
    key = models.CharField(max_length=128)
    ts = models.DateTimeField()
    value = models.JSONField()

    class Meta:
        ordering = ["device", "key"]
        constraints = [models.UniqueConstraint(fields=["device", "key"], name="latestvalue_unique_device_key")]

    def __str__(self) -> str:
        return f"{self.device_id}.{self.key}={self.value!r}"


class DeadLetter(models.Model):
    """A message that was not ingested, with the reason. Bounded: ``trim_dead_letters`` keeps the
    newest ``DEAD_LETTER_MAX_ROWS``."""

    received_at = models.DateTimeField(db_index=True)
    topic = models.CharField(max_length=255)
    device_id = models.CharField(max_length=64, blank=True, db_index=True)
    reason = models.CharField(max_length=32, choices=RejectReason, db_index=True)
    detail = models.CharField(max_length=500, blank=True)
    payload = models.TextField(blank=True, help_text="The first 2 KiB of the payload.")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.reason}: {self.topic}"
