"""Domain operations of rules and plugins.

The API, the admin and anything else change rules and plugins through these functions only. Each one
validates fully (a rule's CEL condition compiles to a boolean over its trigger's variables, its
actions' params are valid, its scope names something that exists; a plugin's module compiles, has
the ABI's exports and imports only what the host provides), saves in a transaction, keeps a version
of every rule change (who, when, what), and after commit bumps ``rules.generation`` (so every worker
reloads) and announces the change on the bus (``rule.changed`` / ``plugin.changed``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from devices.services import Actor, _actor_id
from fluxiot import events
from fluxiot.errors import ConflictError
from rules import actions as rule_actions
from rules import generation
from rules.choices import PluginFailure, PluginStage, Scope, Trigger
from rules.models import DeviceFacts, Plugin, Rule, RuleVersion, scope_matches

logger = logging.getLogger(__name__)

# Event types (constants of fluxiot.events once that module lists them).
RULE_CHANGED = events.RULE_CHANGED
PLUGIN_CHANGED = events.PLUGIN_CHANGED

RULE_EDITABLE = frozenset(Rule.VERSIONED_FIELDS)
PLUGIN_EDITABLE = frozenset(
    {"name", "version", "description", "module", "stage", "config", "scope", "scope_value", "enabled", "on_failure"}
)
# Written on update: never the counters, which the engine keeps moving meanwhile.
_RULE_SAVED_FIELDS = [*Rule.VERSIONED_FIELDS, "version", "updated_at"]
_PLUGIN_SAVED_FIELDS = [*sorted(PLUGIN_EDITABLE), "sha256", "size", "updated_at"]


def _after_commit(*callbacks: Callable[[], Any]) -> None:
    for callback in callbacks:
        transaction.on_commit(callback, robust=True)


# --- Rules -------------------------------------------------------------------------------------


def validate_rule(rule: Rule) -> None:
    """Every check of a rule, all problems at once, as one ValidationError by field."""
    from rules.cel import check_condition

    errors: dict[str, list[str]] = {}
    try:
        rule.full_clean(exclude=["created_by"])
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if "scope" not in errors and "scope_value" not in errors:
        try:
            rule.clean_scope()
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                errors.setdefault(name, []).extend(messages)
    if "condition" not in errors and "trigger" not in errors:
        if problems := check_condition(rule.condition, rule.trigger):
            errors["condition"] = list(problems)
    if "actions" not in errors and (problems := rule_actions.validate_actions(rule.actions)):
        errors["actions"] = problems
    if errors:
        raise ValidationError(errors)


def _record_version(rule: Rule, actor: Actor, note: str) -> RuleVersion:
    return RuleVersion.objects.create(
        rule=rule, version=rule.version, snapshot=rule.snapshot(), changed_by_id=_actor_id(actor), note=note
    )


def _announce_rule(rule_id: int, version: int, action: str, actor: Actor) -> None:
    events.publish(RULE_CHANGED, {"rule": rule_id, "version": version, "action": action, "actor": _actor_id(actor)})
    _after_commit(generation.bump)


def _unknown_fields(fields: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationError({name: ["Not editable here."] for name in sorted(unknown)})


def create_rule(actor: Actor, **fields: Any) -> Rule:
    """Create a rule (version 1) from its fields: name, description, enabled, priority, scope,
    scope_value, trigger, condition, actions."""
    _unknown_fields(fields, RULE_EDITABLE)
    with transaction.atomic():
        rule = Rule(**fields, version=1, created_by_id=_actor_id(actor))
        validate_rule(rule)
        rule.save(force_insert=True)
        _record_version(rule, actor, "created")
        _announce_rule(rule.pk, rule.version, "created", actor)
    logger.info("rule %s (%s) created by %s", rule.pk, rule.name, _actor_id(actor))
    return rule


def _apply(rule: Rule, values: dict[str, Any], actor: Actor, note: str, action: str) -> Rule:
    """Set ``values`` on the rule as stored (locked), validate, save as the next version, and bring
    ``rule`` up to date. Nothing is saved when no versioned field changes."""
    with transaction.atomic():
        stored = Rule.objects.select_for_update().get(pk=rule.pk)
        before = stored.snapshot()
        for name, value in values.items():
            setattr(stored, name, value)
        if stored.snapshot() != before:
            validate_rule(stored)
            stored.version += 1
            stored.updated_at = timezone.now()
            stored.save(update_fields=_RULE_SAVED_FIELDS)
            _record_version(stored, actor, note)
            _announce_rule(stored.pk, stored.version, action, actor)
            logger.info("rule %s %s as version %d by %s", stored.pk, action, stored.version, _actor_id(actor))
    for name in _RULE_SAVED_FIELDS:
        setattr(rule, name, getattr(stored, name))
    return rule


def update_rule(rule: Rule, actor: Actor, **fields: Any) -> Rule:
    """Change a rule's fields; the change becomes the next version. Counters are left alone."""
    _unknown_fields(fields, RULE_EDITABLE)
    return _apply(rule, fields, actor, "updated", "updated")


def restore_rule_version(rule: Rule, version: RuleVersion | int, actor: Actor) -> Rule:
    """Bring back what a version held, as a new version ("restored from version N"). The old version
    is validated again (the device or group it names may be gone). Nothing changes when the rule
    already holds exactly that."""
    if not isinstance(version, RuleVersion):
        try:
            version = RuleVersion.objects.get(rule=rule, version=version)
        except RuleVersion.DoesNotExist:
            raise ValidationError({"version": [f"Rule {rule.pk} has no version {version}."]}) from None
    elif version.rule_id != rule.pk:
        raise ValidationError({"version": [f"Version {version.version} belongs to another rule."]})
    values = {name: version.snapshot[name] for name in Rule.VERSIONED_FIELDS if name in version.snapshot}
    return _apply(rule, values, actor, f"restored from version {version.version}", "restored")


def delete_rule(rule: Rule, actor: Actor) -> None:
    """Delete a rule and its versions."""
    with transaction.atomic():
        rule_id, version = rule.pk, rule.version
        rule.delete()
        _announce_rule(rule_id, version, "deleted", actor)
    logger.info("rule %s deleted by %s", rule_id, _actor_id(actor))


# --- Testing a rule against a sample message ----------------------------------------------------

SAMPLE_KEYS = frozenset({"device", "trigger", "telemetry", "attributes", "previous", "status", "command", "received"})


@dataclass
class _SampleDevice:
    facts: DeviceFacts
    name: str = ""
    status: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] = field(default_factory=dict)


def _sample_device(value: Any) -> _SampleDevice:
    """A sample's device: an existing device's facts, name, status, metadata, attributes and latest
    values, or what an inline description gives (the rest empty)."""
    from devices.models import Device, DeviceGroup

    if isinstance(value, str):
        device = Device.objects.select_related("group").filter(pk=value).first()
        if device is None:
            raise ValidationError({"device": [f"No device {value!r}."]})
        facts = DeviceFacts(
            id=device.id,
            device_type=device.device_type,
            tags=tuple(device.tags or ()),
            group_path=device.group.path if device.group else "",
        )
        return _SampleDevice(
            facts,
            name=device.name,
            status=device.status,
            metadata=dict(device.metadata or {}),
            attributes=dict(device.attributes or {}),
            previous=_latest_values(device.id),
        )
    if isinstance(value, dict):
        tags = value.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise ValidationError({"device": ["tags is a list of strings."]})
        metadata = value.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValidationError({"device": ["metadata is an object."]})
        group_path = ""
        if value.get("group") not in (None, ""):
            group = value["group"]
            if isinstance(group, int) or (isinstance(group, str) and group.isdigit()):
                group_path = DeviceGroup.objects.filter(pk=int(group)).values_list("path", flat=True).first() or ""
            if not group_path:
                raise ValidationError({"device": [f"No device group {group!r}."]})
        facts = DeviceFacts(
            id=str(value.get("id") or "sample-device"),
            device_type=str(value.get("device_type") or value.get("type") or "sensor"),
            tags=tuple(tags),
            group_path=group_path,
        )
        return _SampleDevice(
            facts, name=str(value.get("name") or ""), status=str(value.get("status") or ""), metadata=metadata
        )
    raise ValidationError({"device": ["A device id, or an object with id, device_type, tags and group."]})


def _latest_values(device_id: str) -> dict[str, Any]:
    from telemetry.models import LatestValue

    return dict(LatestValue.objects.filter(device_id=device_id).values_list("key", "value"))


def _object_field(sample: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = sample.get(name)
    if value is not None and not isinstance(value, dict):
        raise ValidationError({name: [f"{name} is a JSON object."]})
    return value


def sample_message(sample: Any, trigger: str) -> Any:
    """An engine message built from a sample (see ``test_rule``)."""
    from rules.engine import EngineMessage

    if not isinstance(sample, dict):
        raise ValidationError({"sample": ["A JSON object: device, trigger, telemetry, attributes, previous, …"]})
    unknown = set(sample) - SAMPLE_KEYS
    if unknown:
        raise ValidationError({"sample": [f"Unknown keys: {', '.join(sorted(unknown))}."]})
    if "device" not in sample:
        raise ValidationError({"device": ["Name a device (its id) or describe one (id, device_type, tags)."]})
    device = _sample_device(sample["device"])
    message_trigger = sample.get("trigger") or trigger
    if message_trigger not in Trigger.values:
        raise ValidationError({"trigger": [f"One of {', '.join(Trigger.values)}."]})
    received = sample.get("received")
    if received is None:
        received = timezone.now()
    elif isinstance(received, str):
        try:
            received = datetime.fromisoformat(received)
        except ValueError:
            raise ValidationError({"received": ["An ISO 8601 time."]}) from None
        if timezone.is_naive(received):
            received = received.replace(tzinfo=UTC)
    elif not isinstance(received, datetime):
        raise ValidationError({"received": ["An ISO 8601 time."]})
    telemetry = _object_field(sample, "telemetry") or {}
    attributes = _object_field(sample, "attributes")
    previous = _object_field(sample, "previous")
    status = _object_field(sample, "status") or {}
    command = _object_field(sample, "command") or {}
    reported: dict[str, Any] = {}
    if attributes is not None and message_trigger == Trigger.ATTRIBUTES:
        reported, attributes = attributes, None  # what the message reports, merged over the stored ones
    return EngineMessage(
        device=device.facts,
        trigger=message_trigger,
        received=received,
        index=0,
        name=device.name,
        device_status=str(status.get("new") or device.status) if message_trigger == Trigger.STATUS else device.status,
        metadata=device.metadata,
        attributes=device.attributes if attributes is None else attributes,
        reported_attributes=reported,
        previous=device.previous if previous is None else previous,
        telemetry=telemetry if message_trigger == Trigger.TELEMETRY else {},
        status=status if message_trigger == Trigger.STATUS else {},
        command=command if message_trigger == Trigger.COMMAND_RESULT else {},
    )


def test_rule(rule_or_fields: Rule | dict[str, Any], sample: Any) -> dict[str, Any]:
    """Evaluate a rule (saved, or unsaved fields: condition, trigger, actions, scope, scope_value)
    against a sample message and say what would happen, doing nothing. The sample: ``device`` (an
    existing device's id, whose real facts, attributes and latest values are used, or an object with
    id, device_type, tags, group), ``trigger`` (default: the rule's), ``telemetry``, ``attributes``,
    ``previous``, ``status``, ``command``, ``received``.

    Returns ``{"matched": bool | None, "error": str | None, "skipped": str | None,
    "actions": [{"type", "would", "error"?}]}``: ``skipped`` says why the rule would not even be
    evaluated (another trigger, a device outside its scope); ``actions`` is filled only when it
    matched. Bad input (a condition that does not compile, bad sample) raises ValidationError."""
    from rules.cel import check_condition
    from rules.engine import evaluate_one

    if isinstance(rule_or_fields, Rule):
        rule = rule_or_fields
    else:
        fields = {name: value for name, value in rule_or_fields.items() if name in RULE_EDITABLE}
        rule = Rule(**fields)
        errors: dict[str, list[str]] = {}
        if rule.trigger not in Trigger.values:
            errors["trigger"] = [f"One of {', '.join(Trigger.values)}."]
        elif problems := check_condition(rule.condition or "", rule.trigger):
            errors["condition"] = list(problems)
        if problems := rule_actions.validate_actions(rule.actions):
            errors["actions"] = problems
        if rule.scope not in Scope.values:
            errors["scope"] = [f"One of {', '.join(Scope.values)}."]
        else:
            try:
                rule.clean_scope()
            except ValidationError as exc:
                errors.update(exc.message_dict)
        if errors:
            raise ValidationError(errors)
    message = sample_message(sample, rule.trigger)
    result: dict[str, Any] = {"matched": False, "error": None, "skipped": None, "actions": []}
    if message.trigger != rule.trigger:
        result["skipped"] = f"The rule runs on {rule.trigger} messages, not {message.trigger}."
        return result
    if not scope_matches(rule.scope, rule.scope_value, rule.group_path(), message.device):
        result["skipped"] = f"Device {message.device.id} is outside the rule's scope."
        return result
    matched, error = evaluate_one(rule.condition, message)
    result["matched"], result["error"] = matched, error
    if matched:
        result["actions"] = rule_actions.dry_run(rule.actions, message)
    return result


test_rule.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, whatever its name


# --- Plugins -----------------------------------------------------------------------------------


def max_module_bytes() -> int:
    """The largest module accepted (PLUGIN_MAX_MODULE_BYTES, as the plugin host reads it)."""
    from rules.plugins.host import Limits

    return Limits.from_settings().max_module_bytes


def validate_plugin_module(module: Any) -> bytes:
    """The module's bytes if it can be a plugin; else ValidationError on ``module`` saying why (empty,
    over the size limit, does not compile, wrong exports, imports other than env.log)."""
    from rules.plugins.host import validate_module

    if isinstance(module, memoryview | bytearray):
        module = bytes(module)
    if not isinstance(module, bytes) or not module:
        raise ValidationError({"module": ["Upload a WebAssembly module (.wasm)."]})
    limit = max_module_bytes()
    if len(module) > limit:
        raise ValidationError({"module": [f"The module is {len(module)} bytes, over the limit of {limit} bytes."]})
    if problems := validate_module(module):
        raise ValidationError({"module": list(problems)})
    return module


def validate_plugin(plugin: Plugin) -> None:
    """A plugin's fields but its module: ValidationError by field, ConflictError when another plugin
    has the same name and version."""
    errors: dict[str, list[str]] = {}
    try:
        plugin.full_clean(exclude=["created_by", "module", "sha256", "size"], validate_constraints=False)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if not isinstance(plugin.config, dict):
        errors["config"] = ["A JSON object."]
    if "scope" not in errors and "scope_value" not in errors:
        try:
            plugin.clean_scope()
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    clash = Plugin.objects.filter(name=plugin.name, version=plugin.version)
    if plugin.pk is not None:
        clash = clash.exclude(pk=plugin.pk)
    if clash.exists():
        raise ConflictError(f"Plugin {plugin.name} {plugin.version} already exists; upload it as another version.")


def _announce_plugin(plugin_id: int, plugin: Plugin, action: str, actor: Actor) -> None:
    from rules.plugins import host

    events.publish(
        PLUGIN_CHANGED,
        {
            "plugin": plugin_id,
            "name": plugin.name,
            "version": plugin.version,
            "sha256": plugin.sha256,
            "action": action,
            "actor": _actor_id(actor),
        },
    )
    _after_commit(generation.bump, lambda: host.forget(plugin_id))


def _save_race(exc: IntegrityError, plugin: Plugin) -> ConflictError:
    logger.info("plugin %s %s: %s", plugin.name, plugin.version, exc)
    return ConflictError(f"Plugin {plugin.name} {plugin.version} already exists; upload it as another version.")


def create_plugin(
    actor: Actor,
    *,
    name: str,
    module: bytes,
    version: str = "1.0.0",
    stage: str = PluginStage.PREPROCESS,
    config: dict[str, Any] | None = None,
    scope: str = Scope.ALL,
    scope_value: str = "",
    enabled: bool = True,
    on_failure: str = PluginFailure.PASS,
    description: str = "",
) -> Plugin:
    """Create a plugin from an uploaded module. Raises ValidationError (``module``: what is wrong
    with it, or any other field) and ConflictError when the name and version exist already."""
    plugin = Plugin(
        name=name,
        version=version,
        description=description,
        stage=stage,
        config={} if config is None else config,
        scope=scope,
        scope_value=scope_value,
        enabled=enabled,
        on_failure=on_failure,
        created_by_id=_actor_id(actor),
    )
    errors: dict[str, list[str]] = {}
    try:
        module = validate_plugin_module(module)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    try:
        validate_plugin(plugin)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    plugin.module, plugin.sha256, plugin.size = module, hashlib.sha256(module).hexdigest(), len(module)
    try:
        with transaction.atomic():
            plugin.save(force_insert=True)
            _announce_plugin(plugin.pk, plugin, "created", actor)
    except IntegrityError as exc:
        raise _save_race(exc, plugin) from exc
    logger.info("plugin %s (%s %s, %s) created by %s", plugin.pk, name, version, plugin.sha256, _actor_id(actor))
    return plugin


def update_plugin(plugin: Plugin, actor: Actor, **fields: Any) -> Plugin:
    """Change a plugin's fields; a new ``module`` (bytes) is validated like an upload and gets its own
    sha256. Nothing is saved or announced when no value changes. Counters are left alone."""
    _unknown_fields(fields, PLUGIN_EDITABLE)
    module = fields.pop("module", None)
    errors: dict[str, list[str]] = {}
    if module is not None:
        try:
            module = validate_plugin_module(module)
        except ValidationError as exc:
            errors.update(exc.message_dict)
    with transaction.atomic():
        stored = Plugin.objects.select_for_update().get(pk=plugin.pk)
        changed = [name for name, value in fields.items() if getattr(stored, name) != value]
        for name, value in fields.items():
            setattr(stored, name, value)
        if module is not None and not errors and hashlib.sha256(module).hexdigest() != stored.sha256:
            stored.module, stored.sha256, stored.size = module, hashlib.sha256(module).hexdigest(), len(module)
            changed.append("module")
        try:
            validate_plugin(stored)
        except ValidationError as exc:
            errors.update(exc.message_dict)
        if errors:
            raise ValidationError(errors)
        if changed:
            stored.updated_at = timezone.now()
            try:
                with transaction.atomic():
                    stored.save(update_fields=[*_saved(changed), "updated_at"])
            except IntegrityError as exc:
                raise _save_race(exc, stored) from exc
            _announce_plugin(stored.pk, stored, "updated", actor)
            logger.info("plugin %s updated (%s) by %s", stored.pk, ", ".join(sorted(changed)), _actor_id(actor))
    for name in _PLUGIN_SAVED_FIELDS:
        setattr(plugin, name, getattr(stored, name))
    return plugin


def _saved(changed: list[str]) -> list[str]:
    return sorted({*changed, "sha256", "size"} if "module" in changed else set(changed))


def delete_plugin(plugin: Plugin, actor: Actor) -> None:
    """Delete a plugin; every worker drops its compiled module once the deletion commits."""
    with transaction.atomic():
        plugin_id = plugin.pk
        plugin.delete()
        _announce_plugin(plugin_id, plugin, "deleted", actor)
    logger.info("plugin %s (%s %s) deleted by %s", plugin_id, plugin.name, plugin.version, _actor_id(actor))
