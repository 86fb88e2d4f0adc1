"""Ingestion metrics (Prometheus). In the web process they appear on /metrics; worker and bridge
processes serve theirs on WORKER_METRICS_PORT / BRIDGE_METRICS_PORT."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from telemetry.services import IngestResult

MESSAGES = Counter("fluxiot_ingest_messages_total", "Messages handed to ingestion")
REJECTED = Counter("fluxiot_ingest_rejected_total", "Messages rejected (dead-lettered), by reason", ["reason"])
POINTS = Counter("fluxiot_ingest_points_total", "Telemetry points parsed")
STORED = Counter("fluxiot_ingest_points_stored_total", "Telemetry points stored (duplicates excluded)")
BATCH_SIZE = Histogram(
    "fluxiot_ingest_batch_messages", "Messages per ingested batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000)
)


def record_batch(result: IngestResult) -> None:
    MESSAGES.inc(result.messages)
    POINTS.inc(result.points)
    STORED.inc(result.stored)
    BATCH_SIZE.observe(result.messages)
    for reason, count in result.rejected.items():
        REJECTED.labels(reason=reason).inc(count)
