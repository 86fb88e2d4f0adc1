"""Daphne 4.2 drops the ``reason`` of an ASGI ``websocket.close`` message (django/daphne#374): the
client would get the close code alone. The protocol of ``/ws/events/`` promises a reason with 4401 and
4429, so the live app passes it on to autobahn (which Daphne's WebSocket protocol is built on).

Applied once from ``LiveConfig.ready()``; harmless where Daphne already passes the reason on.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_MARK = "_live_passes_close_reason"


def pass_close_reasons() -> bool:
    """Make Daphne send the close reason; False when Daphne is not installed."""
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:
        return False
    original = WebSocketProtocol.handle_reply
    if getattr(original, _MARK, False):
        return True

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        reason = message.get("reason")
        if message.get("type") == "websocket.close" and reason and self.state == self.STATE_OPEN:
            code = message.get("code") or 1000
            # autobahn takes 1000 and 3000-4999, and at most 123 bytes of reason.
            if code == 1000 or 3000 <= code <= 4999:
                self.sendClose(code=code, reason=reason.encode()[:123].decode(errors="ignore"))
                return
        original(self, message)

    setattr(handle_reply, _MARK, True)
    WebSocketProtocol.handle_reply = handle_reply
    return True
