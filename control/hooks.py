"""Hook points for apps that react to commands (``alarms`` raises an alarm for a failed command).

Called after the transaction that finished the commands commits; a failing hook is logged, never
raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# fn(changes) with the ``command.status_changed`` entries of commands that reached failed or timeout:
# dicts with id, device, type, batch, old_status, status, error.
commands_failed: list[Callable[[list[dict[str, Any]]], None]] = []
