"""The op-6 notice: what a client is told before the server closes its connection."""

from __future__ import annotations

import json

from imgate._core.frame import OP_DISCONNECT_REPLY, encode_frame


def notice(reason: str, reconnect: bool, **extra) -> bytes:
    """The whole op-6 frame, body ``{"reason": str, "reconnect": bool}`` and any ``extra`` fields
    (``retry_ms`` for "busy")."""
    return encode_frame(OP_DISCONNECT_REPLY, 0,
                        json.dumps({"reason": reason, "reconnect": reconnect, **extra}).encode())
