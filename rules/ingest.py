"""Rules inside the ingest batch: what came in (telemetry, attributes, status changes, command
results) becomes engine messages, the rules judge them, and the matching rules' actions run inside
the batch's transaction (derived points are stored with the batch; commands, MQTT publishes, events
and webhooks go out once it commits)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control.scenes import engine as scene_engine
from rules.actions import ActionContext, run_actions
from rules.choices import Trigger
from rules.engine import EngineMessage, Outcome, RuleCounts, RuleSet, evaluate, flush_counters
from rules.models import DeviceFacts

logger = logging.getLogger(__name__)


@dataclass
class RuleInput:
    """One thing that happened in the batch, for the rules of its trigger."""

    trigger: str
    device_id: str
    received: datetime
    index: int = 0
    ts: datetime | None = None  # telemetry: the reading's own time
    telemetry: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    command: dict[str, Any] = field(default_factory=dict)


@dataclass
class RulesRun:
    points: list[Any]
    outcome: Outcome


def wanted(ruleset: RuleSet, trigger: str) -> bool:
    """Whether any rule or scene listens to this trigger (so the ingest collects its inputs at all)."""
    return bool(ruleset.for_trigger(trigger)) or scene_engine.wants(trigger)


def run_rules(inputs: list[RuleInput], ruleset: RuleSet) -> RulesRun:
    """Judge the batch's inputs and run the actions of every match (inside the caller's
    transaction, before its points are written: ``previous`` is each device's latest values before
    this batch). The caller writes the counters with ``finish`` at the end of its transaction."""
    from devices.models import Device
    from telemetry.models import LatestValue

    inputs = [item for item in inputs if wanted(ruleset, item.trigger)]
    if not inputs:
        return RulesRun([], Outcome())
    ids = {item.device_id for item in inputs}
    rows = Device.objects.filter(pk__in=ids).values_list(
        "id", "name", "device_type", "tags", "group__path", "status", "metadata", "attributes"
    )
    devices = {
        device_id: (DeviceFacts(device_id, kind, tuple(tags or ()), path or ""), name, status, meta or {}, attrs or {})
        for device_id, name, kind, tags, path, status, meta, attrs in rows
    }
    previous: dict[str, dict[str, Any]] = {}
    if ruleset.needs_previous():
        latest = LatestValue.objects.filter(device_id__in=ids).values_list("device_id", "key", "value")
        for device_id, key, value in latest:
            previous.setdefault(device_id, {})[key] = value
    empty: dict[str, Any] = {}
    messages = []
    for item in inputs:
        known = devices.get(item.device_id)
        if known is None:
            continue
        facts, name, status, metadata, attributes = known
        messages.append(
            EngineMessage(
                device=facts,
                trigger=item.trigger,
                received=item.received,
                index=item.index,
                name=name,
                device_status=item.status.get("new", status) if item.trigger == Trigger.STATUS else status,
                metadata=metadata,
                attributes=attributes,
                reported_attributes=item.attributes,
                previous=previous.get(item.device_id, empty),
                telemetry=item.telemetry,
                status=item.status,
                command=item.command,
                ts=item.ts,
            )
        )
    outcome = evaluate(messages, ruleset)
    scene_engine.on_batch(messages)  # scenes with device-data triggers: queued to run after the commit
    context = ActionContext()
    for rule, message in outcome.matches:
        before = len(context.errors)
        run_actions(context, list(rule.actions), rule, message)
        if len(context.errors) > before:
            counts = outcome.counts.setdefault(rule.id, RuleCounts())
            counts.failed += 1
            counts.last_error = "; ".join(context.errors[before:])
            counts.last_error_at = message.received
            logger.warning("rule %r: actions failed for %s: %s", rule.name, message.device.id, counts.last_error)
    return RulesRun(context.points, outcome)


def finish(run: RulesRun) -> None:
    """Write the rules' counters: last in the batch's transaction, since the rows stay locked until
    it commits and concurrent batches would queue on them."""
    flush_counters(run.outcome)
