"""What a rule does when its condition holds: a small registry of action types, shared with scenes.

A rule's ``actions`` is an ordered list of ``{"type": "<action type>", "params": {…}}``. Each type is an
``ActionSpec``: a description, a JSON Schema for its params, semantic checks (``validate``), a text
for dry runs (``describe``) and what it does (``execute``). Other apps add types with ``register()``
(the scenes issue brings alarms, notifications and delays).

Built-in types: ``emit_event``, ``store_telemetry``, ``send_command``, ``publish_mqtt`` and
``webhook`` (see docs/RULES.md). Actions run inside the caller's transaction (the ingest batch's);
anything that leaves the platform (MQTT, HTTP) goes out only once that transaction commits. A failing
action records its error in ``ActionContext.errors`` (the engine counts it against the rule) and the
remaining actions still run.
"""

from __future__ import annotations

import json
import logging
import math
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celery import shared_task
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from fluxiot import devicejson, events

if TYPE_CHECKING:
    from telemetry.store import Point

logger = logging.getLogger(__name__)

# The event ``emit_event`` publishes (a constant of fluxiot.events once that module lists it).
RULE_MATCHED = events.RULE_MATCHED
MAX_ACTIONS = 20
DESCRIBE_VALUE_CHARS = 200
TELEMETRY_KEY_MAX_LENGTH = 128
STRING_VALUE_MAX_LENGTH = 4096
MQTT_TOPIC_MAX_LENGTH = 512
WEBHOOK_MAX_HEADERS = 20
WEBHOOK_DEFAULT_TIMEOUT = 10.0  # seconds, when the action names none (at most RULES_WEBHOOK_MAX_TIMEOUT)
WEBHOOK_ERROR_BODY_CHARS = 200

# Topics the platform itself listens to: a rule publishing there would feed the ingest (and could
# loop), or pose as a command the platform never sent.
_INGESTED_TOPIC_RE = re.compile(r"^devices/[^/]+/(telemetry|attributes|status|commands(/.*)?)$")
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


class ActionError(Exception):
    """An action could not run (or, in a dry run, would fail); the message says why."""


@dataclass
class ActionContext:
    """What a run of actions shares: the derived points to store with the batch, whether this is a
    dry run (nothing happens; ``describe`` is asked instead), the acting user (None for the engine)
    and the errors of the actions that failed."""

    points: list[Point] = field(default_factory=list)  # (device_id, key, ts, value)
    dry_run: bool = False
    actor: Any = None
    errors: list[str] = field(default_factory=list)


def _object(properties: dict[str, Any], required: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
        **extra,
    }


def _schema_errors(validator: Draft202012Validator, params: Any) -> list[str]:
    messages = []
    for error in sorted(validator.iter_errors(params), key=lambda error: list(error.absolute_path)):
        error = best_match([error]) or error
        where = ".".join(str(part) for part in error.absolute_path)
        messages.append(f"{where}: {error.message}" if where else error.message)
    return messages


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, separators=(",", ":")) if not isinstance(value, str) else value
    return text if len(text) <= DESCRIBE_VALUE_CHARS else text[: DESCRIBE_VALUE_CHARS - 1] + "…"


class ActionSpec:
    """One action type. Subclasses set ``type``, ``description``, ``schema`` and ``example`` and
    override ``check`` (semantic checks beyond the schema), ``describe`` and ``execute``."""

    type: str = ""
    description: str = ""
    schema: dict[str, Any] = {"type": "object"}
    example: dict[str, Any] = {}
    # Whether ``execute`` writes to the database (then it runs in a savepoint, so its failure cannot
    # spoil the batch's transaction). Actions that only collect points or act after the commit don't
    # pay for one: a savepoint per matched message was most of a rule's cost in the ingest.
    uses_database: bool = True

    def __init__(self) -> None:
        Draft202012Validator.check_schema(self.schema)
        self._validator = Draft202012Validator(self.schema)

    def validate(self, params: Any) -> list[str]:
        """What is wrong with ``params`` (empty when they are fine): the schema's complaints, then,
        only if there are none, the semantic ones."""
        errors = _schema_errors(self._validator, params)
        return errors or self.check(params)

    def check(self, params: dict[str, Any]) -> list[str]:
        return []

    def describe(self, params: dict[str, Any], message: Any) -> str:
        """What the action would do for ``message``, in a sentence. Raises ActionError when it can
        already tell that it would fail."""
        return f"{self.type} {_short(params)}"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "description": self.description,
            "params_schema": self.schema,
            "example": self.example,
        }


_REGISTRY: dict[str, ActionSpec] = {}


def register(spec: ActionSpec) -> ActionSpec:
    """Add an action type (or replace one of the same name). Returns the spec."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", spec.type or ""):
        raise ValueError(f"bad action type {spec.type!r}")
    _REGISTRY[spec.type] = spec
    return spec


def get(action_type: str) -> ActionSpec | None:
    return _REGISTRY.get(action_type)


def registry() -> dict[str, ActionSpec]:
    """Every registered action type, by name (a copy)."""
    return dict(_REGISTRY)


def catalogue() -> list[dict[str, Any]]:
    """Every action type with its description, params schema and an example (sorted by type)."""
    return [_REGISTRY[name].as_dict() for name in sorted(_REGISTRY)]


def validate_actions(
    actions: Any,
    where: str = "",
    lookup: Callable[[str], ActionSpec | None] | None = None,
    known: Iterable[str] | None = None,
    check: Callable[[ActionSpec, dict[str, Any]], list[str]] | None = None,
) -> list[str]:
    """What is wrong with a list of actions (empty when fine), each message naming the action by
    position and type: ``actions[1] (send_command): params.state: 'on' is not of type 'boolean'``.
    A rule's list by default; scenes pass the list's name (``where``: ``then_actions``), their own
    ``lookup`` of a type's spec and ``known`` type names, and a ``check`` run on params that
    validated (``where`` also prefixes the messages about the whole list)."""
    lookup = lookup or get

    def about_the_list(text: str) -> list[str]:
        return [f"{where}: {text}" if where else text[:1].upper() + text[1:]]

    if not isinstance(actions, list):
        return about_the_list('a list of actions, each {"type": …, "params": {…}}.')
    if len(actions) > MAX_ACTIONS:
        return about_the_list(f"at most {MAX_ACTIONS} actions.")
    errors = []
    for position, action in enumerate(actions):
        at = f"{where or 'actions'}[{position}]"
        if not isinstance(action, dict) or not isinstance(action.get("type"), str):
            errors.append(f'{at}: an object {{"type": …, "params": {{…}}}}.')
            continue
        unknown = set(action) - {"type", "params"}
        if unknown:
            errors.append(f"{at}: unknown keys {', '.join(sorted(unknown))} (only type and params).")
            continue
        spec = lookup(action["type"])
        if spec is None:
            names = ", ".join(sorted(known if known is not None else _REGISTRY))
            errors.append(f"{at}: unknown action type {action['type']!r} ({names}).")
            continue
        at = f"{at} ({spec.type})"
        params = action.get("params", {})
        if not isinstance(params, dict):
            errors.append(f"{at}: params must be an object.")
            continue
        problems = spec.validate(params)
        if not problems and check is not None:
            problems = check(spec, params)
        errors += [f"{at}: {problem}" for problem in problems]
    return errors


# --- The message, as actions see it -------------------------------------------------------------


def _device_id(message: Any) -> str:
    return message.device.id


def _received(message: Any) -> datetime:
    """When derived values are stored: the reading's own time (so they line up with it and a second
    reading of the same device cannot collide with the first's), else the receive time."""
    return getattr(message, "ts", None) or message.received


def _rule_summary(rule: Any) -> dict[str, Any]:
    return {"id": getattr(rule, "id", None), "name": getattr(rule, "name", "")}


def message_summary(message: Any, rule: Any = None) -> dict[str, Any]:
    """The JSON form of a message (and the rule that matched it) that events, MQTT payloads and
    webhooks carry: device, trigger, time, and whichever of telemetry, attributes (those the message
    reported), status (``{"old", "new"}``) and command the message has."""
    data: dict[str, Any] = {}
    if rule is not None:
        data["rule"] = _rule_summary(rule)
    data["device"] = _device_id(message)
    data["trigger"] = message.trigger
    received = _received(message)
    data["received"] = received.isoformat() if isinstance(received, datetime) else received
    for name, attribute in (
        ("telemetry", "telemetry"),
        ("attributes", "reported_attributes"),
        ("status", "status"),
        ("command", "command"),
    ):
        value = getattr(message, attribute, None)
        if value:
            data[name] = value
    return data


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, default=str, separators=(",", ":")).encode()


# --- CEL ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _program(expression: str) -> Any:
    from rules.cel import compile_condition

    return compile_condition(expression)


def _compile_errors(expression: str) -> list[str]:
    from rules.cel import ConditionError

    try:
        _program(expression)
    except ConditionError as exc:
        return [str(exc)]
    return []


def evaluate_expression(expression: str, message: Any) -> Any:
    """The value of a CEL expression over a message's context (any type, not only bool). Raises
    ActionError when it fails."""
    from rules.cel import ConditionError, build_context, error_text

    try:
        return _program(expression).execute(build_context(message))
    except ConditionError as exc:
        raise ActionError(str(exc)) from exc
    except (ValueError, TypeError, RuntimeError, LookupError, ArithmeticError) as exc:  # the CEL runtime's
        raise ActionError(error_text(exc)) from exc


def _point_value(key: str, value: Any) -> Any:
    if isinstance(value, bool | int | str | list | dict):
        if isinstance(value, str) and len(value) > STRING_VALUE_MAX_LENGTH:
            raise ActionError(f"{key}: a string over {STRING_VALUE_MAX_LENGTH} characters")
        if problem := devicejson.unstorable(value):  # would fail the whole batch's COPY
            raise ActionError(f"{key}: {problem}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ActionError(f"{key}: {value} is not a finite number")
        return value
    if value is None:
        raise ActionError(f"{key}: the expression gave null")
    raise ActionError(f"{key}: the expression gave a {type(value).__name__}, not a number, bool, string, list or map")


# --- emit_event --------------------------------------------------------------------------------


class EmitEvent(ActionSpec):
    uses_database = False
    type = "emit_event"
    description = (
        f"Publish a {RULE_MATCHED} event on the bus (live pages, WebSocket clients, other apps), with the "
        "rule, the device, the trigger, the message's values and an optional text."
    )
    schema = _object({"message": {"type": "string", "maxLength": 1000}})
    example = {"message": "Lab too warm"}

    def describe(self, params: dict[str, Any], message: Any) -> str:
        text = f" with the text {params['message']!r}" if params.get("message") else ""
        return f"would publish a {RULE_MATCHED} event for device {_device_id(message)}{text}"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        data = message_summary(message, rule)
        if params.get("message"):
            data["message"] = params["message"]
        events.publish(RULE_MATCHED, data)


# --- store_telemetry ---------------------------------------------------------------------------


class StoreTelemetry(ActionSpec):
    uses_database = False
    type = "store_telemetry"
    description = (
        "Store derived telemetry for the message's device at the message's time: each key gets the "
        "value of a CEL expression over the same context as the condition."
    )
    schema = _object(
        {
            "values": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 50,
                "propertyNames": {"minLength": 1, "maxLength": TELEMETRY_KEY_MAX_LENGTH, "not": {"const": "ts"}},
                "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 2000},
            }
        },
        ["values"],
    )
    example = {"values": {"temperature_f": "telemetry.temperature * 9.0 / 5.0 + 32.0"}}

    def check(self, params: dict[str, Any]) -> list[str]:
        errors = []
        for key, expression in params["values"].items():
            if not key.isprintable():
                errors.append(f"values: bad key {key[:40]!r}")
            errors += [f"values.{key}: {problem}" for problem in _compile_errors(expression)]
        return errors

    def _values(self, params: dict[str, Any], message: Any) -> tuple[dict[str, Any], list[str]]:
        values, errors = {}, []
        for key, expression in params["values"].items():
            try:
                values[key] = _point_value(key, evaluate_expression(expression, message))
            except ActionError as exc:
                errors.append(f"{key}: {exc}" if not str(exc).startswith(f"{key}:") else str(exc))
        return values, errors

    def describe(self, params: dict[str, Any], message: Any) -> str:
        values, errors = self._values(params, message)
        if errors:
            raise ActionError("; ".join(errors))
        stored = ", ".join(f"{key} = {_short(value)}" for key, value in values.items())
        return f"would store {stored} for device {_device_id(message)}"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        values, errors = self._values(params, message)
        device_id, ts = _device_id(message), _received(message)
        ctx.points.extend((device_id, key, ts, value) for key, value in values.items())
        if errors:
            raise ActionError("; ".join(errors))


# --- send_command ------------------------------------------------------------------------------


class SendCommand(ActionSpec):
    type = "send_command"
    description = (
        'Send a device command: to the message\'s device (target "self", the default), one device '
        '({"device": id}), a group and the groups below it ({"group": id}) or devices with any of some '
        'tags ({"tags": [...]}). Commands follow the usual lifecycle (docs/COMMANDS.md).'
    )
    schema = _object(
        {
            "type": {"type": "string", "minLength": 1},
            "params": {"type": "object"},
            "timeout": {"type": "integer", "minimum": 1},
            "target": {
                "oneOf": [
                    {"const": "self"},
                    _object({"device": {"type": "string", "minLength": 1, "maxLength": 64}}, ["device"]),
                    _object({"group": {"type": "integer", "minimum": 1}}, ["group"]),
                    _object(
                        {
                            "tags": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                            "match": {"enum": ["any", "all"]},
                        },
                        ["tags"],
                    ),
                ]
            },
        },
        ["type"],
    )
    example = {"type": "set_state", "params": {"state": True}, "target": "self"}

    def check(self, params: dict[str, Any]) -> list[str]:
        from control.schemas import SPECS, accepted_commands, params_errors
        from devices.models import Device, DeviceGroup

        command_type = params["type"]
        if command_type not in SPECS:
            return [f"type: unknown command type {command_type!r} ({', '.join(sorted(SPECS))})"]
        errors = [f"params: {problem}" for problem in params_errors(command_type, params.get("params", {}))]
        timeout = params.get("timeout")
        if timeout is not None and timeout > settings.COMMAND_MAX_TIMEOUT:
            errors.append(f"timeout: at most {settings.COMMAND_MAX_TIMEOUT} seconds")
        target = params.get("target", "self")
        if isinstance(target, dict) and "device" in target:
            device = Device.objects.filter(pk=target["device"]).only("id", "device_type", "metadata").first()
            if device is None:
                errors.append(f"target: no device {target['device']!r}")
            elif command_type not in accepted_commands(device.device_type, device.metadata):
                errors.append(f"target: device {device.id} does not accept {command_type} commands")
        elif isinstance(target, dict) and "group" in target:
            if not DeviceGroup.objects.filter(pk=target["group"]).exists():
                errors.append(f"target: no device group {target['group']}")
        return errors

    @staticmethod
    def _target(params: dict[str, Any]) -> Any:
        return params.get("target", "self")

    def describe(self, params: dict[str, Any], message: Any) -> str:
        from control.services import refusal, select_targets
        from devices.models import Device

        command = f"{params['type']} {_short(params.get('params', {}))}"
        timeout = f" (timeout {params['timeout']} s)" if params.get("timeout") else ""
        target = self._target(params)
        if target == "self" or "device" in target:
            device_id = _device_id(message) if target == "self" else target["device"]
            device = Device.objects.filter(pk=device_id).first()
            if device is None:
                raise ActionError(f"no device {device_id!r}")
            if reason := refusal(device, params["type"]):
                raise ActionError(reason)
            return f"would send {command} to device {device_id}{timeout}"
        try:
            selection = select_targets(self._batch_targets(target), params["type"])
        except ValidationError as exc:
            raise ActionError("; ".join(exc.messages)) from exc
        skipped = sum(selection.skipped.values())
        more = f", {skipped} skipped" if skipped else ""
        if not selection.devices:
            raise ActionError(f"no device of {self._target_text(target)} can take {params['type']} commands{more}")
        return f"would send {command} to {len(selection.devices)} devices of {self._target_text(target)}{more}{timeout}"

    @staticmethod
    def _batch_targets(target: dict[str, Any]) -> dict[str, Any]:
        if "group" in target:
            return {"group": target["group"], "include_descendants": True}
        return {"tags": target["tags"], "match": target.get("match", "any")}

    @staticmethod
    def _target_text(target: dict[str, Any]) -> str:
        if "group" in target:
            return f"group {target['group']}"
        return f"tags {', '.join(target['tags'])} ({target.get('match', 'any')})"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        from control import services as control_services
        from devices.models import Device

        target = self._target(params)
        try:
            if target == "self" or "device" in target:
                device_id = _device_id(message) if target == "self" else target["device"]
                device = Device.objects.filter(pk=device_id).first()
                if device is None:
                    raise ActionError(f"no device {device_id!r}")
                control_services.send_command(
                    device, params["type"], params.get("params", {}), timeout=params.get("timeout"), actor=ctx.actor
                )
            else:
                control_services.send_batch(
                    params["type"],
                    params.get("params", {}),
                    self._batch_targets(target),
                    timeout=params.get("timeout"),
                    actor=ctx.actor,
                )
        except ValidationError as exc:
            raise ActionError("; ".join(exc.messages)) from exc


# --- publish_mqtt ------------------------------------------------------------------------------


def topic_errors(topic: str) -> list[str]:
    """What is wrong with a topic a rule publishes to (``{device}`` stands for the device's id)."""
    sample = topic.replace("{device}", "x")
    if not sample or len(sample) > MQTT_TOPIC_MAX_LENGTH:
        return [f"topic: 1 to {MQTT_TOPIC_MAX_LENGTH} characters"]
    if "+" in sample or "#" in sample:
        return ["topic: no wildcards (+, #) in a topic to publish to"]
    if sample.startswith("$"):
        return ["topic: topics starting with $ belong to the broker"]
    if "\x00" in sample or "{" in sample or "}" in sample:
        return ["topic: only {device} may be substituted; no other braces or NUL characters"]
    if _INGESTED_TOPIC_RE.match(sample):
        return [
            "topic: the platform ingests devices/<id>/telemetry, attributes, status and commands/…; "
            "use store_telemetry or send_command instead"
        ]
    return []


class PublishMqtt(ActionSpec):
    uses_database = False
    type = "publish_mqtt"
    description = (
        "Publish to an MQTT topic once the batch is stored; {device} in the topic stands for the device's "
        "id. The payload is the given JSON value (a string goes as is), by default the message as JSON. "
        "Messages go out with QoS 1 (the platform's publisher always acknowledges)."
    )
    schema = _object(
        {
            "topic": {"type": "string", "minLength": 1, "maxLength": MQTT_TOPIC_MAX_LENGTH},
            "payload": {},
            "qos": {"enum": [0, 1]},
            "retain": {"type": "boolean"},
        },
        ["topic"],
    )
    example = {"topic": "alerts/{device}/temperature", "qos": 1, "retain": False}

    def check(self, params: dict[str, Any]) -> list[str]:
        return topic_errors(params["topic"])

    def _message(self, params: dict[str, Any], rule: Any, message: Any) -> tuple[str, bytes]:
        topic = params["topic"].replace("{device}", _device_id(message))
        if "payload" not in params:
            payload = _json_bytes(message_summary(message, rule))
        elif isinstance(params["payload"], str):
            payload = params["payload"].encode()
        else:
            payload = _json_bytes(params["payload"])
        return topic, payload

    def describe(self, params: dict[str, Any], message: Any) -> str:
        topic, payload = self._message(params, None, message)
        return f"would publish {len(payload)} bytes to {topic}: {_short(payload.decode('utf-8', 'replace'))}"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        from control.publisher import Outgoing

        topic, payload = self._message(params, rule, message)
        outgoing = Outgoing(topic=topic, payload=payload, retain=bool(params.get("retain")))
        transaction.on_commit(lambda: _publish(outgoing), robust=True)


def _publish(outgoing: Any) -> None:
    from control.publisher import PublishError, get_publisher

    try:
        acked = get_publisher().publish_many([outgoing], settings.COMMAND_PUBLISH_TIMEOUT)
    except PublishError as exc:
        logger.warning("publish_mqtt to %s failed: %s", outgoing.topic, exc)
        return
    if not all(acked):
        logger.warning("publish_mqtt to %s: the broker did not acknowledge", outgoing.topic)


# --- webhook -----------------------------------------------------------------------------------


class WebhookRetry(Exception):
    """The webhook's server failed in a way worth another try (5xx, 429)."""


def _webhook_max_timeout() -> int:
    return int(getattr(settings, "RULES_WEBHOOK_MAX_TIMEOUT", 30))


class Webhook(ActionSpec):
    uses_database = False
    type = "webhook"
    description = (
        "POST the message as JSON (rule, device, trigger, received, and its telemetry, attributes, status "
        "or command) to an http(s) URL once the batch is stored, from a worker, retried with backoff on "
        "network errors, 429 and 5xx answers."
    )
    schema = _object(
        {
            "url": {"type": "string", "minLength": 1, "maxLength": 2048},
            "headers": {
                "type": "object",
                "maxProperties": WEBHOOK_MAX_HEADERS,
                "additionalProperties": {"type": "string", "maxLength": 1024},
            },
            "timeout": {"type": "number", "exclusiveMinimum": 0},
        },
        ["url"],
    )
    example = {"url": "https://hooks.example.com/fluxiot", "headers": {"Authorization": "Bearer …"}, "timeout": 5}

    def check(self, params: dict[str, Any]) -> list[str]:
        errors = []
        parts = urlsplit(params["url"])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append("url: an http:// or https:// URL with a host")
        elif any(ch.isspace() for ch in params["url"]):
            errors.append("url: no spaces")
        for name, value in params.get("headers", {}).items():
            if not _HEADER_NAME_RE.match(name):
                errors.append(f"headers: bad header name {name[:40]!r}")
            elif name.lower() in _FORBIDDEN_HEADERS:
                errors.append(f"headers: {name} is set by the platform")
            elif "\r" in value or "\n" in value:
                errors.append(f"headers.{name}: no line breaks")
        timeout = params.get("timeout")
        if timeout is not None and timeout > _webhook_max_timeout():
            errors.append(f"timeout: at most {_webhook_max_timeout()} seconds")
        return errors

    def describe(self, params: dict[str, Any], message: Any) -> str:
        body = _json_bytes(message_summary(message, None))
        return f"would POST {len(body)} bytes of JSON to {params['url']}"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        body = message_summary(message, rule)
        url, headers = params["url"], dict(params.get("headers", {}))
        timeout = min(float(params.get("timeout") or WEBHOOK_DEFAULT_TIMEOUT), float(_webhook_max_timeout()))
        transaction.on_commit(lambda: post_webhook.delay(url, body, headers, timeout), robust=True)


@shared_task(
    name="rules.actions.post_webhook",
    autoretry_for=(urllib.error.URLError, WebhookRetry, TimeoutError, ConnectionError),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
    acks_late=True,
    soft_time_limit=60,
    time_limit=90,
)
def post_webhook(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = WEBHOOK_DEFAULT_TIMEOUT
) -> int:
    """POST ``body`` as JSON to ``url``; returns the HTTP status. Network errors, 429 and 5xx raise
    (and are retried with backoff); other 4xx are logged and dropped (trying again would not help)."""
    timeout = min(max(float(timeout), 0.1), float(_webhook_max_timeout()))
    request = urllib.request.Request(  # the scheme was checked (http or https) when the rule was saved
        url,
        data=_json_bytes(body),
        headers={"User-Agent": "FluxIoT-rules", **(headers or {}), "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(WEBHOOK_ERROR_BODY_CHARS).decode("utf-8", "replace") if exc.fp else ""
        if exc.code == 429 or exc.code >= 500:
            raise WebhookRetry(f"{url} answered {exc.code}: {detail}") from exc
        logger.warning("webhook %s answered %s, not retried: %s", url, exc.code, detail)
        return exc.code


# --- Running -----------------------------------------------------------------------------------


def dry_run(rule_actions: list[dict[str, Any]], message: Any) -> list[dict[str, Any]]:
    """What each action would do for ``message``, without doing anything: ``[{"type", "would",
    "error"?}]``."""
    outcome = []
    for action in rule_actions:
        action_type = action.get("type", "") if isinstance(action, dict) else ""
        params = action.get("params", {}) if isinstance(action, dict) else {}
        spec = get(action_type)
        entry: dict[str, Any] = {"type": action_type, "would": ""}
        if spec is None:
            entry["error"] = f"unknown action type {action_type!r}"
        elif problems := spec.validate(params):
            entry["error"] = "; ".join(problems)
        else:
            try:
                entry["would"] = spec.describe(params, message)
            except (ActionError, ValidationError) as exc:
                entry["error"] = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        outcome.append(entry)
    return outcome


def run_actions(
    ctx: ActionContext, rule_actions: list[dict[str, Any]], rule: Any, message: Any
) -> list[dict[str, Any]]:
    """Run a rule's actions in order for one message (``ctx.dry_run``: only say what they would do).
    A failing action adds ``"<type>: <why>"`` to ``ctx.errors`` and the next one still runs. Returns
    one ``{"type", "would"?, "error"?}`` per action."""
    if ctx.dry_run:
        outcome = dry_run(rule_actions, message)
        ctx.errors += [f"{entry['type']}: {entry['error']}" for entry in outcome if "error" in entry]
        return outcome
    outcome = []
    for action in rule_actions:
        action_type = action.get("type", "")
        spec = get(action_type)
        entry: dict[str, Any] = {"type": action_type}
        try:
            if spec is None:
                raise ActionError(f"unknown action type {action_type!r}")
            params = action.get("params", {})
            if spec.uses_database:
                # A savepoint: an action failing in the database must not spoil the ingest transaction.
                with transaction.atomic():
                    spec.execute(ctx, params, rule, message)
            else:
                spec.execute(ctx, params, rule, message)
        except ActionError as exc:
            entry["error"] = str(exc)
        except Exception as exc:  # one action's failure never stops the others
            logger.exception("action %s of rule %s failed", action_type, getattr(rule, "id", None))
            entry["error"] = f"{type(exc).__name__}: {exc}"
        if "error" in entry:
            ctx.errors.append(f"{action_type}: {entry['error']}")
        outcome.append(entry)
    return outcome


BUILTINS: tuple[Callable[[], ActionSpec], ...] = (EmitEvent, StoreTelemetry, SendCommand, PublishMqtt, Webhook)
for _spec in BUILTINS:
    register(_spec())
