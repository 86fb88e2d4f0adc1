"""The built-in checks: a device that goes offline raises ``device_offline`` (major) and clears it
when it is back online; commands that fail or time out raise ``command_failed`` (minor) on their
device. Both run from the registry's and the commands' hooks, after the change committed."""

from __future__ import annotations

import logging
from typing import Any

from alarms import services
from alarms.choices import AlarmSeverity
from devices.choices import DeviceStatus

logger = logging.getLogger(__name__)

OFFLINE_SOURCE = "check:device_offline"
COMMAND_SOURCE = "check:command_failed"


def device_status_changed(device_id: str, old: str, new: str, reason: str) -> None:
    """``devices.hooks.status_changed``: offline raises the alarm, online clears it."""
    if new == DeviceStatus.OFFLINE:
        services.raise_alarm(
            device_id,
            services.DEVICE_OFFLINE,
            AlarmSeverity.MAJOR,
            details={"reason": reason, "previous_status": old},
            source=OFFLINE_SOURCE,
        )
    elif new == DeviceStatus.ONLINE:
        services.clear_alarm(device_id, services.DEVICE_OFFLINE, reason=reason or "The device is back online.")


def commands_failed(changes: list[dict[str, Any]]) -> None:
    """``control.hooks.commands_failed``: one raise per device, counting each of its failed commands
    (a batch that times out on many devices raises one alarm per device, not one per command)."""
    by_device: dict[str, list[dict[str, Any]]] = {}
    for change in changes:
        if isinstance(change.get("device"), str):
            by_device.setdefault(change["device"], []).append(change)
    for device_id, failed in by_device.items():
        last = failed[-1]
        details = {
            "command": last.get("id"),
            "command_type": last.get("type"),
            "command_status": last.get("status"),
            "error": last.get("error"),
            "batch": last.get("batch"),
        }
        try:
            services.raise_alarm(
                device_id,
                services.COMMAND_FAILED,
                AlarmSeverity.MINOR,
                details=details,
                source=COMMAND_SOURCE,
                count=len(failed),
            )
        except Exception:  # one device's failure (deleted meanwhile…) must not stop the others
            logger.exception("could not raise the command_failed alarm of %s", device_id)
