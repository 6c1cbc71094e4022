"""The `Cache` contract: one suite that every cache backend must pass, so MemoryCache and RedisCache
stay interchangeable. A backend's test module imports the tests (``from cache_contract import *``) and
defines a ``backend`` fixture; tests/unit/test_cache_memory.py and tests/integration/test_cache_redis.py
do that.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest

from imgate.cache import MemoryCache, Session, UserFull

from helpers import run

TTL = 1.0  # seconds; real for Redis, fake for memory


# ---------------------------------------------------------------------- the two backends

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Backend:
    name = ""

    def cache(self):
        raise NotImplementedError

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError

    def run(self, body, timeout=60):
        """Run `body(cache)` on a fresh event loop with a fresh cache, closing it after."""
        async def go():
            c = self.cache()
            try:
                return await body(c)
            finally:
                await c.close()
        return run(go(), timeout)


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self):
        self.clock = FakeClock()

    def cache(self):
        return MemoryCache(clock=self.clock)

    async def advance(self, seconds):
        self.clock.now += seconds


# Moves a prefix's clock forward by ARGV[2] ms: every key's expiry comes that much closer (a key whose
# time is up is expired now, PEXPIRE 0) and the users zset's expiry scores (Redis server ms) go down
# by as much. What the cache reads afterwards is what it would read that much later.
_AGE = """
local ms = tonumber(ARGV[2])
for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do
  local t = redis.call('PTTL', k)
  if t > 0 then redis.call('PEXPIRE', k, math.max(0, t - ms)) end
end
local users = ARGV[1] .. 'users'
local z = redis.call('ZRANGE', users, 0, -1, 'WITHSCORES')
for i = 1, #z, 2 do
  redis.call('ZADD', users, string.format('%.0f', tonumber(z[i + 1]) - ms), z[i])
end
return 1
"""


class _ScaledTTL:
    """A RedisCache whose TTLs are `scale` times what the contract asks: with TTL = 1 s becoming a
    minute, the real time a test takes on a busy machine is noise beside the simulated time."""

    def __init__(self, cache, scale: float):
        self._cache, self._scale = cache, scale

    def __getattr__(self, name):
        return getattr(self._cache, name)

    async def add_session(self, session, ttl, max_per_user=0):
        return await self._cache.add_session(session, ttl * self._scale, max_per_user)

    async def renew_session(self, mid, conn_id, ttl):
        return await self._cache.renew_session(mid, conn_id, ttl * self._scale)

    async def set_server_online(self, server, rooms, conns, ips, ttl, **discovery):
        return await self._cache.set_server_online(server, rooms, conns, ips, ttl * self._scale, **discovery)


class RedisBackend(Backend):
    """RedisCache on a real redis-server. Time is simulated: TTLs are scaled up (``scale``) and
    ``advance`` ages every key of the test's prefix by the scaled amount, so expiry is Redis's own
    but no test waits on, or races, the wall clock."""

    name = "redis"
    scale = 60.0

    def __init__(self, url):
        self.url = url
        self.prefix = f"t{uuid.uuid4().hex[:12]}:"  # each test gets its own key space
        self._last = None

    def raw_cache(self):
        from imgate.cache.redis import RedisCache  # the memory suite runs without the redis client

        return RedisCache(self.url, prefix=self.prefix)

    def cache(self):
        self._last = self.raw_cache()
        return _ScaledTTL(self._last, self.scale)

    async def advance(self, seconds):
        ms = int(round(seconds * self.scale * 1000))
        await self._last.redis.eval(_AGE, 0, self.prefix, ms)


async def connect(c, mid, server="p1", key=None, room="live://1", ttl=TTL, platform="web") -> Session:
    conn_id = await c.alloc_conn_id()
    s = Session(conn_id=conn_id, mid=mid, key=key or uuid.uuid4().hex, server=server, room_id=room,
                platform=platform, connected_at=time.time())
    await c.add_session(s, ttl)
    return s


def ids(sessions) -> list[int]:
    return sorted(s.conn_id for s in sessions)


# ---------------------------------------------------------------------- the contract

def test_conn_ids_are_unique_and_increasing(backend):
    async def body(c):
        got = [await c.alloc_conn_id() for _ in range(50)]
        assert got == sorted(got) and len(set(got)) == 50 and got[0] >= 1
    backend.run(body)


def test_add_then_read_back(backend):
    async def body(c):
        s = await connect(c, 7, server="p1", key="k7", room="live://9", platform="ios")
        found = await c.sessions([7])
        assert list(found) == [7]
        [got] = found[7]
        assert got.to_dict() == s.to_dict()
        assert got.to_dict() == {"conn_id": s.conn_id, "mid": 7, "key": "k7", "server": "p1",
                                 "room_id": "live://9", "platform": "ios", "connected_at": s.connected_at}
        assert (await c.sessions_by_keys(["k7"]))["k7"].to_dict() == s.to_dict()
        assert await c.sessions([8]) == {}
        assert await c.sessions([]) == {}
        assert await c.sessions_by_keys(["nope"]) == {}
        assert await c.user_count() == 1
    backend.run(body)


def test_multi_device(backend):
    async def body(c):
        a = await connect(c, 1, server="p1", platform="ios")
        b = await connect(c, 1, server="p2", platform="android")
        w = await connect(c, 1, server="p1", platform="web")
        other = await connect(c, 2, server="p2")
        found = await c.sessions([1, 2, 3])
        assert set(found) == {1, 2}
        assert ids(found[1]) == sorted([a.conn_id, b.conn_id, w.conn_id])
        assert {s.server for s in found[1]} == {"p1", "p2"}
        assert ids(found[2]) == [other.conn_id]
        assert await c.user_count() == 2
        keys = await c.sessions_by_keys([a.key, b.key, other.key, "missing"])
        assert {k: s.conn_id for k, s in keys.items()} == {a.key: a.conn_id, b.key: b.conn_id,
                                                           other.key: other.conn_id}

        assert await c.del_session(1, b.conn_id) is True
        assert ids((await c.sessions([1]))[1]) == sorted([a.conn_id, w.conn_id])
        assert await c.sessions_by_keys([b.key]) == {}
        assert await c.user_count() == 2
        assert await c.del_session(1, a.conn_id) is True
        assert await c.del_session(1, w.conn_id) is True
        assert await c.sessions([1]) == {}
        assert await c.user_count() == 1
        assert await c.del_session(2, other.conn_id) is True
        assert await c.user_count() == 0
    backend.run(body)


def test_del_session(backend):
    async def body(c):
        s = await connect(c, 5, key="k5")
        assert await c.del_session(6, s.conn_id) is False  # not that user's connection: untouched
        assert ids((await c.sessions([5]))[5]) == [s.conn_id]
        assert await c.del_session(5, s.conn_id) is True
        assert await c.del_session(5, s.conn_id) is False
        assert await c.del_session(5, 999_999) is False
        assert await c.sessions([5]) == {}
        assert await c.sessions_by_keys(["k5"]) == {}
        assert await c.renew_session(5, s.conn_id, TTL) is False
        assert await c.list_sessions(10) == []
    backend.run(body)


def test_same_key_on_a_new_connection(backend):
    async def body(c):
        old = await connect(c, 3, server="p1", key="dev")
        new = await connect(c, 3, server="p2", key="dev")
        assert (await c.sessions_by_keys(["dev"]))["dev"].conn_id == new.conn_id
        # the old connection is still the user's until it goes away
        assert ids((await c.sessions([3]))[3]) == sorted([old.conn_id, new.conn_id])
        # the old connection leaving does not take the key from the new one
        assert await c.del_session(3, old.conn_id) is True
        got = await c.sessions_by_keys(["dev"])
        assert got["dev"].conn_id == new.conn_id and got["dev"].server == "p2"
        # renewing the old one (gone) fails and does not disturb the key either
        assert await c.renew_session(3, old.conn_id, TTL) is False
        assert await c.renew_session(3, new.conn_id, TTL) is True
        assert (await c.sessions_by_keys(["dev"]))["dev"].conn_id == new.conn_id
        assert await c.del_session(3, new.conn_id) is True
        assert await c.sessions_by_keys(["dev"]) == {}
    backend.run(body)


def test_a_key_is_never_rebound_to_another_user(backend):
    async def body(c):
        owner = await connect(c, 3, key="dev")
        conn_id = await c.alloc_conn_id()
        thief = Session(conn_id=conn_id, mid=4, key="dev", server="evil", connected_at=time.time())
        assert await c.add_session(thief, TTL) is False  # refused, nothing stored
        assert (await c.sessions_by_keys(["dev"]))["dev"].conn_id == owner.conn_id
        assert await c.sessions([4]) == {}
        assert await c.renew_session(3, owner.conn_id, TTL) is True
        assert (await c.sessions_by_keys(["dev"]))["dev"].mid == 3
        # once the owner is gone (left or expired) the key is free for anyone
        assert await c.del_session(3, owner.conn_id) is True
        assert await c.add_session(thief, TTL) is True
        assert (await c.sessions_by_keys(["dev"]))["dev"].mid == 4
        other = await connect(c, 5, key="dev2")
        await backend.advance(TTL * 1.5)
        late = Session(conn_id=await c.alloc_conn_id(), mid=6, key="dev2", server="p", connected_at=time.time())
        assert await c.add_session(late, TTL) is True, f"{other} expired: its key is free"
    backend.run(body)


def test_renew(backend):
    async def body(c):
        s = await connect(c, 11, key="k11")
        assert await c.renew_session(11, s.conn_id, TTL) is True
        assert await c.renew_session(12, s.conn_id, TTL) is False  # wrong user
        # heartbeats keep it alive well past its first TTL
        for _ in range(3):
            await backend.advance(TTL * 0.6)
            assert await c.renew_session(11, s.conn_id, TTL) is True
        assert ids((await c.sessions([11]))[11]) == [s.conn_id]
        assert (await c.sessions_by_keys(["k11"]))["k11"].conn_id == s.conn_id
        assert [x.conn_id for x in await c.list_sessions(10)] == [s.conn_id]
        assert await c.user_count() == 1
        # a longer TTL on renewal is honoured
        assert await c.renew_session(11, s.conn_id, TTL * 3) is True
        await backend.advance(TTL * 1.5)
        assert ids((await c.sessions([11]))[11]) == [s.conn_id]
        assert (await c.sessions_by_keys(["k11"]))["k11"].conn_id == s.conn_id
    backend.run(body)


def test_a_proxy_that_dies_leaves_no_ghost_sessions(backend):
    async def body(c):
        dead = [await connect(c, mid, server="dies") for mid in (1, 2, 3)]
        shared = await connect(c, 4, server="dies")
        live = [await connect(c, mid, server="lives") for mid in (4, 5)]
        # only the living proxy's heartbeats renew its sessions
        for _ in range(2):
            await backend.advance(TTL * 0.6)
            for s in live:
                assert await c.renew_session(s.mid, s.conn_id, TTL) is True
        await backend.advance(TTL * 0.2)  # 1.4 TTL since the dead proxy's last word
        mids = [1, 2, 3, 4, 5]
        found = await c.sessions(mids)
        assert set(found) == {4, 5}
        assert ids(found[4]) == [live[0].conn_id]
        assert all(s.server == "lives" for ss in found.values() for s in ss)
        assert await c.sessions_by_keys([s.key for s in dead + [shared]]) == {}
        assert set(await c.sessions_by_keys([s.key for s in live])) == {s.key for s in live}
        assert ids(await c.list_sessions(100)) == ids(live)
        assert await c.user_count() == 2
        for s in dead:
            assert await c.renew_session(s.mid, s.conn_id, TTL) is False
        assert await c.renew_session(4, shared.conn_id, TTL) is False
        assert await c.sessions(mids) == {4: found[4], 5: found[5]}
    backend.run(body)


def test_list_sessions(backend):
    async def body(c):
        made = [await connect(c, mid) for mid in range(1, 6)]
        assert ids(await c.list_sessions(100)) == ids(made)
        part = await c.list_sessions(3)
        assert len(part) == 3 and set(ids(part)) <= set(ids(made))
        assert len(await c.list_sessions(1)) == 1
    backend.run(body)


def test_servers_online(backend):
    async def body(c):
        assert await c.servers_online() == {}
        t0 = time.time()
        await c.set_server_online("p1", {"live://1": 3, "live://2": 1}, 4, 3, TTL)
        await c.set_server_online("p2", {"live://1": 2}, 2, 2, TTL)
        got = await c.servers_online()
        assert set(got) == {"p1", "p2"}
        assert got["p1"]["rooms"] == {"live://1": 3, "live://2": 1}
        assert (got["p1"]["conns"], got["p1"]["ips"]) == (4, 3)
        assert set(got["p1"]) == {"rooms", "conns", "ips", "updated", "addr", "draining"}
        assert got["p1"]["updated"] >= t0 - 1
        assert (got["p1"]["addr"], got["p1"]["draining"]) == ("", False)  # none given
        # discovery: a proxy's RPC address and draining flag travel with its report
        await c.set_server_online("p3", {"live://9": 1}, 1, 1, TTL, addr="10.0.0.3:3109", draining=True)
        p3 = (await c.servers_online())["p3"]
        assert (p3["addr"], p3["draining"], p3["rooms"]) == ("10.0.0.3:3109", True, {"live://9": 1})
        await c.set_server_online("p3", {}, 0, 0, TTL * 0.01)
        # p1 keeps reporting, p2 dies: p2's report expires
        for _ in range(2):
            await backend.advance(TTL * 0.6)
            await c.set_server_online("p1", {"live://1": 5}, 5, 4, TTL)
        got = await c.servers_online()
        assert set(got) == {"p1"}
        assert got["p1"]["rooms"] == {"live://1": 5}
        # a dead server that comes back is listed again
        await c.set_server_online("p2", {}, 0, 0, TTL)
        assert set(await c.servers_online()) == {"p1", "p2"}
        assert (await c.servers_online())["p2"]["rooms"] == {}
    backend.run(body)


def test_concurrent_add_session(backend):
    async def body(c):
        async def one(i):
            return await connect(c, 1000 + i % 20, server=f"p{i % 3}", key=f"key-{i}")
        made = await asyncio.gather(*(one(i) for i in range(200)))
        assert len({s.conn_id for s in made}) == 200
        found = await c.sessions([1000 + i for i in range(20)])
        assert sum(len(v) for v in found.values()) == 200
        assert sorted(s.conn_id for v in found.values() for s in v) == ids(made)
        assert len(await c.sessions_by_keys([f"key-{i}" for i in range(200)])) == 200
        assert len(await c.list_sessions(1000)) == 200
        assert await c.user_count() == 20
        # and concurrent renew + delete of the same population
        renews = [c.renew_session(s.mid, s.conn_id, TTL) for s in made[::2]]
        dels = [c.del_session(s.mid, s.conn_id) for s in made[1::2]]
        res = await asyncio.gather(*renews, *dels)
        assert all(res)
        left = await c.sessions([1000 + i for i in range(20)])
        assert sorted(s.conn_id for v in left.values() for s in v) == ids(made[::2])
    backend.run(body)


def test_concurrent_same_key_races(backend):
    async def body(c):
        # 50 connections race for one key while older ones leave: the key ends on a live holder
        made = await asyncio.gather(*(connect(c, 1, key="hot") for _ in range(50)))
        await asyncio.gather(*(c.del_session(1, s.conn_id) for s in made[:-1]))
        holder = (await c.sessions_by_keys(["hot"])).get("hot")
        live = {s.conn_id for s in (await c.sessions([1]))[1]}
        assert live == {made[-1].conn_id}
        # the index points to whichever add ran last; if that one was deleted the key is free
        assert holder is None or holder.conn_id in live
    backend.run(body)


def test_keys_and_servers_beyond_ascii(backend):
    async def body(c):
        key = "клавиша-😀-\"quoted\" \\ {json}"
        s = await connect(c, 2**53 + 1, key=key, server="прокси-1", room="live://комната")
        assert (await c.sessions([2**53 + 1]))[2**53 + 1][0].to_dict() == s.to_dict()
        # renewal past the first TTL must find the key index through the stored session
        await backend.advance(TTL * 0.6)
        assert await c.renew_session(s.mid, s.conn_id, TTL)
        await backend.advance(TTL * 0.6)
        assert (await c.sessions_by_keys([key]))[key].to_dict() == s.to_dict()
        assert await c.del_session(s.mid, s.conn_id)
        assert await c.sessions_by_keys([key]) == {}
        assert await c.user_count() == 0
    backend.run(body)


def test_large_batches(backend):
    async def body(c):
        made = []
        for start in range(0, 2100, 300):
            made += await asyncio.gather(*(connect(c, 1 + i % 1500, key=f"big-{i}", ttl=30)
                                           for i in range(start, start + 300)))
        mids = list(range(1, 1501))
        found = await c.sessions(mids + mids[:10])  # duplicates are harmless
        assert len(found) == 1500 and sum(map(len, found.values())) == 2100
        keys = await c.sessions_by_keys([f"big-{i}" for i in range(2100)])
        assert len(keys) == 2100 and all(keys[f"big-{i}"].conn_id == made[i].conn_id for i in range(2100))
        assert len(await c.list_sessions(5000)) == 2100
        assert len(await c.list_sessions(1500)) == 1500
        assert await c.user_count() == 1500
    backend.run(body)




# ---------------------------------------------------------------------- connections per user

async def admit(c, mid, key, limit, server="p1") -> Session | None:
    """add_session with ``max_per_user=limit``: the stored session, None when the limit refused it."""
    s = Session(conn_id=await c.alloc_conn_id(), mid=mid, key=key, server=server, connected_at=time.time())
    try:
        assert await c.add_session(s, TTL, limit) is True
    except UserFull as e:
        assert (e.mid, e.limit) == (mid, limit)
        return None
    return s


def test_user_limit_refuses_the_next_and_stores_nothing(backend):
    async def body(c):
        held = [await admit(c, 7, f"k{i}", 3) for i in range(3)]
        assert all(held)
        assert await admit(c, 7, "extra", 3) is None
        assert ids((await c.sessions([7]))[7]) == ids(held), "the user's connections are untouched"
        assert await c.sessions_by_keys(["extra"]) == {}, "the refused key is not bound"
        assert await admit(c, 8, "other", 3) is not None, "another user is not affected"
        assert await c.del_session(7, held[0].conn_id) is True
        assert await admit(c, 7, "extra", 3) is not None, "a freed slot lets the next one in"
        # an expired session frees its slot too: renew all but one, then let that one lapse
        live = (await c.sessions([7]))[7]
        for _ in range(2):
            await backend.advance(TTL * 0.6)
            for s in live[1:]:
                assert await c.renew_session(7, s.conn_id, TTL) is True
        assert await admit(c, 7, "after-expiry", 3) is not None
        # 0: no limit
        assert all([await admit(c, 9, f"n{i}", 0) for i in range(10)])
    backend.run(body)


def test_reusing_ones_own_key_at_the_limit_is_a_replacement(backend):
    async def body(c):
        a, b = await admit(c, 5, "k1", 2), await admit(c, 5, "k2", 2)
        again = await admit(c, 5, "k1", 2)  # a reconnect while the old connection has not left yet
        assert again is not None
        assert (await c.sessions_by_keys(["k1"]))["k1"].conn_id == again.conn_id
        assert len((await c.sessions([5]))[5]) == 3, "the replaced one stays until it leaves: limit + 1"
        # the replaced one is counted again for any other key: no second replacement past limit + 1
        assert await admit(c, 5, "k2", 2) is None
        assert await admit(c, 5, "k1", 2) is None
        assert await c.del_session(5, a.conn_id) is True
        assert await admit(c, 5, "k2", 2) is not None
        assert b.conn_id in ids((await c.sessions([5]))[5]), "replaced in the key index, not removed"
        # another user's key is refused as before, whatever the count
        assert await c.add_session(Session(conn_id=await c.alloc_conn_id(), mid=6, key="k1", server="p"),
                                   TTL, 2) is False
    backend.run(body)


def test_concurrent_adds_never_pass_the_user_limit(backend):
    async def body(c):
        got = await asyncio.gather(*(admit(c, 11, f"race-{i}", 5, server=f"p{i % 3}") for i in range(40)))
        assert sum(s is not None for s in got) == 5
        assert len((await c.sessions([11]))[11]) == 5
    backend.run(body)


@pytest.mark.parametrize("seed", [1, 2])
def test_user_limit_against_a_reference_count(backend, seed):
    """Random adds (new keys, one's own keys, others' keys), leaves, renewals and expiry for three
    users, limit 3; a plain model of live sessions and key holders says what each add must answer."""
    rnd = random.Random(seed)
    limit = 3

    async def body(c):
        live: dict[int, Session] = {}   # the model: conn_id -> live session
        holder: dict[str, int] = {}     # key -> conn_id of its last admitted session
        lapsing: set[int] = set()        # not renewed at the last step: expires at the next
        seen = {"refused": 0, "replaced at the limit": 0}
        for step in range(150):
            mid = rnd.choice((1, 2, 3))
            what = rnd.random()
            if what < 0.45:
                own = [s.key for s in live.values() if s.mid == mid]
                key = rnd.choice(own) if own and rnd.random() < 0.5 else f"k{step}"
                replaces = holder.get(key) in live
                held = sum(s.mid == mid for s in live.values())
                expect = held - replaces < limit
                got = await admit(c, mid, key, limit)
                assert (got is not None) == expect, (step, mid, key)
                seen["refused"] += not expect
                seen["replaced at the limit"] += expect and replaces and held >= limit
                if got is not None:
                    live[got.conn_id], holder[key] = got, got.conn_id
            elif what < 0.6:
                theirs = [k for k, cid in holder.items() if cid in live and live[cid].mid != mid]
                if theirs:
                    s = Session(conn_id=await c.alloc_conn_id(), mid=mid, key=rnd.choice(theirs), server="p")
                    assert await c.add_session(s, TTL, limit) is False
            elif what < 0.8 and live:
                s = rnd.choice(list(live.values()))
                assert await c.del_session(s.mid, s.conn_id) is True
                del live[s.conn_id]
            else:  # time passes: each live session is renewed, or lapses: gone at its second step
                await backend.advance(TTL * 0.6)
                for s in list(live.values()):
                    if s.conn_id in lapsing:
                        del live[s.conn_id]
                    elif rnd.random() < 0.2:
                        lapsing.add(s.conn_id)
                    else:
                        assert await c.renew_session(s.mid, s.conn_id, TTL) is True
            found = await c.sessions([1, 2, 3])
            assert sorted(s.conn_id for v in found.values() for s in v) == sorted(live), step
        assert all(seen.values()), seen  # the walk met the limit, and replaced at it
    backend.run(body)
