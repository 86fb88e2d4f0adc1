"""Plugin host metrics (Prometheus). ``plugin`` is the name the caller gives ``run_plugin`` (the
plugin's id when it gives none)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CALLS = Counter("fluxiot_plugin_calls_total", "Plugin calls (one per batch of messages)", ["plugin"])
MESSAGES = Counter("fluxiot_plugin_messages_total", "Messages handed to plugins", ["plugin"])
FAILURES = Counter(
    "fluxiot_plugin_failures_total",
    "Plugin failures by reason: a failed call counts once (trap, timeout, fuel, memory, bad_output, "
    "output_too_large, abi, module); rejected and bad_output count per message; log counts log faults",
    ["plugin", "reason"],
)
CALL_SECONDS = Histogram(
    "fluxiot_plugin_call_seconds",
    "Duration of a plugin call (a batch), JSON encoding and decoding included",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
