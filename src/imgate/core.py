"""The public hot-path library of imgate, importable on its own by other asyncio gateways.

- goim v2 frames: :func:`encode_frame`, :func:`encode_batch`, :class:`FrameDecoder`, :class:`Frame`,
  :class:`ProtocolError`, the ``OP_*`` operation numbers.
- RFC 6455 server side: :func:`ws_accept_key`, :class:`WebSocketHandshake`, :class:`WebSocketParser`,
  :func:`encode_ws_frame`, :func:`encode_ws_close`, :class:`WebSocketError`.
- The room connection table: :class:`RoomTable` (see docs/core.md).

Cython code can ``cimport`` the same pieces from ``imgate._core.frame``, ``imgate._core.websocket`` and
``imgate._core.room`` (their ``.pxd`` files ship with the wheel).
"""

from imgate._core.frame import (
    DEFAULT_MAX_BODY as DEFAULT_MAX_BODY,
    HEADER_SIZE as HEADER_SIZE,
    Frame as Frame,
    FrameDecoder as FrameDecoder,
    ProtocolError as ProtocolError,
    encode_batch as encode_batch,
    encode_frame as encode_frame,
)
from imgate._core.frame import (  # noqa: F401  (the goim operation numbers)
    OP_AUTH, OP_AUTH_REPLY, OP_CHANGE_ROOM, OP_CHANGE_ROOM_REPLY, OP_DISCONNECT_REPLY,
    OP_HANDSHAKE, OP_HANDSHAKE_REPLY, OP_HEARTBEAT, OP_HEARTBEAT_REPLY, OP_JOIN_ROOM,
    OP_JOIN_ROOM_REPLY, OP_LEAVE_ROOM, OP_LEAVE_ROOM_REPLY, OP_PROTO_FINISH, OP_PROTO_READY,
    OP_RAW, OP_SEND_MSG, OP_SEND_MSG_REPLY, OP_SUB, OP_SUB_REPLY, OP_UNSUB, OP_UNSUB_REPLY,
)
from imgate._core.room import RoomTable as RoomTable
from imgate._core.websocket import (
    WS_OP_BINARY as WS_OP_BINARY,
    WS_OP_CLOSE as WS_OP_CLOSE,
    WS_OP_CONT as WS_OP_CONT,
    WS_OP_PING as WS_OP_PING,
    WS_OP_PONG as WS_OP_PONG,
    WS_OP_TEXT as WS_OP_TEXT,
    WebSocketError as WebSocketError,
    WebSocketHandshake as WebSocketHandshake,
    WebSocketParser as WebSocketParser,
    encode_ws_close as encode_ws_close,
    encode_ws_frame as encode_ws_frame,
    ws_accept_key as ws_accept_key,
    ws_unmask as ws_unmask,
)
