"""Subscriptions: parsing and validating a subscribe message, resolving its devices and groups
against the registry, and deciding which bus events it selects."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q

from devices.models import Device, DeviceGroup
from fluxiot import events
from live.permissions import VIEW_DEVICES, Access, known_subject, subject_of
from live.protocol import BAD_SUBSCRIPTION, FORBIDDEN, SUBSCRIPTION_ID_MAX_LENGTH, SubscriptionError

TELEMETRY = events.TELEMETRY_RECEIVED
SUBSCRIBE_KEYS = frozenset({"type", "id", "filters", "rate"})
FILTER_KEYS = ("devices", "groups", "event_types", "severity")
MAX_GROUPS = 1000
MAX_EVENT_TYPES = 50
MAX_SEVERITIES = 10
DEVICE_ID_MAX_LENGTH = 64
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.\*$")
_SEVERITY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# Events that change which devices a group filter covers.
MEMBERSHIP_TYPES = frozenset(
    {
        events.DEVICE_CREATED,
        events.DEVICE_UPDATED,
        events.DEVICE_DELETED,
        events.DEVICES_MOVED,
        events.DEVICES_IMPORTED,
        events.GROUP_CREATED,
        events.GROUP_UPDATED,
        events.GROUP_DELETED,
    }
)
# device.moved and device.imported list at most this many devices (fluxiot events).
EVENT_DEVICE_LIST_CAP = 1000


# --- Parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscribeRequest:
    """A subscribe message that passed the shape checks (nothing looked up yet)."""

    id: str
    rate: int
    devices: tuple[str, ...] | None
    groups: tuple[int, ...] | None
    event_types: tuple[str, ...] | None  # exact types and "subject.*" prefixes
    severity: tuple[str, ...] | None


def subscription_id(message: dict[str, Any]) -> str | None:
    """The message's subscription id if it is a valid one (for error replies), else None."""
    value = message.get("id")
    if isinstance(value, str) and 1 <= len(value) <= SUBSCRIPTION_ID_MAX_LENGTH:
        return value
    return None


def _bad(detail: str, sid: str | None) -> SubscriptionError:
    return SubscriptionError(BAD_SUBSCRIPTION, detail, sid)


def _string_list(value: Any, name: str, sid: str | None, limit: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"filters.{name} must be a list of strings", sid)
    if not value:
        raise _bad(f"filters.{name} is empty: leave it out to select everything", sid)
    if len(value) > limit:
        raise _bad(f"filters.{name}: at most {limit} entries", sid)
    return value


def parse_subscribe(message: dict[str, Any], *, default_rate: int, max_rate: int, max_devices: int) -> SubscribeRequest:
    """Check the shape of a subscribe message; raises SubscriptionError (bad_subscription)."""
    sid = subscription_id(message)
    if sid is None:
        raise _bad(f"id must be a string of 1 to {SUBSCRIPTION_ID_MAX_LENGTH} characters", None)
    unknown = sorted(set(message) - SUBSCRIBE_KEYS)
    if unknown:
        raise _bad(f"unknown key(s): {', '.join(unknown)[:200]}", sid)
    rate = message.get("rate", default_rate)
    if rate is None:
        rate = default_rate
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= max_rate:
        raise _bad(f"rate must be an integer from 1 to {max_rate} (updates per second per device)", sid)
    filters = message.get("filters")
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise _bad("filters must be an object", sid)
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise _bad(f"unknown filter(s): {', '.join(unknown)[:200]} (known: {', '.join(FILTER_KEYS)})", sid)

    devices = None
    if filters.get("devices") is not None:
        raw = _string_list(filters["devices"], "devices", sid, max_devices)
        if any(not d or len(d) > DEVICE_ID_MAX_LENGTH for d in raw):
            raise _bad(f"filters.devices: device ids are 1 to {DEVICE_ID_MAX_LENGTH} characters", sid)
        devices = tuple(sorted(set(raw)))

    groups = None
    if filters.get("groups") is not None:
        raw = filters["groups"]
        if not isinstance(raw, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in raw):
            raise _bad("filters.groups must be a list of group ids (integers)", sid)
        if not raw:
            raise _bad("filters.groups is empty: leave it out to select everything", sid)
        if len(raw) > MAX_GROUPS:
            raise _bad(f"filters.groups: at most {MAX_GROUPS} entries", sid)
        groups = tuple(sorted(set(raw)))

    event_types = None
    if filters.get("event_types") is not None:
        raw = _string_list(filters["event_types"], "event_types", sid, MAX_EVENT_TYPES)
        for name in raw:
            if not (_TYPE_RE.match(name) or _PREFIX_RE.match(name)):
                detail = f"filters.event_types: {name[:80]!r} is not an event type (e.g. device.created, command.*)"
                raise _bad(detail, sid)
            if not known_subject(subject_of(name)):
                raise _bad(f"filters.event_types: unknown event type {name[:80]!r}", sid)
        event_types = tuple(sorted(set(raw)))

    severity = None
    if filters.get("severity") is not None:
        raw = _string_list(filters["severity"], "severity", sid, MAX_SEVERITIES)
        if any(not _SEVERITY_RE.match(s) for s in raw):
            raise _bad("filters.severity: names of 1 to 32 lowercase letters, digits or underscores", sid)
        severity = tuple(sorted(set(raw)))

    return SubscribeRequest(
        id=sid, rate=rate, devices=devices, groups=groups, event_types=event_types, severity=severity
    )


# --- Subscriptions ------------------------------------------------------------------------------


@dataclass(eq=False)
class Subscription:
    """A resolved subscription of one connection."""

    id: str
    rate: int
    access: Access
    exact_types: frozenset[str] | None  # None with no prefixes: every type the user may see
    prefixes: tuple[str, ...]
    devices: frozenset[str] | None  # named explicitly
    groups: tuple[int, ...] | None  # named explicitly (their descendants are included)
    severity: frozenset[str] | None
    group_ids: set[int] = field(default_factory=set)  # the named groups and their descendants
    group_devices: set[str] = field(default_factory=set)  # the devices in those groups
    _wants: dict[str, bool] = field(default_factory=dict)

    @property
    def has_selection(self) -> bool:
        return self.devices is not None or self.groups is not None

    def normalised(self) -> dict[str, Any]:
        types = None
        if self.exact_types is not None or self.prefixes:
            types = sorted([*(self.exact_types or ()), *(f"{p}*" for p in self.prefixes)])
        return {
            "devices": sorted(self.devices) if self.devices is not None else None,
            "groups": list(self.groups) if self.groups is not None else None,
            "event_types": types,
            "severity": sorted(self.severity) if self.severity is not None else None,
        }

    def interest(self) -> frozenset[str] | None:
        """The event types whose bus groups this subscription needs joined (None: all events)."""
        if self.exact_types is None or self.prefixes:
            return None
        types = set(self.exact_types)
        if self.groups is not None:
            types |= MEMBERSHIP_TYPES
        return frozenset(types)

    def reauthorise(self, access: Access) -> None:
        """Use the user's permissions as they are now (a token renewal)."""
        self.access = access
        self._wants.clear()

    def wants(self, event_type: str) -> bool:
        wanted = self._wants.get(event_type)
        if wanted is None:
            if not self.access.allows(event_type):
                wanted = False
            elif self.exact_types is None and not self.prefixes:
                wanted = True
            else:
                wanted = event_type in (self.exact_types or ()) or event_type.startswith(self.prefixes)
            if len(self._wants) < 1000:
                self._wants[event_type] = wanted
        return wanted

    def selects(self, device_id: str) -> bool:
        if self.devices is None and self.groups is None:
            return True
        return (self.devices is not None and device_id in self.devices) or device_id in self.group_devices

    def matches(self, event: dict[str, Any], device_ids: list[str] | None) -> bool:
        """Does the event (of a type the subscription wants) pass its device/group and severity
        filters? ``device_ids``: the devices the event names (None: it names none)."""
        if self.severity is not None and subject_of(event["type"]) == "alarm":
            if severity_of(event.get("data")) not in self.severity:
                return False
        if not self.has_selection:
            return True
        if device_ids is not None:
            return any(self.selects(d) for d in device_ids)
        if self.groups is not None and subject_of(event["type"]) == "group":
            return group_id_of(event.get("data")) in self.group_ids
        return False

    def update_membership(self, event: dict[str, Any]) -> bool:
        """Keep the group selection current from a membership event; True when only a fresh look at
        the registry can tell (a group moved, an import, a truncated device list)."""
        if self.groups is None:
            return False
        data = event.get("data")
        if not isinstance(data, dict):
            return False
        kind = event["type"]
        if kind in (events.DEVICE_CREATED, events.DEVICE_UPDATED):
            device = data.get("device")
            if not isinstance(device, dict) or not isinstance(device.get("id"), str):
                return False
            if kind == events.DEVICE_UPDATED and "group" not in (data.get("fields") or ()):
                return False
            if device.get("group") in self.group_ids:
                self.group_devices.add(device["id"])
            else:
                self.group_devices.discard(device["id"])
        elif kind == events.DEVICES_MOVED:
            ids = [d for d in data.get("devices") or () if isinstance(d, str)]
            if data.get("group") in self.group_ids:
                self.group_devices.update(ids)
            else:
                self.group_devices.difference_update(ids)
            return len(ids) >= EVENT_DEVICE_LIST_CAP
        elif kind == events.DEVICE_DELETED:
            for device_id in event_device_ids(data) or ():
                self.group_devices.discard(device_id)
        elif kind == events.DEVICES_IMPORTED:
            return True
        elif kind == events.GROUP_CREATED:
            group = data.get("group")
            if isinstance(group, dict) and group.get("parent") in self.group_ids and isinstance(group.get("id"), int):
                self.group_ids.add(group["id"])
        elif kind == events.GROUP_UPDATED:
            group = data.get("group")
            if isinstance(group, dict):
                return group.get("id") in self.group_ids or group.get("parent") in self.group_ids
        elif kind == events.GROUP_DELETED:
            self.group_ids.discard(group_id_of(data))
        return False


# --- What events are about ----------------------------------------------------------------------


def event_device_ids(data: Any) -> list[str] | None:
    """The devices an event names: ``data.device`` (an id or a summary with ``id``),
    ``data.devices`` (a list of ids, or telemetry's dict keyed by id) and ``data.commands[*].device``.
    None when it names none of these."""
    if not isinstance(data, dict):
        return None
    found: list[str] | None = None
    device = data.get("device")
    if isinstance(device, str):
        found = [device]
    elif isinstance(device, dict) and isinstance(device.get("id"), str):
        found = [device["id"]]
    devices = data.get("devices")
    if isinstance(devices, dict):
        found = [*(found or ()), *devices]
    elif isinstance(devices, list):
        found = [*(found or ()), *(d for d in devices if isinstance(d, str))]
    commands = data.get("commands")
    if isinstance(commands, list):
        found = [
            *(found or ()),
            *(c["device"] for c in commands if isinstance(c, dict) and isinstance(c.get("device"), str)),
        ]
    return found


def group_id_of(data: Any) -> int | None:
    if not isinstance(data, dict):
        return None
    group = data.get("group")
    if isinstance(group, dict):
        group = group.get("id")
    return group if isinstance(group, int) and not isinstance(group, bool) else None


def severity_of(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    severity = data.get("severity")
    if severity is None and isinstance(data.get("alarm"), dict):
        severity = data["alarm"].get("severity")
    return severity if isinstance(severity, str) else None


# --- Resolution (database) ----------------------------------------------------------------------


def _listing(values: list[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:5])
    return f"{shown} (and {len(values) - 5} more)" if len(values) > 5 else shown


def check_access(request: SubscribeRequest, access: Access) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    """Refuse what the user may not see; returns (exact types, prefixes) cut down to what the user
    may receive. Raises SubscriptionError (bad_subscription or forbidden)."""
    if (request.devices is not None or request.groups is not None) and not access.has(VIEW_DEVICES):
        raise SubscriptionError(
            BAD_SUBSCRIPTION, "filters name devices or groups, and you may not view devices", request.id
        )
    if request.event_types is None:
        if not access.allowed_subjects() and not access.superuser:
            raise SubscriptionError(FORBIDDEN, "you may not view any kind of event", request.id)
        return None, ()
    exact = frozenset(t for t in request.event_types if not t.endswith(".*") and access.allows(t))
    prefixes = tuple(t[:-1] for t in request.event_types if t.endswith(".*") and access.allows(t[:-2]))
    if not exact and not prefixes:
        raise SubscriptionError(
            FORBIDDEN, f"you may not view events of type {_listing(list(request.event_types))}", request.id
        )
    return exact, prefixes


def expand_groups(group_ids: tuple[int, ...], max_devices: int) -> tuple[set[int], set[str], list[int]]:
    """The groups (their descendants included) and devices under ``group_ids``; returns (group ids,
    device ids, ids that do not exist). Raises SubscriptionError past ``max_devices`` devices."""
    paths = dict(DeviceGroup.objects.filter(pk__in=group_ids).values_list("pk", "path"))
    missing = [g for g in group_ids if g not in paths]
    if not paths:
        return set(), set(), missing
    under = Q()
    for path in paths.values():
        under |= Q(path__startswith=path)
    all_groups = set(DeviceGroup.objects.filter(under).values_list("pk", flat=True))
    device_ids = list(
        Device.objects.filter(group_id__in=all_groups).order_by().values_list("pk", flat=True)[: max_devices + 1]
    )
    if len(device_ids) > max_devices:
        raise SubscriptionError(
            BAD_SUBSCRIPTION,
            f"the groups hold more than {max_devices} devices (LIVE_MAX_DEVICES_PER_SUBSCRIPTION): name fewer",
        )
    return all_groups, set(device_ids), missing


def resolve(request: SubscribeRequest, access: Access, max_devices: int) -> Subscription:
    """Look the request's devices and groups up (sync: run it with database_sync_to_async).
    Raises SubscriptionError."""
    exact, prefixes = check_access(request, access)
    devices = None
    if request.devices is not None:
        known = set(Device.objects.filter(pk__in=request.devices).values_list("pk", flat=True))
        unknown = [d for d in request.devices if d not in known]
        if unknown:
            raise _bad(f"unknown device(s): {_listing(unknown)}", request.id)
        devices = frozenset(request.devices)
    group_ids: set[int] = set()
    group_devices: set[str] = set()
    if request.groups is not None:
        try:
            group_ids, group_devices, missing = expand_groups(request.groups, max_devices)
        except SubscriptionError as exc:
            exc.subscription_id = request.id
            raise
        if missing:
            raise _bad(f"unknown group(s): {_listing(missing)}", request.id)
        if len(group_devices | (devices or frozenset())) > max_devices:
            raise _bad(f"more than {max_devices} devices in all (LIVE_MAX_DEVICES_PER_SUBSCRIPTION)", request.id)
    return Subscription(
        id=request.id,
        rate=request.rate,
        access=access,
        exact_types=exact,
        prefixes=prefixes,
        devices=devices,
        groups=request.groups,
        severity=frozenset(request.severity) if request.severity is not None else None,
        group_ids=group_ids,
        group_devices=group_devices,
    )


def refresh_groups(subscription: Subscription, max_devices: int) -> None:
    """Look the subscription's groups up again (sync). Groups deleted since drop out; raises
    SubscriptionError when the groups now hold too many devices."""
    assert subscription.groups is not None
    group_ids, group_devices, _missing = expand_groups(subscription.groups, max_devices)
    subscription.group_ids = group_ids
    subscription.group_devices = group_devices
