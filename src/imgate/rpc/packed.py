"""The body of ``PUSH_CONNS_PACKED``: pushes to connections back to back, in one RPC frame.

A coordinator holds the unicasts of a write window for one worker (``RpcClient.write_window``) and
sends them as one frame, so the worker decodes one frame and no protobuf message per push. Each push,
big-endian like the goim frames around it::

    n (uint32, >= 1) | n conn ids (int64 each) | op (int32) | body length (uint32) | body

The worker's compiled reader is ``imgate.proxy._delivery.push_packed_nowait``; :func:`unpack_pushes`
is the same reading in Python, for a proxy without it. Both check the whole body before delivering
any push of it: a malformed body is refused whole.
"""

from __future__ import annotations

import struct

_ONE = struct.Struct(">IqiI")  # the usual unicast: one conn id
_COUNT = struct.Struct(">I")
_TAIL = struct.Struct(">iI")  # op, body length


def pack_push(conn_ids, op: int, body: bytes) -> bytes:
    """One push's bytes (a ``bytes`` body; the caller makes it one)."""
    n = len(conn_ids)
    if n == 1:
        return _ONE.pack(1, conn_ids[0], op, len(body)) + body
    if n == 0:
        raise ValueError("a packed push names at least one connection")
    return struct.pack(f">I{n}qiI", n, *conn_ids, op, len(body)) + body


def unpack_pushes(data: bytes) -> list[tuple[list[int], int, bytes]]:
    """Every push of a body as (conn ids, op, body); ValueError when it is malformed."""
    view = memoryview(data)
    out = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < 4:
            raise ValueError(f"packed pushes: {end - pos} stray bytes at offset {pos}")
        (n,) = _COUNT.unpack_from(view, pos)
        need = 4 + 8 * n + 8
        if n == 0 or end - pos < need:
            raise ValueError(f"packed pushes: a push at offset {pos} names {n} connections "
                             f"and has {end - pos} bytes left")
        ids = list(struct.unpack_from(f">{n}q", view, pos + 4))
        op, size = _TAIL.unpack_from(view, pos + 4 + 8 * n)
        pos += need
        if end - pos < size:
            raise ValueError(f"packed pushes: a body of {size} bytes at offset {pos} has {end - pos} left")
        out.append((ids, op, bytes(view[pos:pos + size])))
        pos += size
    return out
