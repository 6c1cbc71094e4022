"""The edge proxy (goim's comet): TCP and WebSocket listeners, connections, rooms, delivery.

The proxy owns its sockets outright: it reads them with `loop.add_reader` and lets the compiled
RoomTable write them, so a broadcast never goes through a Python call per recipient. Everything else
per connection (auth, heartbeats, room changes) is plain Python on a small `Channel` object.

`Proxy` is assembled from one part per concern, each in its own file:

- ``listener.py``: listening sockets, accept, reading, TCP frames;
- ``websocket.py``: the WebSocket upgrade, messages, close frames;
- ``operations.py``: the per-connection op state machine (auth, heartbeat, rooms, sub, upstream);
- ``delivery.py``: what push calls (``ProxyAPI``): to connections, users, rooms, everyone;
- ``lifecycle.py``: closing connections, the deadline sweep, online reports, shutdown;
- ``repair.py``: re-registering every connection when the cache lost them.

What it needs from logic is ``LogicAPI`` (``imgate/protocol/interfaces.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from imgate.core import RoomTable
from imgate.protocol import notice
from imgate.proxy.admission import Admission
from imgate.proxy.channel import Channel, valid_room_id
from imgate.proxy._delivery import ConnsDelivery
from imgate.proxy.delivery import Delivery
from imgate.proxy.lifecycle import Lifecycle
from imgate.proxy.limits import Limits
from imgate.proxy.listener import Listener
from imgate.proxy.tls import ServerTls
from imgate.proxy.tls import listen as tls_listen
from imgate.protocol.interfaces import LogicAPI
from imgate.proxy.operations import Operations
from imgate.proxy.repair import Repair
from imgate.proxy.websocket import WebSocketSide

__all__ = ["Channel", "LogicAPI", "Proxy", "notice", "valid_room_id"]

log = logging.getLogger("imgate.proxy")


class Proxy(Listener, WebSocketSide, Operations, Delivery, Lifecycle, Repair):
    def __init__(self, config, logic: LogicAPI, loop: asyncio.AbstractEventLoop | None = None):
        self.config = config
        self.server_id = config.server_id
        self.logic = logic
        self.im_api = logic  # where IM frames go: logic, or the im roles (imgate.rpc.im.ImClient)
        self.loop = loop or asyncio.get_event_loop()
        self.table = RoomTable(
            self.loop,
            max_pending=config.max_pending,
            merge_window=config.merge_window,
            max_rooms_per_conn=config.max_rooms_per_conn,
            on_overflow=self._on_overflow,
            on_error=self._on_write_error,
        )
        self.admission = Admission(config.max_auths_per_second)
        self._channels: set[Channel] = set()
        # the channels not open (handshake, auth, closing): their deadlines are due within seconds
        self._unopened: set[Channel] = set()
        self._by_conn_id: dict[int, Channel] = {}
        self._ips: dict[str, int] = {}
        self._listeners: list[socket.socket] = []
        self._rbuf = bytearray(65536)
        self._rview = memoryview(self._rbuf)
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._reporter: asyncio.Task | None = None
        self._stopping = False
        self._final_disconnects: list = []  # sessions closed during stop(), told to logic at its end
        self._remote_online: dict[str, int] = {}  # room -> members on other proxies (from logic)
        self.stats_counters = dict(
            frames_in=0, bytes_in=0, drops=0, slow_consumer_closes=0, auth_failures=0, protocol_errors=0,
            pushes=0, accepted=0, upstream_busy=0, handshake_timeouts=0, rate_limited=0, ip_limit_refusals=0,
            close_notices_late=0, close_notices_dropped=0, busy=0, disconnect_failures=0,
        )
        # unicasts and multicasts to this proxy's connections (compiled); its pushes and drops are
        # counted in C and added to stats_counters by stats()
        self.conns_delivery = ConnsDelivery(self._by_conn_id, self.table)
        self.limits = Limits.from_config(config)
        self._overflowed: list[Channel] = []   # slow consumers waiting to be closed (Lifecycle._on_overflow)
        self.advertise = ""  # host:port of the RPC push reaches this proxy on (cluster discovery)
        self.tcp_port = 0
        self.ws_port = 0
        # TLS listeners (wss, goim TCP over TLS) when the config names a certificate
        self.tls = ServerTls.from_config(config)
        self._tls_servers: list = []
        self.wss_port = 0
        self.tls_tcp_port = 0

    async def start(self) -> None:
        if self.advertise:  # in a cluster: known to push (discovery) before the first client comes
            try:
                await asyncio.wait_for(self._report(), min(2.0, 2 * self.config.online_interval))
            except Exception as e:
                log.warning("first online report failed: %s", e)
        host, port = self.config.addr("tcp")
        self.tcp_port = self._listen(host, port, ws=False)
        host, port = self.config.addr("ws")
        self.ws_port = self._listen(host, port, ws=True)
        if self.tls is not None:
            host, port = self.config.addr("wss")
            self._tls_servers.append(await tls_listen(self, self.tls, host, port, ws=True))
            self.wss_port = self._tls_servers[-1].sockets[0].getsockname()[1]
            if self.config.tls_tcp:
                host, port = self.config.addr("tls_tcp")
                self._tls_servers.append(await tls_listen(self, self.tls, host, port, ws=False))
                self.tls_tcp_port = self._tls_servers[-1].sockets[0].getsockname()[1]
        self._sweeper = self.loop.create_task(self._sweep_loop())
        self._reporter = self.loop.create_task(self._report_loop())
        log.info("proxy %s: tcp :%d, websocket :%d/sub", self.server_id, self.tcp_port, self.ws_port)

    def stats(self) -> dict:
        self.conns_delivery.settle(self.stats_counters)
        t = self.table.stats()
        return dict(
            self.stats_counters,
            connections=len(self._by_conn_id),
            sockets=len(self._channels),
            rooms=t["rooms"],
            frames_out=t["frames_out"],
            bytes_out=t["bytes_out"],
            write_calls=t["write_calls"],
            overflows=t["overflows"],
        )
