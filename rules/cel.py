"""CEL conditions: compiling and checking them, and the context they are evaluated against.

The binding is ``common-expression-language`` (import name ``cel``, cel-rust underneath). A condition
sees these variables:

- ``device``: ``{"id", "name", "type", "tags" (list), "group" (the group's path, "" for none),
  "status", "metadata" (map)}``;
- ``telemetry``: the message's values ``{key: value}`` (empty for other triggers);
- ``attributes``: the device's attributes, merged with the message's for an attributes trigger;
- ``previous``: the device's latest values before this message (may be empty);
- ``status``: ``{"old", "new"}`` for a status trigger, else empty;
- ``command``: ``{"id", "type", "status", "result", "error"}`` for a command result, else empty;
- ``now``: a CEL timestamp, the time the message was received, in UTC, so ``now.getHours()``,
  ``now.getDayOfWeek()`` (0 = Sunday) and ``now - duration("1h")`` work. This binding has no
  time-zone argument (``now.getHours("Europe/Paris")`` fails).

What the binding does at run time, and so what conditions should expect:

- a missing key (``telemetry.missing > 1``) raises an error; ``has(telemetry.missing)`` guards it.
  ``||`` and ``&&`` absorb an error when the other side decides (``true || error`` is true);
- int and double compare with each other (``telemetry.t > 30.0`` works when ``t`` is ``31``), but
  arithmetic does not mix them (``telemetry.t + 1.5`` fails when ``t`` is an int; JSON ``31``
  is an int): use ``double(telemetry.t)``;
- only the functions this binding provides natively exist (``FUNCTIONS``);
- comprehensions nest at most ``MAX_COMPREHENSION_DEPTH`` deep: an evaluation cannot be
  interrupted, and nested ones multiply (six over ten-item lists take seconds).

Evaluation is fastest with a ``cel.Context`` reused across programs: the conversion of Python
values to CEL values is most of the cost of a message, so ``ContextCache`` converts a device's
values once per batch, and the engine puts only the variables its rules reference into a context.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import cel

from rules.choices import Trigger

if TYPE_CHECKING:
    from rules.engine import EngineMessage

MAX_CONDITION_LENGTH = 4096
# Comprehensions (all, exists, exists_one, map, filter) multiply: six nested over ten-item lists
# take seconds per evaluation, and the binding can be neither interrupted nor given a budget.
MAX_COMPREHENSION_DEPTH = 2

VARIABLES: tuple[str, ...] = ("device", "telemetry", "attributes", "previous", "status", "command", "now")
_VARIABLE_SET = frozenset(VARIABLES)

# Identifiers the binding itself defines: type names (``type(x) == double``) and the ``optional``
# namespace (``optional.of(1)``).
BUILTIN_IDENTIFIERS = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type", "optional"}
)

# The functions (and methods) this binding provides natively, each checked in tests/rules/test_cel.py.
# The comprehension macros (has, all, exists, exists_one, map, filter) are expanded by the parser and
# never show up as functions. Absent here, and so refused: min/max, lowerAscii, split, math.*, …
FUNCTIONS = frozenset(
    {
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "dyn",
        "type",
        "duration",
        "timestamp",
        "getFullYear",
        "getMonth",
        "getDayOfYear",
        "getDayOfMonth",
        "getDate",
        "getDayOfWeek",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
        # optional.of(x), optional.none(), optional.ofNonZeroValue(x) and their methods
        "of",
        "none",
        "ofNonZeroValue",
        "hasValue",
        "value",
        "orValue",
        "or",
    }
)

# What an unknown-function error suggests instead (the optional.* helpers left out).
_ADVERTISED_FUNCTIONS = ", ".join(
    sorted(FUNCTIONS - {"of", "none", "ofNonZeroValue", "hasValue", "value", "orValue", "or"}, key=str.lower)
)

_IDENTIFIER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # operators look like _+_, @in, !_, -_
# The variable a comprehension macro binds: ``xs.exists(x, …)``. ``Program.variables()`` lists it
# with the free variables, so it is taken out before looking for unknown ones.
_BOUND_RE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
# Keys a condition names in the open-ended maps, to fill the sample context with.
_KEY_RE = re.compile(
    r"""\b(telemetry|attributes|previous|metadata)\s*"""
    r"""(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\])"""
)
# The sample values a key named by a condition takes, one evaluation each.
_FILLS: tuple[Any, ...] = (True, 1, 1.5, "text")


class ConditionError(Exception):
    """A condition that cannot be used; the message says why (the compiler's message for syntax)."""


# --- Compiling and checking --------------------------------------------------------------------


def compile_condition(text: str) -> cel.Program:
    """Compile a condition, or raise ``ConditionError`` with the compiler's message."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("A condition is required.")
    if len(text) > MAX_CONDITION_LENGTH:
        raise ConditionError(
            f"A condition is at most {MAX_CONDITION_LENGTH:,} characters (this one has {len(text):,})."
        )
    try:
        program = cel.compile(text)
    except Exception as exc:  # whatever the parser raises, the condition does not compile
        raise ConditionError(_compiler_message(text, exc)) from exc
    depth = comprehension_depth(text)
    if depth > MAX_COMPREHENSION_DEPTH:
        raise ConditionError(
            f"Comprehensions (all, exists, exists_one, map, filter) nest at most {MAX_COMPREHENSION_DEPTH} deep;"
            f" this condition nests {depth}."
        )
    return program


_MACRO_RE = re.compile(r"\.\s*(?:all|exists_one|exists|map|filter)\s*\($")


def comprehension_depth(text: str) -> int:
    """How deep comprehension macros nest in a condition (string literals skipped)."""
    stack: list[bool] = []  # per open parenthesis: whether it opens a comprehension
    depth = deepest = 0
    quote = ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "/" and text.startswith("//", i):  # a comment, to the end of the line
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif char == "(":
            macro = bool(_MACRO_RE.search(text, max(0, i - 24), i + 1))
            stack.append(macro)
            if macro:
                depth += 1
                deepest = max(deepest, depth)
        elif char == ")" and stack:
            if stack.pop():
                depth -= 1
        i += 1
    return deepest


def _compiler_message(text: str, exc: Exception) -> str:
    message = str(exc)
    echo = f"Failed to parse expression '{text}': "  # the binding repeats the whole text first
    if message.startswith(echo):
        message = message[len(echo) :]
    return message.strip() or f"The condition does not compile ({type(exc).__name__})."


def referenced_variables(program: cel.Program) -> frozenset[str]:
    """The context variables a compiled condition uses (static analysis, no evaluation)."""
    return _VARIABLE_SET.intersection(program.variables())


def check_condition(text: str, trigger: str = Trigger.TELEMETRY) -> list[str]:
    """What is wrong with a condition for rules of ``trigger`` (empty when it is fine).

    Refused: what does not compile (the compiler's message); unknown variables and functions;
    a condition that is not boolean. The last is found by evaluating it against sample contexts in
    which every key it names (``telemetry.x``, ``attributes["y"]``, ``device.metadata.z``…) holds a
    bool, then an int, a double and a string: the condition is refused when some sample gives a
    value that is not a bool and none gives a bool (``telemetry.t + 1``, ``device.name``), and
    accepted when one gives a bool (``telemetry.door_open`` may well be a bool).

    An error while evaluating sample data (no such key, an int/double mismatch in arithmetic, a
    nested key the sample lacks) does not refuse the condition: real data may differ. Only a
    condition that uses no message data at all (constants and ``now`` alone) is refused for a
    runtime error, since it would fail on every message. Runtime failures are counted per rule, and
    the rule test endpoint shows them.
    """
    if trigger not in Trigger.values:
        return [f"Unknown trigger {trigger!r} ({', '.join(Trigger.values)})."]
    try:
        program = compile_condition(text)
    except ConditionError as exc:
        return [str(exc)]
    errors = _name_errors(text, program)
    if errors:
        return errors
    error = _sample_error(text, program, trigger)
    return [error] if error else []


def _name_errors(text: str, program: cel.Program) -> list[str]:
    errors = []
    bound = set(_BOUND_RE.findall(text))
    for name in program.variables():
        if name not in _VARIABLE_SET and name not in BUILTIN_IDENTIFIERS and name not in bound:
            errors.append(f"Unknown variable {name!r}: a condition can use {', '.join(VARIABLES)}.")
    for name in program.functions():
        if _IDENTIFIER_RE.match(name) and name not in FUNCTIONS:
            errors.append(f"Unknown function {name!r}; the functions available are {_ADVERTISED_FUNCTIONS}.")
    return errors


def _sample_error(text: str, program: cel.Program, trigger: str) -> str | None:
    keys: dict[str, set[str]] = {}
    for var, dotted, double_quoted, single_quoted in _KEY_RE.findall(text):
        keys.setdefault(var, set()).add(dotted or double_quoted or single_quoted)
    now = datetime.now(UTC)
    others: list[Any] = []
    failures: list[Exception] = []
    for fill in _FILLS:
        context = cel.Context(
            sample_values(trigger, now, {var: dict.fromkeys(names, fill) for var, names in keys.items()})
        )
        try:
            result = program.execute(context)
        except Exception as exc:  # noqa: BLE001 — an error on sample data is weighed below
            failures.append(exc)
            continue
        if isinstance(result, bool):
            return None
        others.append(result)
    if others:
        return f"The condition must be true or false, but it gives {describe_value(others[0])} on sample data."
    if not (referenced_variables(program) - {"now"}):
        return f"The condition fails on every message: {error_text(failures[0])}"
    return None


def sample_values(trigger: str, now: datetime, keys: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A plausible context for a message of ``trigger`` (``keys``: extra entries per map, by name:
    ``telemetry``, ``attributes``, ``previous``, ``metadata``)."""
    keys = keys or {}
    return {
        "device": {
            "id": "sample-device",
            "name": "Sample device",
            "type": "sensor",
            "tags": ["sample"],
            "group": "/1/",
            "status": "offline" if trigger == Trigger.STATUS else "online",
            "metadata": dict(keys.get("metadata", {})),
        },
        "telemetry": dict(keys.get("telemetry", {})) if trigger == Trigger.TELEMETRY else {},
        "attributes": dict(keys.get("attributes", {})),
        "previous": dict(keys.get("previous", {})),
        "status": {"old": "online", "new": "offline"} if trigger == Trigger.STATUS else {},
        "command": (
            {
                "id": "00000000-0000-0000-0000-000000000000",
                "type": "reboot",
                "status": "success",
                "result": {},
                "error": "",
            }
            if trigger == Trigger.COMMAND_RESULT
            else {}
        ),
        "now": now,
    }


# --- Results and errors ------------------------------------------------------------------------

_CEL_TYPES = {
    bool: "bool",
    int: "int",
    float: "double",
    str: "string",
    bytes: "bytes",
    list: "list",
    dict: "map",
    type(None): "null",
    datetime: "timestamp",
}


def describe_value(value: Any) -> str:
    """``int 3``, ``string "on"``, ``map`` …: a result named the way CEL names its types."""
    name = _CEL_TYPES.get(type(value), type(value).__name__)
    if isinstance(value, bool | int | float):
        return f"{name} {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f'{name} "{shown}"'
    return "null" if value is None else name


def error_text(exc: Exception) -> str:
    """An evaluation error as one readable line."""
    if isinstance(exc, KeyError) and exc.args:
        return f"no such key: {exc.args[0]}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def non_boolean_error(value: Any) -> str:
    return f"The condition gave {describe_value(value)}, not true or false."


def run(program: cel.Program, context: cel.Context) -> tuple[bool | None, str | None]:
    """Evaluate once: ``(result, None)``, or ``(None, error)`` when it fails or is not boolean."""
    try:
        result = program.execute(context)
    except Exception as exc:  # noqa: BLE001 — a condition's failure is reported, never raised
        return None, error_text(exc)
    if isinstance(result, bool):
        return result, None
    return None, non_boolean_error(result)


# --- Contexts ----------------------------------------------------------------------------------

_MAPS = ("device", "telemetry", "attributes", "previous", "status", "command")
# A map variable used by a literal key: ``telemetry.x`` (not ``telemetry.size()``) or ``telemetry["x"]``.
_LITERAL_KEY_RE = {
    name: re.compile(
        rf"""\b{name}\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()|\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\])"""
    )
    for name in _MAPS
}
_WORD_RE = {name: re.compile(rf"\b{name}\b") for name in _MAPS}


@dataclass(frozen=True)
class ContextShape:
    """What a set of conditions reads of the context: the variables, and for each map variable the
    keys (None: the whole map). Converting Python values to CEL values is most of the cost of a
    message, so a context holds no more than that."""

    variables: tuple[str, ...] = VARIABLES
    keys: dict[str, frozenset[str] | None] = field(default_factory=dict)

    @classmethod
    def of(cls, text: str, program: cel.Program) -> ContextShape:
        """The shape of one condition. A map is cut down to the keys the condition names only when
        every mention of it is a literal key (``telemetry.t``, ``attributes["fw"]``); any other use
        (``size(telemetry)``, ``"t" in telemetry``, a mention inside a string) keeps it whole."""
        used = referenced_variables(program)
        keys: dict[str, frozenset[str] | None] = {}
        for name in _MAPS:
            if name not in used:
                continue
            literal = list(_LITERAL_KEY_RE[name].finditer(text))
            if len(literal) == len(_WORD_RE[name].findall(text)):
                keys[name] = frozenset(a or b or c for a, b, c in (m.groups() for m in literal))
            else:
                keys[name] = None
        return cls(tuple(name for name in VARIABLES if name in used), keys)

    @classmethod
    def union(cls, shapes: Iterable[ContextShape]) -> ContextShape:
        variables: set[str] = set()
        keys: dict[str, frozenset[str] | None] = {}
        for shape in shapes:
            variables.update(shape.variables)
            for name, names in shape.keys.items():
                if name in keys and keys[name] is None:
                    continue
                keys[name] = None if names is None else names | keys.get(name, frozenset())
        return cls(tuple(name for name in VARIABLES if name in variables), keys)


FULL = ContextShape()  # every variable, whole
EMPTY = ContextShape((), {})  # nothing (a rule that does not compile)


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (naive means UTC): this binding's getHours() & co. follow the value's own
    offset, and conditions are written against UTC."""
    tz = moment.tzinfo
    if tz is UTC:
        return moment
    if tz is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _pick(value: dict[str, Any], keys: frozenset[str] | None) -> dict[str, Any]:
    if keys is None:
        return value
    return {key: value[key] for key in keys if key in value}


def device_value(message: EngineMessage, keys: frozenset[str] | None = None) -> dict[str, Any]:
    facts = message.device
    value = {
        "id": facts.id,
        "name": message.name,
        "type": facts.device_type,
        "tags": list(facts.tags),
        "group": facts.group_path,
        "status": message.device_status,
        "metadata": doubles(message.metadata),
    }
    return _pick(value, keys)


def attributes_value(message: EngineMessage) -> dict[str, Any]:
    if message.reported_attributes:
        return {**message.attributes, **message.reported_attributes}
    return message.attributes


def doubles(value: Any) -> Any:
    """Device data with every number a double, as CEL itself reads JSON (google.protobuf.Value):
    otherwise a reading that happens to be whole (``25`` for 25.00 °C) is an int, and
    ``telemetry.temperature * 9.0`` fails for that message only. Booleans stay booleans."""
    kind = type(value)
    if kind is int:
        return float(value)
    if kind is dict:
        return {key: doubles(item) for key, item in value.items()}
    if kind is list:
        return [doubles(item) for item in value]
    return value


def _value(message: EngineMessage, name: str, keys: frozenset[str] | None) -> Any:
    if name == "device":
        return device_value(message, keys)
    if name == "now":
        return utc(message.received)
    if name == "attributes":
        return doubles(_pick(attributes_value(message), keys))
    if name == "status":
        return _pick(message.status, keys)
    return doubles(_pick(getattr(message, name), keys))  # telemetry, previous, command


def _as_shape(shape: ContextShape | Iterable[str]) -> ContextShape:
    if isinstance(shape, ContextShape):
        return shape
    names = set(shape)
    return ContextShape(tuple(name for name in VARIABLES if name in names), {})


def context_values(message: EngineMessage, shape: ContextShape | Iterable[str] = FULL) -> dict[str, Any]:
    """The Python values of a message's context: as much of it as ``shape`` says (or these
    variables, whole)."""
    shape = _as_shape(shape)
    keys = shape.keys
    return {name: _value(message, name, keys.get(name)) for name in shape.variables}


def build_context(message: EngineMessage, shape: ContextShape | Iterable[str] = FULL) -> cel.Context:
    """A context for one message, to execute any number of programs against: all of it, or as
    much as ``shape`` says (or these variables, whole)."""
    return cel.Context(context_values(message, shape))


class _Slot:
    __slots__ = ("context", "sources")

    def __init__(self, context: cel.Context, sources: dict[str, Any]) -> None:
        self.context = context
        # per variable: (what its value was made from, kept alive to compare by identity; the keys kept)
        self.sources = sources


def _sources(message: EngineMessage, name: str) -> Any:
    """What a variable's value is made from, compared by identity (values by equality) between a
    device's messages to tell whether it must be converted again."""
    if name == "device":
        return (message.device, message.name, message.device_status, message.metadata)
    if name == "now":
        return message.received
    if name == "attributes":
        return (message.attributes, message.reported_attributes)
    return getattr(message, name)


def _unchanged(name: str, old: Any, new: Any) -> bool:
    if name == "device":
        return old[3] is new[3] and old[0] == new[0] and old[1] == new[1] and old[2] == new[2]
    if name == "now":
        return old == new
    if name == "attributes":
        return old[0] is new[0] and (old[1] is new[1] or not (old[1] or new[1]))
    return old is new or not (old or new)  # the same dict, or both empty


class ContextCache:
    """The contexts of one batch: one per device, kept while the device has messages to come, so
    that for its next message only what changed is converted again (judged by identity: share a
    device's ``metadata``, ``attributes`` and ``previous`` dicts between its messages). A device
    with one message gets a plain context, dropped after use. Not thread-safe."""

    def __init__(self, messages: Iterable[EngineMessage] | None = None) -> None:
        self._slots: dict[str, _Slot] = {}
        self._left: dict[str, int] | None = None  # messages still to come per device (None: unknown)
        if messages is not None:
            self._left = {}
            for message in messages:
                self._left[message.device.id] = self._left.get(message.device.id, 0) + 1

    def context_for(self, message: EngineMessage, shape: ContextShape = FULL) -> cel.Context:
        device_id = message.device.id
        last = False
        if self._left is not None:
            left = self._left.get(device_id, 1) - 1
            self._left[device_id] = left
            last = left <= 0
        slot = self._slots.get(device_id)
        if slot is None:
            context = build_context(message, shape)
            if not last:
                sources = {name: (_sources(message, name), shape.keys.get(name)) for name in shape.variables}
                self._slots[device_id] = _Slot(context, sources)
            return context
        if last:
            del self._slots[device_id]
        sources = slot.sources
        keys = shape.keys
        changed: dict[str, Any] = {}
        for name in shape.variables:
            source = _sources(message, name)
            names = keys.get(name)
            old = sources.get(name)
            # Unchanged: made from the same values, cut down to the same keys (another trigger's
            # rules may read other keys of the same map).
            if old is not None and old[1] == names and _unchanged(name, old[0], source):
                continue
            sources[name] = (source, names)
            changed[name] = _value(message, name, names)
        if changed:
            slot.context.update(changed)
        return slot.context
