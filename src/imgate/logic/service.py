"""Logic: the proxies' control plane and the HTTP API's engine.

Proxies call connect/disconnect/heartbeat/receive/renew_online; the HTTP API calls the push and
query methods. State lives in the cache service and the push bus, so any number of logic instances
can serve; the online counters are absorbed periodically from the cache, never computed
per request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time

from imgate.strings import share
from imgate.auth import AuthError, Authenticator
from imgate.cache import Cache, Session, UserFull
from imgate.logic._push import UnicastPath
from imgate.logic.upstream import error_body
from imgate.protocol import IM_ROOM_PREFIX, KIND_ALL, KIND_CONNS, KIND_ROOM, PushJob
from imgate.logic.recovery import EpochWatch
from imgate.protocol.interfaces import Connected
from imgate.protocol.ops import IM_OPS
from imgate.push import Bus

log = logging.getLogger("imgate.logic")


class Logic:
    def __init__(self, cache: Cache, bus: Bus, authenticator: Authenticator, *,
                 session_ttl: float = 180.0, online_interval: float = 1.0, server_ttl: float | None = None,
                 max_conns_per_user: int = 0):
        self.cache = cache
        self.bus = bus
        self.auth = authenticator
        self.session_ttl = session_ttl
        self.max_conns_per_user = max_conns_per_user  # 0: no limit (Cache.add_session's max_per_user)
        self.online_interval = online_interval
        self.server_ttl = server_ttl if server_ttl is not None else max(3 * online_interval, 3.0)
        # absorbed online counters (refreshed every online_interval)
        self._room_counts: dict[str, int] = {}
        self._room_servers: dict[str, dict[str, int]] = {}
        self._server_conns: dict[str, int] = {}
        self._ips = 0
        self._users = 0
        self._absorbed_at = 0.0
        self._absorber: asyncio.Task | None = None
        self.upstream_handler = None  # async (server, conn_id, mid, op, seq, body) -> bytes
        self.upstream = None  # imgate.logic.upstream.Upstream when upstream_url/upstream_routes are set
        self.webhooks = None  # imgate.logic.webhooks.Webhooks when webhook_url is set
        self._auth_async = inspect.iscoroutinefunction(authenticator.authenticate)
        self.im = None  # imgate.im.service.ImService: IM ops (22-32) and inbox_seq at auth
        self._counters = {"connects": 0, "disconnects": 0, "auth_failures": 0, "pushes": 0, "key_conflicts": 0,
                          "user_limit_refusals": 0}
        # cache and bus in this process (the embedded node): pushes by mid/key need not wait
        self.pushes_wait = not (cache.nowait and bus.nowait)
        # every unicast's first step, compiled (logic/_push.pyx); a subclass's own method is kept
        self._unicast = UnicastPath(self, cache, bus)
        if type(self).push_mids_nowait is Logic.push_mids_nowait:
            self.push_mids_nowait = self._unicast.push_mids_nowait
        self.watch = EpochWatch(cache, self.server_ttl)
        self.on_report = None  # (server, addr, draining): a push router in this process learns of proxies at once

    @property
    def counters(self) -> dict[str, int]:
        """What logic counted (connects, pushes, ...); the compiled unicast's pushes are added when read."""
        self._unicast.settle(self._counters)
        return self._counters

    @property
    def epoch(self) -> str:
        """The cache's epoch as logic last saw it; a proxy that sees it change re-registers."""
        return self.watch.epoch

    async def start(self) -> None:
        await self.watch.observe(await self.cache.epoch())
        await self.absorb_online()
        self._absorber = asyncio.get_running_loop().create_task(self._absorb_loop())

    async def stop(self) -> None:
        if self._absorber is not None:
            self._absorber.cancel()
            self._absorber = None

    # ------------------------------------------------------------------ proxy-facing

    async def connect(self, server: str, body: bytes) -> Connected:
        try:
            ident = self.auth.authenticate(body)
            if self._auth_async:  # an auth service over the network (imgate.auth.http)
                ident = await ident
        except AuthError:
            self.counters["auth_failures"] += 1
            raise
        mid = ident.mid
        if type(mid) is not int or not 0 <= mid < 1 << 63:  # a library user's own Authenticator may err
            self.counters["auth_failures"] += 1
            log.warning("authenticator %s returned user id %r, not one of 0..2^63-1: refused",
                        type(self.auth).__name__, mid)
            raise AuthError("the authenticator returned an invalid user id")
        if ident.room_id.startswith(IM_ROOM_PREFIX):  # a group's room: membership decides, not the client
            self.counters["auth_failures"] += 1
            raise AuthError(f"room_id {IM_ROOM_PREFIX}... is joined by the IM service for a group's members only")
        conn_id = await self.cache.alloc_conn_id()
        # a generated key is unguessable (128 random bits): pushes by key reach whoever holds it
        key = ident.key or secrets.token_hex(16)
        # many connections share a room and a platform: one string each (imgate.strings)
        room_id, platform = share(ident.room_id), share(ident.platform)
        try:
            added = await self.cache.add_session(
                Session(conn_id=conn_id, mid=ident.mid, key=key, server=server, room_id=room_id,
                        platform=platform, connected_at=time.time()),
                # the cache bounds users only: mid 0 (anonymous viewers) is nobody, max_conns_per_ip bounds those
                self.session_ttl, self.max_conns_per_user,
            )
        except UserFull:  # nothing stored: the user's other connections are untouched
            self.counters["auth_failures"] += 1
            self.counters["user_limit_refusals"] += 1
            raise AuthError("too many connections for this user") from None
        if added is False:  # the key is held by another user: refused, never re-bound
            self.counters["auth_failures"] += 1
            self.counters["key_conflicts"] += 1
            raise AuthError("key is in use by another user")
        self.counters["connects"] += 1
        if self.webhooks is not None:
            self.webhooks.emit("connect", mid=ident.mid, conn_id=conn_id, key=key, server=server,
                               room_id=ident.room_id, platform=ident.platform,
                               rooms=list(getattr(ident, "rooms", ())))
        inbox_seq = None
        rooms = tuple(r for r in getattr(ident, "rooms", ()) if not r.startswith(IM_ROOM_PREFIX))
        if self.im is not None:
            try:
                inbox_seq = await self.im.on_connect(ident.mid)
                rooms += tuple(await self.im.group_rooms(ident.mid))  # its large groups' rooms
            except Exception as e:  # the store is away: the client connects and syncs later
                log.warning("inbox of user %d unavailable at auth: %s", ident.mid, e)
        return Connected(conn_id, ident.mid, key, room_id, tuple(ident.accepts), platform, inbox_seq,
                         rooms=rooms)

    async def disconnect(self, server: str, conn_id: int, mid: int) -> None:
        self.counters["disconnects"] += 1
        if self.im is not None:
            self.im.on_disconnect(server, conn_id)
        await self.cache.del_session(mid, conn_id)
        if self.webhooks is not None:
            self.webhooks.emit("disconnect", mid=mid, conn_id=conn_id, server=server)

    async def room_event(self, server: str, conn_id: int, mid: int, action: str, room_id: str) -> None:
        """A connection changed, joined or left a room (proxies report it only when webhooks are on)."""
        if self.webhooks is not None:
            self.webhooks.emit("room", action=action, mid=mid, conn_id=conn_id, server=server, room_id=room_id)

    async def heartbeat(self, server: str, conn_id: int, mid: int) -> bool:
        return await self.cache.renew_session(mid, conn_id, self.session_ttl)

    async def receive(self, server: str, conn_id: int, mid: int, op: int, seq: int, body: bytes, *,
                      key: str = "", room_id: str = "", platform: str = "") -> bytes:
        """An upstream message: IM operations go to the IM service; op 4 (or a business op 100-999) to
        the business's HTTP service when one is configured (``self.upstream``), else to
        ``upstream_handler``; without either op 4's reply is empty."""
        if op in IM_OPS:
            if self.im is None:
                return b'{"code": 503, "error": "this logic has no IM service, nothing stored"}'
            return await self.im.receive(server, conn_id, mid, op, seq, body)
        if self.upstream is not None:
            return await self.upstream.call(server, conn_id, mid, op, seq, body,
                                            key=key, room_id=room_id, platform=platform)
        if self.upstream_handler is None:
            return b"" if op == 4 else error_body("no_route", f"no upstream service for op {op}")
        return await self.upstream_handler(server, conn_id, mid, op, seq, body)

    async def renew_online(self, server: str, rooms: dict, conns: int, ips: int, addr: str = "",
                           draining: bool = False) -> dict[str, int]:
        """Store a proxy's report; answer the reported rooms' counts across the cluster (goim's
        RenewOnline), from the last absorbed snapshot with this report's own numbers swapped in."""
        self.watch.saw((server,))  # alive, whether or not the cache can take its report
        if self.on_report is not None:
            self.on_report(server, addr, draining)
        await self.cache.set_server_online(server, rooms, conns, ips, self.server_ttl, addr, draining)
        await self.watch.observe(await self.cache.epoch())
        out = {}
        for room, n in rooms.items():
            old_here = self._room_servers.get(room, {}).get(server, 0)
            out[room] = self._room_counts.get(room, 0) - old_here + n
        return out

    async def restore(self, server: str, epoch: str, sessions: list[Session], done: bool) -> None:
        """A proxy re-registers connections the cache lost; ``done``: all of them, for ``epoch``."""
        for s in sessions:
            s.server = server
        if sessions:
            await self.cache.restore_sessions(sessions, self.session_ttl)
        if done and epoch:
            await self.cache.mark_ready(epoch, server, self.server_ttl)

    # ------------------------------------------------------------------ push API

    def _jobs(self, op: int, body: bytes, sessions: list[Session]) -> list[PushJob]:
        """One job per proxy holding some of ``sessions``."""
        self.counters["pushes"] += 1
        if len(sessions) == 1:  # the usual unicast: one connection
            s = sessions[0]
            return [PushJob(KIND_CONNS, op, body, s.server, [s.conn_id])]
        by_server: dict[str, list[int]] = {}
        for s in sessions:
            by_server.setdefault(s.server, []).append(s.conn_id)
        return [PushJob(KIND_CONNS, op, body, server, conn_ids) for server, conn_ids in by_server.items()]

    @staticmethod
    def _flat(found: dict[int, list[Session]]) -> list[Session]:
        if len(found) == 1:
            return next(iter(found.values()))
        return [s for ss in found.values() for s in ss]

    async def _publish(self, jobs: list[PushJob]) -> int:
        for job in jobs:
            await self.bus.publish(job)
        return sum(len(job.conn_ids) for job in jobs)

    def _publish_nowait(self, jobs: list[PushJob]) -> int:
        publish = self.bus.publish_nowait
        if len(jobs) == 1:  # the usual unicast
            return publish(jobs[0])
        n = 0
        for job in jobs:
            n += publish(job)
        return n

    async def push_keys(self, op: int, keys: list[str], body: bytes) -> int:
        found = await self.cache.sessions_by_keys(keys)
        await self.watch.check(self.cache.seen_epoch)
        return await self._publish(self._jobs(op, body, list(found.values())))

    async def push_mids(self, op: int, mids: list[int], body: bytes) -> int:
        found = await self.cache.sessions(mids)
        await self.watch.check(self.cache.seen_epoch)
        return await self._publish(self._jobs(op, body, self._flat(found)))

    def push_mids_nowait(self, op: int, mids: list[int], body: bytes) -> int:
        """:meth:`push_mids` without a coroutine (``pushes_wait`` False): the same lookup and jobs, handed
        to the bus at once; returns the connections it was queued for. Each Logic binds its
        ``UnicastPath``'s method in its place (logic/_push.pyx)."""
        return self._unicast.push_mids_nowait(op, mids, body)

    def push_keys_nowait(self, op: int, keys: list[str], body: bytes) -> int:
        """:meth:`push_keys` without a coroutine (see :meth:`push_mids_nowait`)."""
        return self._publish_nowait(self._jobs(op, body, list(self.cache.sessions_by_keys_nowait(keys).values())))

    async def push_room(self, op: int, room_id: str, body: bytes) -> None:
        self.counters["pushes"] += 1
        await self.bus.publish(PushJob(KIND_ROOM, op, body, room_id=room_id))

    async def push_all(self, op: int, speed: int, body: bytes) -> None:
        self.counters["pushes"] += 1
        await self.bus.publish(PushJob(KIND_ALL, op, body, speed=speed))

    # ------------------------------------------------------------------ online queries

    async def _absorb_loop(self) -> None:
        while True:
            await asyncio.sleep(self.online_interval)
            try:
                await self.absorb_online()
            except Exception as e:  # the cache may be briefly away; keep the last snapshot
                log.warning("absorbing online counts failed: %s", e)

    async def absorb_online(self) -> None:
        await self.watch.observe(await self.cache.epoch())  # before the report that may be the new, empty one
        servers = await self.cache.servers_online()
        self.watch.saw(servers)
        rooms: dict[str, int] = {}
        room_servers: dict[str, dict[str, int]] = {}
        for server, info in servers.items():
            for room, n in info["rooms"].items():
                rooms[room] = rooms.get(room, 0) + n
                room_servers.setdefault(room, {})[server] = n
        self._room_counts = rooms
        self._room_servers = room_servers
        self._server_conns = {s: info["conns"] for s, info in servers.items()}
        self._ips = sum(info.get("ips", 0) for info in servers.values())
        self._users = await self.cache.user_count()
        self._absorbed_at = time.time()

    def room_online(self, room_id: str) -> int:
        """A room's online count across the cluster, from the last absorbed snapshot."""
        return self._room_counts.get(room_id, 0)

    async def online_top(self, type: str, limit: int) -> list[dict]:
        prefix = type + "://"
        rooms = [(r, n) for r, n in self._room_counts.items() if r.startswith(prefix)]
        rooms.sort(key=lambda x: (-x[1], x[0]))
        return [{"room_id": r, "count": n} for r, n in rooms[:limit]]

    async def online_room(self, type: str, rooms: list[str]) -> dict[str, int]:
        return {r: self._room_counts.get(f"{type}://{r}", 0) for r in rooms}

    async def online_total(self) -> dict:
        return {
            "conn_count": sum(self._server_conns.values()),
            "ip_count": self._ips,
            "user_count": self._users,
            "server_count": len(self._server_conns),
        }

    async def session(self, mid: int) -> list[dict]:
        found = await self.cache.sessions([mid])
        return [s.to_dict() for s in sorted(found.get(mid, []), key=lambda s: s.conn_id)]

    async def count(self, kind: str) -> dict:
        if kind == "room":
            return dict(self._room_counts)
        if kind == "server":
            return dict(self._server_conns)
        raise ValueError(f"count type must be room or server, got {kind!r}")

    async def room(self, rid: str) -> dict:
        return {"room_id": rid, "count": self._room_counts.get(rid, 0),
                "servers": dict(self._room_servers.get(rid, {}))}

    async def list_sessions(self, limit: int) -> list[dict]:
        return [s.to_dict() for s in await self.cache.list_sessions(limit)]

    def health(self) -> dict:
        return {"status": "ok", "absorbed_at": self._absorbed_at, "servers": len(self._server_conns)}
