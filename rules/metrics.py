"""Rule engine metrics (Prometheus), served with the process's other metrics.

No labels: rule names are chosen by users (unbounded, and a rename would start a new series), and
the per-rule figures are on each rule already (``evaluated``, ``matched``, ``failed``,
``last_error``). ``fluxiot_rules_active`` is the number of enabled rules whose condition compiles in
this process's current rule set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVALUATED = Counter("fluxiot_rules_evaluated_total", "Rule conditions evaluated")
MATCHED = Counter("fluxiot_rules_matched_total", "Rule conditions that held (the rule triggered)")
FAILED = Counter("fluxiot_rules_failed_total", "Rule evaluations that failed (error, not a boolean, broken rule)")
ACTIVE = Gauge("fluxiot_rules_active", "Enabled rules whose condition compiles, in this process's rule set")


def record(evaluated: int, matched: int, failed: int) -> None:
    if evaluated:
        EVALUATED.inc(evaluated)
    if matched:
        MATCHED.inc(matched)
    if failed:
        FAILED.inc(failed)


def set_active(count: int) -> None:
    ACTIVE.set(count)
