"""The client side of a WebSocket: the upgrade request, the check of the server's 101, masked frames.

Parsing the server's frames is the core codec's (:class:`imgate.core.WebSocketParser` in client mode,
driven by :class:`imgate.client.protocol._Protocol`).
"""

from __future__ import annotations

import os

from imgate.core import WS_OP_BINARY, encode_ws_frame

MAX_RESPONSE_HEAD = 16384


def _ws_client_frame(payload: bytes | bytearray | memoryview, opcode: int = WS_OP_BINARY) -> bytes:
    """One final client frame, masked with a fresh random mask (RFC 6455 5.3)."""
    return encode_ws_frame(payload, opcode, True, os.urandom(4))


def upgrade_request(path: str, host_header: str, ws_key: str) -> bytes:
    """The HTTP request that asks for a WebSocket (RFC 6455 4.1)."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


def check_upgrade_response(head: bytes, rest: bytes, expected_accept: str) -> str | None:
    """What is wrong with the server's answer to the upgrade request, or None for a good 101."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return f"websocket upgrade: not an HTTP response: {lines[0][:80]!r}"
    status = int(parts[1])
    if status != 101:
        reason = parts[2] if len(parts) > 2 else ""
        detail = rest[:200].decode("utf-8", "replace").strip()
        return (f"websocket upgrade refused: HTTP {status} {reason}".rstrip()
                + (f": {detail}" if detail else ""))
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket":
        return "websocket upgrade: the 101 response has no 'Upgrade: websocket'"
    tokens = [t.strip().lower() for t in headers.get("connection", "").split(",")]
    if "upgrade" not in tokens:
        return "websocket upgrade: the 101 response has no 'Connection: Upgrade'"
    accept = headers.get("sec-websocket-accept")
    if accept != expected_accept:
        return (f"websocket upgrade: Sec-WebSocket-Accept is {accept!r}, "
                f"expected {expected_accept!r}")
    return None
