"""In-process cache service for the embedded node: plain dicts, lazy expiry."""

from __future__ import annotations

import itertools
import time

from imgate.cache._memory import sweep_user
from imgate.cache.base import Cache, Session, UserFull


# anonymous sessions are swept of expired ones (a dead proxy's) when they reach this many, then again
# whenever they double: amortised O(1) per connect, and at most about twice the live ones are held
_ANON_SWEEP_MIN = 1024


class MemoryCache(Cache):
    nowait = True

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._ids = itertools.count(1)
        # user -> its sessions in connection order: a list, not a dict by conn id (a user has a few
        # devices; a one-entry dict costs ~200 bytes more per connection of an idle node)
        self._by_mid: dict[int, list[Session]] = {}
        # mid 0 (goim's anonymous clients, e.g. a live room's viewers) is nobody: its sessions are
        # reached by key or room, never by mid, so they are kept by conn id (O(1) renew and delete)
        self._anon: dict[int, Session] = {}
        self._anon_sweep_at = _ANON_SWEEP_MIN
        self._by_key: dict[str, Session] = {}
        self._servers: dict[str, dict] = {}

    def _live(self, s: Session) -> bool:
        return s.expires_at > self._clock()

    async def alloc_conn_id(self) -> int:
        return next(self._ids)

    async def add_session(self, session: Session, ttl: float, max_per_user: int = 0) -> bool:
        holder = self._by_key.get(session.key)
        replaces = holder is not None and self._live(holder)
        if replaces and holder.mid != session.mid:
            return False  # another user's key: never re-bound
        # the sweep keeps the user's list to live sessions, so the bound holds the list's length too;
        # mid 0 (anonymous) is not a user: nothing to bound
        if max_per_user > 0 and session.mid != 0 and len(self._sweep_user(session.mid)) - replaces >= max_per_user:
            raise UserFull(session.mid, max_per_user)
        session.expires_at = self._clock() + ttl
        self._put(session)
        self._by_key[session.key] = session
        return True

    async def restore_sessions(self, sessions: list[Session], ttl: float) -> None:
        expires = self._clock() + ttl
        for s in sessions:
            s.expires_at = expires
            self._put(s)
            holder = self._by_key.get(s.key)
            if holder is None or holder.conn_id <= s.conn_id or not self._live(holder):
                self._by_key[s.key] = s

    def _put(self, session: Session) -> None:
        """Index ``session`` under its user, in place of a session with its conn id."""
        if session.mid == 0:
            self._anon[session.conn_id] = session
            if len(self._anon) >= self._anon_sweep_at:
                self._sweep_anon()
            return
        conns = self._by_mid.get(session.mid)
        if conns is None:
            self._by_mid[session.mid] = [session]
            return
        for i, s in enumerate(conns):
            if s.conn_id == session.conn_id:
                conns[i] = session
                return
        conns.append(session)

    def _sweep_anon(self) -> None:
        now = self._clock()
        for s in [s for s in self._anon.values() if s.expires_at <= now]:
            del self._anon[s.conn_id]
            if self._by_key.get(s.key) is s:
                del self._by_key[s.key]
        self._anon_sweep_at = max(_ANON_SWEEP_MIN, 2 * len(self._anon))

    def _find(self, mid: int, conn_id: int) -> Session | None:
        if mid == 0:
            return self._anon.get(conn_id)
        for s in self._by_mid.get(mid, ()):
            if s.conn_id == conn_id:
                return s
        return None

    async def renew_session(self, mid: int, conn_id: int, ttl: float) -> bool:
        s = self._find(mid, conn_id)
        if s is None or not self._live(s):
            return False
        s.expires_at = self._clock() + ttl
        return True

    async def del_session(self, mid: int, conn_id: int) -> bool:
        s = self._find(mid, conn_id)
        if s is None:
            return False
        if mid == 0:
            del self._anon[conn_id]
        else:
            conns = self._by_mid[mid]
            conns.remove(s)
            if not conns:
                del self._by_mid[mid]
        if self._by_key.get(s.key) is s:
            del self._by_key[s.key]
        return True

    # a user's live sessions, expired ones swept out (compiled: once per user of every push by mid)
    _sweep_user = sweep_user
    user_sessions_nowait = sweep_user   # a unicast's lookup

    def sessions_nowait(self, mids: list[int]) -> dict[int, list[Session]]:
        """:meth:`sessions` without the await: an in-process caller (logic's push) skips a coroutine."""
        out = {}
        sweep = self._sweep_user
        for mid in mids:
            live = sweep(mid)
            if live:
                out[mid] = live
        return out


    def sessions_by_keys_nowait(self, keys: list[str]) -> dict[str, Session]:
        """:meth:`sessions_by_keys` without the await."""
        out = {}
        now = self._clock()
        for key in keys:
            s = self._by_key.get(key)
            if s is not None and s.expires_at > now:
                out[key] = s
        return out

    async def sessions(self, mids: list[int]) -> dict[int, list[Session]]:
        return self.sessions_nowait(mids)

    async def sessions_by_keys(self, keys: list[str]) -> dict[str, Session]:
        return self.sessions_by_keys_nowait(keys)

    async def list_sessions(self, limit: int) -> list[Session]:
        out: list[Session] = []
        if limit <= 0:
            return out
        for mid in list(self._by_mid):
            for s in self._sweep_user(mid):
                out.append(s)
                if len(out) >= limit:
                    return out
        now = self._clock()
        for s in self._anon.values():
            if s.expires_at > now:
                out.append(s)
                if len(out) >= limit:
                    break
        return out

    async def user_count(self) -> int:
        # users with a session (mid 0 is nobody: not in _by_mid); expired ones leave lazily, as everywhere
        # in this cache. O(1): logic asks every second, and a scan of every user stalled the loop ~15 ms
        # at 15,000 users
        return len(self._by_mid)

    async def set_server_online(self, server: str, rooms: dict[str, int], conns: int, ips: int, ttl: float,
                                addr: str = "", draining: bool = False) -> None:
        self._servers[server] = {"rooms": dict(rooms), "conns": conns, "ips": ips, "updated": time.time(),
                                 "addr": addr, "draining": draining, "expires": self._clock() + ttl}

    async def servers_online(self) -> dict[str, dict]:
        now = self._clock()
        for server in [s for s, v in self._servers.items() if v["expires"] <= now]:
            del self._servers[server]
        return {s: {k: v[k] for k in ("rooms", "conns", "ips", "updated", "addr", "draining")} for s, v in self._servers.items()}
