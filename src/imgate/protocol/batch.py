"""The op-9 batch of room pushes: several frames that travel together.

Over TCP a member gets the inner frames back to back (what goim writes); over WebSocket it gets the
whole op-9 frame as one message. Both come from here so that every transport sees the same batch.
"""

from __future__ import annotations

from imgate._core.frame import encode_batch


def room_batch(frames: list[bytes]) -> tuple[bytes, bytes]:
    """``(inner, op9)``: the frames back to back, and the op-9 frame whose body they are."""
    op9 = encode_batch(frames)
    return op9[16:], op9
