"""Domain operations of the device registry.

Views, admin actions, tasks and consumers call these; each takes the acting user explicitly, runs in a
transaction, does nothing when the state is unchanged, and announces itself on the event bus after
commit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from devices import hooks
from devices.choices import ActivationState, DeviceStatus
from devices.models import Device, DeviceCredential, DeviceGroup, DeviceStatusChange
from fluxiot import events
from fluxiot.errors import ConflictError

logger = logging.getLogger(__name__)

Actor = AbstractBaseUser | AnonymousUser | None


def _actor_id(actor: Actor) -> int | None:
    return actor.pk if actor is not None and getattr(actor, "is_authenticated", False) else None


def _lock(device: Device | str) -> Device:
    device_id = device.pk if isinstance(device, Device) else device
    return Device.objects.select_for_update().get(pk=device_id)


def device_summary(device: Device) -> dict[str, Any]:
    """The short form of a device that events carry."""
    return {
        "id": device.id,
        "name": device.name,
        "device_type": device.device_type,
        "status": device.status,
        "activation_state": device.activation_state,
        "group": device.group_id,
        "tags": device.tags,
    }


# --- Creation, update, deletion ---------------------------------------------------------------


def create_device(*, actor: Actor, **fields: Any) -> Device:
    """Create a device from already validated fields."""
    with transaction.atomic():
        device = Device(**fields)
        device.full_clean()
        device.save(force_insert=True)
        events.publish(events.DEVICE_CREATED, {"device": device_summary(device), "actor": _actor_id(actor)})
    logger.info("device %s created by %s", device.id, _actor_id(actor))
    return device


def update_device(device: Device, *, actor: Actor, **fields: Any) -> Device:
    """Update a device's user-editable fields. Status and activation have their own functions.
    Nothing is saved or announced when no value actually changes."""
    forbidden = {"id", "status", "activation_state", "activated_at"} & fields.keys()
    if forbidden:
        raise ValidationError({name: "Not editable here." for name in forbidden})
    with transaction.atomic():
        stored = Device.objects.select_for_update().get(pk=device.pk)
        for name, value in fields.items():
            setattr(device, name, value)
        device.full_clean()
        changed = sorted(name for name in fields if getattr(device, name) != getattr(stored, name))
        if not changed:
            return device
        device.save()
        events.publish(
            events.DEVICE_UPDATED,
            {"device": device_summary(device), "fields": changed, "actor": _actor_id(actor)},
        )
    return device


def delete_device(device: Device, *, actor: Actor) -> None:
    with transaction.atomic():
        summary = device_summary(device)
        device.delete()
        forget_verified(summary["id"])
        events.publish(events.DEVICE_DELETED, {"device": summary, "actor": _actor_id(actor)})
        _credentials_changed(summary["id"], None, "deleted")
    logger.info("device %s deleted by %s", summary["id"], _actor_id(actor))


# --- Status -----------------------------------------------------------------------------------


def set_status(
    device: Device | str,
    new_status: str,
    *,
    actor: Actor = None,
    reason: str = "",
    metadata: dict[str, Any] | None = None,
    at: datetime | None = None,
    only_from: Iterable[str] | None = None,
) -> DeviceStatusChange | None:
    """Change a device's status, writing its history row and announcing it. The one way any status
    changes. Returns the history row, or None when the status was already ``new_status`` (or, with
    ``only_from``, when the current status is not one of those: automatic changes such as
    "telemetry arrived, so online" must not override an operator's ``maintenance``)."""
    if new_status not in DeviceStatus.values:
        raise ValidationError({"status": f"Unknown status {new_status!r}."})
    with transaction.atomic():
        locked = _lock(device)
        if locked.status == new_status or (only_from is not None and locked.status not in only_from):
            return None
        when = at or timezone.now()
        change = DeviceStatusChange.objects.create(
            device=locked,
            old_status=locked.status,
            new_status=new_status,
            changed_at=when,
            reason=reason[:200],
            metadata=metadata or {},
            changed_by_id=_actor_id(actor),
        )
        locked.status = new_status
        locked.save(update_fields=["status", "updated_at"])
        if isinstance(device, Device):
            device.status = new_status
        events.publish(
            events.DEVICE_STATUS_CHANGED,
            {
                "device": locked.id,
                "old_status": change.old_status,
                "new_status": new_status,
                "reason": change.reason,
                "at": when.isoformat(),
                "actor": _actor_id(actor),
            },
        )
        if new_status == DeviceStatus.ONLINE:
            _came_online(locked.id)
        _status_changed(locked.id, change.old_status, new_status, change.reason)
    return change


def _status_changed(device_id: str, old: str, new: str, reason: str) -> None:
    def notify() -> None:
        for hook in list(hooks.status_changed):
            try:
                hook(device_id, old, new, reason)
            except Exception:
                logger.exception("status hook %r failed for device %s", hook, device_id)

    transaction.on_commit(notify)


def _came_online(device_id: str) -> None:
    def notify() -> None:
        for hook in list(hooks.came_online):
            try:
                hook(device_id)
            except Exception:
                logger.exception("came-online hook %r failed for device %s", hook, device_id)

    transaction.on_commit(notify)


# --- Activation and credentials -----------------------------------------------------------------


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def broker_password_hash(password: str, *, salt: bytes | None = None, iterations: int | None = None) -> tuple[str, str]:
    """``(salt, hash)`` the way Mosquitto's dynamic security plugin stores a password: both base64,
    the hash PBKDF2-HMAC-SHA512 over a 12-byte salt with ``MQTT_DYNSEC_ITERATIONS`` rounds."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    rounds = iterations if iterations is not None else settings.MQTT_DYNSEC_ITERATIONS
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds)
    return base64.b64encode(salt).decode(), base64.b64encode(digest).decode()


def _issue_secret(device: Device) -> str:
    forget_verified(device.pk)
    secret = secrets.token_urlsafe(32)
    broker_salt, broker_hash = broker_password_hash(secret)
    DeviceCredential.objects.update_or_create(
        device=device,
        defaults={
            "secret_hash": hash_secret(secret),
            "broker_salt": broker_salt,
            "broker_hash": broker_hash,
            "issued_at": timezone.now(),
        },
    )
    return secret


def _credentials_changed(device_id: str, secret: str | None, action: str) -> None:
    """Tell the hooks (the MQTT broker sync) once the transaction commits. The registry is the record:
    a failing hook is logged, never raised to the caller; ``sync_broker`` repairs the broker later."""

    def notify() -> None:
        for hook in list(hooks.credentials_changed):
            try:
                hook(device_id, secret, action)
            except Exception:
                logger.exception("credentials hook %r failed for device %s (%s)", hook, device_id, action)

    transaction.on_commit(notify)


def _announce_activation(device: Device, actor: Actor) -> None:
    events.publish(
        events.DEVICE_ACTIVATION_CHANGED,
        {"device": device.id, "activation_state": device.activation_state, "actor": _actor_id(actor)},
    )


def activate_device(device: Device | str, *, actor: Actor) -> str:
    """Activate a registered or disabled device and issue its secret: the only time the secret is
    seen. An active device keeps its secret (rotate it instead)."""
    with transaction.atomic():
        locked = _lock(device)
        if locked.activation_state == ActivationState.ACTIVE:
            raise ConflictError("The device is already active; rotate its credentials for a new secret.")
        secret = _issue_secret(locked)
        locked.activation_state = ActivationState.ACTIVE
        locked.activated_at = timezone.now()
        locked.save(update_fields=["activation_state", "activated_at", "updated_at"])
        _announce_activation(locked, actor)
        _credentials_changed(locked.id, secret, "activated")
    logger.info("device %s activated by %s", locked.id, _actor_id(actor))
    return secret


def disable_device(device: Device | str, *, actor: Actor) -> bool:
    """Disable a device: its secret stops working at once and is forgotten. False if it already was."""
    with transaction.atomic():
        locked = _lock(device)
        if locked.activation_state == ActivationState.DISABLED:
            return False
        DeviceCredential.objects.filter(device=locked).delete()
        forget_verified(locked.pk)
        locked.activation_state = ActivationState.DISABLED
        locked.save(update_fields=["activation_state", "updated_at"])
        _announce_activation(locked, actor)
        _credentials_changed(locked.id, None, "disabled")
    logger.info("device %s disabled by %s", locked.id, _actor_id(actor))
    return True


def rotate_credentials(device: Device | str, *, actor: Actor) -> str:
    """Issue a new secret for an active device; the old one stops working at once."""
    with transaction.atomic():
        locked = _lock(device)
        if locked.activation_state != ActivationState.ACTIVE:
            raise ConflictError("Only an active device has credentials to rotate; activate it first.")
        secret = _issue_secret(locked)
        events.publish(events.DEVICE_CREDENTIALS_ROTATED, {"device": locked.id, "actor": _actor_id(actor)})
        _credentials_changed(locked.id, secret, "rotated")
    logger.info("device %s credentials rotated by %s", locked.id, _actor_id(actor))
    return secret


_VERIFY_SQL = (
    "SELECT c.secret_hash FROM devices_devicecredential c JOIN devices_device d ON d.id = c.device_id "
    "WHERE c.device_id = %s AND d.activation_state = 'active'"
)
# device id -> (secret digest, monotonic expiry); see verify_device_secret.
_verified: dict[str, tuple[str, float]] = {}
_VERIFIED_MAX_ENTRIES = 200_000


def forget_verified(device_id: str) -> None:
    """Drop a device from this process's verification cache (its credentials changed)."""
    _verified.pop(device_id, None)


def _stored_digest(device_id: str) -> str | None:
    if connection.vendor == "postgresql":
        # Server-side binding with a prepared statement: parsed and planned once per connection.
        connection.ensure_connection()
        with connection.connection.cursor() as cursor:
            cursor.execute(_VERIFY_SQL, [device_id], prepare=True)
            row = cursor.fetchone()
    else:
        with connection.cursor() as cursor:
            cursor.execute(_VERIFY_SQL, [device_id])
            row = cursor.fetchone()
    return row[0] if row else None


def verify_device_secret(device_id: str, secret: str) -> bool:
    """True when ``device_id`` is an active device and ``secret`` its current secret.

    This is what the broker and HTTP ingest call for every login, so it is one prepared, indexed
    query and a constant-time comparison; a device's stored digest is then remembered for
    ``DEVICE_AUTH_CACHE_SECONDS``. Changes made in this process (rotate, disable, delete) take
    effect at once; other processes see them within that many seconds. Failed checks are never
    cached, so a newly activated device works immediately."""
    if not device_id or not secret or len(device_id) > 64 or len(secret) > 256:
        return False
    digest = hash_secret(secret)
    ttl = settings.DEVICE_AUTH_CACHE_SECONDS
    now = time.monotonic()
    cached = _verified.get(device_id)
    if cached is not None and cached[1] > now and hmac.compare_digest(cached[0], digest):
        return True
    stored = _stored_digest(device_id)
    if stored is None or not hmac.compare_digest(stored, digest):
        return False
    if ttl > 0:
        if len(_verified) >= _VERIFIED_MAX_ENTRIES:
            _verified.clear()
        _verified[device_id] = (stored, now + ttl)
    return True


# --- Groups -----------------------------------------------------------------------------------


def move_devices(devices: Iterable[Device | str], group: DeviceGroup | None, *, actor: Actor) -> int:
    """Put devices into ``group`` (None: no group). Returns how many moved."""
    ids = [d.pk if isinstance(d, Device) else d for d in devices]
    with transaction.atomic():
        moved = Device.objects.filter(pk__in=ids).exclude(group=group).update(group=group, updated_at=timezone.now())
        if moved:
            events.publish(
                events.DEVICES_MOVED,
                {"devices": ids[:1000], "group": group.pk if group else None, "actor": _actor_id(actor)},
            )
    return moved


def save_group(group: DeviceGroup, *, actor: Actor) -> DeviceGroup:
    """Create or update a group (the model keeps the tree paths; moves under a descendant are refused)."""
    created = group.pk is None
    with transaction.atomic():
        group.full_clean()
        group.save()
        events.publish(
            events.GROUP_CREATED if created else events.GROUP_UPDATED,
            {
                "group": {"id": group.pk, "name": group.name, "parent": group.parent_id, "path": group.path},
                "actor": _actor_id(actor),
            },
        )
    return group


def delete_group(group: DeviceGroup, *, actor: Actor) -> None:
    """Delete an empty group; one with child groups or devices raises ProtectedError."""
    with transaction.atomic():
        group_id = group.pk
        group.delete()
        events.publish(events.GROUP_DELETED, {"group": {"id": group_id}, "actor": _actor_id(actor)})


def devices_in_group(group: DeviceGroup, *, descendants: bool = False) -> Any:
    """The devices of a group, and of all groups below it when ``descendants``."""
    if descendants:
        return Device.objects.filter(group__in=list(group.descendants().values_list("pk", flat=True)))
    return Device.objects.filter(group=group)


# --- Bulk import --------------------------------------------------------------------------------


@dataclass
class ImportResult:
    created: int
    ids: list[str]


class ImportFailed(Exception):
    """Nothing was imported; ``errors`` lists ``{"row": n, "errors": {...}}`` for each bad row."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} bad rows")
        self.errors = errors


def _merge_row_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per row, in row order, with every field's messages together."""
    merged: dict[int, dict[str, list[str]]] = {}
    for entry in errors:
        row = merged.setdefault(entry["row"], {})
        for field, messages in entry["errors"].items():
            row.setdefault(field, []).extend(messages)
    return [{"row": number, "errors": merged[number]} for number in sorted(merged)]


def import_failure_summary(errors: list[dict[str, Any]]) -> str:
    rows = len(errors)
    return f"Nothing imported: {rows} {'row has' if rows == 1 else 'rows have'} errors."


IMPORT_FIELDS = ("id", "name", "device_type", "custom_type", "protocol", "group", "tags", "metadata")


def import_devices(
    rows: list[dict[str, Any]], *, actor: Actor, known_errors: list[dict[str, Any]] | None = None
) -> ImportResult:
    """Create many devices at once, all or nothing.

    ``rows`` are dicts with the keys of ``IMPORT_FIELDS`` (``group`` a group id or None). Every row
    is checked before anything is written; any bad row fails the whole import with a report.
    ``known_errors`` are problems the file parser already found (e.g. bad JSON in a CSV cell); they
    join the report."""
    errors: list[dict[str, Any]] = list(known_errors or [])
    devices: list[Device] = []
    group_ids = {row.get("group") for row in rows if row.get("group") is not None}
    known_groups = set(
        DeviceGroup.objects.filter(pk__in=[g for g in group_ids if isinstance(g, int)]).values_list("pk", flat=True)
    )
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        row_errors: dict[str, list[str]] = {}
        unknown = set(row) - set(IMPORT_FIELDS)
        if unknown:
            row_errors["non_field_errors"] = [f"Unknown columns: {', '.join(sorted(unknown))}."]
        fields = {k: v for k, v in row.items() if k in IMPORT_FIELDS and v not in (None, "")}
        group = fields.pop("group", None)
        if group is not None:
            if not isinstance(group, int) or isinstance(group, bool) or group not in known_groups:
                row_errors["group"] = [f"Unknown group {group!r}."]
            else:
                fields["group_id"] = group
        device = Device(**fields)
        try:
            device.full_clean(exclude=["group"], validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                row_errors.setdefault(name, []).extend(messages)
        if device.id in seen:
            row_errors.setdefault("id", []).append(f"Duplicate id in the file (also row {seen[device.id]}).")
        else:
            seen[device.id] = number
        if row_errors:
            errors.append({"row": number, "errors": row_errors})
        devices.append(device)
    existing = set(Device.objects.filter(pk__in=list(seen)).values_list("pk", flat=True))
    for number, device in enumerate(devices, start=1):
        if device.id in existing:
            errors.append({"row": number, "errors": {"id": [f"A device with id {device.id!r} already exists."]}})
    if errors:
        raise ImportFailed(_merge_row_errors(errors))
    with transaction.atomic():
        Device.objects.bulk_create(devices, batch_size=1000)
        ids = [d.id for d in devices]
        events.publish(events.DEVICES_IMPORTED, {"count": len(ids), "devices": ids[:1000], "actor": _actor_id(actor)})
    logger.info("%d devices imported by %s", len(devices), _actor_id(actor))
    return ImportResult(created=len(devices), ids=ids)
