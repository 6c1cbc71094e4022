"""An asyncio client for imgate and goim v2 gateways, over TCP or WebSocket.

Used by the tests, the benchmarks and the README example::

    from imgate.client import connect

    client = await connect("ws://127.0.0.1:3102/sub", mid=1, room_id="live://1000", token=token)
    online = await client.heartbeat()          # op 2 -> op 3: online count of the room
    await client.join_room("live://2000")     # op 18 -> 19
    async for push in client:                 # pushed frames, op-9 batches unpacked
        print(push.op, push.seq, push.body)

URLs: ``tcp://host:port`` (default port 3101), ``ws://host:port/path`` (default port 3102, path
``/sub``), ``wss://host:port/path`` (default port 3103) and ``tls://host:port`` (goim TCP over TLS,
default port 3104); for the TLS ones pass ``ssl=`` for a custom context, e.g.
``ssl.create_default_context(cafile="ca.crt")`` with the CA of ``imgate cert dev``.

How frames are told apart. A frame whose (seq, op) answers a request in flight (op 2 -> 3, 4 -> 5,
7 -> 8, 12 -> 13, 14 -> 15, 16 -> 17, 18 -> 19, 20 -> 21, or any ``request(op, reply_op=...)``)
resolves that request. Replies of those goim/imgate operations that match nothing (e.g. of a server that
does not echo seq) resolve the oldest request waiting for that operation, or are dropped. Op 6 is the
server's notice before it closes (kept in :attr:`Client.closed_reason`). Op 9 is a batch whose body is
whole frames back to back; its inner frames are dispatched in order. Everything else is a push: queued
for :meth:`Client.recv` (or handed to :attr:`Client.on_push` if set).

The receive path is an :class:`asyncio.Protocol` feeding the compiled :class:`imgate.core.FrameDecoder`;
WebSocket frames are the core codec's too (:class:`imgate.core.WebSocketParser` in client mode, which
answers pings and echoes a close with masked frames, and :func:`imgate.core.encode_ws_frame` with a
mask); only the upgrade request and its check are written here. Works on uvloop.

Errors: :class:`ClientError` and its subclasses :class:`AuthRejected` (op 6 or a close instead of the
auth reply), :class:`ConnectionClosed` (the connection is gone; carries the op-6 notice if any),
:class:`Refused` (the server answered a room or sub operation with ``"ok": false``; the connection
stays open) and :class:`ClientTimeout` (also a :class:`TimeoutError`). Connecting to a closed port raises the
:class:`OSError` of the socket.

The package, one module per concern: :mod:`.connection` (the :class:`Client`: requests, replies,
pushes, closing), :mod:`.goim` and :mod:`.im` (the operations), :mod:`.protocol` (the receive path),
:mod:`.websocket` (upgrade and masking), :mod:`.connect` and :mod:`.retry` (opening one), :mod:`.errors`.
"""


from imgate.client.connect import connect
from imgate.client.connection import Client
from imgate.client.errors import AuthRejected, ClientError, ClientTimeout, ConnectionClosed, ImRejected, Refused
from imgate.client.protocol import _Protocol  # noqa: F401  (tests drive the receive path directly)
from imgate.client.retry import connect_with_retry
from imgate.client.websocket import _ws_client_frame  # noqa: F401  (tests build client frames)
from imgate.protocol.ops import (  # noqa: F401  (the operations, re-exported for callers of the client)
    OP_AUTH, OP_AUTH_REPLY, OP_CHANGE_ROOM, OP_CHANGE_ROOM_REPLY, OP_GROUP_ACK, OP_GROUP_PULL,
    OP_GROUP_PULL_REPLY, OP_HEARTBEAT, OP_HEARTBEAT_REPLY, OP_JOIN_ROOM, OP_JOIN_ROOM_REPLY, OP_LEAVE_ROOM,
    OP_LEAVE_ROOM_REPLY, OP_MSG_ACK, OP_MSG_PUSH, OP_MSG_SEND, OP_MSG_SEND_REPLY, OP_RAW, OP_READ,
    OP_READ_REPLY, OP_SEND_MSG, OP_SEND_MSG_REPLY, OP_SUB, OP_SUB_REPLY, OP_SYNC, OP_SYNC_REPLY, OP_UNSUB,
    OP_UNSUB_REPLY,
)
from imgate.protocol.ops import OP_DISCONNECT_REPLY as OP_DISCONNECT  # noqa: F401

__all__ = [
    "AuthRejected",
    "Client",
    "ClientError",
    "ClientTimeout",
    "ConnectionClosed",
    "connect_with_retry",
    "ImRejected",
    "Refused",
    "connect",
]
