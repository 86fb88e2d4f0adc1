"""Running a scene: the checks that may skip it (disabled, cooldown, loops), the branch its
conditions choose, its actions one by one, and the execution log.

``run(scene_id, trigger)`` is what ``control.tasks.run_scene`` calls for every trigger (and the
API's ``execute`` for a run by hand). One transaction per run: the scene row is locked (two
triggers at once never both pass the cooldown), the execution is written with the branch and each
action's result, and what leaves the platform (commands, MQTT, webhooks, child scenes) goes out once
it commits. Each action runs in a savepoint: a failing action is recorded and the next ones go on.

Loops. A ``run_scene`` chain carries the scenes that led to it (``trigger["chain"]``): a scene that
finds itself in its chain is cut off, and so is a chain deeper than ``SCENE_MAX_CHAIN_DEPTH``.
Triggers that fire while a scene's actions commit (an alarm the scene raised starting a scene on
that alarm) inherit the chain through a context variable. Loops through devices (a command whose
effect is reported back as telemetry) carry no chain: a scene that ran actions more than
``SCENE_LOOP_MAX_RUNS`` times within ``SCENE_LOOP_WINDOW_SECONDS`` is cut off too. Every cut-off is
an execution with branch ``skipped`` saying why, a warning in the log and a ``scene.executed`` event.

Delays. ``{"type": "delay", "params": {"seconds": N}}`` ends the run's first part: the execution
is ``waiting`` with ``resume_at`` / ``resume_index``, and ``resume()`` runs the rest N seconds later
(a Celery task with a countdown; with eager Celery — the embedded mode — a timer thread in this
process). ``resume`` locks the execution and only goes on from the index it was told, so a
continuation delivered twice runs once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import cel
from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, transaction
from django.utils import timezone

from control.scenes import actions as scene_actions
from control.scenes import context, metrics
from control.scenes.choices import RAN, ActionOutcome, Branch, ExecutionStatus, RunKind
from control.scenes.models import Scene, SceneExecution
from fluxiot import events
from rules.actions import ActionContext, run_actions
from rules.cel import ConditionError
from rules.cel import run as evaluate
from rules.engine import EngineMessage
from rules.models import DeviceFacts

logger = logging.getLogger(__name__)

SCENE_EXECUTED = events.SCENE_EXECUTED
ERROR_MAX_LENGTH = 2000
COOLDOWN_KEY = "scenes:cooldown:{}"

_CHAIN: ContextVar[tuple[int, ...]] = ContextVar("scene_chain", default=())


def max_chain_depth() -> int:
    return int(getattr(settings, "SCENE_MAX_CHAIN_DEPTH", 8))


def loop_limits() -> tuple[int, float]:
    """(runs, seconds): more runs with actions than this within the window is taken for a loop."""
    return (
        int(getattr(settings, "SCENE_LOOP_MAX_RUNS", 30)),
        float(getattr(settings, "SCENE_LOOP_WINDOW_SECONDS", 60)),
    )


def current_chain() -> tuple[int, ...]:
    """The scenes whose actions are committing in this thread right now (outermost first): a
    trigger that fires meanwhile was caused by them."""
    return _CHAIN.get()


@contextmanager
def _chain_scope(chain: tuple[int, ...]) -> Iterator[None]:
    token = _CHAIN.set(chain)
    try:
        yield
    finally:
        _CHAIN.reset(token)


# --- The message actions see -------------------------------------------------------------------


@dataclass(slots=True)
class SceneMessage(EngineMessage):
    """What the shared actions get as ``message`` in a scene: an engine message for the triggering
    device (``device.id`` is "" when the run has none: schedule, by hand), ``trigger`` the run's
    kind, ``received`` the event's time, plus the whole trigger."""

    scene_trigger: dict[str, Any] = field(default_factory=dict)


def scene_message(trigger: dict[str, Any], at: datetime) -> SceneMessage:
    from devices.models import Device

    device_id = trigger.get("device") or ""
    row = None
    if device_id:
        row = (
            Device.objects.filter(pk=device_id)
            .values_list("name", "device_type", "tags", "group__path", "status", "metadata", "attributes")
            .first()
        )
    if row is None:
        facts, name, status, metadata, attributes = DeviceFacts(device_id, "", (), ""), "", "", {}, {}
    else:
        name, kind, tags, path, status, metadata, attributes = row
        facts = DeviceFacts(device_id, kind, tuple(tags or ()), path or "")
    status_change = trigger.get("status") if isinstance(trigger.get("status"), dict) else {}
    return SceneMessage(
        device=facts,
        trigger=str(trigger.get("kind", "")),
        received=at,
        name=name,
        device_status=str(status_change.get("new") or status),
        metadata=metadata or {},
        attributes=attributes or {},
        reported_attributes=dict(trigger.get("attributes") or {}),
        telemetry=dict(trigger.get("telemetry") or {}),
        status={key: status_change[key] for key in ("old", "new") if key in status_change},
        scene_trigger=trigger,
    )


# --- Choosing the branch -----------------------------------------------------------------------


def _references(scene: Scene) -> frozenset[str]:
    texts = [*scene.conditions, *(entry.get("condition", "") for entry in scene.else_if or [])]
    named: set[str] = set()
    for text in texts:
        try:
            named |= context.device_references(text)
        except ConditionError:
            continue  # reported when evaluated
    return frozenset(named)


def _holds(text: str, values: cel.Context) -> tuple[bool | None, str | None]:
    try:
        program = context.program(text)
        context.device_references(text)
    except ConditionError as exc:
        return None, str(exc)
    return evaluate(program, values)


def choose(scene: Scene, trigger: dict[str, Any], at: datetime) -> tuple[str, int | None, list[dict[str, Any]], str]:
    """The branch a run takes: ``(branch, else_if index, its actions, error)``. The conditions all
    hold: then. Otherwise the first else_if whose condition holds, else the else actions, else
    none. A condition that fails (an error, not a boolean) stops there: branch ``error``, nothing
    runs (running the ELSE on a sensor that sent no reading could do harm)."""
    try:
        tz = context.zone(scene.time_zone)
    except ValueError as exc:
        return Branch.ERROR, None, [], str(exc)
    named = _references(scene)
    values = cel.Context(context.values(trigger, at, tz, context.load_devices(named) if named else {}))
    for index, text in enumerate(scene.conditions or []):
        result, error = _holds(text, values)
        if error is not None:
            return Branch.ERROR, None, [], f"conditions[{index}]: {error}"
        if not result:
            break
    else:
        return Branch.THEN, None, list(scene.then_actions or []), ""
    for index, entry in enumerate(scene.else_if or []):
        result, error = _holds(entry.get("condition", ""), values)
        if error is not None:
            return Branch.ERROR, index, [], f"else_if[{index}].condition: {error}"
        if result:
            return Branch.ELSE_IF, index, list(entry.get("actions") or []), ""
    if scene.else_actions:
        return Branch.ELSE, None, list(scene.else_actions), ""
    return Branch.NONE, None, [], ""


# --- Skipping ----------------------------------------------------------------------------------


def _names(ids: list[int]) -> str:
    names = dict(Scene.objects.filter(pk__in=ids).values_list("pk", "name"))
    return " → ".join(f"{names.get(pk, '?')} ({pk})" for pk in ids)


def skip_reason(scene: Scene, kind: str, chain: list[int], now: datetime) -> str | None:
    """Why this run must not go on, or None."""
    if not scene.enabled:
        return "The scene is disabled."
    if scene.pk in chain:
        return f"Loop cut off: the scene was started again by its own actions ({_names([*chain, scene.pk])})."
    if len(chain) >= max_chain_depth():
        return (
            f"Chain cut off: {len(chain)} scenes led here ({_names(chain)}), "
            f"at most SCENE_MAX_CHAIN_DEPTH = {max_chain_depth()}."
        )
    if kind == RunKind.MANUAL:
        return None
    if scene.cooldown and scene.last_run_at is not None:
        until = scene.last_run_at + timedelta(seconds=scene.cooldown)
        if now < until:
            return f"Cooldown: ran at {scene.last_run_at.isoformat()}, quiet until {until.isoformat()}."
    runs, window = loop_limits()
    recent = SceneExecution.objects.filter(
        scene=scene, branch__in=list(RAN), started_at__gte=now - timedelta(seconds=window)
    ).count()
    if recent >= runs:
        return (
            f"Loop suspected and cut off: the scene ran its actions {recent} times in the last {window:g} s "
            f"(SCENE_LOOP_MAX_RUNS = {runs}); is it triggered by the effect of its own actions?"
        )
    return None


# --- Running -----------------------------------------------------------------------------------


def _parse_at(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else timezone.make_aware(parsed, timezone.get_fixed_timezone(0))
    return None


def _chain_of(trigger: dict[str, Any]) -> list[int]:
    chain = trigger.get("chain") or []
    return [int(pk) for pk in chain if isinstance(pk, int) or (isinstance(pk, str) and pk.isdigit())]


def run(
    scene_id: int, trigger: dict[str, Any], *, actor: Any = None, now: datetime | None = None
) -> SceneExecution | None:
    """Run a scene for ``trigger`` (``{"kind", …}``; ``at``, the event's time, is what ``local`` and
    ``now`` describe — default: now). Returns the execution, or None when the scene is gone."""
    now = now or timezone.now()
    trigger = dict(trigger or {})
    trigger.setdefault("kind", RunKind.MANUAL)
    chain = _chain_of(trigger)
    inherited = [pk for pk in current_chain() if pk not in chain]
    if inherited:  # started while other scenes' actions committed in this thread
        chain = [*inherited, *chain]
        trigger["chain"] = chain
    at = _parse_at(trigger.get("at")) or now
    trigger["at"] = at.isoformat()
    with _chain_scope((*chain, scene_id)), transaction.atomic():
        scene = Scene.objects.select_for_update().filter(pk=scene_id).first()
        if scene is None:
            logger.info("scene %s: gone before its %s run", scene_id, trigger["kind"])
            return None
        execution = SceneExecution(
            scene=scene,
            trigger=trigger,
            started_at=now,
            triggered_by_id=getattr(actor, "pk", None),
        )
        reason = skip_reason(scene, str(trigger["kind"]), chain, now)
        if reason is not None:
            if reason.startswith(("Loop", "Chain")):
                logger.warning("scene %s (%s): %s", scene.pk, scene.name, reason)
            execution.branch, execution.error = Branch.SKIPPED, reason
            execution.status, execution.finished_at = ExecutionStatus.DONE, now
            execution.save(force_insert=True)
            _announce(scene, execution)
            return execution
        branch, index, branch_actions, error = choose(scene, trigger, at)
        execution.branch, execution.branch_index, execution.actions = branch, index, branch_actions
        execution.error = error[:ERROR_MAX_LENGTH]
        if error:
            logger.warning("scene %s (%s): %s", scene.pk, scene.name, error)
        if branch_actions:
            scene.last_run_at = now
            scene.save(update_fields=["last_run_at"])
            if scene.cooldown:
                key, seconds = COOLDOWN_KEY.format(scene.pk), scene.cooldown
                transaction.on_commit(lambda: cache.set(key, 1, seconds), robust=True)
        execution.save(force_insert=True)
        _run_actions(scene, execution, 0, actor, chain, now)
        execution.save()
        _announce(scene, execution)
    return execution


def _run_actions(
    scene: Scene, execution: SceneExecution, start: int, actor: Any, chain: list[int], now: datetime
) -> tuple[int, int]:
    """Run the execution's actions from ``start`` until the end or a delay; returns (ok, failed)."""
    branch_actions = execution.actions or []
    trigger = execution.trigger
    at = _parse_at(trigger.get("at")) or now
    message = scene_message(trigger, at)
    ctx = ActionContext(actor=actor)
    results = list(execution.results or [])
    ok = failed = 0
    waiting = False
    for index in range(start, len(branch_actions)):
        action = branch_actions[index] if isinstance(branch_actions[index], dict) else {}
        action_type = str(action.get("type", ""))
        params = action.get("params") or {}
        entry: dict[str, Any] = {"index": index, "type": action_type, "at": timezone.now().isoformat()}
        if action_type == scene_actions.DELAY:
            seconds = float(params.get("seconds", 0))
            resume_at = timezone.now() + timedelta(seconds=seconds)
            execution.status = ExecutionStatus.WAITING
            execution.resume_at, execution.resume_index = resume_at, index + 1
            entry.update(status=ActionOutcome.WAITING, detail=f"the next actions run at {resume_at.isoformat()}")
            results.append(entry)
            if index + 1 < len(branch_actions):
                transaction.on_commit(partial(schedule_resume, execution.pk, index + 1, seconds), robust=True)
                waiting = True
            break
        if action_type == scene_actions.RUN_SCENE:
            error = _queue_child(scene, execution, params.get("scene"), chain)
            if error:
                entry.update(status=ActionOutcome.FAILED, error=error)
            else:
                entry.update(status=ActionOutcome.OK, detail=f"scene {params.get('scene')} queued")
        else:
            if not message.device.id and action_type == "send_command" and params.get("target", "self") == "self":
                outcome = {"error": 'target "self": this run has no triggering device'}
            else:
                outcome = run_actions(ctx, [action], scene, message)[0]
            if "error" in outcome:
                entry.update(status=ActionOutcome.FAILED, error=str(outcome["error"])[:ERROR_MAX_LENGTH])
            else:
                entry.update(status=ActionOutcome.OK)
        if entry["status"] == ActionOutcome.FAILED:
            failed += 1
            logger.warning("scene %s action %d (%s) failed: %s", scene.pk, index, action_type, entry["error"])
        else:
            ok += 1
        results.append(entry)
    if ctx.points:
        _store_points(scene, ctx.points, results)
    if not waiting:
        execution.status, execution.finished_at = ExecutionStatus.DONE, timezone.now()
        execution.resume_at = execution.resume_index = None
    execution.results = results
    execution.failed_actions = sum(1 for item in results if item.get("status") == ActionOutcome.FAILED)
    transaction.on_commit(lambda: metrics.actions(ok, failed), robust=True)
    return ok, failed


def _store_points(scene: Scene, points: list[Any], results: list[dict[str, Any]]) -> None:
    """store_telemetry's derived points (the triggering device's), written with the run."""
    from telemetry.store import get_store

    points = [point for point in points if point[0]]
    try:
        with transaction.atomic():
            get_store().write(points)
    except Exception as exc:  # the run's record matters more than the derived points
        logger.exception("scene %s: derived telemetry not stored", scene.pk)
        for item in results:
            if item.get("type") == "store_telemetry" and item.get("status") == ActionOutcome.OK:
                item.update(status=ActionOutcome.FAILED, error=f"not stored: {type(exc).__name__}: {exc}")


def _queue_child(scene: Scene, execution: SceneExecution, target: Any, chain: list[int]) -> str | None:
    """run_scene from a scene: queue the target after commit, with this scene added to the chain."""
    from control.scenes import engine

    name = Scene.objects.filter(pk=target).values_list("name", flat=True).first() if isinstance(target, int) else None
    if name is None:
        return f"no scene {target!r}"
    parent = execution.trigger
    child = {key: parent[key] for key in ("device", "telemetry", "attributes", "status", "alarm") if key in parent}
    child.update(
        kind=RunKind.SCENE,
        scene={"id": scene.pk, "name": scene.name, "execution": execution.pk},
        chain=[*chain, scene.pk],
    )
    transaction.on_commit(lambda: engine.queue(target, child), robust=True)
    return None


def _announce(scene: Scene, execution: SceneExecution) -> None:
    """The ``scene.executed`` event and the executions counter, once the run commits."""
    trigger = execution.trigger or {}
    events.publish(
        SCENE_EXECUTED,
        {
            "scene": {"id": scene.pk, "name": scene.name},
            "execution": execution.pk,
            "trigger": trigger.get("kind"),
            "device": trigger.get("device") or None,
            "branch": execution.branch,
            "branch_index": execution.branch_index,
            "status": execution.status,
            "actions": len(execution.results or []),
            "failed": execution.failed_actions,
            "error": execution.error or None,
            "at": execution.started_at.isoformat(),
        },
    )
    branch = execution.branch
    transaction.on_commit(lambda: metrics.executed(branch), robust=True)


# --- Delays ------------------------------------------------------------------------------------


def schedule_resume(execution_id: int, index: int, seconds: float) -> None:
    """Go on with an execution ``seconds`` from now: a Celery task with a countdown, or, with eager
    Celery (the embedded mode: a countdown would be ignored), a timer thread of this process — lost
    if the process stops before it fires."""
    from control.tasks import resume_scene
    from fluxiot.celery import app

    if app.conf.task_always_eager:
        timer = threading.Timer(seconds, _resume_in_thread, args=(execution_id, index))
        timer.daemon = True
        timer.name = f"scene-delay-{execution_id}"
        timer.start()
    else:
        resume_scene.apply_async((execution_id, index), countdown=seconds)


def _resume_in_thread(execution_id: int, index: int) -> None:
    try:
        resume(execution_id, index)
    except Exception:
        logger.exception("scene execution %s: resuming after a delay failed", execution_id)
    finally:
        close_old_connections()


def resume(execution_id: int, index: int, *, now: datetime | None = None) -> SceneExecution | None:
    """Run an execution's actions from ``index`` on, after a delay. Does nothing (returns None) when
    the execution is gone or not waiting at that index (a continuation delivered twice)."""
    now = now or timezone.now()
    execution = SceneExecution.objects.filter(pk=execution_id).values_list("trigger", "scene_id").first()
    if execution is None:
        return None
    trigger, scene_id = execution
    chain = _chain_of(trigger or {})
    with _chain_scope((*chain, scene_id)), transaction.atomic():
        locked = (
            SceneExecution.objects.select_for_update(of=("self",))
            .select_related("scene", "triggered_by")
            .filter(pk=execution_id)
            .first()
        )
        if locked is None or locked.status != ExecutionStatus.WAITING or locked.resume_index != index:
            return None
        scene = locked.scene
        if not scene.enabled:
            locked.status, locked.finished_at = ExecutionStatus.DONE, now
            locked.resume_at = locked.resume_index = None
            locked.error = "The scene was disabled during the delay; the remaining actions did not run."
        else:
            locked.status = ExecutionStatus.RUNNING
            _run_actions(scene, locked, index, locked.triggered_by, chain, now)
        locked.save()
        _announce(scene, locked)
    return locked
