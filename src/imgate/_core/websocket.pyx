# cython: language_level=3
"""RFC 6455 codec, server side and client side: the one module to import it from.

The code lives by concern in :mod:`imgate._core.ws_encoder` (frames out, masking),
:mod:`imgate._core.ws_parser` (frames in) and :mod:`imgate._core.ws_handshake` (the opening
handshake). Compiled, so that a rebuild replaces an older build of the whole codec under this name.
"""
from imgate._core.ws_encoder import (
    WS_OP_BINARY,
    WS_OP_CLOSE,
    WS_OP_CONT,
    WS_OP_PING,
    WS_OP_PONG,
    WS_OP_TEXT,
    _copy_bytes,
    encode_ws_close,
    encode_ws_frame,
    ws_unmask,
)
from imgate._core.ws_handshake import WS_GUID, ws_accept_key
from imgate._core.ws_parser import WebSocketError, _utf8_valid

# websocket.pxd cimports the two classes, and a cimported name is no module attribute: make them ones.
globals().update(WebSocketParser=WebSocketParser, WebSocketHandshake=WebSocketHandshake)

__all__ = (
    "WS_OP_CONT",
    "WS_OP_TEXT",
    "WS_OP_BINARY",
    "WS_OP_CLOSE",
    "WS_OP_PING",
    "WS_OP_PONG",
    "WS_GUID",
    "WebSocketError",
    "WebSocketParser",
    "WebSocketHandshake",
    "encode_ws_frame",
    "encode_ws_close",
    "ws_accept_key",
    "ws_unmask",
)
