"""What the ingest path runs between parsing and storing: preprocess plugins over raw payloads, and
(rules/ingest.py) the rules over the parsed batch.

``PluginSet.current()`` is this process's set of enabled preprocess plugins with their modules,
reloaded only when ``rules.generation`` changes (one cache read per batch otherwise).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.db.models import F
from django.utils import timezone

from fluxiot.generations import GenerationCached
from rules import generation
from rules.choices import PluginFailure, PluginStage
from rules.models import DeviceFacts, Plugin, scope_matches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedPlugin:
    id: int
    name: str
    sha256: str
    module: bytes
    config: dict[str, Any]
    scope: str
    scope_value: str
    group_path: str | None
    on_failure: str

    def applies_to(self, device: DeviceFacts) -> bool:
        return scope_matches(self.scope, self.scope_value, self.group_path, device)


@dataclass
class PluginSet(GenerationCached):
    generation: str
    plugins: list[LoadedPlugin] = field(default_factory=list)

    generations: ClassVar = generation.GENERATION

    @classmethod
    def load(cls, gen: str = "") -> PluginSet:
        plugins = []
        for plugin in Plugin.objects.filter(enabled=True, stage=PluginStage.PREPROCESS).order_by("name", "-created_at"):
            plugins.append(
                LoadedPlugin(
                    id=plugin.pk,
                    name=plugin.name,
                    sha256=plugin.sha256,
                    module=bytes(plugin.module),
                    config=plugin.config or {},
                    scope=plugin.scope,
                    scope_value=plugin.scope_value,
                    group_path=plugin.group_path(),
                    on_failure=plugin.on_failure,
                )
            )
        logger.info("plugin set reloaded: %d preprocess plugins", len(plugins))
        return cls(generation=gen, plugins=plugins)


@dataclass
class Preprocessed:
    """The outcome of the preprocess stage for one batch: new payloads by message index, messages to
    dead-letter (index → detail), and per-plugin counts."""

    payloads: dict[int, bytes] = field(default_factory=dict)
    dead: dict[int, str] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    last_error: dict[int, str] = field(default_factory=dict)


def preprocess(messages: list[tuple[int, DeviceFacts, str, bytes]], plugins: PluginSet) -> Preprocessed:
    """Run each telemetry message ``(index, device, topic, payload)`` through the first enabled
    preprocess plugin whose scope covers its device, many messages per plugin call. A plugin's
    output (a telemetry object or list of them) becomes the message's payload; a failure leaves the
    message as it came (``on_failure`` pass) or dead-letters it."""
    from rules.plugins.host import PluginError, run_plugin

    outcome = Preprocessed()
    if not plugins.plugins or not messages:
        return outcome
    by_plugin: dict[int, list[tuple[int, DeviceFacts, str, bytes]]] = {}
    chosen: dict[int, LoadedPlugin] = {}
    for message in messages:
        for plugin in plugins.plugins:
            if plugin.applies_to(message[1]):
                by_plugin.setdefault(plugin.id, []).append(message)
                chosen[plugin.id] = plugin
                break
    for plugin_id, batch in by_plugin.items():
        plugin = chosen[plugin_id]
        inputs = [{"device": device.id, "topic": topic, "payload": payload} for _, device, topic, payload in batch]
        results = run_plugin(plugin.id, plugin.sha256, plugin.module, plugin.config, inputs, name=plugin.name)
        if _timed_out(results):
            # The deadline is wall time for the whole batch: on a loaded machine a call that needs a
            # few milliseconds of CPU can miss it waiting for a core. Once more, on a fresh instance;
            # a plugin that really loops is stopped again (and its messages fail), costing one more
            # deadline for this batch.
            logger.warning("plugin %s timed out on %d messages; retrying once", plugin.name, len(inputs))
            results = run_plugin(plugin.id, plugin.sha256, plugin.module, plugin.config, inputs, name=plugin.name)
        outcome.calls[plugin_id] += len(batch)
        for (index, device, _topic, _payload), result in zip(batch, results, strict=True):
            error = None
            if isinstance(result, PluginError):  # "rejected": the plugin's own {"error": …} for the message
                error = f"{result.reason}: {result.detail}"
            if error is None:
                outcome.payloads[index] = json.dumps(result, separators=(",", ":")).encode()
                continue
            outcome.failures[plugin_id] += 1
            outcome.last_error[plugin_id] = f"{device.id}: {error}"[:500]
            if plugin.on_failure == PluginFailure.DEAD_LETTER:
                outcome.dead[index] = f"plugin {plugin.name}: {error}"[:500]
    return outcome


def _timed_out(results: list[Any]) -> bool:
    from rules.plugins.host import PluginError

    return bool(results) and all(isinstance(r, PluginError) and r.reason == "timeout" for r in results)


def flush_plugin_counters(outcome: Preprocessed) -> None:
    """One UPDATE per plugin that ran (inside the ingest transaction)."""
    now = timezone.now()
    for plugin_id, calls in outcome.calls.items():
        fields: dict[str, Any] = {"calls": F("calls") + calls}
        failures = outcome.failures.get(plugin_id, 0)
        if failures:
            fields.update(
                failures=F("failures") + failures, last_error=outcome.last_error[plugin_id], last_error_at=now
            )
        Plugin.objects.filter(pk=plugin_id).update(**fields)
