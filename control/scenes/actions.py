"""The actions of scenes: the shared registry (rules/actions.py), plus two of their own.

- ``run_scene`` (``{"scene": id}``) joins the shared registry, so rules can run a scene too. Run by a
  scene, the runner handles it (it carries the chain of scenes that led there, for loop detection);
  run by a rule, it queues the scene once the ingest batch commits.
- ``delay`` (``{"seconds": N}``) exists in scenes only: the actions after it run N seconds later
  (see ``control.scenes.runner``). It is no registry type: a rule's actions run inside an ingest
  batch and cannot wait.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction

from rules import actions as registry
from rules.actions import ActionContext, ActionError, ActionSpec

DELAY = "delay"
RUN_SCENE = "run_scene"


def max_delay() -> int:
    """The longest delay a scene may ask for (seconds; ``SCENE_MAX_DELAY_SECONDS``, default an hour)."""
    return int(getattr(settings, "SCENE_MAX_DELAY_SECONDS", 3600))


def _scene_name(scene_id: int) -> str | None:
    from control.scenes.models import Scene

    return Scene.objects.filter(pk=scene_id).values_list("name", flat=True).first()


class RunScene(ActionSpec):
    type = RUN_SCENE
    description = (
        "Run a scene (its own conditions decide what it does), once the current run or ingest batch "
        "commits. A rule's target scene is looked up when the action runs (and in rule tests); a scene's "
        "must exist when the scene is saved, cycles are refused then, and chains are cut at run time "
        "(SCENE_MAX_CHAIN_DEPTH)."
    )
    schema = {
        "type": "object",
        "properties": {"scene": {"type": "integer", "minimum": 1}},
        "required": ["scene"],
        "additionalProperties": False,
    }
    example = {"scene": 3}

    def describe(self, params: dict[str, Any], message: Any) -> str:
        name = _scene_name(params["scene"])
        if name is None:
            raise ActionError(f"no scene {params['scene']}")
        return f"would run scene {params['scene']} ({name})"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        """From a rule: queue the scene after the batch commits, with the message as its trigger."""
        from control.scenes import engine

        if _scene_name(params["scene"]) is None:
            raise ActionError(f"no scene {params['scene']}")
        trigger = {
            **engine.trigger_from_message(message),
            "kind": "rule",
            "rule": {"id": getattr(rule, "id", None), "name": getattr(rule, "name", "")},
        }
        scene_id = params["scene"]
        transaction.on_commit(lambda: engine.queue(scene_id, trigger), robust=True)


class Delay(ActionSpec):
    type = DELAY
    description = (
        "Scenes only: wait, then go on with the next actions (a Celery task with a countdown; in the "
        "embedded mode a timer thread of the process — see docs/SCENES.md)."
    )
    schema = {
        "type": "object",
        "properties": {"seconds": {"type": "number", "exclusiveMinimum": 0}},
        "required": ["seconds"],
        "additionalProperties": False,
    }
    example = {"seconds": 30}

    def check(self, params: dict[str, Any]) -> list[str]:
        if params["seconds"] > max_delay():
            return [f"seconds: at most {max_delay()}"]
        return []

    def describe(self, params: dict[str, Any], message: Any) -> str:
        return f"would wait {params['seconds']:g} s before the next actions"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        raise ActionError("delay only works in a scene's actions")


DELAY_SPEC = Delay()
RUN_SCENE_SPEC = registry.register(RunScene())


def spec(action_type: str) -> ActionSpec | None:
    """The spec of a type a scene may use."""
    return DELAY_SPEC if action_type == DELAY else registry.get(action_type)


def catalogue() -> list[dict[str, Any]]:
    """Every action type a scene can use (the shared registry's and ``delay``), sorted by type."""
    return sorted([*registry.catalogue(), DELAY_SPEC.as_dict()], key=lambda item: item["type"])


def validate(actions: Any, where: str) -> list[str]:
    """What is wrong with one of a scene's action lists (empty when fine), each message naming the
    action: ``then_actions[1] (send_command): target: no device 'fan_9'``."""
    return registry.validate_actions(
        actions, where, lookup=spec, known=[item["type"] for item in catalogue()], check=_check_run_scene
    )


def _check_run_scene(action_spec: ActionSpec, params: dict[str, Any]) -> list[str]:
    if action_spec.type == RUN_SCENE and _scene_name(params["scene"]) is None:
        return [f"scene: no scene {params['scene']}"]
    return []


def all_actions(scene: Any) -> Iterable[tuple[str, dict[str, Any]]]:
    """Every action of a scene with where it is: then_actions, else_if[i].actions, else_actions."""
    for action in scene.then_actions or []:
        yield "then_actions", action
    for index, entry in enumerate(scene.else_if or []):
        if isinstance(entry, dict):
            for action in entry.get("actions") or []:
                yield f"else_if[{index}].actions", action
    for action in scene.else_actions or []:
        yield "else_actions", action


def run_scene_targets(scene: Any) -> set[int]:
    """The scenes a scene's ``run_scene`` actions run."""
    targets = set()
    for _, action in all_actions(scene):
        if isinstance(action, dict) and action.get("type") == RUN_SCENE:
            target = (action.get("params") or {}).get("scene")
            if isinstance(target, int) and not isinstance(target, bool):
                targets.add(target)
    return targets
