"""Device commands: sending (one device or a selection), delivery, replies, timeouts and expiry.

The lifecycle is pending → sent → executing → success | failed | timeout, plus cancelled and expired.
Every change goes through this module and is announced on the bus as ``command.status_changed``.
Terminal states never change again; replies that come late or twice are recorded and change nothing.

Delivery: a command is published (QoS 1) only while its device is online and marked sent once the
broker acknowledged it. Commands for an offline device stay pending and go out, oldest first, when the
device comes online (``deliver_on_online``); ``sweep`` times out commands without a final reply,
expires undelivered ones and retries the few whose publish failed (broker unreachable).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone
from prometheus_client import Counter as PromCounter

from control.choices import REPLY_STATUSES, TERMINAL, CommandStatus
from control.models import CommandBatch, CommandReply, DeviceCommand
from control.publisher import Outgoing, PublishError, get_publisher
from control.schemas import SPECS, accepted_commands, params_errors
from devices import services as device_services
from devices.choices import ActivationState, DeviceStatus
from devices.models import Device, DeviceGroup
from fluxiot import devicejson, events
from fluxiot.errors import ConflictError
from telemetry.choices import RejectReason

logger = logging.getLogger(__name__)

TRANSITIONS = PromCounter("fluxiot_command_status_changes_total", "Commands entering each status", ["status"])

Actor = device_services.Actor
REPLY_ERROR_MAX_LENGTH = 2000


# --- Validation --------------------------------------------------------------------------------


def _check_common(command_type: str, params: Any, timeout: int | None, expires_at: datetime | None) -> int:
    errors: dict[str, list[str]] = {}
    if command_type not in SPECS:
        errors["type"] = [f"Unknown command type {command_type!r}; see /api/v1/command-types/."]
    elif problems := params_errors(command_type, params):
        errors["params"] = problems
    timeout = settings.COMMAND_DEFAULT_TIMEOUT if timeout is None else timeout
    if not 1 <= timeout <= settings.COMMAND_MAX_TIMEOUT:
        errors["timeout"] = [f"Between 1 and {settings.COMMAND_MAX_TIMEOUT} seconds."]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["The expiry is in the past."]
    if errors:
        raise ValidationError(errors)
    return timeout


def refusal(device: Device, command_type: str) -> str | None:
    """Why ``device`` cannot take a command of this type now, or None."""
    if device.activation_state != ActivationState.ACTIVE:
        return f"Device {device.id} is {device.activation_state}, not active."
    if command_type not in accepted_commands(device.device_type, device.metadata):
        return f"Device {device.id} ({device.type_label}) does not accept {command_type} commands."
    return None


def _default_expiry(now: datetime) -> datetime | None:
    seconds = settings.COMMAND_DEFAULT_EXPIRY
    return now + timedelta(seconds=seconds) if seconds else None


# --- Sending -----------------------------------------------------------------------------------


def send_command(
    device: Device,
    command_type: str,
    params: dict[str, Any] | None = None,
    *,
    timeout: int | None = None,
    expires_at: datetime | None = None,
    actor: Actor = None,
) -> DeviceCommand:
    """Record a command for ``device`` and, once the transaction commits, publish it if the device
    is online (it waits, pending, otherwise). Raises ValidationError for anything the command or the
    device does not allow."""
    params = {} if params is None else params
    timeout = _check_common(command_type, params, timeout, expires_at)
    if reason := refusal(device, command_type):
        raise ValidationError({"type": [reason]})
    now = timezone.now()
    with transaction.atomic():
        command = DeviceCommand.objects.create(
            device=device,
            command_type=command_type,
            params=params,
            timeout=timeout,
            expires_at=expires_at or _default_expiry(now),
            created_by_id=device_services._actor_id(actor),
        )
        _announce([_change(command, None)])
        # robust: a failing publish must not turn the recorded command into an error for the caller.
        transaction.on_commit(lambda: dispatch(ids=[command.pk]), robust=True)
    logger.info("command %s (%s) for %s created by %s", command.pk, command_type, device.pk, command.created_by_id)
    return command


@dataclass
class Selection:
    devices: list[Device]
    skipped: Counter


def select_targets(targets: dict[str, Any], command_type: str) -> Selection:
    """The devices a batch goes to. ``targets`` holds exactly one of ``devices`` (a list of ids: each
    must exist and take the command), ``group`` (an id; with ``include_descendants``, default true,
    the groups below it too) or ``tags`` (with ``match`` ``any``, the default, or ``all``). From a
    group or tags, devices that cannot take the command are left out and counted in ``skipped``."""
    if not isinstance(targets, dict):
        raise ValidationError({"targets": ["An object with devices, group or tags."]})
    given = [key for key in ("devices", "group", "tags") if targets.get(key) not in (None, [], "")]
    if len(given) != 1:
        raise ValidationError({"targets": ["Give exactly one of devices (ids), group or tags."]})
    limit = settings.COMMAND_BATCH_MAX_DEVICES
    skipped: Counter = Counter()
    kind = given[0]
    if kind == "devices":
        ids = targets["devices"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValidationError({"targets": ["devices is a list of device ids."]})
        ids = list(dict.fromkeys(ids))
        if len(ids) > limit:
            raise ValidationError({"targets": [f"{len(ids)} devices; a batch goes to at most {limit}."]})
        found = {d.pk: d for d in Device.objects.filter(pk__in=ids)}
        unknown = [i for i in ids if i not in found]
        if unknown:
            raise ValidationError({"targets": [f"Unknown devices: {', '.join(unknown[:20])}."]})
        refused = [r for d in found.values() if (r := refusal(d, command_type))]
        if refused:
            raise ValidationError({"targets": refused[:20]})
        return Selection([found[i] for i in ids], skipped)

    if kind == "group":
        try:
            group = DeviceGroup.objects.get(pk=targets["group"])
        except (DeviceGroup.DoesNotExist, ValueError, TypeError):
            raise ValidationError({"targets": [f"Unknown group {targets['group']!r}."]}) from None
        candidates = device_services.devices_in_group(group, descendants=targets.get("include_descendants", True))
    else:
        tags = targets["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise ValidationError({"targets": ["tags is a list of tags."]})
        match = targets.get("match", "any")
        if match not in ("any", "all"):
            raise ValidationError({"targets": ["match is any or all."]})
        candidates = Device.objects.filter(**{f"tags__has_{match}": tags})
    devices = []
    for device in candidates.order_by("pk").only("id", "device_type", "custom_type", "activation_state", "metadata"):
        if refusal(device, command_type):
            skipped["not_active" if device.activation_state != ActivationState.ACTIVE else "refuses_type"] += 1
        else:
            devices.append(device)
    if len(devices) > limit:
        raise ValidationError({"targets": [f"{len(devices)} devices selected; a batch goes to at most {limit}."]})
    return Selection(devices, skipped)


def send_batch(
    command_type: str,
    params: dict[str, Any] | None,
    targets: dict[str, Any],
    *,
    timeout: int | None = None,
    expires_at: datetime | None = None,
    actor: Actor = None,
) -> CommandBatch:
    """One command to every device of a selection (see ``select_targets``): the commands are created
    at once, and published by a worker (``control.tasks.dispatch_batch``) after the commit."""
    params = {} if params is None else params
    timeout = _check_common(command_type, params, timeout, expires_at)
    selection = select_targets(targets, command_type)
    if not selection.devices:
        skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in selection.skipped.items())
        raise ValidationError(
            {"targets": [f"No device of the selection can take this command{f' ({skipped})' if skipped else ''}."]}
        )
    now = timezone.now()
    expires_at = expires_at or _default_expiry(now)
    actor_id = device_services._actor_id(actor)
    with transaction.atomic():
        batch = CommandBatch.objects.create(
            command_type=command_type,
            params=params,
            targets=targets,
            total=len(selection.devices),
            skipped=dict(selection.skipped),
            timeout=timeout,
            expires_at=expires_at,
            created_by_id=actor_id,
        )
        commands = [
            DeviceCommand(
                id=uuid.uuid4(),
                device_id=device.pk,
                batch=batch,
                command_type=command_type,
                params=params,
                timeout=timeout,
                expires_at=expires_at,
                created_by_id=actor_id,
                created_at=now,
            )
            for device in selection.devices
        ]
        DeviceCommand.objects.bulk_create(commands, batch_size=2000)
        events.publish(
            events.COMMAND_BATCH_CREATED,
            {
                "batch": str(batch.pk),
                "type": command_type,
                "total": batch.total,
                "skipped": batch.skipped,
                "actor": actor_id,
            },
        )

        def queue() -> None:
            from control.tasks import dispatch_batch

            dispatch_batch.delay(str(batch.pk))

        transaction.on_commit(queue, robust=True)
    logger.info("command batch %s: %s to %d devices, by %s", batch.pk, command_type, batch.total, actor_id)
    return batch


def batch_counts(batch: CommandBatch) -> dict[str, int]:
    """How many of the batch's commands are in each status (every status present, 0 when none)."""
    counts = dict.fromkeys(CommandStatus.values, 0)
    for row in batch.commands.order_by().values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    return counts


# --- Delivery ----------------------------------------------------------------------------------


def _outgoing(command: DeviceCommand, now: datetime) -> Outgoing:
    payload = {
        "id": str(command.pk),
        "type": command.command_type,
        "params": command.params,
        "expires_at": command.expires_at.isoformat() if command.expires_at else None,
    }
    # Delivered later than its timeout the command would be answered after it timed out: let the
    # broker drop it instead (MQTT 5 message expiry), and sooner if it expires before that.
    expiry = command.timeout
    if command.expires_at is not None:
        expiry = min(expiry, int((command.expires_at - now).total_seconds()))
    return Outgoing(
        topic=command.topic,
        payload=json.dumps(payload, separators=(",", ":")).encode(),
        response_topic=f"{command.topic}/reply",
        correlation_data=command.pk.bytes,
        expiry_seconds=max(1, expiry),
    )


def dispatch(
    *,
    ids: Iterable[uuid.UUID] | None = None,
    device_id: str | None = None,
    batch_id: uuid.UUID | str | None = None,
    older_than: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Publish the pending commands chosen by the arguments whose device is online, oldest first;
    pending ones past their expiry become expired instead. Returns how many were sent. Commands
    another process is dispatching right now are skipped (row locks), so none goes out twice."""
    limit = limit or settings.COMMAND_DISPATCH_CHUNK
    query = Q(status=CommandStatus.PENDING)
    if ids is not None:
        query &= Q(pk__in=list(ids))
    if device_id is not None:
        query &= Q(device_id=device_id)
    if batch_id is not None:
        query &= Q(batch_id=batch_id)
    if older_than is not None:
        query &= Q(created_at__lt=older_than, device__status=DeviceStatus.ONLINE)
    changes: list[dict[str, Any]] = []
    with transaction.atomic():
        commands = list(
            DeviceCommand.objects.filter(query)
            .select_related("device")
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("created_at", "pk")[:limit]
        )
        now = timezone.now()
        expired = [c for c in commands if c.expires_at is not None and c.expires_at <= now]
        if expired:
            changes += _finish(expired, CommandStatus.EXPIRED, now, "Expired before it could be delivered.")
        ready = [
            c
            for c in commands
            if c not in expired
            and c.device.status == DeviceStatus.ONLINE
            and c.device.activation_state == ActivationState.ACTIVE
        ]
        sent: list[DeviceCommand] = []
        if ready:
            try:
                acked = get_publisher().publish_many(
                    [_outgoing(c, now) for c in ready], settings.COMMAND_PUBLISH_TIMEOUT
                )
            except PublishError as exc:
                logger.warning("%d commands stay pending: %s", len(ready), exc)
                acked = [False] * len(ready)
            sent = [c for c, ok in zip(ready, acked, strict=True) if ok]
        by_timeout: dict[int, list[uuid.UUID]] = {}
        for command in sent:
            by_timeout.setdefault(command.timeout, []).append(command.pk)
        for timeout, pks in by_timeout.items():
            # Only those still pending: a reply may have been recorded meanwhile (no row locks on SQLite).
            DeviceCommand.objects.filter(pk__in=pks, status=CommandStatus.PENDING).update(
                status=CommandStatus.SENT, sent_at=now, deadline_at=now + timedelta(seconds=timeout)
            )
        for command in sent:
            old, command.status, command.sent_at = command.status, CommandStatus.SENT, now
            changes.append(_change(command, old))
        _announce(changes)
    return len(sent)


def dispatch_all(**selection: Any) -> int:
    """``dispatch`` chunk after chunk until nothing more goes out."""
    total = 0
    while True:
        sent = dispatch(**selection)
        total += sent
        if sent < settings.COMMAND_DISPATCH_CHUNK:
            return total


def deliver_on_online(device_id: str) -> None:
    """The registry's hook, after a device turned online: send what waited for it."""
    if DeviceCommand.objects.filter(device_id=device_id, status=CommandStatus.PENDING).exists():
        from control.tasks import deliver_pending

        deliver_pending.delay(device_id)


def cancel_command(command: DeviceCommand | uuid.UUID | str, *, actor: Actor = None) -> DeviceCommand:
    """Cancel a command that is not finished yet (ConflictError otherwise). A device that already has
    it is not told; its later replies are recorded and change nothing."""
    pk = command.pk if isinstance(command, DeviceCommand) else command
    with transaction.atomic():
        locked = DeviceCommand.objects.select_for_update().get(pk=pk)
        if locked.is_terminal:
            raise ConflictError(f"The command is already {locked.status}; only unfinished commands can be cancelled.")
        who = getattr(actor, "username", None) or "the platform"
        _announce(_finish([locked], CommandStatus.CANCELLED, timezone.now(), f"Cancelled by {who}."))
    return locked


def _finish(commands: list[DeviceCommand], status: str, now: datetime, error: str) -> list[dict[str, Any]]:
    DeviceCommand.objects.filter(pk__in=[c.pk for c in commands]).exclude(status__in=TERMINAL).update(
        status=status, completed_at=now, error=error
    )
    changes = []
    for command in commands:
        old = command.status
        command.status, command.completed_at, command.error = status, now, error
        changes.append(_change(command, old))
    return changes


def sweep(now: datetime | None = None) -> dict[str, int]:
    """The beat task's work: time out sent or executing commands past their deadline, expire pending
    ones past their expiry, and send again pending commands of online devices whose publish failed."""
    now = now or timezone.now()
    counts = {}
    for status, query, error in (
        (
            CommandStatus.TIMEOUT,
            Q(status__in=[CommandStatus.SENT, CommandStatus.EXECUTING], deadline_at__lt=now),
            "No final reply within the timeout.",
        ),
        (
            CommandStatus.EXPIRED,
            Q(status=CommandStatus.PENDING, expires_at__lte=now),
            "Expired before it could be delivered.",
        ),
    ):
        done = 0
        while True:
            with transaction.atomic():
                chunk = list(
                    DeviceCommand.objects.filter(query)
                    .select_for_update(skip_locked=True)
                    .order_by("pk")[: settings.COMMAND_DISPATCH_CHUNK]
                )
                if chunk:
                    _announce(_finish(chunk, status, now, error))
            done += len(chunk)
            if len(chunk) < settings.COMMAND_DISPATCH_CHUNK:
                break
        counts[status] = done
    retry_before = now - timedelta(seconds=settings.COMMAND_RETRY_AFTER)
    counts["resent"] = dispatch_all(older_than=retry_before)
    if any(counts.values()):
        logger.info("command sweep: %s", counts)
    return counts


# --- Replies -----------------------------------------------------------------------------------


class ReplyRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Reply:
    device_id: str
    command_id: str
    status: str
    result: Any
    error: str
    received: datetime


def parse_reply(device_id: str, command_id: str, payload: bytes, received: datetime) -> Reply:
    """A reply payload ``{"status": "executing"|"success"|"failed", "result": …, "error": "…"}``."""
    try:
        data = devicejson.loads(payload)
    except devicejson.UnstorableJSON as exc:
        raise ReplyRejected(RejectReason.BAD_REPLY, str(exc)) from exc
    except ValueError as exc:  # invalid JSON or UTF-8
        raise ReplyRejected(RejectReason.MALFORMED_JSON, str(exc)[:200]) from exc
    if not isinstance(data, dict):
        raise ReplyRejected(RejectReason.BAD_REPLY, "a reply is a JSON object")
    status = data.get("status")
    if status not in REPLY_STATUSES:
        raise ReplyRejected(RejectReason.BAD_REPLY, f"status {status!r} is not one of {', '.join(REPLY_STATUSES)}")
    error = data.get("error") or ""
    if not isinstance(error, str):
        raise ReplyRejected(RejectReason.BAD_REPLY, "error is a string")
    return Reply(device_id, command_id, status, data.get("result"), error[:REPLY_ERROR_MAX_LENGTH], received)


def record_replies(
    replies: list[Reply], applied: list[tuple[DeviceCommand, Reply]] | None = None
) -> list[tuple[Reply, ReplyRejected]]:
    """Apply the replies of one ingest batch (inside its transaction), in the order received. Returns
    the rejected ones: an id that is no command, or a command of another device. Replies that
    changed a command are appended to ``applied`` when given (with the command as it is after)."""
    rejected: list[tuple[Reply, ReplyRejected]] = []
    wanted: dict[uuid.UUID, list[Reply]] = {}
    for reply in replies:
        try:
            pk = uuid.UUID(reply.command_id)
        except ValueError:
            rejected.append(
                (reply, ReplyRejected(RejectReason.UNKNOWN_COMMAND, f"{reply.command_id[:64]!r} is not a command id"))
            )
            continue
        wanted.setdefault(pk, []).append(reply)
    if not wanted:
        return rejected
    commands = {c.pk: c for c in DeviceCommand.objects.select_for_update().filter(pk__in=list(wanted)).order_by("pk")}
    rows: list[CommandReply] = []
    changes: list[dict[str, Any]] = []
    changed: dict[uuid.UUID, DeviceCommand] = {}
    for pk, its_replies in wanted.items():
        command = commands.get(pk)
        for reply in sorted(its_replies, key=lambda r: r.received):
            if command is None:
                rejected.append((reply, ReplyRejected(RejectReason.UNKNOWN_COMMAND, f"no command {pk}")))
                continue
            if command.device_id != reply.device_id:
                detail = f"command {pk} is for another device"
                rejected.append((reply, ReplyRejected(RejectReason.WRONG_DEVICE, detail)))
                continue
            old = command.status
            was_applied = _apply(command, reply)
            rows.append(
                CommandReply(
                    command=command,
                    status=reply.status,
                    result=reply.result,
                    error=reply.error,
                    received_at=reply.received,
                    applied=was_applied,
                )
            )
            if was_applied:
                changed[pk] = command
                changes.append(_change(command, old))
                if applied is not None:
                    applied.append((command, reply))
    if rows:
        CommandReply.objects.bulk_create(rows)
    if changed:
        DeviceCommand.objects.bulk_update(
            list(changed.values()),
            ["status", "result", "error", "sent_at", "deadline_at", "delivered_at", "completed_at"],
        )
    _announce(changes)
    return rejected


def _apply(command: DeviceCommand, reply: Reply) -> bool:
    if command.is_terminal:
        return False
    if reply.status == CommandStatus.EXECUTING and command.status == CommandStatus.EXECUTING:
        return False
    command.sent_at = command.sent_at or reply.received
    command.deadline_at = command.deadline_at or command.sent_at + timedelta(seconds=command.timeout)
    command.delivered_at = command.delivered_at or reply.received
    command.status = reply.status
    if reply.status != CommandStatus.EXECUTING:
        command.result = reply.result
        command.error = reply.error
        command.completed_at = reply.received
    return True


# --- Events ------------------------------------------------------------------------------------


def _change(command: DeviceCommand, old: str | None) -> dict[str, Any]:
    return {
        "id": str(command.pk),
        "device": command.device_id,
        "type": command.command_type,
        "batch": str(command.batch_id) if command.batch_id else None,
        "old_status": old,
        "status": command.status,
        "error": command.error or None,
    }


def _announce(changes: list[dict[str, Any]]) -> None:
    """One event per group of changes made together (a whole dispatch chunk, a batch of replies),
    and the status counter, both once the transaction commits."""
    counts = Counter(change["status"] for change in changes)

    def count() -> None:
        for status, n in counts.items():
            TRANSITIONS.labels(status).inc(n)

    failed = [change for change in changes if change["status"] in (CommandStatus.FAILED, CommandStatus.TIMEOUT)]
    if failed:
        transaction.on_commit(lambda: _notify_failed(failed))
    if changes:
        transaction.on_commit(count)
        events.publish(events.COMMAND_STATUS_CHANGED, {"commands": changes, "at": timezone.now().isoformat()})


def _notify_failed(failed: list[dict[str, Any]]) -> None:
    from control import hooks

    for hook in list(hooks.commands_failed):
        try:
            hook(failed)
        except Exception:
            logger.exception("commands-failed hook %r failed", hook)
