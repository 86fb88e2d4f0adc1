"""The wire protocol of ``/ws/events/``: close codes, error codes and the limits read from settings.

docs/API.md ("WebSocket API") is the reference; the pages of the console and integrators use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

# Close codes.
CLOSE_NORMAL = 1000
CLOSE_TOO_SLOW = 4503  # the client does not read what it is sent (its send queue is full)
CLOSE_AUTH = 4401  # not authenticated: anonymous, bad or expired token, no auth message in time
CLOSE_FLOOD = 4429  # too many bad or subscribe messages, or too many subscriptions

# Error codes of {"type": "error", "code": ...}.
BAD_MESSAGE = "bad_message"
BAD_SUBSCRIPTION = "bad_subscription"
FORBIDDEN = "forbidden"

# Subscription ids are client-chosen strings of 1 to 64 characters.
SUBSCRIPTION_ID_MAX_LENGTH = 64


@dataclass(frozen=True)
class Limits:
    """The LIVE_* settings, read once per connection (tests change them per test)."""

    heartbeat_seconds: float
    auth_timeout_seconds: float
    default_rate: int
    max_rate: int
    max_message_bytes: int
    max_subscriptions: int
    flood_window_seconds: float
    max_subscribes_per_window: int
    max_bad_messages_per_window: int
    max_devices_per_subscription: int
    max_pending_devices: int
    max_queued_frames: int

    @classmethod
    def current(cls) -> Limits:
        return cls(
            heartbeat_seconds=float(settings.LIVE_HEARTBEAT_SECONDS),
            auth_timeout_seconds=float(settings.LIVE_AUTH_TIMEOUT_SECONDS),
            default_rate=int(settings.LIVE_DEFAULT_RATE),
            max_rate=int(settings.LIVE_MAX_RATE),
            max_message_bytes=int(settings.LIVE_MAX_MESSAGE_BYTES),
            max_subscriptions=int(settings.LIVE_MAX_SUBSCRIPTIONS),
            flood_window_seconds=float(settings.LIVE_FLOOD_WINDOW_SECONDS),
            max_subscribes_per_window=int(settings.LIVE_MAX_SUBSCRIBES_PER_WINDOW),
            max_bad_messages_per_window=int(settings.LIVE_MAX_BAD_MESSAGES_PER_WINDOW),
            max_devices_per_subscription=int(settings.LIVE_MAX_DEVICES_PER_SUBSCRIPTION),
            max_pending_devices=int(settings.LIVE_MAX_PENDING_DEVICES),
            max_queued_frames=int(settings.LIVE_MAX_QUEUED_FRAMES),
        )


class SubscriptionError(Exception):
    """A subscribe (or unsubscribe) message the server refuses; the connection stays open."""

    def __init__(self, code: str, detail: str, subscription_id: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.subscription_id = subscription_id

    def message(self) -> dict[str, object]:
        return {"type": "error", "id": self.subscription_id, "code": self.code, "detail": self.detail}
