"""The cluster's cache service on Redis (standalone or behind Redis Sentinel).

Every key is described in `docs/cluster-redis.md`. In short, with the default prefix `imgate:`:

    imgate:conn_id          string   INCR counter: conn_id allocation
    imgate:s:{conn_id}      string   the Session as JSON, PX ttl (renewed by heartbeats)
    imgate:u:{mid}          set      the user's conn_ids (mid > 0), PX >= the longest member's ttl
    imgate:k:{key}          string   conn_id holding the key, PX ttl
    imgate:users            zset     mid -> expiry (ms, Redis server clock) of the user's newest session
    imgate:srv:{server}     string   a proxy's online report as JSON, PX ttl
    imgate:servers          set      server ids that have reported

Writes that touch several keys run as Lua scripts, so each is atomic and one round trip; expiry
times come from the Redis server's clock (`TIME`), never from the clocks of the logic instances.
A session whose proxy died is never renewed: its `s:` key expires, reads skip it, and the reader
removes the dangling conn_id from the user's set (lazy cleanup). Nothing needs a sweeper process.

mid 0 is goim's anonymous client (a live room's viewers): nobody, so it has no `u:0` set and no
place in `users`. Its sessions are reached by key or room; the `_ANON` scripts renew and delete them
by `s:{conn_id}` alone, checking the stored mid is 0.

Errors from Redis (connection refused, timeouts, no master known to the sentinels) propagate as
`redis.exceptions.ConnectionError` / `TimeoutError`; they are not swallowed here.

Needs Redis >= 6.2 (`ZADD ... GT`). Not meant for Redis Cluster: the scripts derive key names from
the session they read, which Cluster's slot routing does not allow.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from imgate.cache import epoch as _epoch
from imgate.cache._memory import FIELDS as SESSION_FIELDS
from imgate.cache.base import Cache, Session, UserFull

__all__ = ["RedisCache", "parse_sentinels"]

_SESSION_FIELDS = set(SESSION_FIELDS)
_CHUNK = 1000  # keys per MGET / SMEMBERS batch inside one pipeline

# now, in ms, from the Redis server's clock
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# push a key's expiry forward to at least ttl ms (PTTL is -1 without expiry, -2 if missing)
_EXTEND = """
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: s:{cid}, u:{mid}, k:{key}, users   ARGV: session json, cid, ttl ms, mid, prefix, max per user
# a key held by a live session of another user (its conn_id is not in this user's set) is refused: 0.
# A user already holding max live sessions is refused: 2 (one holding the key is replaced, not counted);
# the count forgets expired conn_ids on the way, so the set stays near the bound
_ADD = _NOW + _EXTEND + """
local holder = redis.call('GET', KEYS[3])
local replaces = 0
if holder and redis.call('EXISTS', ARGV[5] .. 's:' .. holder) == 1 then
  if redis.call('SISMEMBER', KEYS[2], holder) == 0 then return 0 end
  replaces = 1
end
local max = tonumber(ARGV[6])
if max > 0 then
  local live = 0
  for _, cid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('EXISTS', ARGV[5] .. 's:' .. cid) == 1 then live = live + 1
    else redis.call('SREM', KEYS[2], cid) end
  end
  if live - replaces >= max then return 2 end
end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SADD', KEYS[2], ARGV[2])
extend(KEYS[2], ttl)
redis.call('SET', KEYS[3], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[4], 'GT', string.format('%.0f', now + ttl), ARGV[4])
return 1
"""

# KEYS: s:{cid}, u:{mid}, users   ARGV: cid, ttl ms, mid, prefix
_RENEW = _NOW + _EXTEND + """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
extend(KEYS[2], ttl)
local kk = ARGV[4] .. 'k:' .. cjson.decode(v)['key']
if redis.call('GET', kk) == ARGV[1] then redis.call('PEXPIRE', kk, ttl) end
redis.call('ZADD', KEYS[3], 'GT', string.format('%.0f', now + ttl), ARGV[3])
return 1
"""

# KEYS: s:{cid}, u:{mid}, users   ARGV: cid, mid, prefix
_DEL = """
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('DEL', KEYS[1])
  local kk = ARGV[3] .. 'k:' .. cjson.decode(v)['key']
  if redis.call('GET', kk) == ARGV[1] then redis.call('DEL', kk) end
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[3], ARGV[2]) end
return 1
"""

# the scripts for mid 0, which has no u: set: a conn_id is anonymous when its stored session says mid 0
# (cjson reads numbers as doubles, exact for 0; a large mid never reads as 0)
_IS_ANON = """
local function anon(v)
  if not v then return nil end
  local d = cjson.decode(v)
  if d['mid'] == 0 then return d end
  return nil
end
"""

# KEYS: s:{cid}, k:{key}   ARGV: session json, cid, ttl ms, prefix
# a key held by a live session of a user is refused (0); one held by an anonymous session is taken
_ADD_ANON = _IS_ANON + """
local holder = redis.call('GET', KEYS[2])
if holder then
  local v = redis.call('GET', ARGV[4] .. 's:' .. holder)
  if v and not anon(v) then return 0 end
end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
return 1
"""

# KEYS: s:{cid}   ARGV: cid, ttl ms, prefix
_RENEW_ANON = _IS_ANON + """
local d = anon(redis.call('GET', KEYS[1]))
if not d then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
local kk = ARGV[3] .. 'k:' .. d['key']
if redis.call('GET', kk) == ARGV[1] then redis.call('PEXPIRE', kk, ttl) end
return 1
"""

# KEYS: s:{cid}   ARGV: cid, prefix
_DEL_ANON = _IS_ANON + """
local d = anon(redis.call('GET', KEYS[1]))
if not d then return 0 end
redis.call('DEL', KEYS[1])
local kk = ARGV[2] .. 'k:' .. d['key']
if redis.call('GET', kk) == ARGV[1] then redis.call('DEL', kk) end
return 1
"""

# KEYS: users
_USER_COUNT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: users, u:{mid1}, u:{mid2}, ...   ARGV: cid1, mid1, cid2, mid2, ...
# forget conn_ids whose session key expired; a user left with none leaves the users zset
_FORGET = """
for i = 2, #KEYS do
  redis.call('SREM', KEYS[i], ARGV[2 * i - 3])
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('ZREM', KEYS[1], ARGV[2 * i - 2]) end
end
return 1
"""

# KEYS: servers   ARGV: prefix  -> {server, json, server, json, ...}; drops servers whose report expired
_SERVERS = """
local out = {}
for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. 'srv:' .. s)
  if v then
    out[#out + 1] = s
    out[#out + 1] = v
  else
    redis.call('SREM', KEYS[1], s)
  end
end
return out
"""


def parse_sentinels(sentinels: list[str]) -> list[tuple[str, int]]:
    """["host:port", "[::1]:26379", "host"] -> [(host, port)]; port defaults to 26379."""
    out = []
    for addr in sentinels:
        addr = addr.strip()
        if not addr:
            raise ValueError("empty sentinel address")
        if addr.startswith("["):  # [ipv6]:port
            host, _, rest = addr[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif addr.count(":") == 1:
            host, port = addr.split(":")
        else:  # bare host or bare IPv6 address
            host, port = addr, ""
        if not host:
            raise ValueError(f"bad sentinel address {addr!r}")
        try:
            p = int(port) if port else 26379
        except ValueError:
            raise ValueError(f"bad sentinel port in {addr!r}") from None
        if not 0 < p < 65536:
            raise ValueError(f"bad sentinel port in {addr!r}")
        out.append((host, p))
    return out


def _ms(ttl: float) -> int:
    return max(1, int(round(ttl * 1000)))


def _session(raw: str) -> Session:
    d = json.loads(raw)
    return Session(**{k: v for k, v in d.items() if k in _SESSION_FIELDS})


def _limited(method):
    """Hold one of the cache's `max_connections` slots for the whole call.

    Each method uses one connection at a time, so the pool never needs more connections than there
    are slots; callers beyond that wait here instead of failing (redis-py >= 6 raises
    MaxConnectionsError from its default pool when it runs out).
    """
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        async with self._slots:
            return await method(self, *args, **kwargs)
    return wrapper


def _chunks(seq: list, n: int = _CHUNK):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class RedisCache(Cache):
    """`Cache` on Redis: `url` (redis://, rediss://, unix://) or `sentinels` (["host:port", ...]) + `master`."""

    def __init__(self, url: str | None = None, *, sentinels: list[str] | None = None, master: str = "mymaster",
                 prefix: str = "imgate:", db: int = 0, password: str | None = None,
                 socket_timeout: float = 2.0, sentinel_password: str | None = None, retries: int = 3,
                 max_connections: int = 64):
        if (url is None) == (not sentinels):
            raise ValueError("RedisCache needs exactly one of url or sentinels")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.prefix = prefix
        self._slots = asyncio.Semaphore(max_connections)
        retry = Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries)
        common = dict(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                      retry=retry, retry_on_error=[RedisConnectionError, RedisTimeoutError],
                      decode_responses=True, max_connections=max_connections)
        self.sentinel: Sentinel | None = None
        if sentinels:
            self.sentinel_addresses = parse_sentinels(sentinels)
            self.master_name = master
            sentinel_kwargs = dict(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
            if sentinel_password is not None:
                sentinel_kwargs["password"] = sentinel_password
            self.sentinel = Sentinel(self.sentinel_addresses, sentinel_kwargs=sentinel_kwargs)
            self.redis = self.sentinel.master_for(master, db=db, password=password, **common)
        else:
            kw = dict(common)
            if password is not None:
                kw["password"] = password
            if db:
                kw["db"] = db
            self.redis = aioredis.from_url(url, **kw)
        self._add = self.redis.register_script(_ADD)
        self._renew = self.redis.register_script(_RENEW)
        self._del = self.redis.register_script(_DEL)
        self._add_anon = self.redis.register_script(_ADD_ANON)
        self._renew_anon = self.redis.register_script(_RENEW_ANON)
        self._del_anon = self.redis.register_script(_DEL_ANON)
        self._user_count = self.redis.register_script(_USER_COUNT)
        self._servers = self.redis.register_script(_SERVERS)
        self._forget = self.redis.register_script(_FORGET)
        self._epoch = self.redis.register_script(_epoch.EPOCH)
        self._alloc = self.redis.register_script(_epoch.ALLOC)
        self._restore = self.redis.register_script(_epoch.RESTORE)
        self._restore_anon = self.redis.register_script(_epoch.RESTORE_ANON)

    # ------------------------------------------------------------------ key names

    def _s(self, conn_id: int) -> str:
        return f"{self.prefix}s:{conn_id}"

    def _u(self, mid: int) -> str:
        return f"{self.prefix}u:{mid}"

    def _k(self, key: str) -> str:
        return f"{self.prefix}k:{key}"

    # ------------------------------------------------------------------ sessions

    def _epoch_keys(self) -> list[str]:
        return [f"{self.prefix}epoch", f"{self.prefix}conn_id"]

    @_limited
    async def alloc_conn_id(self) -> int:
        epoch, conn_id = await self._alloc(keys=self._epoch_keys(), args=[uuid.uuid4().hex])
        self.seen_epoch = epoch
        return int(conn_id)

    @_limited
    async def epoch(self) -> str:
        return await self._epoch(keys=self._epoch_keys(), args=[uuid.uuid4().hex])

    @_limited
    async def restore_sessions(self, sessions: list[Session], ttl: float) -> None:
        async with self.redis.pipeline(transaction=False) as p:
            for s in sessions:
                payload = json.dumps(s.to_dict(), separators=(",", ":"))
                if s.mid == 0:  # anonymous: no u: set, not a user
                    await self._restore_anon(keys=[self._s(s.conn_id), self._k(s.key)],
                                             args=[payload, s.conn_id, _ms(ttl)], client=p)
                    continue
                await self._restore(keys=[self._s(s.conn_id), self._u(s.mid), self._k(s.key), f"{self.prefix}users"],
                              args=[payload, s.conn_id, _ms(ttl), s.mid], client=p)
            await p.execute()

    @_limited
    async def mark_ready(self, epoch: str, server: str, ttl: float) -> None:
        name = f"{self.prefix}ready:{epoch}"
        async with self.redis.pipeline(transaction=True) as p:
            p.sadd(name, server)
            p.pexpire(name, _ms(max(ttl, 60.0)))
            await p.execute()

    @_limited
    async def ready(self, epoch: str) -> set[str]:
        return set(await self.redis.smembers(f"{self.prefix}ready:{epoch}"))

    @_limited
    async def add_session(self, session: Session, ttl: float, max_per_user: int = 0) -> bool:
        payload = json.dumps(session.to_dict(), separators=(",", ":"))
        if session.mid == 0:  # anonymous: no u: set, not a user, so no per-user bound
            return bool(await self._add_anon(keys=[self._s(session.conn_id), self._k(session.key)],
                                             args=[payload, session.conn_id, _ms(ttl), self.prefix]))
        ok = await self._add(keys=[self._s(session.conn_id), self._u(session.mid), self._k(session.key),
                                   f"{self.prefix}users"],
                             args=[payload, session.conn_id, _ms(ttl), session.mid, self.prefix, max(0, max_per_user)])
        if ok == 2:
            raise UserFull(session.mid, max_per_user)
        return bool(ok)

    @_limited
    async def renew_session(self, mid: int, conn_id: int, ttl: float) -> bool:
        if mid == 0:
            return bool(await self._renew_anon(keys=[self._s(conn_id)], args=[conn_id, _ms(ttl), self.prefix]))
        ok = await self._renew(keys=[self._s(conn_id), self._u(mid), f"{self.prefix}users"],
                               args=[conn_id, _ms(ttl), mid, self.prefix])
        return bool(ok)

    @_limited
    async def del_session(self, mid: int, conn_id: int) -> bool:
        if mid == 0:
            return bool(await self._del_anon(keys=[self._s(conn_id)], args=[conn_id, self.prefix]))
        ok = await self._del(keys=[self._s(conn_id), self._u(mid), f"{self.prefix}users"],
                             args=[conn_id, mid, self.prefix])
        return bool(ok)

    async def _mget_sessions(self, conn_ids: list) -> list[str | None]:
        if not conn_ids:
            return []
        async with self.redis.pipeline(transaction=False) as p:
            for chunk in _chunks(conn_ids):
                p.mget([self._s(c) for c in chunk])
            res = await p.execute()
        return [v for part in res for v in part]

    @_limited
    async def sessions(self, mids: list[int]) -> dict[int, list[Session]]:
        mids = [mid for mid in dict.fromkeys(mids) if mid != 0]  # mid 0 is nobody: reached by no push by mid
        if not mids:
            return {}
        async with self.redis.pipeline(transaction=False) as p:
            p.get(f"{self.prefix}epoch")  # a lost epoch tells logic the registry may be incomplete
            for mid in mids:
                p.smembers(self._u(mid))
            self.seen_epoch, *members = await p.execute()
        pairs = [(mid, cid) for mid, cids in zip(mids, members) for cid in cids]
        values = await self._mget_sessions([cid for _, cid in pairs])
        out: dict[int, list[Session]] = {}
        dead = []
        for (mid, cid), raw in zip(pairs, values):
            if raw is None:
                dead.append((mid, cid))
                continue
            s = _session(raw)
            if s.mid == mid:
                out.setdefault(mid, []).append(s)
        if dead:
            # the session key expired (its proxy stopped renewing it): forget the conn_id. conn_ids are
            # never reused, so this cannot remove a live session; the script keeps the users zset in step.
            for chunk in _chunks(dead):
                await self._forget(keys=[f"{self.prefix}users", *(self._u(mid) for mid, _ in chunk)],
                                   args=[x for mid, cid in chunk for x in (cid, mid)])
        for ss in out.values():
            ss.sort(key=lambda s: s.conn_id)
        return out

    @_limited
    async def sessions_by_keys(self, keys: list[str]) -> dict[str, Session]:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        async with self.redis.pipeline(transaction=False) as p:
            p.get(f"{self.prefix}epoch")
            for chunk in _chunks(keys):
                p.mget([self._k(k) for k in chunk])
            self.seen_epoch, *res = await p.execute()
        found = [(k, cid) for k, cid in zip(keys, (c for part in res for c in part)) if cid is not None]
        values = await self._mget_sessions([cid for _, cid in found])
        out = {}
        for (key, _), raw in zip(found, values):
            if raw is not None:
                s = _session(raw)
                if s.key == key:
                    out[key] = s
        return out

    @_limited
    async def list_sessions(self, limit: int) -> list[Session]:
        if limit <= 0:
            return []
        seen: set[str] = set()
        out: list[Session] = []
        cursor = 0
        pattern = f"{self.prefix}s:*"
        while True:
            cursor, names = await self.redis.scan(cursor, match=pattern, count=max(100, min(limit, 1000)))
            names = [n for n in names if n not in seen]
            seen.update(names)
            if names:
                for raw in await self.redis.mget(names):
                    if raw is not None:  # expired between SCAN and MGET
                        out.append(_session(raw))
                        if len(out) >= limit:
                            return out
            if cursor == 0:
                return out

    @_limited
    async def user_count(self) -> int:
        return int(await self._user_count(keys=[f"{self.prefix}users"]))

    # ------------------------------------------------------------------ servers

    @_limited
    async def set_server_online(self, server: str, rooms: dict[str, int], conns: int, ips: int, ttl: float,
                                addr: str = "", draining: bool = False) -> None:
        report = json.dumps({"rooms": dict(rooms), "conns": conns, "ips": ips, "updated": time.time(),
                             "addr": addr, "draining": draining}, separators=(",", ":"))
        async with self.redis.pipeline(transaction=True) as p:
            p.set(f"{self.prefix}srv:{server}", report, px=_ms(ttl))
            p.sadd(f"{self.prefix}servers", server)
            await p.execute()

    @_limited
    async def servers_online(self) -> dict[str, dict]:
        flat = await self._servers(keys=[f"{self.prefix}servers"], args=[self.prefix])
        out = {}
        for server, raw in zip(flat[::2], flat[1::2]):
            d = json.loads(raw)
            out[server] = {"rooms": d.get("rooms", {}), "conns": d.get("conns", 0), "ips": d.get("ips", 0),
                           "updated": d.get("updated", 0.0), "addr": d.get("addr", ""),
                           "draining": bool(d.get("draining", False))}
        return out

    # ------------------------------------------------------------------ lifecycle

    @_limited
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        closer = getattr(self.redis, "aclose", None) or self.redis.close
        await closer()
        if self.sentinel is not None:
            for s in self.sentinel.sentinels:
                await (getattr(s, "aclose", None) or s.close)()
