"""Rule (and scene) actions of the alarms app: ``raise_alarm``, ``clear_alarm`` and ``notify``,
registered in the action registry of ``rules.actions`` when the app is ready.

They run inside the caller's transaction (the ingest batch's): a raise within a batch of 1,000
messages over a threshold is one alarm raised once and repeated 999 times, so one notification.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError

from alarms import notifications, services
from alarms.choices import AlarmSeverity
from alarms.models import ALARM_TYPE_MAX_LENGTH, validate_alarm_type
from rules.actions import ActionContext, ActionError, ActionSpec, message_summary, register

logger = logging.getLogger(__name__)

SUBJECT_MAX_LENGTH = notifications.SUBJECT_MAX_LENGTH
TEXT_MAX_LENGTH = notifications.TEXT_MAX_LENGTH

_TYPE = {"type": "string", "minLength": 1, "maxLength": ALARM_TYPE_MAX_LENGTH}
_DEVICE = {"type": "string", "minLength": 1, "maxLength": 64}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _type_errors(alarm_type: str) -> list[str]:
    try:
        validate_alarm_type(alarm_type)
    except ValidationError as exc:
        return [f"type: {message}" for message in exc.messages]
    return []


def _device_errors(params: dict[str, Any]) -> list[str]:
    from devices.models import Device

    if "device" in params and not Device.objects.filter(pk=params["device"]).exists():
        return [f"device: no device {params['device']!r}"]
    return []


def _device_id(params: dict[str, Any], message: Any) -> str:
    if params.get("device"):
        return params["device"]
    device = getattr(message, "device", None)
    device_id = getattr(device, "id", None)
    if not isinstance(device_id, str):
        raise ActionError("no device: the message has none, and the action names none")
    return device_id


def source_of(rule: Any) -> str:
    """``rule:<id>`` for a rule of the engine, ``<model>:<pk>`` for a model (a scene…), else ""."""
    meta = getattr(rule, "_meta", None)
    if meta is not None and getattr(rule, "pk", None) is not None:
        return f"{meta.model_name}:{rule.pk}"
    rule_id = getattr(rule, "id", None)
    return f"rule:{rule_id}" if rule_id is not None else ""


def _message_details(message: Any, rule: Any) -> dict[str, Any]:
    try:
        summary = message_summary(message, rule)
    except (AttributeError, TypeError):  # not an engine message (a scene's context)
        return {}
    summary.pop("device", None)
    return summary


def _errors_text(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return "; ".join(exc.messages)


class RaiseAlarm(ActionSpec):
    type = "raise_alarm"
    description = (
        "Raise an alarm of a type and severity on the message's device (or the device named). A device has "
        "at most one active alarm per type: raising it again bumps its count and, if more severe, its "
        "severity (escalated). The alarm's details are the message (rule, trigger, values) and the "
        "details given."
    )
    schema = _object(
        {
            "type": _TYPE,
            "severity": {"enum": AlarmSeverity.values},
            "details": {"type": "object"},
            "device": _DEVICE,
        },
        ["type", "severity"],
    )
    example = {"type": "high_temperature", "severity": "major", "details": {"threshold": 30}}

    def check(self, params: dict[str, Any]) -> list[str]:
        return _type_errors(params["type"]) + _device_errors(params)

    def describe(self, params: dict[str, Any], message: Any) -> str:
        return (
            f"would raise a {params['severity']} {params['type']} alarm on device {_device_id(params, message)} "
            "(or raise its active one again)"
        )

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        details = {**_message_details(message, rule), **(params.get("details") or {})}
        try:
            services.raise_alarm(
                _device_id(params, message),
                params["type"],
                params["severity"],
                details=details,
                source=source_of(rule),
                actor=ctx.actor,
            )
        except ValidationError as exc:
            raise ActionError(_errors_text(exc)) from exc


class ClearAlarm(ActionSpec):
    type = "clear_alarm"
    description = (
        "Clear the active alarm of a type on the message's device (or the device named); nothing happens "
        "when there is none."
    )
    schema = _object({"type": _TYPE, "device": _DEVICE}, ["type"])
    example = {"type": "high_temperature"}

    def check(self, params: dict[str, Any]) -> list[str]:
        return _type_errors(params["type"]) + _device_errors(params)

    def describe(self, params: dict[str, Any], message: Any) -> str:
        return f"would clear the active {params['type']} alarm of device {_device_id(params, message)}, if any"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        name = getattr(rule, "name", "") or source_of(rule)
        services.clear_alarm(
            _device_id(params, message), params["type"], reason=f"Cleared by {name}." if name else "", actor=ctx.actor
        )


class Notify(ActionSpec):
    type = "notify"
    description = (
        "Send a one-off notification through a notification channel (email or webhook), after the batch is "
        "stored. {device} in the subject and text stands for the device's id. For alarms use raise_alarm "
        "and notification rules: they notify once per alarm, not once per message. The channel is looked up "
        "when the action runs (and in rule tests): one deleted or disabled since makes the action fail."
    )
    schema = _object(
        {
            "channel": {"type": "integer", "minimum": 1},
            "subject": {"type": "string", "minLength": 1, "maxLength": SUBJECT_MAX_LENGTH},
            "text": {"type": "string", "maxLength": TEXT_MAX_LENGTH},
        },
        ["channel", "subject"],
    )
    example = {"channel": 1, "subject": "Lab door open on {device}", "text": "Someone left the door open."}

    @staticmethod
    def _texts(params: dict[str, Any], message: Any) -> tuple[str, str, str | None]:
        device = getattr(getattr(message, "device", None), "id", None)
        device_id = device if isinstance(device, str) else None
        subject, text = params["subject"], params.get("text", "")
        if device_id is not None:
            subject, text = subject.replace("{device}", device_id), text.replace("{device}", device_id)
        return subject, text, device_id

    def describe(self, params: dict[str, Any], message: Any) -> str:
        from alarms.models import NotificationChannel

        subject, _, _ = self._texts(params, message)
        channel = NotificationChannel.objects.filter(pk=params["channel"]).first()
        if channel is None:
            raise ActionError(f"no notification channel {params['channel']}")
        if not channel.enabled:
            raise ActionError(f"notification channel {channel.name!r} is disabled")
        return f"would send {subject!r} through {channel.kind} channel {channel.name!r}"

    def execute(self, ctx: ActionContext, params: dict[str, Any], rule: Any, message: Any) -> None:
        subject, text, device_id = self._texts(params, message)
        try:
            notifications.send_message(params["channel"], subject, text, device_id=device_id, source=source_of(rule))
        except ValidationError as exc:
            raise ActionError(_errors_text(exc)) from exc


SPECS = (RaiseAlarm, ClearAlarm, Notify)


def register_all() -> None:
    """Add the alarm actions to the registry (replacing earlier registrations of the same names)."""
    for spec in SPECS:
        register(spec())
