"""Domain operations of scenes: validation, create / update / delete (with their periodic tasks),
and running one by hand.

The API, the admin and anything else change scenes through these functions only. Each validates
fully (triggers, CEL conditions, time zone, cron expressions, actions and the devices, groups and
scenes they name, ``run_scene`` cycles), saves in a transaction together with the scene's periodic
tasks, and after commit bumps ``control.scenes.generation`` (so every ingest worker reloads its
triggers) and announces the change on the bus (``scene.changed``). Runs are in
``control.scenes.runner``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from control.scenes import actions as scene_actions
from control.scenes import context, generation, schedules
from control.scenes.choices import TriggerKind
from control.scenes.models import Scene, SceneExecution
from devices.choices import DeviceStatus
from devices.services import Actor, _actor_id
from fluxiot import events
from fluxiot.errors import ConflictError

logger = logging.getLogger(__name__)

SCENE_CHANGED = events.SCENE_CHANGED
MAX_TRIGGERS = 10
MAX_CONDITIONS = 10
MAX_ELSE_IF = 10
MAX_COOLDOWN = 7 * 24 * 3600
EDITABLE = frozenset(Scene.EDITABLE)
_SAVED_FIELDS = [*Scene.EDITABLE, "updated_at"]

# The keys each trigger kind takes (``kind`` included).
TRIGGER_KEYS: dict[str, frozenset[str]] = {
    TriggerKind.DEVICE_DATA: frozenset({"kind", "device", "on", "condition"}),
    TriggerKind.DEVICE_STATUS: frozenset({"kind", "device", "from", "to", "condition"}),
    TriggerKind.ALARM: frozenset({"kind", "device", "alarm_type", "severity", "transition", "condition"}),
    TriggerKind.SCHEDULE: frozenset({"kind", "cron"}),
    TriggerKind.MANUAL: frozenset({"kind"}),
}
DATA_SOURCES = ("telemetry", "attributes")
# Alarm filters take these when the alarms app is not installed (its own lists otherwise).
DEFAULT_SEVERITIES = ("critical", "major", "minor", "warning", "indeterminate")
DEFAULT_TRANSITIONS = ("raised", "repeated", "escalated", "acknowledged", "cleared")


def alarm_choices() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The severities and transitions an alarm trigger may filter on."""
    from django.apps import apps

    if apps.is_installed("alarms"):
        from alarms.choices import AlarmSeverity, Transition

        return tuple(AlarmSeverity.values), tuple(Transition.values)
    return DEFAULT_SEVERITIES, DEFAULT_TRANSITIONS


# --- Validation --------------------------------------------------------------------------------


def _device_exists(device_id: Any) -> bool:
    from devices.models import Device

    return isinstance(device_id, str) and bool(device_id) and Device.objects.filter(pk=device_id).exists()


def _names(value: Any) -> list[str] | None:
    """A string or a list of strings, as a list (None when it is neither)."""
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return list(value)
    return None


def _trigger_errors(index: int, trigger: Any, time_zone_ok: bool) -> list[str]:
    at = f"triggers[{index}]"
    if not isinstance(trigger, dict) or trigger.get("kind") not in TRIGGER_KEYS:
        return [f'{at}: an object {{"kind": …}} with kind one of {", ".join(TriggerKind.values)}.']
    kind = trigger["kind"]
    at = f"{at} ({kind})"
    unknown = set(trigger) - TRIGGER_KEYS[kind]
    if unknown:
        allowed = ", ".join(sorted(TRIGGER_KEYS[kind] - {"kind"})) or "nothing else"
        return [f"{at}: unknown keys {', '.join(sorted(unknown))} (it takes {allowed})."]
    errors = []
    if "device" in trigger and not _device_exists(trigger["device"]):
        errors.append(f"{at}: device: no device {trigger['device']!r}.")
    if kind == TriggerKind.DEVICE_DATA and trigger.get("on", "telemetry") not in DATA_SOURCES:
        errors.append(f"{at}: on: one of {', '.join(DATA_SOURCES)} (default telemetry).")
    if kind == TriggerKind.DEVICE_STATUS:
        for key in ("from", "to"):
            if key in trigger and trigger[key] not in DeviceStatus.values:
                errors.append(f"{at}: {key}: one of {', '.join(DeviceStatus.values)}.")
    if kind == TriggerKind.ALARM:
        severities, transitions = alarm_choices()
        if "alarm_type" in trigger and _names(trigger["alarm_type"]) is None:
            errors.append(f"{at}: alarm_type: a type or a list of types.")
        for key, known in (("severity", severities), ("transition", transitions)):
            if key not in trigger:
                continue
            names = _names(trigger[key])
            if names is None or any(name not in known for name in names):
                errors.append(f"{at}: {key}: one or a list of {', '.join(known)}.")
    if kind == TriggerKind.SCHEDULE:
        if "cron" not in trigger:
            errors.append(f'{at}: cron: required, e.g. "0 7 * * 1-5" (in the scene\'s time zone).')
        else:
            try:
                schedules.parse_cron(trigger["cron"])
            except ValueError as exc:
                errors.append(f"{at}: cron: {exc}")
        if not time_zone_ok:
            errors.append(f"{at}: the schedule needs a valid time_zone.")
    if "condition" in trigger:
        errors += [
            f"{at}: condition: {problem}"
            for problem in context.check_expression(trigger["condition"], context.TRIGGER_VARIABLES)
        ]
    return errors


def _condition_errors(where: str, text: Any) -> list[str]:
    problems = context.check_expression(text)
    if problems:
        return [f"{where}: {problem}" for problem in problems]
    from devices.models import Device

    named = context.device_references(text)
    known = set(Device.objects.filter(pk__in=list(named)).values_list("pk", flat=True)) if named else set()
    return [f"{where}: no device {device_id!r}." for device_id in sorted(named - known)]


def _graph() -> dict[int, set[int]]:
    rows = Scene.objects.values_list("pk", "then_actions", "else_if", "else_actions")
    return {
        pk: scene_actions.run_scene_targets(Scene(then_actions=then, else_if=else_if, else_actions=otherwise))
        for pk, then, else_if, otherwise in rows
    }


def _cycle(scene: Scene, targets: set[int]) -> list[int] | None:
    """A chain of run_scene actions that leads from the scene back to itself, or None."""
    if scene.pk is None:
        return None  # nothing can point at a scene that does not exist yet
    graph = _graph()
    graph[scene.pk] = targets
    path: list[int] = [scene.pk]
    seen: set[int] = set()

    def visit(node: int) -> list[int] | None:
        for target in sorted(graph.get(node, ())):
            if target == scene.pk:
                return [*path, target]
            if target in seen:
                continue
            seen.add(target)
            path.append(target)
            found = visit(target)
            if found:
                return found
            path.pop()
        return None

    return visit(scene.pk)


def _chain_text(ids: list[int]) -> str:
    names = dict(Scene.objects.filter(pk__in=ids).values_list("pk", "name"))
    return " → ".join(f"{names.get(pk, pk)} ({pk})" for pk in ids)


def _self_targets(scene: Scene) -> list[str]:
    """``send_command`` to "self" (the default) needs a triggering device: refused when no trigger
    of the scene has one."""
    with_device = {TriggerKind.DEVICE_DATA, TriggerKind.DEVICE_STATUS, TriggerKind.ALARM}
    kinds = {t.get("kind") for t in scene.triggers or [] if isinstance(t, dict)}
    if kinds & with_device:
        return []
    errors = []
    for where, action in scene_actions.all_actions(scene):
        if isinstance(action, dict) and action.get("type") == "send_command":
            if (action.get("params") or {}).get("target", "self") == "self":
                errors.append(
                    f'{where}: send_command to "self" needs a triggering device, and this scene\'s triggers '
                    "(schedule, manual) have none: name a device, a group or tags as target."
                )
    return errors


def validate_scene(scene: Scene) -> None:
    """Every check of a scene, all problems at once, as one ValidationError by field."""
    errors: dict[str, list[str]] = {}

    def add(name: str, problems: list[str]) -> None:
        if problems:
            errors.setdefault(name, []).extend(problems)

    try:
        scene.full_clean(exclude=["created_by", "last_run_at"])
    except ValidationError as exc:
        for name, problems in exc.message_dict.items():
            add(name, problems)
    time_zone_ok = True
    try:
        context.zone(scene.time_zone)
    except ValueError as exc:
        time_zone_ok = False
        add("time_zone", [str(exc)])
    if isinstance(scene.cooldown, int) and scene.cooldown > MAX_COOLDOWN:
        add("cooldown", [f"At most {MAX_COOLDOWN} seconds (a week)."])

    triggers = scene.triggers
    if not isinstance(triggers, list):
        add("triggers", ['A list of triggers, each {"kind": …}.'])
    elif not triggers:
        add("triggers", ['A scene needs a trigger ({"kind": "manual"} for one run only by hand).'])
    elif len(triggers) > MAX_TRIGGERS:
        add("triggers", [f"At most {MAX_TRIGGERS} triggers."])
    else:
        for index, trigger in enumerate(triggers):
            add("triggers", _trigger_errors(index, trigger, time_zone_ok))

    conditions = scene.conditions
    if not isinstance(conditions, list):
        add("conditions", ["A list of CEL expressions that must all hold (an empty list always holds)."])
    elif len(conditions) > MAX_CONDITIONS:
        add("conditions", [f"At most {MAX_CONDITIONS} conditions."])
    else:
        for index, text in enumerate(conditions):
            add("conditions", _condition_errors(f"conditions[{index}]", text))

    add("then_actions", scene_actions.validate(scene.then_actions, "then_actions"))
    else_if = scene.else_if
    if not isinstance(else_if, list):
        add("else_if", ['A list of {"condition": CEL, "actions": [...]}.'])
    elif len(else_if) > MAX_ELSE_IF:
        add("else_if", [f"At most {MAX_ELSE_IF} else_if entries."])
    else:
        for index, entry in enumerate(else_if):
            where = f"else_if[{index}]"
            if not isinstance(entry, dict) or set(entry) != {"condition", "actions"}:
                add("else_if", [f'{where}: an object {{"condition": CEL, "actions": [...]}} (both, nothing else).'])
                continue
            add("else_if", _condition_errors(f"{where}.condition", entry["condition"]))
            add("else_if", scene_actions.validate(entry["actions"], f"{where}.actions"))
    add("else_actions", scene_actions.validate(scene.else_actions, "else_actions"))

    lists_ok = not {"then_actions", "else_if", "else_actions"} & set(errors)
    if lists_ok and not any(True for _ in scene_actions.all_actions(scene)):
        add("then_actions", ["A scene needs at least one action (then_actions, else_if or else_actions)."])
    if not errors:
        add("then_actions", _self_targets(scene))
        targets = scene_actions.run_scene_targets(scene)
        if scene.pk is not None and scene.pk in targets:
            add("then_actions", ["run_scene: a scene cannot run itself."])
        elif cycle := _cycle(scene, targets):
            add("then_actions", [f"run_scene: these scenes would run each other in a loop: {_chain_text(cycle)}."])
    if errors:
        raise ValidationError(errors)


# --- Changes -----------------------------------------------------------------------------------


def _unknown_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - EDITABLE
    if unknown:
        raise ValidationError({name: ["Not editable here."] for name in sorted(unknown)})


def _announce(scene_id: int, name: str, action: str, actor: Actor) -> None:
    events.publish(SCENE_CHANGED, {"scene": scene_id, "name": name, "action": action, "actor": _actor_id(actor)})
    transaction.on_commit(generation.bump, robust=True)


def create_scene(actor: Actor, **fields: Any) -> Scene:
    """Create a scene from its fields (``Scene.EDITABLE``), with the periodic tasks of its schedules."""
    _unknown_fields(fields)
    with transaction.atomic():
        scene = Scene(**fields, created_by_id=_actor_id(actor))
        validate_scene(scene)
        scene.save(force_insert=True)
        schedules.sync(scene)
        _announce(scene.pk, scene.name, "created", actor)
    logger.info("scene %s (%s) created by %s", scene.pk, scene.name, _actor_id(actor))
    return scene


def update_scene(scene: Scene, actor: Actor, **fields: Any) -> Scene:
    """Change a scene's fields (validated as a whole) and bring its periodic tasks in step. Only
    disabling is never refused: a scene naming a device deleted since must still be switched off."""
    _unknown_fields(fields)
    with transaction.atomic():
        stored = Scene.objects.select_for_update().get(pk=scene.pk)
        for name, value in fields.items():
            setattr(stored, name, value)
        if fields != {"enabled": False}:
            validate_scene(stored)
        stored.updated_at = timezone.now()
        stored.save(update_fields=_SAVED_FIELDS)
        schedules.sync(stored)
        _announce(stored.pk, stored.name, "updated", actor)
    for name in _SAVED_FIELDS:
        setattr(scene, name, getattr(stored, name))
    logger.info("scene %s updated by %s", scene.pk, _actor_id(actor))
    return scene


def set_enabled(scene: Scene, enabled: bool, actor: Actor) -> Scene:
    """Enable or disable a scene (its periodic tasks with it)."""
    if scene.enabled == enabled:
        return scene
    return update_scene(scene, actor, enabled=enabled)


def users_of(scene: Scene) -> list[tuple[int, str]]:
    """The other scenes whose run_scene actions run this one, as (id, name)."""
    users = [pk for pk, targets in _graph().items() if scene.pk in targets and pk != scene.pk]
    return list(Scene.objects.filter(pk__in=users).order_by("pk").values_list("pk", "name"))


def delete_scene(scene: Scene, actor: Actor) -> None:
    """Delete a scene, its periodic tasks and its executions. ConflictError while other scenes run it
    (their run_scene actions would fail)."""
    with transaction.atomic():
        stored = Scene.objects.select_for_update().get(pk=scene.pk)
        users = users_of(stored)
        if users:
            names = ", ".join(f"{name} ({pk})" for pk, name in users)
            raise ConflictError(f"Scene {stored.name!r} is run by other scenes ({names}); remove those actions first.")
        schedules.remove(stored.pk)
        scene_id, name = stored.pk, stored.name
        stored.delete()
        _announce(scene_id, name, "deleted", actor)
    logger.info("scene %s (%s) deleted by %s", scene_id, name, _actor_id(actor))


# --- Running by hand ---------------------------------------------------------------------------


def execute_scene(scene: Scene, actor: Actor, *, now: datetime | None = None) -> SceneExecution:
    """Run a scene now, by hand (``POST scenes/{id}/execute/``, the admin's Execute now): its
    conditions decide the branch as for any trigger; the cooldown does not apply. ConflictError for
    a disabled scene. Returns the execution (status ``waiting`` when a delay holds the rest)."""
    from control.scenes import runner

    if not scene.enabled:
        raise ConflictError(f"Scene {scene.name!r} is disabled; enable it to run it.")
    user = getattr(actor, "get_username", lambda: "")() if actor is not None else ""
    execution = runner.run(scene.pk, {"kind": TriggerKind.MANUAL, "user": user}, actor=actor, now=now)
    if execution is None:
        raise ConflictError(f"Scene {scene.pk} no longer exists.")
    return execution
