"""One client connection as the proxy sees it: its state, identity and what it accepts."""

from __future__ import annotations

import socket

from imgate.auth import MAX_ROOM_ID_LEN
from imgate.core import encode_ws_frame

WS_BINARY = 2

# channel states
S_HTTP = 0      # WebSocket: waiting for the upgrade request
S_AUTH = 1      # waiting for the first frame, which must be auth
S_AUTHING = 2   # auth sent to logic, reading paused
S_OPEN = 3
S_CLOSING = 4   # op 6 sent and FIN sent; draining input until the peer closes or the deadline passes


def valid_room_id(room_id: str) -> bool:
    kind, sep, rid = room_id.partition("://")
    return bool(sep and kind and rid) and len(room_id) <= MAX_ROOM_ID_LEN


def room_of(body: bytes) -> tuple[str, str]:
    """(room id, "") from an op 12/18/20 body, or ("", what is wrong). Bounded as in auth: a long body
    is refused before it is decoded, and the error never echoes more than a few characters."""
    if len(body) > 4 * MAX_ROOM_ID_LEN:
        return "", f"room id is {len(body)} bytes long, the limit is {MAX_ROOM_ID_LEN} characters"
    room = body.decode("utf-8", "replace")
    if len(room) > MAX_ROOM_ID_LEN:
        return "", f"room id is {len(room)} characters long, the limit is {MAX_ROOM_ID_LEN}"
    if room and not valid_room_id(room):
        shown = room if len(room) <= 40 else room[:37] + "..."
        return "", f"room id must look like type://id, got {shown!r}"
    return room, ""


class Channel:
    """One client connection. Kept small: tens of thousands live in one process. The channel itself is
    its key in the proxy's room table (logic's ``conn_id`` names it only once it is authenticated)."""

    __slots__ = (
        "sock", "fd", "ws", "state", "decoder", "parser", "hs", "ip", "deadline", "last_seen",
        "conn_id", "mid", "key", "platform", "room_id", "accepts", "backlog", "renewed", "tokens", "refilled",
        "owed", "im_inflight", "up_inflight",
    )

    def __init__(self, sock: socket.socket, ws: bool, ip: str, deadline: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.ws = ws
        self.state = S_HTTP if ws else S_AUTH
        self.decoder = None
        self.parser = None
        self.hs = None
        self.ip = ip
        self.deadline = deadline
        self.last_seen = 0.0
        self.conn_id = 0
        self.mid = 0
        self.key = ""
        self.platform = ""
        self.room_id = ""
        self.accepts = None  # None: every push op; else a set
        self.backlog = None
        self.renewed = 0.0
        self.tokens = 0.0    # the op-rate bucket (imgate.proxy.limits); the first frames fill it
        self.refilled = 0.0
        self.owed = False    # closing: the op-6 notice waits for room in a full socket
        self.im_inflight = 0  # IM requests sent to logic and not answered yet
        self.up_inflight = 0  # upstream messages (op 4, 100-999) sent to logic and not answered yet


def ws_binary(payload: bytes) -> bytes:
    """``payload`` as one binary WebSocket message (server to client: unmasked)."""
    return encode_ws_frame(payload, WS_BINARY)
