"""Hook points for apps below the registry in the data flow.

Secrets cannot travel on the event bus (live views and WebSocket clients hear it), yet the MQTT
broker must learn a device's new secret. So the registry calls these functions directly, after the
transaction commits, with the plaintext secret (None when the device lost its credentials).
``transport`` registers the broker sync here.
"""

from __future__ import annotations

from collections.abc import Callable

# fn(device_id, secret_or_None, action) with action in "activated", "rotated", "disabled", "deleted".
credentials_changed: list[Callable[[str, str | None, str], None]] = []

# fn(device_id) once a device's status turned online (after the commit): ``control`` sends the
# commands that waited for it.
came_online: list[Callable[[str], None]] = []

# fn(device_id, old_status, new_status, reason) after every status change commits (``alarms`` raises
# and clears the device-offline alarm here).
status_changed: list[Callable[[str, str, str, str], None]] = []
