"""Scene metrics (Prometheus), served with the process's other metrics. Labels are bounded: the
branch an execution took, an action's outcome, why a trigger was dropped; never a scene's name."""

from __future__ import annotations

from prometheus_client import Counter

EXECUTIONS = Counter("fluxiot_scene_executions_total", "Scene executions, by the branch they took", ["branch"])
ACTIONS = Counter("fluxiot_scene_actions_total", "Scene actions run, by outcome", ["outcome"])
DROPPED = Counter(
    "fluxiot_scene_triggers_dropped_total",
    "Device-data triggers dropped at the ingest without a run (the scene was cooling down)",
    ["reason"],
)


def executed(branch: str) -> None:
    EXECUTIONS.labels(branch).inc()


def actions(ok: int, failed: int) -> None:
    if ok:
        ACTIONS.labels("ok").inc(ok)
    if failed:
        ACTIONS.labels("failed").inc(failed)


def dropped(reason: str, count: int = 1) -> None:
    if count:
        DROPPED.labels(reason).inc(count)
