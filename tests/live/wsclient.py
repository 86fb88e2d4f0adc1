"""A minimal WebSocket client (RFC 6455) over a real asyncio TCP connection, standard library only:
the opening handshake, masked text frames out, text/binary frames in (fragmented or not), ping
answered with pong, and the closing handshake with its code and reason.

    ws = await WebSocket.connect("ws://127.0.0.1:8000/ws/events/?token=...")
    await ws.send_json({"type": "ping"})
    assert await ws.recv_json() == {"type": "pong"}
    await ws.close()

Used by the end-to-end test and by bench/live.py (many connections on one event loop).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
from typing import Any
from urllib.parse import urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, status: int, head: str) -> None:
        super().__init__(f"handshake refused: {head.splitlines()[0] if head else status}")
        self.status = status
        self.head = head


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed: {code} {reason}")
        self.code = code
        self.reason = reason


def _mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None
        self.close_reason = ""
        self._close_sent = False

    @classmethod
    async def connect(
        cls, url: str, *, headers: dict[str, str] | None = None, origin: str | None = "auto", timeout: float = 10
    ) -> WebSocket:
        """Open ``ws://host:port/path?query``. ``origin="auto"`` sends ``Origin: http://host:port``
        (the server checks it against ALLOWED_HOSTS); None sends none."""
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError("only ws:// URLs")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin == "auto":
            origin = f"http://{host}:{port}"
        if origin:
            lines.append(f"Origin: {origin}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)).decode("latin-1")
        except asyncio.IncompleteReadError as exc:
            writer.close()
            raise HandshakeError(0, exc.partial.decode("latin-1")) from exc
        status = int(head.split(" ", 2)[1])
        if status != 101:
            writer.close()
            raise HandshakeError(status, head)
        fields = {}
        for line in head.split("\r\n")[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                fields[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if fields.get("sec-websocket-accept") != expected:
            writer.close()
            raise HandshakeError(status, head)
        return cls(reader, writer)

    # --- Sending --------------------------------------------------------------------------------

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)
        self.writer.write(header + key + _mask(payload, key))
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        await self._send_frame(OP_TEXT, text.encode())

    async def send_bytes(self, data: bytes) -> None:
        await self._send_frame(OP_BINARY, data)

    async def send_json(self, message: Any) -> None:
        await self.send_text(json.dumps(message))

    # --- Receiving ------------------------------------------------------------------------------

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        key = await self.reader.readexactly(4) if b1 & 0x80 else b""
        payload = await self.reader.readexactly(n) if n else b""
        if key:
            payload = _mask(payload, key)
        return bool(b0 & 0x80), b0 & 0x0F, payload

    async def recv(self, timeout: float | None = None, *, decode: bool = True) -> str | bytes:
        """The next data message (str for text, unless ``decode`` is false); raises ConnectionClosed
        when the server closes."""
        receiving = self._recv(decode)
        return await asyncio.wait_for(receiving, timeout) if timeout else await receiving

    async def _recv(self, decode: bool = True) -> str | bytes:
        if self.close_code is not None:
            raise ConnectionClosed(self.close_code, self.close_reason)
        parts: list[bytes] = []
        kind = None
        while True:
            try:
                fin, opcode, payload = await self._read_frame()
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self.close_code = self.close_code or 1006
                raise ConnectionClosed(1006, "connection lost") from exc
            if opcode == OP_PING:
                await self._send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_code, self.close_reason = code, payload[2:].decode(errors="replace")
                if not self._close_sent:
                    self._close_sent = True
                    await self._send_frame(OP_CLOSE, payload[:2])
                self.writer.close()
                raise ConnectionClosed(self.close_code, self.close_reason)
            if opcode in (OP_TEXT, OP_BINARY):
                kind = opcode
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return data.decode() if kind == OP_TEXT and decode else data

    async def recv_json(self, timeout: float | None = None) -> Any:
        message = await self.recv(timeout)
        return json.loads(message)

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 5) -> None:
        """The closing handshake: send a close frame and wait for the server's."""
        if self.close_code is None and not self._close_sent:
            self._close_sent = True
            try:
                await self._send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())
                while self.close_code is None:
                    await asyncio.wait_for(self._recv(), timeout)
            except (ConnectionClosed, TimeoutError, ConnectionError):
                pass
        self.writer.close()
