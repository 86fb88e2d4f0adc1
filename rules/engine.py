"""The rule engine: the enabled rules compiled once per process, judged against a batch of messages.

The ingest task calls, per batch::

    ruleset = RuleSet.current()            # one cache read; reloads only after a rule change
    if ruleset.needs_previous():           # load the devices' latest values only then
        ...
    outcome = evaluate(messages, ruleset)  # no database access
    flush_counters(outcome)                # one UPDATE per rule that ran, in the ingest transaction

A failing rule (an error, a result that is not a boolean, a stored condition that no longer
compiles) is counted against that rule, logged at most once per rule per batch, and never stops
the other rules or the ingest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel
from django.db.models import F

from fluxiot.generations import GenerationCached
from rules import generation, metrics
from rules.cel import (
    EMPTY,
    ConditionError,
    ContextCache,
    ContextShape,
    build_context,
    compile_condition,
    error_text,
    non_boolean_error,
    run,
)
from rules.choices import Scope
from rules.models import DeviceFacts, Rule, scope_matches

logger = logging.getLogger(__name__)

LAST_ERROR_MAX_LENGTH = 1000
APPLICABLE_CACHE_SIZE = 100_000


@dataclass(slots=True)
class EngineMessage:
    """One message as the rules see it.

    ``index`` is the message's position in the caller's batch (the engine does not use it).
    The device-level values (``device``, ``name``, ``device_status``, ``metadata``, ``attributes``,
    ``previous``) are best the same objects for all the messages of one device in a batch: the engine
    then converts them to CEL values once per device rather than once per message. It tells by
    identity whether a dict changed from one of a device's messages to the next, so never change a
    dict in place once it is in a message: give the next message a new one.
    """

    device: DeviceFacts
    trigger: str  # rules.choices.Trigger
    received: datetime  # becomes ``now`` (in UTC)
    index: int = 0
    name: str = ""  # the device's name
    device_status: str = ""  # the device's status (for a status trigger: the new one)
    metadata: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)  # the device's attributes as stored
    reported_attributes: dict[str, Any] = field(default_factory=dict)  # attributes trigger: this message's
    previous: dict[str, Any] = field(default_factory=dict)  # the device's latest values before this message
    telemetry: dict[str, Any] = field(default_factory=dict)  # telemetry trigger: {key: value}
    status: dict[str, Any] = field(default_factory=dict)  # status trigger: {"old": …, "new": …}
    command: dict[str, Any] = field(default_factory=dict)  # command_result: {"id", "type", "status", "result", "error"}
    ts: datetime | None = None  # telemetry: the reading's own time (derived points are stored at it)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRule:
    """An enabled rule, ready to run: its scope resolved, its condition compiled (``program`` is
    None, and ``error`` says why, when the stored condition does not compile)."""

    id: int
    name: str
    priority: int
    trigger: str
    scope: str
    scope_value: str
    group_path: str | None  # a group scope's path, resolved once (None: not a group scope, or gone)
    condition: str
    program: cel.Program | None
    actions: tuple[dict[str, Any], ...] = ()
    version: int = 1
    shape: ContextShape = EMPTY  # what the condition reads of the context
    error: str = ""

    @classmethod
    def build(
        cls,
        *,
        id: int,
        name: str,
        condition: str,
        trigger: str,
        priority: int = 100,
        scope: str = Scope.ALL,
        scope_value: str = "",
        group_path: str | None = None,
        actions: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
        version: int = 1,
    ) -> CompiledRule:
        """Compile a rule's condition; one that does not compile gives a rule that always fails."""
        try:
            program: cel.Program | None = compile_condition(condition)
            error = ""
        except ConditionError as exc:
            program, error = None, f"The condition does not compile: {exc}"
        return cls(
            id=id,
            name=name,
            priority=priority,
            trigger=trigger,
            scope=scope,
            scope_value=scope_value,
            group_path=group_path,
            condition=condition,
            program=program,
            actions=tuple(actions or ()),
            version=version,
            shape=ContextShape.of(condition, program) if program is not None else EMPTY,
            error=error,
        )

    @classmethod
    def from_rule(cls, rule: Rule, group_path: str | None = None) -> CompiledRule:
        return cls.build(
            id=rule.pk,
            name=rule.name,
            condition=rule.condition,
            trigger=rule.trigger,
            priority=rule.priority,
            scope=rule.scope,
            scope_value=rule.scope_value,
            group_path=group_path,
            actions=rule.actions if isinstance(rule.actions, list) else [],
            version=rule.version,
        )

    @property
    def variables(self) -> frozenset[str]:
        """The context variables the condition uses."""
        return frozenset(self.shape.variables)

    def applies_to(self, device: DeviceFacts) -> bool:
        return scope_matches(self.scope, self.scope_value, self.group_path, device)


class RuleSet(GenerationCached):
    """The enabled rules, compiled, in priority order (then by name)."""

    generations = generation.GENERATION

    def __init__(self, rules: list[CompiledRule] | tuple[CompiledRule, ...] = (), generation: str = "") -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(sorted(rules, key=lambda rule: (rule.priority, rule.name)))
        self.generation = generation
        by_trigger: dict[str, list[CompiledRule]] = {}
        for rule in self.rules:
            by_trigger.setdefault(rule.trigger, []).append(rule)
        self._by_trigger = {trigger: tuple(rules) for trigger, rules in by_trigger.items()}
        # (trigger, device facts) → the rules that apply: a device's facts (type, tags, group) key
        # it, so a device moved or retagged is judged afresh. Shared by threads (dict operations
        # are atomic; two threads may compute the same entry).
        self._applicable: dict[tuple[str, DeviceFacts], tuple[CompiledRule, ...]] = {}
        # What each trigger's rules read of the context: all a message's context needs to hold.
        self._shapes = {
            trigger: ContextShape.union(rule.shape for rule in rules) for trigger, rules in self._by_trigger.items()
        }

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return f"<RuleSet {len(self.rules)} rules, generation {self.generation[:8]!r}>"

    @property
    def broken(self) -> tuple[CompiledRule, ...]:
        """The rules whose stored condition does not compile."""
        return tuple(rule for rule in self.rules if rule.program is None)

    def for_trigger(self, trigger: str) -> tuple[CompiledRule, ...]:
        return self._by_trigger.get(trigger, ())

    def applicable(self, trigger: str, device: DeviceFacts) -> tuple[CompiledRule, ...]:
        """The rules of ``trigger`` whose scope takes in ``device``, in priority order (remembered
        for this set's lifetime, for up to ``APPLICABLE_CACHE_SIZE`` devices and triggers)."""
        key = (trigger, device)
        rules = self._applicable.get(key)
        if rules is None:
            if len(self._applicable) >= APPLICABLE_CACHE_SIZE:
                self._applicable.clear()
            rules = tuple(rule for rule in self._by_trigger.get(trigger, ()) if rule.applies_to(device))
            self._applicable[key] = rules
        return rules

    def shape(self, trigger: str) -> ContextShape:
        """What the rules of ``trigger`` read of a message's context."""
        return self._shapes.get(trigger, EMPTY)

    def variables(self, trigger: str | None = None) -> frozenset[str]:
        """The context variables the rules (of ``trigger``) use."""
        if trigger is not None:
            return frozenset(self.shape(trigger).variables)
        return frozenset(name for shape in self._shapes.values() for name in shape.variables)

    def needs_previous(self, trigger: str | None = None) -> bool:
        """Whether any rule (of ``trigger``) uses ``previous``: load the latest values only then."""
        return "previous" in self.variables(trigger)

    @classmethod
    def load(cls, generation: str = "") -> RuleSet:
        """Compile the enabled rules from the database (two queries at most). Never raises for a
        rule's condition: one that does not compile is kept, as a rule that always fails."""
        from devices.models import DeviceGroup

        rules = list(Rule.objects.filter(enabled=True).order_by("priority", "name"))
        group_ids = {int(r.scope_value) for r in rules if r.scope == Scope.GROUP and r.scope_value.isdigit()}
        paths = dict(DeviceGroup.objects.filter(pk__in=group_ids).values_list("id", "path")) if group_ids else {}
        compiled = []
        for rule in rules:
            group_path = (
                paths.get(int(rule.scope_value)) if rule.scope == Scope.GROUP and rule.scope_value.isdigit() else None
            )
            compiled_rule = CompiledRule.from_rule(rule, group_path)
            if compiled_rule.program is None:
                logger.warning("Rule %r (id %s) is skipped: %s", rule.name, rule.pk, compiled_rule.error)
            compiled.append(compiled_rule)
        ruleset = cls(compiled, generation)
        metrics.set_active(len(ruleset) - len(ruleset.broken))
        return ruleset


# --- Evaluation --------------------------------------------------------------------------------


@dataclass(slots=True)
class RuleCounts:
    """What one rule did over a batch."""

    evaluated: int = 0
    matched: int = 0
    failed: int = 0
    last_error: str = ""
    last_matched_at: datetime | None = None  # the received time of the last message it matched
    last_error_at: datetime | None = None  # the received time of the last message it failed on


@dataclass
class Outcome:
    """The result of ``evaluate``: the matches in order (by message, then by rule priority), and
    the counts of each rule that was evaluated."""

    matches: list[tuple[CompiledRule, EngineMessage]] = field(default_factory=list)
    counts: dict[int, RuleCounts] = field(default_factory=dict)

    @property
    def evaluated(self) -> int:
        return sum(c.evaluated for c in self.counts.values())

    @property
    def matched(self) -> int:
        return sum(c.matched for c in self.counts.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.counts.values())


def evaluate(messages: list[EngineMessage], ruleset: RuleSet | None = None) -> Outcome:
    """Judge every message against the rules of its trigger and scope, in priority order.

    Each message's context is built once (and a device's values once per batch). A rule that raises
    or gives something other than a boolean fails for that message only: counted, its last error
    kept, logged at most once per batch. No database access (but ``RuleSet.current()`` when no
    ``ruleset`` is given)."""
    if ruleset is None:
        ruleset = RuleSet.current()
    outcome = Outcome()
    if not ruleset.rules or not messages:
        return outcome
    matches = outcome.matches
    counts = outcome.counts
    # (trigger, device) → [the rules that apply, how many messages they were evaluated on]
    plans: dict[tuple[str, DeviceFacts], list[Any]] = {}
    work: list[tuple[EngineMessage, tuple[CompiledRule, ...]]] = []
    for message in messages:
        key = (message.trigger, message.device)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = [ruleset.applicable(message.trigger, message.device), 0]
        if plan[0]:
            plan[1] += 1
            work.append((message, plan[0]))
    contexts = ContextCache(message for message, _ in work)
    shapes = {trigger: ruleset.shape(trigger) for trigger in {message.trigger for message, _ in work}}
    logged: set[int] = set()

    def fail(rule: CompiledRule, message: EngineMessage, error: str) -> None:
        rule_counts = counts.get(rule.id)
        if rule_counts is None:
            rule_counts = counts[rule.id] = RuleCounts()
        rule_counts.failed += 1
        rule_counts.last_error = error
        rule_counts.last_error_at = message.received
        if rule.id not in logged:
            logged.add(rule.id)
            logger.warning(
                "Rule %r (id %s) failed on a %s message of device %s: %s",
                rule.name,
                rule.id,
                message.trigger,
                message.device.id,
                error,
            )

    for message, rules in work:
        context = contexts.context_for(message, shapes[message.trigger])
        for rule in rules:
            program = rule.program
            if program is None:
                fail(rule, message, rule.error)
                continue
            try:
                result = program.execute(context)
            except Exception as exc:  # noqa: BLE001 — one rule's failure is that rule's alone
                fail(rule, message, error_text(exc))
                continue
            if result is True:
                matches.append((rule, message))
                rule_counts = counts.get(rule.id)
                if rule_counts is None:
                    rule_counts = counts[rule.id] = RuleCounts()
                rule_counts.matched += 1
                if rule_counts.last_matched_at is None or rule_counts.last_matched_at < message.received:
                    rule_counts.last_matched_at = message.received
            elif result is not False:
                fail(rule, message, non_boolean_error(result))

    for rules, evaluated in plans.values():
        if evaluated:
            for rule in rules:
                rule_counts = counts.get(rule.id)
                if rule_counts is None:
                    rule_counts = counts[rule.id] = RuleCounts()
                rule_counts.evaluated += evaluated
    return outcome


def flush_counters(outcome: Outcome) -> int:
    """Add a batch's counts to the rules, one UPDATE per rule with F() increments (call it inside
    the ingest transaction, late: the rows stay locked until it commits), and count the batch in
    the metrics. Rules are updated in id order so concurrent batches never deadlock. Returns the
    number of rules updated (a rule deleted meanwhile is not)."""
    updated = 0
    for rule_id in sorted(outcome.counts):
        counts = outcome.counts[rule_id]
        if not (counts.evaluated or counts.matched or counts.failed):
            continue
        changes: dict[str, Any] = {"evaluated": F("evaluated") + counts.evaluated}
        if counts.matched:
            changes["matched"] = F("matched") + counts.matched
            changes["last_matched_at"] = counts.last_matched_at
        if counts.failed:
            changes["failed"] = F("failed") + counts.failed
            changes["last_error"] = counts.last_error[:LAST_ERROR_MAX_LENGTH]
            changes["last_error_at"] = counts.last_error_at
        updated += Rule.objects.filter(pk=rule_id).update(**changes)
    metrics.record(outcome.evaluated, outcome.matched, outcome.failed)
    return updated


def evaluate_one(condition: str | CompiledRule, message: EngineMessage) -> tuple[bool | None, str | None]:
    """A dry run of one condition (text or compiled rule) against one message, whatever the rule's
    trigger and scope: ``(result, None)``, or ``(None, error)`` when it does not compile, fails or
    is not boolean. Counts nothing."""
    if isinstance(condition, CompiledRule):
        if condition.program is None:
            return None, condition.error
        program = condition.program
    else:
        try:
            program = compile_condition(condition)
        except ConditionError as exc:
            return None, str(exc)
    return run(program, build_context(message))
