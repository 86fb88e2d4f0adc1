"""Which events a user may receive: the view permission of the model each event type is about,
the same permission the REST API asks before it shows that model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from channels.db import database_sync_to_async

# Event subject (the part before the first dot) -> the permissions needed to receive its events.
SUBJECT_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "device": ("devices.view_device",),
    "telemetry": ("devices.view_device",),
    "group": ("devices.view_devicegroup",),
    "command": ("control.view_devicecommand",),
    "rule": ("rules.view_rule",),
    "plugin": ("rules.view_plugin",),
    "scene": ("control.view_scene",),
    "alarm": ("alarms.view_alarm",),
    "notification": ("alarms.view_notificationdelivery",),
}
# Types that need more than their subject's permission: a rule match carries a device's values.
TYPE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "rule.matched": ("rules.view_rule", "devices.view_device"),
}
# Naming devices or groups in a subscription's filters needs this.
VIEW_DEVICES = "devices.view_device"


def subject_of(event_type: str) -> str:
    return event_type.split(".", 1)[0]


def known_subject(subject: str) -> bool:
    return subject in SUBJECT_PERMISSIONS


class Access:
    """A user's permissions, loaded once when the connection authenticates (and again when a JWT
    connection authenticates anew). Events of subjects not in SUBJECT_PERMISSIONS go to superusers
    only."""

    def __init__(self, permissions: Iterable[str], superuser: bool = False) -> None:
        self.permissions = frozenset(permissions)
        self.superuser = superuser
        self._types: dict[str, bool] = {}

    def has(self, permission: str) -> bool:
        return self.superuser or permission in self.permissions

    def allows(self, event_type: str) -> bool:
        """May the user receive events of this type (or of this ``subject.*`` prefix)?"""
        allowed = self._types.get(event_type)
        if allowed is None:
            needed = TYPE_PERMISSIONS.get(event_type) or SUBJECT_PERMISSIONS.get(subject_of(event_type))
            allowed = self.superuser if needed is None else all(self.has(p) for p in needed)
            if len(self._types) < 1000:
                self._types[event_type] = allowed
        return allowed

    def allowed_subjects(self) -> list[str]:
        return [s for s, needed in SUBJECT_PERMISSIONS.items() if all(self.has(p) for p in needed)]


def _load(user: Any) -> Access:
    if not user.is_active:
        return Access(())
    return Access(user.get_all_permissions(), superuser=user.is_superuser)


async def load_access(user: Any) -> Access:
    return await database_sync_to_async(_load)(user)
