"""CEL conditions: compiling, checking, and the context they see (the real binding, no mocks)."""

from datetime import UTC, datetime, timedelta, timezone

import cel
import pytest

from rules.cel import (
    FULL,
    FUNCTIONS,
    MAX_CONDITION_LENGTH,
    ConditionError,
    ContextCache,
    ContextShape,
    build_context,
    check_condition,
    compile_condition,
    comprehension_depth,
    context_values,
    referenced_variables,
    run,
)
from rules.choices import Trigger
from rules.engine import EngineMessage
from rules.models import DeviceFacts

RECEIVED = datetime(2024, 6, 1, 13, 45, 10, tzinfo=UTC)  # a Saturday
FACTS = DeviceFacts(id="dev-1", device_type="sensor", tags=("lab", "floor-2"), group_path="/1/5/")


def message(**overrides):
    fields = {
        "device": FACTS,
        "trigger": Trigger.TELEMETRY,
        "received": RECEIVED,
        "name": "Lab sensor",
        "device_status": "online",
        "metadata": {"site": "paris", "rack": {"row": 3}},
        "attributes": {"firmware": "1.2.3", "model": "X1"},
        "previous": {"temperature": 24.5, "humidity": 40},
        "telemetry": {"temperature": 31, "humidity": 45.5, "mode": "auto", "door_open": True},
    }
    fields.update(overrides)
    return EngineMessage(**fields)


def holds(condition, msg=None):
    result, error = run(compile_condition(condition), build_context(msg or message()))
    assert error is None, error
    return result


# --- Compiling ---------------------------------------------------------------------------------


def test_compile_gives_a_reusable_program():
    program = compile_condition("telemetry.temperature > 30.0")
    assert isinstance(program, cel.Program)
    assert program.execute(cel.Context({"telemetry": {"temperature": 31.0}})) is True
    assert program.execute(cel.Context({"telemetry": {"temperature": 29.0}})) is False


def test_compile_error_carries_the_compilers_message():
    with pytest.raises(ConditionError) as caught:
        compile_condition("telemetry.temperature >")
    message_ = str(caught.value)
    assert "Syntax error" in message_
    assert "1:24" in message_  # line and column
    assert "^" in message_  # the caret under the place
    assert not message_.startswith("Failed to parse expression")  # the binding's echo of the text is cut


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_an_empty_condition_is_refused(text):
    with pytest.raises(ConditionError, match="required"):
        compile_condition(text)


def test_length_limit():
    padding = " " * (MAX_CONDITION_LENGTH - len("true"))
    compile_condition("true" + padding)
    with pytest.raises(ConditionError, match="at most 4,096 characters"):
        compile_condition("true" + padding + " ")


def test_deep_nesting_is_a_compile_error_not_a_crash():
    with pytest.raises(ConditionError):
        compile_condition("(" * 1000 + "true" + ")" * 1000)


def test_deeply_nested_comprehensions_are_refused():
    compile_condition("device.tags.exists(t, [1, 2].all(n, n > 0))")  # two deep: fine
    with pytest.raises(ConditionError, match="nest at most 2 deep; this condition nests 3"):
        compile_condition("[1].map(x, [2].map(y, [3].filter(z, z > 0))).size() > 0")
    # Six deep over ten items takes seconds per evaluation: refused before any is run.
    nested = "1"
    for depth in range(6):
        nested = f"[0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map(v{depth}, {nested})"
    [problem] = check_condition(f"size({nested}) > 0", Trigger.TELEMETRY)
    assert "nests 6" in problem


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("telemetry.t > 1", 0),
        ('device.name == "a.map(x, b.map(y, c.map(z, 1)))"', 0),  # inside a string
        ("true // it's a.map(x, b.map(y, c.map(z, 1)))\n && [1].exists(x, x == 1)", 1),  # a comment
        ("x.all(a, (a > 1) && size(a) > 0)", 1),  # plain parentheses inside
        ("a.exists_one(x, b.filter(y, y > x).size() > 0) && c.all(z, z)", 2),
        ("a.exists ( x , b.map(\n y, c.all(z, true)))", 3),
    ],
)
def test_comprehension_depth(text, depth):
    assert comprehension_depth(text) == depth


def test_referenced_variables_leave_out_comprehension_names():
    program = compile_condition('device.tags.exists(t, t == "lab") && telemetry.x > 1')
    assert referenced_variables(program) == {"device", "telemetry"}


# --- Checking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "trigger"),
    [
        ('telemetry.temperature > 30.0 && "lab" in device.tags', Trigger.TELEMETRY),
        ("telemetry.door_open", Trigger.TELEMETRY),  # a bare key may well be a bool
        ("has(previous.temperature) && telemetry.temperature - previous.temperature > 5.0", Trigger.TELEMETRY),
        ('attributes.firmware != "1.2.4"', Trigger.ATTRIBUTES),
        ('attributes["fw-version"] == "2"', Trigger.ATTRIBUTES),
        ('status.new == "offline" && status.old == "online"', Trigger.STATUS),
        ('command.status == "failed"', Trigger.COMMAND_RESULT),
        ("now.getHours() >= 22 || now.getDayOfWeek() == 0", Trigger.TELEMETRY),
        ('device.metadata.site == "paris" && device.metadata.rack.row > 2', Trigger.TELEMETRY),
        ('device.tags.exists(t, t.startsWith("floor-"))', Trigger.TELEMETRY),
        ("type(telemetry.t) == double", Trigger.TELEMETRY),
        ("optional.of(1).hasValue()", Trigger.TELEMETRY),
    ],
)
def test_good_conditions_pass(condition, trigger):
    assert check_condition(condition, trigger) == []


def test_check_reports_compile_errors():
    [problem] = check_condition("telemetry.temperature >", Trigger.TELEMETRY)
    assert "Syntax error" in problem


@pytest.mark.parametrize(
    ("condition", "gives"),
    [
        ("telemetry.temperature + 1", "int"),
        ("device.name", 'string "Sample device"'),
        ("1", "int 1"),
        ('"yes"', "string"),
        ("null", "null"),
        ("device.tags", "list"),
        ("telemetry.t > 1 ? 1 : 2", "int"),
    ],
)
def test_a_condition_that_is_not_boolean_is_refused(condition, gives):
    [problem] = check_condition(condition, Trigger.TELEMETRY)
    assert "must be true or false" in problem
    assert gives in problem


def test_a_missing_key_on_sample_data_does_not_refuse():
    # The sample lacks the key (nested here); real data may have it.
    assert check_condition("telemetry.position.lat > 48.0", Trigger.TELEMETRY) == []
    # And a telemetry key in a status rule: the status context has no telemetry at all.
    assert check_condition("telemetry.temperature > 30.0", Trigger.STATUS) == []


def test_an_int_double_mismatch_on_sample_data_does_not_refuse():
    # Fails when t is an int (JSON 31), works when it is a double: data-dependent, accepted.
    assert check_condition("telemetry.t + 1.5 > 3.0", Trigger.TELEMETRY) == []


def test_an_error_that_no_data_can_avoid_is_refused():
    [problem] = check_condition("1 + 1.5 > 2.0", Trigger.TELEMETRY)
    assert "fails on every message" in problem
    [problem] = check_condition('now.getHours("Europe/Paris") > 3', Trigger.TELEMETRY)
    assert "fails on every message" in problem


def test_unknown_variables_are_refused():
    [problem] = check_condition("temperature > 30", Trigger.TELEMETRY)
    assert "Unknown variable 'temperature'" in problem
    assert "device, telemetry, attributes, previous, status, command, now" in problem
    assert check_condition("[1, 2].exists(x, x > 1)", Trigger.TELEMETRY) == []  # x is bound, not unknown


@pytest.mark.parametrize("condition", ['telemetry.mode.lowerAscii() == "auto"', "max(1, 2) == 2", "foo(telemetry)"])
def test_unknown_functions_are_refused(condition):
    problems = check_condition(condition, Trigger.TELEMETRY)
    assert any("Unknown function" in problem for problem in problems)


def test_an_unknown_trigger_is_refused():
    [problem] = check_condition("true", "sometimes")
    assert "Unknown trigger" in problem


# One use of each function the check lets through: all of them must exist in the binding.
FUNCTION_USES = {
    "size": 'size("abc") == 3 && [1].size() == 1',
    "contains": '"abc".contains("b")',
    "startsWith": '"abc".startsWith("a")',
    "endsWith": '"abc".endsWith("c")',
    "matches": '"abc".matches("^a.c$")',
    "int": 'int("3") == 3 && int(2.7) == 2',
    "uint": "uint(3) == 3u",
    "double": "double(3) == 3.0",
    "string": 'string(3) == "3"',
    "bytes": 'bytes("a") == b"a"',
    "dyn": "dyn(1) == 1",
    "type": "type(1) == int",
    "duration": 'duration("1h") > duration("59m")',
    "timestamp": 'timestamp("2024-01-01T00:00:00Z") < now',
    "getFullYear": "now.getFullYear() == 2024",
    "getMonth": "now.getMonth() == 5",  # 0-based
    "getDayOfYear": "now.getDayOfYear() == 152",  # 0-based
    "getDayOfMonth": "now.getDayOfMonth() == 0",  # 0-based
    "getDate": "now.getDate() == 1",  # 1-based
    "getDayOfWeek": "now.getDayOfWeek() == 6",  # 0 = Sunday
    "getHours": "now.getHours() == 13",
    "getMinutes": "now.getMinutes() == 45",
    "getSeconds": "now.getSeconds() == 10",
    "getMilliseconds": "now.getMilliseconds() == 0",
    "of": "optional.of(1).hasValue()",
    "none": "!optional.none().hasValue()",
    "ofNonZeroValue": "!optional.ofNonZeroValue(0).hasValue()",
    "hasValue": "optional.of(1).hasValue()",
    "value": "optional.of(1).value() == 1",
    "orValue": "optional.none().orValue(2) == 2",
    "or": "optional.none().or(optional.of(3)).value() == 3",
}


def test_every_function_allowed_exists_in_the_binding():
    assert set(FUNCTION_USES) == FUNCTIONS
    for name, condition in FUNCTION_USES.items():
        assert check_condition(condition, Trigger.TELEMETRY) == [], name
        assert holds(condition) is True, name


# --- The context -------------------------------------------------------------------------------


def test_device():
    assert holds('"lab" in device.tags && !("roof" in device.tags)')
    assert holds('device.id == "dev-1" && device.name == "Lab sensor" && device.type == "sensor"')
    assert holds('device.group == "/1/5/" && device.group.startsWith("/1/") && device.status == "online"')
    assert holds('device.metadata.site == "paris" && device.metadata.rack.row == 3')
    assert holds('device.group == ""', message(device=DeviceFacts("dev-2", "sensor", (), "")))


def test_telemetry_compares_int_with_double():
    assert holds("telemetry.temperature > 30.0")  # 31, an int
    assert holds("telemetry.temperature == 31.0")
    assert holds("telemetry.humidity > 45")  # 45.5, a double
    assert holds('telemetry.mode == "auto" && telemetry.door_open')
    assert holds("double(telemetry.temperature) + 0.5 == 31.5")


def test_device_numbers_are_doubles_as_in_cel_json():
    """A whole reading (JSON 31) is a double like 31.5 would be: arithmetic with doubles works, and
    int literals still compare; adding an int literal is the author's type error."""
    whole = message(telemetry={"temperature": 31, "on": True, "nested": {"n": [1, 2.5]}})
    assert run(compile_condition("telemetry.temperature + 0.5 > 30.0"), build_context(whole)) == (True, None)
    assert run(compile_condition("telemetry.temperature > 30"), build_context(whole)) == (True, None)
    assert run(compile_condition("type(telemetry.on) == bool"), build_context(whole)) == (True, None)
    assert run(compile_condition("telemetry.nested.n[0] == 1.0"), build_context(whole)) == (True, None)
    result, error = run(compile_condition("telemetry.temperature + 1 > 30.0"), build_context(whole))
    assert result is None
    assert "operation" in error.lower() or "overload" in error.lower()


def test_a_missing_key_is_an_error_unless_guarded():
    result, error = run(compile_condition("telemetry.missing > 1"), build_context(message()))
    assert (result, error) == (None, "no such key: missing")
    assert holds("has(telemetry.missing)") is False
    assert holds("telemetry.temperature > 30.0 || telemetry.missing > 1")  # the error is absorbed


def test_attributes_are_the_devices_merged_with_the_messages_for_an_attributes_trigger():
    assert holds('attributes.firmware == "1.2.3" && attributes.model == "X1"')
    reported = message(trigger=Trigger.ATTRIBUTES, telemetry={}, reported_attributes={"firmware": "2.0.0"})
    assert holds('attributes.firmware == "2.0.0" && attributes.model == "X1"', reported)
    assert reported.attributes == {"firmware": "1.2.3", "model": "X1"}  # the stored dict is not touched


def test_previous():
    assert holds("double(telemetry.temperature) - previous.temperature > 6.0")  # 31 (an int) - 24.5
    assert holds("has(previous.temperature) && !has(previous.mode)")
    assert holds("size(previous) == 0", message(previous={}))


def test_status():
    status = message(trigger=Trigger.STATUS, telemetry={}, status={"old": "online", "new": "offline"})
    assert holds('status.new == "offline" && status.old == "online"', status)
    assert holds("size(status) == 0")  # empty for other triggers
    assert holds("size(telemetry) == 0", status)


def test_command():
    result = message(
        trigger=Trigger.COMMAND_RESULT,
        telemetry={},
        command={"id": "c-1", "type": "reboot", "status": "failed", "result": None, "error": "busy"},
    )
    assert holds('command.status == "failed" && command.type == "reboot" && command.error == "busy"', result)
    assert holds("command.result == null", result)
    assert holds("size(command) == 0")


def test_now_is_a_utc_timestamp():
    assert holds("now.getHours() == 13 && now.getMinutes() == 45 && now.getDayOfWeek() == 6")
    assert holds('now > timestamp("2024-06-01T13:00:00Z") && now - duration("1h") < now')
    paris = RECEIVED.astimezone(timezone(timedelta(hours=2)))
    assert holds("now.getHours() == 13", message(received=paris))  # not 15
    assert holds("now.getHours() == 13", message(received=RECEIVED.replace(tzinfo=None)))  # naive means UTC
    assert context_values(message(received=paris), ["now"])["now"].tzinfo is UTC


def test_build_context_takes_variable_names():
    context = build_context(message(), ["telemetry"])
    assert compile_condition("telemetry.temperature > 30.0").execute(context) is True
    with pytest.raises(RuntimeError):
        compile_condition("device.id == 'x'").execute(context)


# --- Shapes: a context holds only what the conditions read --------------------------------------


def shape_of(*conditions):
    return ContextShape.union(ContextShape.of(text, compile_condition(text)) for text in conditions)


def test_shape_keeps_only_the_keys_named():
    shape = shape_of('telemetry.temperature > 30.0 && device.tags.size() > 0 && attributes["model"] == "X1"')
    assert shape.variables == ("device", "telemetry", "attributes")
    assert shape.keys == {"device": {"tags"}, "telemetry": {"temperature"}, "attributes": {"model"}}
    values = context_values(message(), shape)
    assert values["telemetry"] == {"temperature": 31}
    assert values["device"] == {"tags": ["lab", "floor-2"]}


@pytest.mark.parametrize(
    "condition",
    [
        "size(telemetry) > 3",
        '"temperature" in telemetry',
        "telemetry.exists(k, k == 'mode')",
        'telemetry.temperature > 1 && device.name == "telemetry"',  # mentioned in a string: kept whole
    ],
)
def test_shape_keeps_a_map_whole_when_used_otherwise(condition):
    assert shape_of(condition).keys["telemetry"] is None


def test_shape_union():
    shape = shape_of("telemetry.a > 1", "telemetry.b > 1", "previous.a > 1")
    assert shape.keys == {"telemetry": {"a", "b"}, "previous": {"a"}}
    assert shape_of("telemetry.a > 1", "size(telemetry) > 0").keys["telemetry"] is None
    assert shape_of("true").variables == ()


CONDITIONS = [
    "telemetry.temperature > 30.0",
    "telemetry.missing > 1",
    "has(telemetry.missing) || telemetry.humidity > 40",
    'device.metadata.rack.row == 3 && "lab" in device.tags',
    "telemetry.temperature - previous.temperature > 5.0",
    "previous.mode == 'x'",
    "size(device) == 7",
    'attributes.model == "X1"',
    "now.getHours() == 13",
]


def test_a_shaped_context_judges_like_the_full_one():
    msg = message()
    programs = [compile_condition(text) for text in CONDITIONS]
    shaped = build_context(msg, shape_of(*CONDITIONS))
    full = build_context(msg, FULL)
    assert [run(p, shaped) for p in programs] == [run(p, full) for p in programs]


# --- The per-device context cache -------------------------------------------------------------


def test_context_cache_follows_each_message():
    metadata, attributes, previous = {"site": "paris"}, {"model": "X1"}, {"t": 1}
    first = message(metadata=metadata, attributes=attributes, previous=previous, telemetry={"on": 1})
    second = message(metadata=metadata, attributes=attributes, previous=previous, telemetry={"on": True})
    third = message(
        metadata=metadata,
        attributes=attributes,
        previous=previous,
        telemetry={"on": True},
        device_status="offline",
        received=RECEIVED + timedelta(hours=1),
    )
    cache = ContextCache()
    program = compile_condition('telemetry.on == true && device.status == "online" && now.getHours() == 13')
    type_check = compile_condition("type(telemetry.on) == double")
    context = cache.context_for(first)
    assert (program.execute(context), type_check.execute(context)) == (False, True)
    context = cache.context_for(second)  # 1 then True: equal in Python, not in CEL (1 is a double there)
    assert (program.execute(context), type_check.execute(context)) == (True, False)
    assert program.execute(cache.context_for(third)) is False  # status and now changed


def test_context_cache_serves_each_triggers_keys():
    attributes = {"model": "X1", "firmware": "1.0"}
    telemetry_shape = shape_of('attributes.model == "X1"')
    attributes_shape = shape_of('attributes.firmware == "2.0"')
    cache = ContextCache()
    first = message(attributes=attributes)
    second = message(attributes=attributes, trigger=Trigger.ATTRIBUTES, reported_attributes={"firmware": "2.0"})
    third = message(attributes=attributes)
    assert compile_condition('attributes.model == "X1"').execute(cache.context_for(first, telemetry_shape))
    assert compile_condition('attributes.firmware == "2.0"').execute(cache.context_for(second, attributes_shape))
    assert compile_condition('attributes.model == "X1"').execute(cache.context_for(third, telemetry_shape))


def test_context_cache_lets_a_device_go_after_its_last_message():
    batch = [message(), message(), message(device=DeviceFacts("dev-2", "sensor", (), ""))]
    cache = ContextCache(batch)
    cache.context_for(batch[0])
    assert len(cache._slots) == 1
    cache.context_for(batch[1])
    cache.context_for(batch[2])
    assert cache._slots == {}  # dev-1 went after its second message; dev-2 (one message) was never kept


def test_context_cache_judges_dicts_by_identity():
    # The documented contract: a dict handed to a message is not changed in place afterwards.
    previous = {"t": 1}
    cache = ContextCache()
    program = compile_condition("previous.t == 1")
    assert program.execute(cache.context_for(message(previous=previous))) is True
    assert program.execute(cache.context_for(message(previous={"t": 2}))) is False  # a new dict: seen
    assert program.execute(cache.context_for(message(previous={"t": 1}))) is True
