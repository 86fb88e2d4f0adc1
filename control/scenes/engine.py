"""What starts scenes: the entry points other apps call, and the compiled triggers behind them.

- ``on_batch(messages)``: called by the ingest (rules/ingest.py) inside the batch's transaction with
  the batch's engine messages. Scenes with a ``device_data`` trigger whose condition holds for a
  message are queued (``control.tasks.run_scene``) once the batch commits: the ingest never waits
  on a scene. At most one run per scene per batch (the latest matching message); a scene cooling
  down is dropped here without a run (counted in ``fluxiot_scene_triggers_dropped_total``).
- ``wants(trigger)``: whether any enabled scene listens to ``telemetry`` / ``attributes`` messages,
  so that the ingest builds engine messages for them even when no rule does.
- ``on_status(device_id, old, new, reason)``: the ``devices.hooks.status_changed`` hook.
- ``on_alarm(alarm_id, device_id, alarm_type, severity, transition)``: for the alarms app, after
  the alarm's change commits.

``SceneSet.current()`` is this process's set of enabled scenes' triggers, compiled once, reloaded
when ``control.scenes.generation`` moves (one cache read per call otherwise).
"""

from __future__ import annotations

import logging
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import cel
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from control.scenes import context, generation, metrics
from control.scenes.choices import TriggerKind
from control.scenes.runner import COOLDOWN_KEY, current_chain
from fluxiot.generations import GenerationCached
from rules.cel import ConditionError, run
from rules.choices import Trigger
from rules.engine import EngineMessage

logger = logging.getLogger(__name__)

_SOURCES = {Trigger.TELEMETRY: "telemetry", Trigger.ATTRIBUTES: "attributes"}


def _names(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


@dataclass(frozen=True, eq=False)
class CompiledTrigger:
    """One trigger of an enabled scene (not schedules and by hand: beat and the API start those)."""

    scene_id: int
    scene_name: str
    index: int
    kind: str
    tz: zoneinfo.ZoneInfo
    cooldown: int
    device: str | None = None
    on: str = "telemetry"
    from_status: str | None = None
    to_status: str | None = None
    alarm_types: frozenset[str] | None = None
    severities: frozenset[str] | None = None
    transitions: frozenset[str] | None = None
    condition: str = ""
    program: cel.Program | None = None
    error: str = ""

    @classmethod
    def build(cls, scene: Any, index: int, trigger: dict[str, Any], tz: zoneinfo.ZoneInfo) -> CompiledTrigger:
        program, error = None, ""
        condition = trigger.get("condition") or ""
        if condition:
            try:
                program = context.program(condition)
            except ConditionError as exc:
                error = f"the condition does not compile: {exc}"
        return cls(
            scene_id=scene.pk,
            scene_name=scene.name,
            index=index,
            kind=trigger["kind"],
            tz=tz,
            cooldown=scene.cooldown,
            device=trigger.get("device"),
            on=trigger.get("on", "telemetry"),
            from_status=trigger.get("from"),
            to_status=trigger.get("to"),
            alarm_types=_names(trigger.get("alarm_type")),
            severities=_names(trigger.get("severity")),
            transitions=_names(trigger.get("transition")),
            condition=condition,
            program=program,
            error=error,
        )

    def holds(self, trigger: dict[str, Any], at: datetime) -> tuple[bool, str | None]:
        """Whether the trigger's condition holds (True without one), and why not when it failed."""
        if self.error:
            return False, self.error
        if self.program is None:
            return True, None
        values = {
            "trigger": context.trigger_value(trigger),
            "local": context.local_values(at, self.tz),
            "now": at,
        }
        result, error = run(self.program, cel.Context(values))
        return bool(result), error


class SceneSet(GenerationCached):
    """The triggers of the enabled scenes, indexed by kind and device."""

    generations = generation.GENERATION

    def __init__(
        self, triggers: list[CompiledTrigger] | tuple[CompiledTrigger, ...] = (), generation: str = ""
    ) -> None:
        self.triggers = tuple(triggers)
        self.generation = generation
        # (kind, source or "") → device id or None (any device) → triggers
        self._index: dict[tuple[str, str], dict[str | None, list[CompiledTrigger]]] = {}
        for compiled in self.triggers:
            source = compiled.on if compiled.kind == TriggerKind.DEVICE_DATA else ""
            self._index.setdefault((compiled.kind, source), {}).setdefault(compiled.device, []).append(compiled)

    def __len__(self) -> int:
        return len(self.triggers)

    def of(self, kind: str, device_id: str | None, source: str = "") -> list[CompiledTrigger]:
        """The triggers of ``kind`` (and data source) for a device: its own and those of any device."""
        by_device = self._index.get((kind, source))
        if not by_device:
            return []
        found = list(by_device.get(None, ()))
        if device_id:
            found += by_device.get(device_id, ())
        return found

    def listens(self, kind: str, source: str = "") -> bool:
        return bool(self._index.get((kind, source)))

    @classmethod
    def load(cls, current_generation: str = "") -> SceneSet:
        from control.scenes.models import Scene

        compiled = []
        for scene in Scene.objects.filter(enabled=True).only("id", "name", "time_zone", "cooldown", "triggers"):
            try:
                tz = context.zone(scene.time_zone)
            except ValueError:
                logger.warning(
                    "scene %s (%s): unknown time zone %r; its triggers are off", scene.pk, scene.name, scene.time_zone
                )
                continue
            for index, trigger in enumerate(scene.triggers or []):
                if isinstance(trigger, dict) and trigger.get("kind") in (
                    TriggerKind.DEVICE_DATA,
                    TriggerKind.DEVICE_STATUS,
                    TriggerKind.ALARM,
                ):
                    compiled.append(CompiledTrigger.build(scene, index, trigger, tz))
        return cls(compiled, current_generation)


# --- Queueing ----------------------------------------------------------------------------------


def queue(scene_id: int, trigger: dict[str, Any]) -> None:
    """Have a worker run the scene (``control.tasks.run_scene``; in-process with eager Celery)."""
    from control.tasks import run_scene

    run_scene.delay(scene_id, trigger)


def _queue_after_commit(scene_id: int, trigger: dict[str, Any]) -> None:
    transaction.on_commit(partial(queue, scene_id, trigger), robust=True)


def trigger_from_message(message: Any) -> dict[str, Any]:
    """The trigger values of an engine message (for a scene a rule runs)."""
    received = getattr(message, "received", None)
    trigger: dict[str, Any] = {"device": message.device.id}
    for key, attribute in (("telemetry", "telemetry"), ("attributes", "reported_attributes"), ("status", "status")):
        value = getattr(message, attribute, None)
        if value:
            trigger[key] = dict(value)
    if isinstance(received, datetime):
        trigger["at"] = received.isoformat()
    return trigger


def wants(trigger: str) -> bool:
    """Whether an enabled scene listens to ingest messages of this rules trigger (``telemetry`` or
    ``attributes``): the ingest then builds engine messages for ``on_batch`` even without rules."""
    source = _SOURCES.get(trigger)
    return source is not None and SceneSet.current().listens(TriggerKind.DEVICE_DATA, source)


def _cooling(scene_ids: list[int]) -> set[int]:
    keys = {COOLDOWN_KEY.format(pk): pk for pk in scene_ids}
    return {keys[key] for key in cache.get_many(list(keys))}


def on_batch(messages: list[EngineMessage]) -> None:
    """The ingest's batch: queue (after commit) the scenes whose device_data trigger holds for one
    of its telemetry or attributes messages. No database access; one cache read when a scene
    with a cooldown matched."""
    sceneset = SceneSet.current()
    if not sceneset.triggers or not messages:
        return
    chosen: dict[int, tuple[datetime, dict[str, Any]]] = {}
    cooldowns: dict[int, int] = {}
    failed: set[tuple[int, int]] = set()
    for message in messages:
        source = _SOURCES.get(message.trigger)
        if source is None:
            continue
        candidates = sceneset.of(TriggerKind.DEVICE_DATA, message.device.id, source)
        if not candidates:
            continue
        at = getattr(message, "ts", None) or message.received  # the reading's own time when it has one
        base = {
            "kind": TriggerKind.DEVICE_DATA,
            "device": message.device.id,
            "on": source,
            "telemetry": dict(message.telemetry),
            "attributes": dict(message.reported_attributes),
            "at": at.isoformat(),
        }
        for compiled in candidates:
            earlier = chosen.get(compiled.scene_id)
            if earlier is not None and earlier[0] > at:
                continue
            holds, error = compiled.holds(base, at)
            if error is not None and (compiled.scene_id, compiled.index) not in failed:
                failed.add((compiled.scene_id, compiled.index))
                logger.warning(
                    "scene %s (%s) triggers[%d]: the condition failed on %s: %s",
                    compiled.scene_id,
                    compiled.scene_name,
                    compiled.index,
                    message.device.id,
                    error,
                )
            if holds:
                chosen[compiled.scene_id] = (at, {**base, "index": compiled.index})
                cooldowns[compiled.scene_id] = compiled.cooldown
    if not chosen:
        return
    cooling = _cooling([pk for pk in chosen if cooldowns.get(pk)]) if any(cooldowns.values()) else set()
    metrics.dropped("cooldown", len(cooling))
    for scene_id, (_, trigger) in chosen.items():
        if scene_id not in cooling:
            _queue_after_commit(scene_id, trigger)


def _dispatch(candidates: list[CompiledTrigger], trigger: dict[str, Any], at: datetime) -> int:
    """Queue each scene once whose trigger among ``candidates`` holds; returns how many."""
    chain = list(current_chain())
    if chain:
        trigger = {**trigger, "chain": chain}
    queued: set[int] = set()
    for compiled in candidates:
        if compiled.scene_id in queued:
            continue
        holds, error = compiled.holds(trigger, at)
        if error is not None:
            logger.warning(
                "scene %s (%s) triggers[%d]: %s", compiled.scene_id, compiled.scene_name, compiled.index, error
            )
        if holds:
            queued.add(compiled.scene_id)
            _queue_after_commit(compiled.scene_id, {**trigger, "index": compiled.index})
    return len(queued)


def on_status(device_id: str, old: str, new: str, reason: str = "") -> None:
    """A device's status changed (``devices.hooks.status_changed``, after commit)."""
    try:
        candidates = [
            compiled
            for compiled in SceneSet.current().of(TriggerKind.DEVICE_STATUS, device_id)
            if (compiled.from_status is None or compiled.from_status == old)
            and (compiled.to_status is None or compiled.to_status == new)
        ]
        if candidates:
            now = timezone.now()
            trigger = {
                "kind": TriggerKind.DEVICE_STATUS,
                "device": device_id,
                "status": {"old": old, "new": new, "reason": reason},
                "at": now.isoformat(),
            }
            _dispatch(candidates, trigger, now)
    except Exception:
        logger.exception("scenes: the status change of %s was not handled", device_id)


def on_alarm(alarm_id: int, device_id: str, alarm_type: str, severity: str, transition: str) -> None:
    """An alarm was raised, cleared, escalated… (called by the alarms app after its change commits):
    queue the scenes whose alarm trigger matches. A trigger without ``transition`` takes every
    transition but ``repeated`` (a raise of an alarm already active), which must be named. Never
    raises."""
    try:
        candidates = [
            compiled
            for compiled in SceneSet.current().of(TriggerKind.ALARM, device_id or None)
            if (compiled.alarm_types is None or alarm_type in compiled.alarm_types)
            and (compiled.severities is None or severity in compiled.severities)
            and (transition in compiled.transitions if compiled.transitions is not None else transition != "repeated")
        ]
        if candidates:
            now = timezone.now()
            trigger = {
                "kind": TriggerKind.ALARM,
                "device": device_id or "",
                "alarm": {"id": alarm_id, "type": alarm_type, "severity": severity, "transition": transition},
                "at": now.isoformat(),
            }
            _dispatch(candidates, trigger, now)
    except Exception:
        logger.exception("scenes: alarm %s (%s) was not handled", alarm_id, transition)
