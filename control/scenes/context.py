"""The CEL of scenes: the variables a scene's conditions see, checking an expression when a scene
is saved, and building the values for a run.

Variables (docs/SCENES.md):

- ``trigger``: what started the run, always with every key (empty when it does not apply):
  ``{"kind", "device", "telemetry", "attributes", "status" ({"old", "new", "reason"}),
  "alarm" ({"id", "type", "severity", "transition"}), "cron", "user", "scene" ({"id", "name"}),
  "rule" ({"id", "name"})}``;
- ``devices``: the latest stored values of the devices the expression names, by literal id only
  (``devices["temp_sensor_01"].temperature``; ``devices.fan_01.state`` for ids that are CEL
  identifiers). Only those devices are loaded;
- ``local``: the time of the event in the scene's time zone: ``{"hour", "minute", "weekday"
  (1 = Monday … 7 = Sunday), "day", "month", "year", "date" ("2025-06-30"), "time" ("07:30")}``,
  numbers as ints;
- ``now``: the time of the event, a CEL timestamp in UTC.

Numbers that come from devices (``trigger.telemetry``, ``devices``) are doubles, as for rules
(``rules.cel.doubles``). A trigger's own condition (evaluated inside the ingest batch) sees
``trigger``, ``local`` and ``now`` only: no database access there.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import cel

from rules.cel import (
    BUILTIN_IDENTIFIERS,
    FUNCTIONS,
    ConditionError,
    compile_condition,
    describe_value,
    doubles,
    error_text,
)

VARIABLES: tuple[str, ...] = ("trigger", "devices", "local", "now")
TRIGGER_VARIABLES: tuple[str, ...] = ("trigger", "local", "now")
TRIGGER_KEYS = ("kind", "device", "telemetry", "attributes", "status", "alarm", "cron", "user", "scene", "rule")
_MAP_KEYS = frozenset({"telemetry", "attributes", "status", "alarm", "scene", "rule"})

_IDENTIFIER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_BOUND_RE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_STRING = r"""(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')"""
# devices["id"] / devices['id'] / devices.id, then optionally .key or ["key"]
_DEVICE_REF_RE = re.compile(
    rf"""\bdevices\s*(?:\[\s*{_STRING}\s*\]|\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\())"""
    rf"""(?:\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()|\s*\[\s*{_STRING}\s*\])?"""
)
_DEVICES_WORD_RE = re.compile(r"\bdevices\b")
_TRIGGER_KEY_RE = re.compile(
    rf"""\btrigger\s*\.\s*(telemetry|attributes)\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*{_STRING}\s*\])"""
)
_FILLS: tuple[Any, ...] = (True, 1.5, "text")


# --- Time ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; ValueError for a name that is no time zone."""
    if not isinstance(name, str) or name not in _zones():
        raise ValueError(f"Unknown time zone {name!r}; use an IANA name such as Europe/Paris or UTC.")
    return zoneinfo.ZoneInfo(name)


def local_values(moment: datetime, tz: zoneinfo.ZoneInfo) -> dict[str, Any]:
    """``local``: ``moment`` in the scene's time zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    here = moment.astimezone(tz)
    return {
        "hour": here.hour,
        "minute": here.minute,
        "weekday": here.isoweekday(),
        "day": here.day,
        "month": here.month,
        "year": here.year,
        "date": here.strftime("%Y-%m-%d"),
        "time": here.strftime("%H:%M"),
    }


# --- Values --------------------------------------------------------------------------------------


def trigger_value(trigger: dict[str, Any]) -> dict[str, Any]:
    """``trigger``: the run's trigger with every key present (empty maps and strings when they do
    not apply), device numbers as doubles."""
    value: dict[str, Any] = {}
    for key in TRIGGER_KEYS:
        item = trigger.get(key)
        if key in _MAP_KEYS:
            value[key] = doubles(item) if isinstance(item, dict) else {}
        else:
            value[key] = "" if item is None else str(item)
    return value


def values(trigger: dict[str, Any], at: datetime, tz: zoneinfo.ZoneInfo, devices: dict[str, Any]) -> dict[str, Any]:
    """The Python values of a run's context."""
    return {
        "trigger": trigger_value(trigger),
        "devices": devices,
        "local": local_values(at, tz),
        "now": at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC),
    }


def load_devices(device_ids: set[str] | frozenset[str]) -> dict[str, dict[str, Any]]:
    """The latest stored values of these devices, ``{id: {key: value}}`` (numbers as doubles); a
    device with no values yet maps to ``{}``, an unknown one is absent."""
    from devices.models import Device
    from telemetry.models import LatestValue

    if not device_ids:
        return {}
    found: dict[str, dict[str, Any]] = {
        pk: {} for pk in Device.objects.filter(pk__in=list(device_ids)).values_list("pk", flat=True)
    }
    for device_id, key, value in LatestValue.objects.filter(device_id__in=list(found)).values_list(
        "device_id", "key", "value"
    ):
        found[device_id][key] = doubles(value)
    return found


# --- Compiling and checking ----------------------------------------------------------------------


@lru_cache(maxsize=4096)
def program(text: str) -> cel.Program:
    """A compiled expression (cached); ConditionError when it does not compile."""
    return compile_condition(text)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def device_references(text: str) -> frozenset[str]:
    """The device ids an expression names in ``devices``. ConditionError when it uses ``devices``
    any other way (``size(devices)``, ``devices[x]``): only literal ids say what to load."""
    refs = list(_DEVICE_REF_RE.finditer(text))
    if len(refs) != len(_DEVICES_WORD_RE.findall(text)):
        raise ConditionError(
            'Name devices by a literal id: devices["temp_sensor_01"].temperature (only those devices are loaded).'
        )
    return frozenset(_unescape(m.group(1) or m.group(2) or m.group(3) or "") for m in refs)


def _name_errors(text: str, compiled: cel.Program, allowed: tuple[str, ...]) -> list[str]:
    errors = []
    bound = set(_BOUND_RE.findall(text))
    for name in compiled.variables():
        if name in allowed or name in BUILTIN_IDENTIFIERS or name in bound:
            continue
        if name in VARIABLES:
            errors.append(
                f"{name!r} is not available here: a trigger's condition sees {', '.join(allowed)} "
                "(compare other devices in the scene's conditions)."
            )
        else:
            errors.append(f"Unknown variable {name!r}: a scene's condition can use {', '.join(allowed)}.")
    for name in compiled.functions():
        if _IDENTIFIER_RE.match(name) and name not in FUNCTIONS:
            errors.append(f"Unknown function {name!r}; the functions available are those of rules (docs/RULES.md).")
    return errors


def _sample(text: str, fill: Any, now: datetime) -> dict[str, Any]:
    data: dict[str, dict[str, Any]] = {"telemetry": {}, "attributes": {}}
    for match in _TRIGGER_KEY_RE.finditer(text):
        key = match.group(2) or match.group(3) or match.group(4) or ""
        data[match.group(1)][_unescape(key)] = fill
    devices: dict[str, dict[str, Any]] = {}
    for match in _DEVICE_REF_RE.finditer(text):
        device = devices.setdefault(_unescape(match.group(1) or match.group(2) or match.group(3) or ""), {})
        key = match.group(4) or match.group(5) or match.group(6)
        if key is not None:
            device[_unescape(key)] = fill
    trigger = {"kind": "device_data", "device": "sample-device", **data, "status": {"old": "online", "new": "offline"}}
    return values(trigger, now, zoneinfo.ZoneInfo("UTC"), devices)


def check_expression(text: Any, allowed: tuple[str, ...] = VARIABLES) -> list[str]:
    """What is wrong with a scene's condition (empty when fine): it must compile, use only the
    variables ``allowed`` and the available functions, name devices by literal ids, and give a
    boolean (judged on sample values: true, 1.5 and "text" for every key it names, accepted as soon
    as one gives a bool). An error on sample data is accepted (real data may differ) unless the
    expression uses nothing but ``local`` and ``now``: that one would fail on every run."""
    if not isinstance(text, str):
        return ["A condition is a CEL expression (a string)."]
    try:
        compiled = program(text)
    except ConditionError as exc:
        return [str(exc)]
    errors = _name_errors(text, compiled, allowed)
    if errors:
        return errors
    try:
        device_references(text)
    except ConditionError as exc:
        return [str(exc)]
    now = datetime.now(UTC)
    others: list[Any] = []
    failures: list[Exception] = []
    for fill in _FILLS:
        try:
            result = compiled.execute(cel.Context(_sample(text, fill, now)))
        except Exception as exc:  # noqa: BLE001 — an error on sample data is weighed below
            failures.append(exc)
            continue
        if isinstance(result, bool):
            return []
        others.append(result)
    if others:
        return [f"The condition must be true or false, but it gives {describe_value(others[0])} on sample data."]
    if not (set(compiled.variables()) & {"trigger", "devices"}):
        return [f"The condition fails on every run: {error_text(failures[0])}"]
    return []
