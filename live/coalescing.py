"""Per-device coalescing of ``telemetry.received``: at most ``rate`` deliveries per second per device,
the latest value of each key winning.

A ``Coalescer`` holds, per device, the merged state of the updates that arrived since its last
delivery. The first update after a delivery opens a window of ``1 / rate`` seconds; at the end of
the window everything pending goes out in one frame. Deliveries are thus at least ``1 / rate``
apart, for every device in the coalescer. Memory is bounded: one entry per device with the latest
value per key; past ``max_devices`` pending devices (or ``MAX_VALUES_PER_DEVICE`` keys of one
device) the window is cut short and the frame goes out at once, so nothing but intermediate values
is ever dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Set
from typing import Any

logger = logging.getLogger(__name__)

MAX_VALUES_PER_DEVICE = 1000

Flush = Callable[[dict[str, dict[str, Any]], dict[str, Any]], None]


def _ts(value: Any) -> Any:
    return value.get("ts", 0) if isinstance(value, dict) else 0


class Coalescer:
    def __init__(self, rate: int, on_flush: Flush, *, max_devices: int) -> None:
        self.interval = 1.0 / rate
        self.on_flush = on_flush
        self.max_devices = max_devices
        self.pending: dict[str, dict[str, Any]] = {}
        # Entries of ``pending`` that are our own copies (the others still belong to the bus event,
        # shared by every connection, and are never modified).
        self._owned: set[str] = set()
        self._newest: dict[str, Any] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.flushes = 0
        self.early_flushes = 0

    def add(
        self,
        devices: Mapping[str, Any],
        event: Mapping[str, Any],
        select: Callable[[str], bool] | None = None,
        only: Set[str] | None = None,
    ) -> None:
        """Merge one telemetry event's ``data.devices``: those in ``only`` (a set of ids), or those
        ``select`` accepts, or all."""
        overfull = False
        pending = self.pending
        added = False
        if only is not None:
            if len(only) < len(devices):
                items: Iterable[tuple[str, Any]] = ((d, devices[d]) for d in only if d in devices)
            else:
                items = ((d, e) for d, e in devices.items() if d in only)
        else:
            items = devices.items()
        for device_id, entry in items:
            if not isinstance(entry, dict) or (select is not None and not select(device_id)):
                continue
            added = True
            current = pending.get(device_id)
            if current is None:
                pending[device_id] = entry
                continue
            if device_id not in self._owned:
                current = {"last_seen": current.get("last_seen"), "values": dict(current.get("values") or {})}
                pending[device_id] = current
                self._owned.add(device_id)
            last_seen = entry.get("last_seen")
            if last_seen is not None and (current["last_seen"] is None or last_seen > current["last_seen"]):
                current["last_seen"] = last_seen
            values = current["values"]
            new_values = entry.get("values")
            if isinstance(new_values, dict):
                for key, value in new_values.items():
                    old = values.get(key)
                    if old is None or _ts(value) >= _ts(old):
                        values[key] = value
                overfull = overfull or len(values) > MAX_VALUES_PER_DEVICE
        if not added:
            return
        self._newest = {"id": event.get("id"), "time": event.get("time")}
        if overfull or len(pending) > self.max_devices:
            self.early_flushes += 1
            self.flush()
        elif self._handle is None:
            self._handle = self._loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        """Deliver what is pending now (the timer calls this at the end of the window)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        self._owned = set()
        self.flushes += 1
        try:
            self.on_flush(pending, self._newest)
        except Exception:
            logger.exception("live: coalesced telemetry could not be delivered")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.pending = {}
        self._owned = set()


def telemetry_event(devices: dict[str, dict[str, Any]], newest: Mapping[str, Any]) -> dict[str, Any]:
    """The event a coalesced frame carries: the id and time of the newest bus event merged into it."""
    return {
        "id": newest.get("id"),
        "type": "telemetry.received",
        "time": newest.get("time"),
        "data": {"devices": devices},
    }
