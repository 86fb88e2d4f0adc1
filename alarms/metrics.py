"""Prometheus counters of alarm transitions and notification deliveries (incremented after commit)."""

from __future__ import annotations

from prometheus_client import Counter

ALARM_TRANSITIONS = Counter(
    "fluxiot_alarm_transitions_total",
    "Alarm transitions (raised, repeated, escalated, acknowledged, cleared) by severity",
    ["transition", "severity"],
)
NOTIFICATION_DELIVERIES = Counter(
    "fluxiot_notification_deliveries_total",
    "Notification delivery attempts by channel kind and outcome (sent, failed: will retry, dead)",
    ["kind", "status"],
)
