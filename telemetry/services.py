"""Ingestion: from raw broker messages to stored points, latest values, liveness and events.

``ingest_batch`` takes what the bridge (or HTTP ingest) hands off — ``[topic, payload, received_ms]``
items, with a 4th element ``"oversize"`` for payloads the bridge cut short — and does all of it per
batch: one COPY, one latest-values upsert, one last-seen update, one live event. A bad message is
dead-lettered with its reason and never disturbs the rest of the batch. Running a batch twice stores
nothing twice (points are keyed by device, key and time).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from control import services as command_services
from control.services import Reply
from devices import services as device_services
from devices.choices import ActivationState, DeviceStatus
from devices.models import Device
from fluxiot import devicejson, events
from rules import ingest as rules_ingest
from rules.choices import Trigger
from rules.engine import RuleSet
from rules.ingest import RuleInput
from rules.models import DeviceFacts
from rules.runtime import PluginSet, Preprocessed, flush_plugin_counters, preprocess
from telemetry import metrics
from telemetry.choices import RejectReason
from telemetry.models import DeadLetter
from telemetry.store import Point, get_store

logger = logging.getLogger(__name__)

TOPIC_RE = re.compile(r"^devices/([A-Za-z0-9][A-Za-z0-9_-]{0,63})/(telemetry|attributes|status)$")
REPLY_TOPIC_RE = re.compile(r"^devices/([A-Za-z0-9][A-Za-z0-9_-]{0,63})/commands/([^/]+)/reply$")
KEY_MAX_LENGTH = 128
STRING_VALUE_MAX_LENGTH = 4096
MAX_OBJECTS_PER_MESSAGE = 1000
DEAD_LETTER_PAYLOAD_BYTES = 2048


class Reject(Exception):
    """A message that cannot be ingested, and why."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- Parsing (shared with HTTP ingest) -----------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The ingestion limits of one batch, read from settings once (not per message)."""

    now: datetime
    max_payload_bytes: int
    max_keys: int
    earliest: datetime
    latest: datetime

    @classmethod
    def current(cls, now: datetime | None = None) -> Limits:
        now = now or timezone.now()
        return cls(
            now=now,
            max_payload_bytes=settings.INGEST_MAX_PAYLOAD_BYTES,
            max_keys=settings.INGEST_MAX_KEYS,
            earliest=now - timedelta(days=settings.INGEST_MAX_AGE_DAYS),
            latest=now + timedelta(seconds=settings.INGEST_MAX_FUTURE_SECONDS),
        )


def parse_timestamp(raw: Any, now: datetime | Limits) -> datetime:
    """Epoch seconds or milliseconds, or ISO 8601 (naive means UTC), within the accepted window."""
    limits = now if isinstance(now, Limits) else Limits.current(now)
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise Reject(RejectReason.BAD_TIMESTAMP, f"ts must be a number or an ISO 8601 string, not {raw!r}")
    try:
        if isinstance(raw, str):
            ts = datetime.fromisoformat(raw)
            ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        else:
            if not math.isfinite(raw):
                raise ValueError(raw)
            seconds = raw / 1000 if abs(raw) >= 1e11 else raw  # 1e11 s is the year 5138; ms otherwise
            ts = datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise Reject(RejectReason.BAD_TIMESTAMP, f"unreadable ts {raw!r}") from exc
    if ts > limits.latest:
        raise Reject(RejectReason.FUTURE_TIMESTAMP, f"ts {ts.isoformat()} is in the future")
    if ts < limits.earliest:
        raise Reject(RejectReason.OLD_TIMESTAMP, f"ts {ts.isoformat()} is older than {limits.earliest.isoformat()}")
    return ts


def _load_json(payload: bytes, limits: Limits | None = None) -> Any:
    max_bytes = limits.max_payload_bytes if limits else settings.INGEST_MAX_PAYLOAD_BYTES
    if len(payload) > max_bytes:
        raise Reject(RejectReason.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes")
    try:
        return devicejson.loads(payload)
    except devicejson.UnstorableJSON as exc:
        raise Reject(RejectReason.UNSUPPORTED_VALUE, str(exc)) from exc
    except ValueError as exc:  # orjson's JSONDecodeError, invalid UTF-8 included
        raise Reject(RejectReason.MALFORMED_JSON, str(exc)[:200]) from exc


def _check_value(key: str, value: Any) -> None:
    if value is None:
        raise Reject(RejectReason.UNSUPPORTED_VALUE, f"{key} is null")
    if isinstance(value, float) and not math.isfinite(value):
        raise Reject(RejectReason.UNSUPPORTED_VALUE, f"{key} is not a finite number")
    if isinstance(value, str) and len(value) > STRING_VALUE_MAX_LENGTH:
        raise Reject(RejectReason.UNSUPPORTED_VALUE, f"{key} is a string over {STRING_VALUE_MAX_LENGTH} characters")
    if not isinstance(value, (bool, int, float, str, dict, list)):
        raise Reject(RejectReason.UNSUPPORTED_VALUE, f"{key} has an unsupported type")


def parse_telemetry(
    device_id: str, payload: bytes, received: datetime, now: datetime | Limits | None = None
) -> list[Point]:
    """The points of one telemetry payload: an object of ``{"key": value}`` with an optional
    ``"ts"``, or a list of such objects. Any bad part rejects the whole message."""
    limits = now if isinstance(now, Limits) else Limits.current(now)
    data = _load_json(payload, limits)
    objects = data if isinstance(data, list) else [data]
    if not objects or len(objects) > MAX_OBJECTS_PER_MESSAGE or not all(isinstance(o, dict) for o in objects):
        raise Reject(RejectReason.NOT_AN_OBJECT, f"expected an object or a list of 1-{MAX_OBJECTS_PER_MESSAGE} objects")
    points: list[Point] = []
    max_keys = limits.max_keys
    for obj in objects:
        ts = parse_timestamp(obj["ts"], limits) if "ts" in obj else received
        if len(obj) - ("ts" in obj) > max_keys:
            raise Reject(RejectReason.TOO_MANY_KEYS, f"{len(obj)} keys, at most {max_keys}")
        for key, value in obj.items():
            if key == "ts":
                continue
            if not key or len(key) > KEY_MAX_LENGTH or not key.isprintable():
                raise Reject(RejectReason.BAD_KEY, f"bad key {key[:40]!r}")
            if type(value) not in _PLAIN_TYPES:  # numbers, bools and short strings need no closer look
                _check_value(key, value)
            elif type(value) is str and len(value) > STRING_VALUE_MAX_LENGTH:
                _check_value(key, value)
            points.append((device_id, key, ts, value))
    return points


# Floats need no closer look either: the parser refuses NaN and Infinity (fluxiot.devicejson).
_PLAIN_TYPES = frozenset({int, bool, str, float})


def parse_attributes(payload: bytes) -> dict[str, Any]:
    data = _load_json(payload)
    if not isinstance(data, dict) or not data:
        raise Reject(RejectReason.NOT_AN_OBJECT, "attributes are a non-empty JSON object")
    if len(data) > settings.INGEST_MAX_KEYS:
        raise Reject(RejectReason.TOO_MANY_KEYS, f"{len(data)} keys")
    for key, value in data.items():
        if not key or len(key) > KEY_MAX_LENGTH:
            raise Reject(RejectReason.BAD_KEY, f"bad key {key[:40]!r}")
        if value is not None:
            _check_value(key, value)
    return data


def parse_status(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip().strip('"').lower()
    if text not in (DeviceStatus.ONLINE, DeviceStatus.OFFLINE):
        raise Reject(RejectReason.BAD_STATUS, f"status {text[:40]!r}")
    return text


# --- The batch ---------------------------------------------------------------------------------


@dataclass
class IngestResult:
    messages: int = 0
    points: int = 0
    stored: int = 0
    rejected: Counter = field(default_factory=Counter)
    derived: int = 0  # points added by rules (store_telemetry)

    @property
    def duplicates(self) -> int:
        return self.points - self.stored


@dataclass
class _DeviceState:
    status: str
    last_seen: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    latest: dict[str, tuple[datetime, Any]] = field(default_factory=dict)
    status_reason: str = ""


def _dead_letter(topic: str, payload: bytes, received: datetime, reject: Reject, device_id: str = "") -> DeadLetter:
    return DeadLetter(
        received_at=received,
        topic=topic[:255],
        device_id=device_id[:64],
        reason=reject.reason,
        detail=_text(reject.detail)[:500],
        payload=_text(bytes(payload[:DEAD_LETTER_PAYLOAD_BYTES]).decode("utf-8", "backslashreplace")),
    )


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: binary payloads (a raw sensor frame) keep it escaped."""
    return value.replace("\x00", "\\x00") if "\x00" in value else value


def ingest_batch(items: list[list[Any]]) -> IngestResult:
    """Ingest one batch of ``[topic, payload, received_ms(, "oversize")]`` items."""
    result = IngestResult(messages=len(items))
    limits = Limits.current()
    parsed: list[tuple[str, str, bytes, datetime, bool, str]] = []
    dead: list[DeadLetter] = []
    for item in items:
        topic, payload, received_ms = item[0], bytes(item[1]), item[2]
        received = datetime.fromtimestamp(received_ms / 1000, UTC)
        oversize = len(item) > 3 and item[3] == "oversize"
        match = TOPIC_RE.match(topic)
        if match is not None:
            parsed.append((match.group(1), match.group(2), payload, received, oversize, ""))
        elif (reply := REPLY_TOPIC_RE.match(topic)) is not None:
            parsed.append((reply.group(1), "reply", payload, received, oversize, reply.group(2)))
        else:
            reject = Reject(RejectReason.BAD_TOPIC, topic[:200])
            dead.append(_dead_letter(topic, payload, received, reject))

    known: dict[str, tuple[str, str]] = {}
    seen_before: dict[str, datetime | None] = {}
    rows = Device.objects.filter(pk__in={p[0] for p in parsed}).values_list(
        "id", "activation_state", "status", "last_seen_at"
    )
    for device_id, activation, status, last_seen_at in rows:
        known[device_id] = (activation, status)
        seen_before[device_id] = last_seen_at
    plugins = PluginSet.current()
    preprocessed = _preprocess(parsed, known, plugins) if plugins.plugins else None
    ruleset = RuleSet.current()
    rule_inputs: list[RuleInput] = []
    telemetry_rules = rules_ingest.wanted(ruleset, Trigger.TELEMETRY)
    attribute_rules = rules_ingest.wanted(ruleset, Trigger.ATTRIBUTES)
    devices: dict[str, _DeviceState] = {}
    points: list[Point] = []
    replies: list[tuple[Reply, str, bytes]] = []
    for index, (device_id, kind, payload, received, oversize, command_id) in enumerate(parsed):
        topic = f"devices/{device_id}/commands/{command_id}/reply" if command_id else f"devices/{device_id}/{kind}"
        try:
            if device_id not in known:
                raise Reject(RejectReason.UNKNOWN_DEVICE, device_id)
            activation, status = known[device_id]
            if activation != ActivationState.ACTIVE:
                raise Reject(RejectReason.DEVICE_NOT_ACTIVE, f"{device_id} is {activation}")
            if preprocessed is not None and index in preprocessed.dead:
                raise Reject(RejectReason.PLUGIN_FAILED, preprocessed.dead[index])
            if preprocessed is not None and index in preprocessed.payloads:
                payload, oversize = preprocessed.payloads[index], False  # decoded from the raw frame
            if oversize:
                raise Reject(RejectReason.PAYLOAD_TOO_LARGE, f"over {settings.INGEST_MAX_PAYLOAD_BYTES} bytes")
            state = devices.setdefault(device_id, _DeviceState(status=status))
            if kind == "telemetry":
                new_points = parse_telemetry(device_id, payload, received, limits)
                points.extend(new_points)
                if telemetry_rules and new_points:
                    values = {key: value for _, key, _, value in new_points}
                    reading_ts = max(point[2] for point in new_points)
                    rule_inputs.append(
                        RuleInput(Trigger.TELEMETRY, device_id, received, index, reading_ts, telemetry=values)
                    )
                for _, key, ts, value in new_points:
                    seen = state.latest.get(key)
                    if seen is None or seen[0] <= ts:
                        state.latest[key] = (ts, value)
                _came_online(state)
            elif kind == "attributes":
                reported_attributes = parse_attributes(payload)
                state.attributes.update(reported_attributes)
                if attribute_rules:
                    rule_inputs.append(
                        RuleInput(Trigger.ATTRIBUTES, device_id, received, index, attributes=reported_attributes)
                    )
                _came_online(state)
            elif kind == "reply":
                try:
                    reply = command_services.parse_reply(device_id, command_id, payload, received)
                except command_services.ReplyRejected as exc:
                    raise Reject(RejectReason(exc.reason), exc.detail) from exc
                replies.append((reply, topic, payload))
                _came_online(state)
            else:
                reported = parse_status(payload)
                if state.status in (DeviceStatus.ONLINE, DeviceStatus.OFFLINE) and state.status != reported:
                    state.status = reported
                    state.status_reason = f"device reported {reported}"
            if state.last_seen is None or state.last_seen < received:
                state.last_seen = received
        except Reject as reject:
            dead.append(_dead_letter(topic, payload, received, reject, device_id))

    result.points = len(points)
    if rules_ingest.wanted(ruleset, Trigger.STATUS):
        for device_id, state in devices.items():
            if state.status != known[device_id][1]:
                change = {"old": known[device_id][1], "new": state.status}
                rule_inputs.append(RuleInput(Trigger.STATUS, device_id, state.last_seen or limits.now, status=change))
    store = get_store()
    with transaction.atomic():
        if replies:
            by_reply = {id(reply): (topic, payload) for reply, topic, payload in replies}
            applied: list[tuple[Any, Reply]] = []
            for reply, exc in command_services.record_replies([reply for reply, _, _ in replies], applied):
                topic, payload = by_reply[id(reply)]
                reject = Reject(RejectReason(exc.reason), exc.detail)
                dead.append(_dead_letter(topic, payload, reply.received, reject, reply.device_id))
            if rules_ingest.wanted(ruleset, Trigger.COMMAND_RESULT):
                rule_inputs += [_command_result(command, reply) for command, reply in applied]
        rules_run = rules_ingest.run_rules(rule_inputs, ruleset) if rule_inputs else None
        if rules_run is not None:
            points.extend(rules_run.points)
            result.derived = len(rules_run.points)
        result.stored = store.write_points(points)
        if dead:
            DeadLetter.objects.bulk_create(dead)
        if devices:
            _announce(devices)
        # Rows every worker's batches update go last, in one order (devices, latest values,
        # counters), sorted within each: they stay locked until the commit.
        _update_devices(devices, known, seen_before)
        store.write_latest(points)
        if preprocessed is not None:
            flush_plugin_counters(preprocessed)
        if rules_run is not None:
            rules_ingest.finish(rules_run)
    for letter in dead:
        result.rejected[letter.reason] += 1
    metrics.record_batch(result)
    return result


def _preprocess(
    parsed: list[tuple[str, str, bytes, datetime, bool, str]], known: dict[str, tuple[str, str]], plugins: PluginSet
) -> Preprocessed:
    """Run the raw telemetry payloads of active devices through their preprocess plugins."""
    active = {device_id for device_id, (activation, _) in known.items() if activation == ActivationState.ACTIVE}
    wanted = [i for i, p in enumerate(parsed) if p[1] == "telemetry" and p[0] in active]
    facts = device_facts({parsed[i][0] for i in wanted})
    messages = [(i, facts[parsed[i][0]], f"devices/{parsed[i][0]}/telemetry", parsed[i][2]) for i in wanted]
    return preprocess(messages, plugins)


def device_facts(device_ids: set[str]) -> dict[str, DeviceFacts]:
    """What scoping (rules, plugins) needs of each device: type, tags, group path."""
    rows = Device.objects.filter(pk__in=device_ids).values_list("id", "device_type", "tags", "group__path")
    return {i: DeviceFacts(i, device_type, tuple(tags or ()), path or "") for i, device_type, tags, path in rows}


def _command_result(command: Any, reply: Reply) -> RuleInput:
    details = {
        "id": str(command.pk),
        "type": command.command_type,
        "status": command.status,
        "result": command.result,
        "error": command.error,
    }
    return RuleInput(Trigger.COMMAND_RESULT, command.device_id, reply.received, command=details)


def _came_online(state: _DeviceState) -> None:
    if state.status == DeviceStatus.OFFLINE:
        state.status = DeviceStatus.ONLINE
        state.status_reason = "data received"


def _update_devices(
    devices: dict[str, _DeviceState], known: dict[str, tuple[str, str]], seen_before: dict[str, datetime | None]
) -> None:
    """Write what the batch changed of its devices: ``last_seen_at`` where it lags by
    LAST_SEEN_RESOLUTION_SECONDS (a chatty device costs one row update every few seconds, not one
    per batch), reported attributes and status changes (``set_status`` writes the history row and
    the event). The rows are locked first, in one statement and in id order: two workers' batches
    touching the same devices wait for each other instead of deadlocking."""
    resolution = timedelta(seconds=settings.LAST_SEEN_RESOLUTION_SECONDS)
    lagging = sorted(
        (device_id, state.last_seen)
        for device_id, state in devices.items()
        if state.last_seen is not None
        and ((before := seen_before.get(device_id)) is None or before < state.last_seen - resolution)
    )
    changed = sorted(
        device_id for device_id, state in devices.items() if state.attributes or state.status != known[device_id][1]
    )
    if not lagging and not changed:
        return
    locked = sorted({device_id for device_id, _ in lagging} | set(changed))
    list(Device.objects.select_for_update().filter(pk__in=locked).order_by("pk").values_list("pk", flat=True))
    if lagging:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # Checked again under the lock: another batch may have moved it on meanwhile.
                cursor.execute(
                    "UPDATE devices_device AS d SET last_seen_at = v.ts "
                    "FROM unnest(%s::varchar[], %s::timestamptz[]) AS v(id, ts) "
                    "WHERE d.id = v.id AND (d.last_seen_at IS NULL OR d.last_seen_at < v.ts - %s)",
                    [[i for i, _ in lagging], [t for _, t in lagging], resolution],
                )
            else:
                adapt = connection.ops.adapt_datetimefield_value
                cursor.executemany(
                    "UPDATE devices_device SET last_seen_at = %s WHERE id = %s "
                    "AND (last_seen_at IS NULL OR last_seen_at < %s)",
                    [(adapt(t), i, adapt(t - resolution)) for i, t in lagging],
                )
    for device_id, state in sorted(devices.items()):
        if state.attributes:
            device = Device.objects.select_for_update().only("attributes").get(pk=device_id)
            device.attributes = {**device.attributes, **state.attributes}
            device.save(update_fields=["attributes"])
            events.publish(events.DEVICE_ATTRIBUTES_UPDATED, {"device": device_id, "attributes": state.attributes})
        if state.status != known[device_id][1]:
            device_services.set_status(
                device_id,
                state.status,
                reason=state.status_reason,
                at=state.last_seen,
                only_from=(DeviceStatus.ONLINE, DeviceStatus.OFFLINE),
            )


def _announce(devices: dict[str, _DeviceState]) -> None:
    """One live event for the whole batch, coalesced per device (its newest value of each key);
    times are epoch milliseconds."""
    payload = {
        device_id: {
            "last_seen": int(state.last_seen.timestamp() * 1000) if state.last_seen else None,
            "values": {
                key: {"ts": int(ts.timestamp() * 1000), "value": value} for key, (ts, value) in state.latest.items()
            },
        }
        for device_id, state in devices.items()
        if state.latest
    }
    if payload:
        events.publish(events.TELEMETRY_RECEIVED, {"devices": payload})


# --- Liveness and housekeeping --------------------------------------------------------------------


def mark_silent_devices_offline(now: datetime | None = None) -> int:
    """Online devices silent past their heartbeat timeout (or the platform default) go offline."""
    now = now or timezone.now()
    online = Device.objects.filter(status=DeviceStatus.ONLINE, last_seen_at__isnull=False)
    changed = 0
    for timeout in online.order_by().values_list("heartbeat_timeout", flat=True).distinct():
        seconds = timeout or settings.DEVICE_HEARTBEAT_TIMEOUT
        silent = online.filter(heartbeat_timeout=timeout, last_seen_at__lt=now - timedelta(seconds=seconds))
        for device_id in silent.values_list("pk", flat=True):
            reason = f"no message for {seconds} s (heartbeat timeout)"
            change = device_services.set_status(
                device_id, DeviceStatus.OFFLINE, reason=reason, only_from=(DeviceStatus.ONLINE,)
            )
            changed += change is not None
    return changed


def trim_dead_letters() -> int:
    """Keep the newest DEAD_LETTER_MAX_ROWS dead letters."""
    cutoff = DeadLetter.objects.order_by("-id").values_list("id", flat=True)[
        settings.DEAD_LETTER_MAX_ROWS : settings.DEAD_LETTER_MAX_ROWS + 1
    ]
    cutoff_id = next(iter(cutoff), None)
    if cutoff_id is None:
        return 0
    deleted, _ = DeadLetter.objects.filter(id__lte=cutoff_id).delete()
    return deleted


def create_partitions(days_ahead: int | None = None) -> None:
    days_ahead = settings.TELEMETRY_PARTITION_DAYS_AHEAD if days_ahead is None else days_ahead
    today = timezone.now().astimezone(UTC).date()
    get_store().ensure_partitions(today + timedelta(days=n) for n in range(-1, days_ahead + 1))
