"""Benchmark of the rule engine's hot path (``rules.engine.evaluate``), without a database.

20 rules of typical shapes (comparisons on telemetry, tag and metadata tests, previous values,
attributes, ``now``; most for all devices, some scoped by tag, type or group) are compiled directly
into a ``RuleSet``; 1,000 telemetry messages of 5 keys with nested device data are judged against
them. Figures, on one core (the process is pinned to one CPU when the OS allows; times are the
process's CPU time, best of the runs):

1. condition evaluations per second through ``evaluate`` (context building included), with
   10 messages per device (a device's values converted once per batch) and with 1,000 devices
   of one message each; target >= 200,000/s;
2. condition evaluations per second of the programs alone, on contexts built beforehand;
3. the cost of building a message's context: fresh (all variables), and through ``evaluate``'s
   per-device cache.

    .venv/bin/python bench/rules.py [--messages 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fluxiot.settings_test")

import django  # noqa: E402

django.setup()

from rules.cel import FULL, ContextCache, ContextShape, build_context  # noqa: E402
from rules.choices import Scope, Trigger  # noqa: E402
from rules.engine import CompiledRule, EngineMessage, RuleSet, evaluate  # noqa: E402
from rules.models import DeviceFacts  # noqa: E402

TARGET = 200_000
SEED = 20240601

# (condition, scope, scope_value, group_path)
RULES = [
    ("telemetry.temperature > 30.0", Scope.ALL, "", None),
    ('"lab" in device.tags && telemetry.humidity > 80', Scope.ALL, "", None),
    ("has(telemetry.battery) && telemetry.battery < 20", Scope.ALL, "", None),
    ('telemetry.mode == "manual"', Scope.ALL, "", None),
    ('device.metadata.site == "paris" && telemetry.pressure < 990.0', Scope.ALL, "", None),
    ("has(previous.temperature) && telemetry.temperature - previous.temperature > 5.0", Scope.ALL, "", None),
    ('attributes.firmware != "1.4.2"', Scope.ALL, "", None),
    ("now.getHours() >= 22 || now.getHours() < 6", Scope.ALL, "", None),
    ('device.type == "camera" && telemetry.temperature > 60.0', Scope.ALL, "", None),
    ('telemetry.temperature > 25.0 && telemetry.humidity > 30 && device.group.startsWith("/1/")', Scope.ALL, "", None),
    ("telemetry.humidity < 10 || telemetry.humidity > 95", Scope.ALL, "", None),
    ("device.metadata.rack.row > 4 && telemetry.temperature > 28.0", Scope.ALL, "", None),
    ('device.tags.exists(t, t.startsWith("zone-")) && telemetry.battery < 50', Scope.ALL, "", None),
    ("telemetry.pressure > 1030.0 && previous.pressure < 1030.0", Scope.ALL, "", None),
    ('size(device.tags) > 2 && telemetry.mode != "auto"', Scope.ALL, "", None),
    ("telemetry.temperature < -10.0", Scope.TAG, "outdoor", None),
    ("telemetry.battery < 15 && telemetry.temperature < 0.0", Scope.TAG, "lab", None),
    ('telemetry.mode == "eco" && telemetry.humidity > 60', Scope.DEVICE_TYPE, "sensor", None),
    ("telemetry.temperature > 35.0", Scope.GROUP, "1", "/1/"),
    ('attributes.model == "X1" && telemetry.pressure > 1020.0', Scope.GROUP, "2", "/1/2/"),
]

TAGS = ["lab", "outdoor", "floor-1", "floor-2", "zone-a", "zone-b", "critical"]
GROUPS = ["/1/", "/1/2/", "/3/", "/3/4/", ""]


def ruleset() -> RuleSet:
    rules = [
        CompiledRule.build(
            id=i + 1,
            name=f"rule-{i + 1:02d}",
            condition=condition,
            trigger=Trigger.TELEMETRY,
            priority=10 * (i % 5),
            scope=scope,
            scope_value=value,
            group_path=path,
            actions=[{"type": "log", "params": {}}],
        )
        for i, (condition, scope, value, path) in enumerate(RULES)
    ]
    assert not any(rule.program is None for rule in rules), [rule.error for rule in rules]
    return RuleSet(rules, "bench")


def messages(count: int, per_device: int, rng: random.Random) -> list[EngineMessage]:
    """``count`` telemetry messages, ``per_device`` of each device, interleaved as a batch would be."""
    devices = []
    for n in range(max(1, count // per_device)):
        facts = DeviceFacts(
            id=f"dev-{n:05d}",
            device_type=rng.choice(["sensor", "sensor", "sensor", "camera", "gateway"]),
            tags=tuple(rng.sample(TAGS, rng.randint(1, 4))),
            group_path=rng.choice(GROUPS),
        )
        devices.append(
            {
                "facts": facts,
                "name": f"Device {n}",
                "status": "online",
                "metadata": {"site": rng.choice(["paris", "lyon"]), "rack": {"row": rng.randint(1, 8), "slot": 3}},
                "attributes": {"firmware": rng.choice(["1.4.1", "1.4.2"]), "model": rng.choice(["X1", "X2"])},
                "previous": _telemetry(rng),
            }
        )
    start = datetime(2024, 6, 1, 21, 0, tzinfo=UTC)
    batch = []
    for i in range(count):
        device = devices[i % len(devices)]
        batch.append(
            EngineMessage(
                device=device["facts"],
                trigger=Trigger.TELEMETRY,
                received=start + timedelta(milliseconds=10 * i),
                index=i,
                name=device["name"],
                device_status=device["status"],
                metadata=device["metadata"],
                attributes=device["attributes"],
                previous=device["previous"],
                telemetry=_telemetry(rng),
            )
        )
    return batch


def _telemetry(rng: random.Random) -> dict[str, object]:
    return {
        "temperature": round(rng.uniform(-15.0, 40.0), 1),
        "humidity": rng.randint(0, 100),
        "pressure": round(rng.uniform(980.0, 1040.0), 1),
        "battery": rng.randint(0, 100),
        "mode": rng.choice(["auto", "manual", "eco"]),
    }


def best(repeat: int, fn: Callable[[], object]) -> float:
    """The least CPU time of ``repeat`` runs: CPU time rather than wall-clock, so that other
    processes taking the core for a while do not count against the engine."""
    timings = []
    for _ in range(repeat):
        started = time.process_time()
        fn()
        timings.append(time.process_time() - started)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rng = random.Random(SEED)
    rules = ruleset()
    shared = messages(args.messages, 10, rng)
    distinct = messages(args.messages, 1, rng)

    print(f"{len(rules)} rules, {args.messages} telemetry messages of 5 keys, best of {args.repeat} runs, one core")
    outcome = evaluate(shared, rules)
    evaluations = outcome.evaluated
    print(
        f"  per message: {evaluations / len(shared):.1f} rules evaluated, {outcome.matched / len(shared):.1f} matched,"
        f" {outcome.failed} failures in the batch"
    )

    for label, batch in (("10 messages per device", shared), ("1 message per device", distinct)):
        count = evaluate(batch, rules).evaluated
        seconds = best(args.repeat, lambda batch=batch: evaluate(batch, rules))
        rate = count / seconds
        verdict = "ok" if rate >= TARGET else "BELOW TARGET"
        print(
            f"evaluate(), {label}: {rate:,.0f} evaluations/s ({len(batch) / seconds:,.0f} messages/s,"
            f" {seconds / len(batch) * 1e6:.1f} µs/message) — target {TARGET:,}/s: {verdict}"
        )

    shape = rules.shape(Trigger.TELEMETRY)
    contexts = [build_context(message, shape) for message in shared]
    plans = [rules.applicable(message.trigger, message.device) for message in shared]

    def programs_only() -> None:
        for context, plan in zip(contexts, plans, strict=True):
            for rule in plan:
                rule.program.execute(context)

    seconds = best(args.repeat, programs_only)
    print(f"programs alone (contexts built beforehand): {sum(map(len, plans)) / seconds:,.0f} evaluations/s")

    per_message = []
    for one, label in (
        (FULL, "all 7 variables, whole"),
        (ContextShape(shape.variables, {}), "the rules' variables, whole"),
        (shape, "the rules' variables and keys"),
    ):

        def fresh(one: ContextShape = one) -> None:
            for message in distinct:  # each context dropped after use, as evaluate() does
                build_context(message, one)

        seconds = best(args.repeat, fresh)
        per_message.append(f"{label} {seconds / len(distinct) * 1e6:.1f} µs")

    def cached(batch: list[EngineMessage]) -> None:
        cache = ContextCache(batch)
        for message in batch:
            cache.context_for(message, shape)

    reused = best(args.repeat, lambda: cached(shared))
    print(f"context per message, fresh: {'; '.join(per_message)}")
    print(f"  through the per-device cache (10 messages per device): {reused / len(shared) * 1e6:.1f} µs")
    print(f"  what the rules read: {', '.join(shape.variables)}")


if __name__ == "__main__":
    main()
