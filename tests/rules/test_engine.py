"""The rule engine against the real PostgreSQL and Redis: loading and caching the rule set, scopes,
triggers, order, failures, counters and metrics."""

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from rules import generation
from rules.choices import Scope, Trigger
from rules.engine import (
    CompiledRule,
    EngineMessage,
    RuleSet,
    evaluate,
    evaluate_one,
    flush_counters,
)
from rules.models import DeviceFacts, Rule
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2024, 6, 1, 13, 45, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_cached_ruleset():
    RuleSet.forget()
    yield
    RuleSet.forget()


def make_rule(name, condition, **fields):
    fields.setdefault("trigger", Trigger.TELEMETRY)
    return Rule.objects.create(name=name, condition=condition, **fields)


def facts(device):
    return DeviceFacts(
        id=device.id,
        device_type=device.device_type,
        tags=tuple(device.tags),
        group_path=device.group.path if device.group_id else "",
    )


def msg(device_facts, index=0, trigger=Trigger.TELEMETRY, **fields):
    fields.setdefault("received", T0 + timedelta(seconds=index))
    return EngineMessage(device=device_facts, trigger=trigger, index=index, **fields)


def telemetry(device_facts, index=0, **values):
    return msg(device_facts, index, telemetry=values)


def matched_names(outcome):
    return [(rule.name, message.index) for rule, message in outcome.matches]


def sample(name):
    return REGISTRY.get_sample_value(name) or 0.0


ANY = DeviceFacts(id="dev-1", device_type="sensor", tags=("lab",), group_path="")


# --- Loading and caching -----------------------------------------------------------------------


def test_load_compiles_the_enabled_rules_in_priority_order():
    make_rule("b-second", "true", priority=10)
    make_rule("a-second", "true", priority=10)
    make_rule("first", "true", priority=1)
    make_rule("off", "true", enabled=False)
    ruleset = RuleSet.load()
    assert [rule.name for rule in ruleset.rules] == ["first", "a-second", "b-second"]
    assert all(rule.program is not None for rule in ruleset.rules)
    assert sample("fluxiot_rules_active") == 3


def test_current_reloads_only_after_a_bump(django_assert_num_queries):
    make_rule("hot", "telemetry.t > 30.0")
    with django_assert_num_queries(1):  # the rules (no group scope: no group query)
        first = RuleSet.current()
    with django_assert_num_queries(0):
        assert RuleSet.current() is first
    make_rule("new", "true")  # saved without a bump: not seen yet
    with django_assert_num_queries(0):
        assert RuleSet.current() is first
    generation.bump()
    with django_assert_num_queries(1):
        second = RuleSet.current()
    assert second is not first
    assert {rule.name for rule in second.rules} == {"hot", "new"}
    with django_assert_num_queries(0):
        assert RuleSet.current() is second


def test_current_loads_once_when_threads_race(monkeypatch):
    loads = []

    def slow_load(generation=""):
        loads.append(generation)
        time.sleep(0.05)
        return RuleSet([], generation)

    monkeypatch.setattr(RuleSet, "load", staticmethod(slow_load))
    barrier = threading.Barrier(8)
    results = []

    def worker():
        barrier.wait()
        results.append(RuleSet.current())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len({id(ruleset) for ruleset in results}) == 1


def test_group_scopes_are_resolved_in_one_query(django_assert_num_queries):
    parent = DeviceGroupFactory()
    make_rule("in-group", "true", scope=Scope.GROUP, scope_value=str(parent.pk))
    make_rule("gone-group", "true", scope=Scope.GROUP, scope_value="999999")
    with django_assert_num_queries(2):
        ruleset = RuleSet.load()
    paths = {rule.name: rule.group_path for rule in ruleset.rules}
    assert paths == {"in-group": parent.path, "gone-group": None}


def test_a_broken_stored_condition_is_kept_as_a_failing_rule(caplog):
    make_rule("broken", "telemetry.t >", priority=1)
    make_rule("fine", "telemetry.t > 30.0", priority=2)
    with caplog.at_level(logging.WARNING, logger="rules.engine"):
        ruleset = RuleSet.load()
    [broken] = ruleset.broken
    assert broken.name == "broken"
    assert "does not compile" in broken.error and "Syntax error" in broken.error
    assert "broken" in caplog.text
    assert sample("fluxiot_rules_active") == 1

    outcome = evaluate([telemetry(ANY, 0, t=31), telemetry(ANY, 1, t=20)], ruleset)
    assert matched_names(outcome) == [("fine", 0)]
    counts = outcome.counts[broken.id]
    assert (counts.evaluated, counts.matched, counts.failed) == (2, 0, 2)
    assert counts.last_error == broken.error


def test_a_stored_condition_too_deep_to_run_is_a_failing_rule():
    make_rule("deep", "[1].map(x, [2].map(y, [3].map(z, z))).size() > 0")
    [broken] = RuleSet.load().broken
    assert "nest at most 2 deep" in broken.error


def test_needs_previous():
    make_rule("jump", "telemetry.t - previous.t > 5.0")
    make_rule("offline", 'status.new == "offline"', trigger=Trigger.STATUS)
    ruleset = RuleSet.load()
    assert ruleset.needs_previous()
    assert ruleset.needs_previous(Trigger.TELEMETRY)
    assert not ruleset.needs_previous(Trigger.STATUS)
    assert ruleset.variables(Trigger.STATUS) == {"status"}
    assert not RuleSet([]).needs_previous()  # no rules, nothing needed


# --- Scopes, triggers, order -------------------------------------------------------------------


def test_scopes():
    parent = DeviceGroupFactory()
    child = DeviceGroupFactory(parent=parent)
    other = DeviceGroupFactory()
    in_child = DeviceFactory(group=child, tags=["lab"], device_type="camera")
    in_parent = DeviceFactory(group=parent)
    elsewhere = DeviceFactory(group=other, tags=["roof"])
    nowhere = DeviceFactory()
    make_rule("all", "true", scope=Scope.ALL)
    make_rule("one", "true", scope=Scope.DEVICE, scope_value=elsewhere.id)
    make_rule("group", "true", scope=Scope.GROUP, scope_value=str(parent.pk))
    make_rule("cameras", "true", scope=Scope.DEVICE_TYPE, scope_value="camera")
    make_rule("lab", "true", scope=Scope.TAG, scope_value="lab")
    ruleset = RuleSet.load()

    def rules_for(device):
        outcome = evaluate([telemetry(facts(device))], ruleset)
        return sorted(rule.name for rule, _ in outcome.matches)

    assert rules_for(in_child) == ["all", "cameras", "group", "lab"]  # the group's descendants too
    assert rules_for(in_parent) == ["all", "group"]
    assert rules_for(elsewhere) == ["all", "one"]
    assert rules_for(nowhere) == ["all"]


def test_group_scope_does_not_take_in_a_sibling_with_a_longer_id():
    # /1/ must not take in /12/: paths end with a slash.
    group = DeviceGroupFactory()
    ruleset = RuleSet(
        [
            CompiledRule.build(
                id=1,
                name="g",
                condition="true",
                trigger=Trigger.TELEMETRY,
                scope=Scope.GROUP,
                scope_value=str(group.pk),
                group_path=group.path,
            )
        ]
    )
    sibling = DeviceFacts("dev-x", "sensor", (), f"/{group.pk}1/")
    assert evaluate([telemetry(sibling)], ruleset).matches == []


def test_triggers_filter_the_rules():
    make_rule("hot", "telemetry.t > 30.0")
    make_rule("offline", 'status.new == "offline"', trigger=Trigger.STATUS)
    make_rule("failed", 'command.status == "failed"', trigger=Trigger.COMMAND_RESULT)
    make_rule("fw", 'attributes.firmware == "2.0"', trigger=Trigger.ATTRIBUTES)
    ruleset = RuleSet.load()
    messages = [
        telemetry(ANY, 0, t=31),
        msg(ANY, 1, Trigger.STATUS, status={"old": "online", "new": "offline"}),
        msg(ANY, 2, Trigger.COMMAND_RESULT, command={"id": "c", "type": "reboot", "status": "failed"}),
        msg(ANY, 3, Trigger.ATTRIBUTES, attributes={"firmware": "1.0"}, reported_attributes={"firmware": "2.0"}),
    ]
    outcome = evaluate(messages, ruleset)
    assert matched_names(outcome) == [("hot", 0), ("offline", 1), ("failed", 2), ("fw", 3)]
    assert {rule_id: counts.evaluated for rule_id, counts in outcome.counts.items()} == {
        rule.id: 1 for rule in ruleset.rules
    }
    assert outcome.failed == 0  # a status rule never saw a telemetry message


def test_matches_come_by_message_then_priority():
    make_rule("late", "true", priority=50)
    make_rule("early", "true", priority=5)
    make_rule("middle-b", "true", priority=10)
    make_rule("middle-a", "true", priority=10)
    make_rule("never", "false", priority=1)
    outcome = evaluate([telemetry(ANY, 0), telemetry(ANY, 1)], RuleSet.load())
    order = ["early", "middle-a", "middle-b", "late"]
    assert matched_names(outcome) == [(name, 0) for name in order] + [(name, 1) for name in order]
    assert [message.index for _, message in outcome.matches] == [0] * 4 + [1] * 4


def test_evaluate_uses_the_current_ruleset_by_default():
    make_rule("hot", "telemetry.t > 30.0")
    generation.bump()
    assert matched_names(evaluate([telemetry(ANY, 0, t=31)])) == [("hot", 0)]


def test_evaluate_with_no_rules_or_no_messages():
    assert evaluate([telemetry(ANY)], RuleSet()).matches == []
    make_rule("hot", "true")
    outcome = evaluate([], RuleSet.load())
    assert (outcome.matches, outcome.counts) == ([], {})


# --- Failures ----------------------------------------------------------------------------------


def test_a_failing_rule_is_counted_and_the_others_still_run(caplog):
    make_rule("missing", "telemetry.missing > 1", priority=1)
    make_rule("not-bool", "telemetry.t", priority=2)  # stored directly: the save-time check is bypassed
    make_rule("div", "int(telemetry.t) / 0 > 1", priority=3)
    make_rule("hot", "telemetry.t > 30", priority=4)
    ruleset = RuleSet.load()
    messages = [telemetry(ANY, i, t=31 + i) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="rules.engine"):
        outcome = evaluate(messages, ruleset)

    assert matched_names(outcome) == [("hot", 0), ("hot", 1), ("hot", 2)]
    by_name = {rule.name: outcome.counts[rule.id] for rule in ruleset.rules}
    assert {name: (c.evaluated, c.matched, c.failed) for name, c in by_name.items()} == {
        "missing": (3, 0, 3),
        "not-bool": (3, 0, 3),
        "div": (3, 0, 3),
        "hot": (3, 3, 0),
    }
    assert by_name["missing"].last_error == "no such key: missing"
    assert by_name["not-bool"].last_error == "The condition gave double 33.0, not true or false."
    assert "division by zero" in by_name["div"].last_error
    assert by_name["missing"].last_error_at == messages[2].received
    # Logged once per rule per batch, not once per message.
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert sum("'missing'" in record.getMessage() for record in warnings) == 1


def test_a_bool_false_is_not_a_failure_and_an_error_is_absorbed_by_or():
    make_rule("guarded", "has(telemetry.x) && telemetry.x > 1")
    make_rule("either", "telemetry.t > 30 || telemetry.missing > 1")
    outcome = evaluate([telemetry(ANY, 0, t=31)], RuleSet.load())
    assert matched_names(outcome) == [("either", 0)]
    assert outcome.failed == 0


# --- Counters and metrics ----------------------------------------------------------------------


def test_flush_counters_adds_with_one_update_per_rule(django_assert_num_queries):
    hot = make_rule("hot", "telemetry.t > 30")
    missing = make_rule("missing", "telemetry.missing > 1")
    idle = make_rule("idle", "true", trigger=Trigger.STATUS)
    ruleset = RuleSet.load()
    messages = [telemetry(ANY, 0, t=31), telemetry(ANY, 1, t=20), telemetry(ANY, 2, t=35)]
    before = {name: sample(f"fluxiot_rules_{name}_total") for name in ("evaluated", "matched", "failed")}

    outcome = evaluate(messages, ruleset)
    with django_assert_num_queries(2):  # hot and missing; idle did not run
        assert flush_counters(outcome) == 2
    hot.refresh_from_db()
    missing.refresh_from_db()
    idle.refresh_from_db()
    assert (hot.evaluated, hot.matched, hot.failed) == (3, 2, 0)
    assert hot.last_matched_at == messages[2].received
    assert (hot.last_error, hot.last_error_at) == ("", None)
    assert (missing.evaluated, missing.matched, missing.failed) == (3, 0, 3)
    assert (missing.last_error, missing.last_error_at) == ("no such key: missing", messages[2].received)
    assert missing.last_matched_at is None
    assert (idle.evaluated, idle.matched, idle.failed) == (0, 0, 0)
    after = {name: sample(f"fluxiot_rules_{name}_total") for name in ("evaluated", "matched", "failed")}
    assert {name: after[name] - before[name] for name in after} == {"evaluated": 6, "matched": 2, "failed": 3}

    # F() increments: a concurrent change to the counters is added to, not overwritten.
    Rule.objects.filter(pk=hot.pk).update(evaluated=100)
    flush_counters(evaluate(messages, ruleset))
    hot.refresh_from_db()
    assert (hot.evaluated, hot.matched) == (103, 4)


def test_flush_counters_leaves_updated_at_alone_and_skips_deleted_rules():
    rule = make_rule("hot", "true")
    updated_at = rule.updated_at
    ruleset = RuleSet.load()
    outcome = evaluate([telemetry(ANY)], ruleset)
    assert flush_counters(outcome) == 1
    rule.refresh_from_db()
    assert rule.updated_at == updated_at
    Rule.objects.all().delete()
    assert flush_counters(outcome) == 0


def test_last_error_is_cut_short():
    rule = make_rule("long", "telemetry.s.matches(telemetry.pattern)")
    bad_pattern = "(" + "x" * 3000  # the regex error quotes it, twice
    flush_counters(evaluate([telemetry(ANY, 0, s="a", pattern=bad_pattern)], RuleSet.load()))
    rule.refresh_from_db()
    assert len(rule.last_error) == 1000


# --- Dry run -----------------------------------------------------------------------------------


def test_evaluate_one():
    message = telemetry(ANY, 0, t=31)
    assert evaluate_one("telemetry.t > 30.0", message) == (True, None)
    assert evaluate_one("telemetry.t < 30.0", message) == (False, None)
    result, error = evaluate_one("telemetry.t >", message)
    assert result is None and "Syntax error" in error
    assert evaluate_one("telemetry.missing > 1", message) == (None, "no such key: missing")
    assert evaluate_one("telemetry.t", message) == (None, "The condition gave double 31.0, not true or false.")
    compiled = CompiledRule.build(id=1, name="r", condition="telemetry.t > 1", trigger=Trigger.STATUS)
    assert evaluate_one(compiled, message) == (True, None)  # a dry run of the condition, whatever the trigger
    broken = CompiledRule.build(id=2, name="b", condition="(", trigger=Trigger.TELEMETRY)
    result, error = evaluate_one(broken, message)
    assert result is None and error.startswith("The condition does not compile")
