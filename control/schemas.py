"""The command catalogue: every command type, what its params look like (JSON Schema), and which
devices accept it.

A device accepts the commands of its type (``ACCEPTED_BY_DEVICE_TYPE``). A device may narrow that
further with a profile in its metadata: ``{"commands": ["reboot", "set_state"]}`` — only those (and
only if its type accepts them too). The catalogue is served at ``/api/v1/command-types/`` and drives
the admin's command console.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from control.choices import CommandType
from devices.choices import DeviceType

_NO_PARAMS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _object(properties: dict[str, Any], required: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
        **extra,
    }


@dataclass(frozen=True)
class CommandSpec:
    type: str
    description: str
    schema: dict[str, Any]
    example: dict[str, Any]


SPECS: dict[str, CommandSpec] = {
    spec.type: spec
    for spec in [
        CommandSpec(
            CommandType.REBOOT,
            "Restart the device, optionally after a delay in seconds.",
            _object({"delay": {"type": "integer", "minimum": 0, "maximum": 3600}}),
            {},
        ),
        CommandSpec(
            CommandType.RESET,
            "Reset the device's state; with factory true, to factory settings.",
            _object({"factory": {"type": "boolean"}}),
            {"factory": False},
        ),
        CommandSpec(
            CommandType.UPDATE,
            "Install firmware from an http(s) URL, checked against its SHA-256 checksum.",
            _object(
                {
                    "url": {"type": "string", "pattern": "^https?://[^\\s]+$", "maxLength": 2048},
                    "checksum": {"type": "string", "pattern": "^(sha256:)?[0-9a-fA-F]{64}$"},
                    "version": {"type": "string", "minLength": 1, "maxLength": 64},
                },
                ("url", "checksum", "version"),
            ),
            {"url": "https://firmware.example.com/fan-2.1.0.bin", "checksum": "sha256:" + "0" * 64, "version": "2.1.0"},
        ),
        CommandSpec(
            CommandType.START_STREAM,
            "Start streaming video; quality and an optional duration in seconds.",
            _object(
                {
                    "quality": {"enum": ["low", "medium", "high"]},
                    "duration": {"type": "integer", "minimum": 1, "maximum": 86400},
                }
            ),
            {"quality": "medium"},
        ),
        CommandSpec(CommandType.STOP_STREAM, "Stop streaming video.", _NO_PARAMS, {}),
        CommandSpec(
            CommandType.TAKE_SNAPSHOT,
            "Take a still picture, optionally at a resolution such as 1920x1080.",
            _object({"resolution": {"type": "string", "pattern": "^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$"}}),
            {},
        ),
        CommandSpec(
            CommandType.PTZ_CONTROL,
            "Move a camera: pan -180..180 and tilt -90..90 degrees, zoom 1..100; at least one of them.",
            _object(
                {
                    "pan": {"type": "number", "minimum": -180, "maximum": 180},
                    "tilt": {"type": "number", "minimum": -90, "maximum": 90},
                    "zoom": {"type": "number", "minimum": 1, "maximum": 100},
                },
                minProperties=1,
            ),
            {"pan": 30, "tilt": -10, "zoom": 2},
        ),
        CommandSpec(
            CommandType.READ_VALUE,
            "Read one value now; the device answers with it in the result.",
            _object({"key": {"type": "string", "minLength": 1, "maxLength": 128}}, ("key",)),
            {"key": "temperature"},
        ),
        CommandSpec(
            CommandType.SET_SAMPLING_RATE,
            "Samples per second (above 0, at most 1000).",
            _object({"rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000}}, ("rate",)),
            {"rate": 1},
        ),
        CommandSpec(
            CommandType.SET_STATE,
            "Switch on (true) or off (false).",
            _object({"state": {"type": "boolean"}}, ("state",)),
            {"state": True},
        ),
        CommandSpec(
            CommandType.SET_VALUE,
            "Set a number, optionally naming what it is for (key).",
            _object(
                {"value": {"type": "number"}, "key": {"type": "string", "minLength": 1, "maxLength": 128}},
                ("value",),
            ),
            {"value": 21.5},
        ),
        CommandSpec(
            CommandType.CUSTOM,
            "A command of the device's own: a name, and any other params it understands.",
            {
                "type": "object",
                "properties": {"name": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_.-]{0,63}$"}},
                "required": ["name"],
                "additionalProperties": True,
            },
            {"name": "blink", "times": 3},
        ),
    ]
}

_VALIDATORS = {name: Draft202012Validator(spec.schema) for name, spec in SPECS.items()}

_EVERY_DEVICE = {CommandType.REBOOT, CommandType.RESET, CommandType.UPDATE, CommandType.READ_VALUE, CommandType.CUSTOM}
_CAMERA = {CommandType.START_STREAM, CommandType.STOP_STREAM, CommandType.TAKE_SNAPSHOT, CommandType.PTZ_CONTROL}
_OUTPUTS = {CommandType.SET_STATE, CommandType.SET_VALUE}

ACCEPTED_BY_DEVICE_TYPE: dict[str, frozenset[str]] = {
    DeviceType.CAMERA: frozenset(_EVERY_DEVICE | _CAMERA),
    DeviceType.SENSOR: frozenset(_EVERY_DEVICE | {CommandType.SET_SAMPLING_RATE}),
    DeviceType.ACTUATOR: frozenset(_EVERY_DEVICE | _OUTPUTS),
    DeviceType.INDUSTRIAL: frozenset(_EVERY_DEVICE | _OUTPUTS | {CommandType.SET_SAMPLING_RATE}),
    DeviceType.GATEWAY: frozenset(CommandType.values),
    DeviceType.CUSTOM: frozenset(CommandType.values),
}


def accepted_commands(device_type: str, metadata: dict[str, Any] | None) -> frozenset[str]:
    """The command types a device accepts: its type's, narrowed by a ``commands`` profile in its
    metadata when there is one."""
    accepted = ACCEPTED_BY_DEVICE_TYPE.get(device_type, frozenset(CommandType.values))
    profile = (metadata or {}).get("commands")
    if isinstance(profile, list):
        accepted = accepted & frozenset(item for item in profile if isinstance(item, str))
    return accepted


def params_errors(command_type: str, params: Any) -> list[str]:
    """What is wrong with ``params`` for ``command_type`` (empty when they are fine), one message per
    problem, each naming where it is (``rate: 0 is less than or equal to the minimum of 0``)."""
    validator = _VALIDATORS.get(command_type)
    if validator is None:
        return [f"unknown command type {command_type!r}"]
    errors = sorted(validator.iter_errors(params), key=lambda error: list(error.absolute_path))
    if not errors:
        return []
    messages = []
    for error in errors:
        error = best_match([error]) or error
        where = ".".join(str(part) for part in error.absolute_path)
        messages.append(f"{where}: {error.message}" if where else error.message)
    return messages


def catalogue() -> list[dict[str, Any]]:
    """Every command type with its description, params schema, an example and the device types
    that accept it."""
    return [
        {
            "type": spec.type,
            "label": CommandType(spec.type).label,
            "description": spec.description,
            "params_schema": spec.schema,
            "example": spec.example,
            "device_types": sorted(t for t, accepted in ACCEPTED_BY_DEVICE_TYPE.items() if spec.type in accepted),
        }
        for spec in SPECS.values()
    ]
