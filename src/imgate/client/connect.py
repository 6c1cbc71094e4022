"""Opening a connection: the URL, the socket (TLS), the WebSocket upgrade, the auth, the heartbeat."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl as _ssl
from typing import Any, Iterable
from urllib.parse import urlsplit

from imgate.client.connection import Client
from imgate.client.errors import AuthRejected, ClientTimeout, ConnectionClosed, _expire
from imgate.client.protocol import _Protocol
from imgate.client.websocket import upgrade_request
from imgate.core import encode_frame
from imgate.protocol.ops import OP_AUTH, OP_AUTH_REPLY

_DEFAULT_PORTS = {"tcp": 3101, "ws": 3102, "wss": 3103, "tls": 3104}  # tls: goim TCP over TLS


async def connect(url: str, *, mid: int = 0, key: str = "", room_id: str = "",
                  platform: str = "python", accepts: Iterable[int] = (), token: str = "",
                  heartbeat: float | None = 30.0, timeout: float = 5.0,
                  max_body: int = 1 << 22, ssl: _ssl.SSLContext | None = None) -> Client:
    """Connect, authenticate (op 7 -> op 8) and start the heartbeat (op 2 every ``heartbeat`` s;
    None disables it). ``timeout`` bounds the connect, the upgrade, the auth and, by default, every
    request. ``max_body`` bounds a frame's body from the server (an op-9 batch included).

    Raises :class:`AuthRejected` if the server answers the auth with op 6 or closes,
    :class:`ClientTimeout`, :class:`ClientError` (failed upgrade, protocol error) or the socket's
    :class:`OSError`.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"url must be tcp://host:port, tls://host:port, ws://host:port/sub or wss://..., got {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"url has no host: {url!r}")
    port = parts.port or _DEFAULT_PORTS[scheme]  # ValueError if the port is not a number
    websocket = scheme in ("ws", "wss")
    if ssl is None and scheme in ("wss", "tls"):
        ssl = _ssl.create_default_context()
    loop = asyncio.get_running_loop()
    client = Client(loop, url, websocket=websocket, timeout=timeout, max_body=max_body)
    ws_key = base64.b64encode(os.urandom(16)).decode() if websocket else None
    proto = _Protocol(client, max_body, ws_key)
    client._proto = proto
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: proto, host, port, ssl=ssl), timeout)
    except asyncio.TimeoutError:
        raise ClientTimeout(f"connect to {host}:{port} took over {timeout:g} s") from None
    client._transport = transport
    try:
        if websocket:
            path = parts.path or "/sub"
            if parts.query:
                path += "?" + parts.query
            host_header = f"[{host}]" if ":" in host else host
            if parts.port:
                host_header += f":{parts.port}"
            if not transport.is_closing():  # the server may have answered (and failed) already
                transport.write(upgrade_request(path, host_header, ws_key))
            handle = loop.call_later(timeout, _expire, proto.handshake, "websocket upgrade", timeout)
            try:
                await proto.handshake
            finally:
                handle.cancel()

        auth: dict[str, Any] = {"mid": mid, "key": key, "room_id": room_id, "platform": platform,
                                "accepts": [int(op) for op in accepts]}
        if token:
            auth["token"] = token
        seq = client._next_seq()
        client._write(encode_frame(OP_AUTH, seq, json.dumps(auth, separators=(",", ":"))))
        fut = loop.create_future()
        client._auth_fut = fut
        client._pending[seq] = (OP_AUTH_REPLY, fut)
        handle = loop.call_later(timeout, _expire, fut, "auth reply", timeout)
        try:
            reply = await fut
        finally:
            handle.cancel()
            client._pending.pop(seq, None)
            client._auth_fut = None
    except BaseException as e:
        client.abort()
        if isinstance(e, ConnectionClosed):  # the server closed during the upgrade
            raise AuthRejected(e.reason, e.notice) from None
        raise
    client.auth_reply = reply.body
    client.mid, client.key, client.room_id = mid, key, room_id
    if heartbeat:
        client._beat_task = loop.create_task(client._beat(float(heartbeat)))
    return client
