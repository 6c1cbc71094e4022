"""The `Cache` contract, run against both MemoryCache and RedisCache so the two stay interchangeable.

MemoryCache runs on a fake clock; RedisCache runs against a real redis-server with real short TTLs
(expiry is Redis's own). The Redis-only part checks what the contract cannot see: the keys left
behind, Sentinel addresses, a real Sentinel, and a real Sentinel failover.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest
import uvloop

from imgate.cache import MemoryCache, Session

redis = pytest.importorskip("redis")
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402

from imgate.cache.redis import RedisCache, parse_sentinels  # noqa: E402


REDIS_SERVER = shutil.which("redis-server")
TTL = 1.0  # seconds; real for Redis, fake for memory


def run(coro, timeout=60):
    return uvloop.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------- real redis-server processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProc:
    """A private redis-server (or sentinel) on a free loopback port, nothing saved to disk: the failover
    test kills its master, so it cannot use the session's shared Redis."""

    def __init__(self, workdir: str, *extra: str, sentinel_conf: str | None = None):
        self.workdir = workdir
        for _ in range(5):
            self.port = free_port()
            if sentinel_conf is not None:
                conf = os.path.join(workdir, f"sentinel-{self.port}.conf")
                with open(conf, "w") as f:
                    f.write(f"port {self.port}\nbind 127.0.0.1\n{sentinel_conf}")
                args = [REDIS_SERVER, conf, "--sentinel"]
            else:
                args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--daemonize", "no", "--dir", workdir, *extra]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"redis-server did not start: {args}")

    def _wait_ready(self, timeout=10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def redis_workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache-redis"))


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


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, url):
        self.url = url
        self.prefix = f"t{uuid.uuid4().hex[:12]}:"  # each test gets its own key space

    def cache(self):
        return RedisCache(self.url, prefix=self.prefix)

    async def advance(self, seconds):
        await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    if request.param == "memory":
        return MemoryBackend()
    return RedisBackend(request.getfixturevalue("redis_url"))


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
        assert set(got["p1"]) == {"rooms", "conns", "ips", "updated"}
        assert got["p1"]["updated"] >= t0 - 1
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


# ---------------------------------------------------------------------- Redis only

@pytest.fixture
def rb(redis_url):
    return RedisBackend(redis_url)


def test_redis_keys_left_behind(rb):
    """Keys that exist while sessions live, and what remains once a dead proxy's TTLs pass."""
    async def body(c):
        r, p = c.redis, rb.prefix
        a = await connect(c, 1, key="ka")
        b = await connect(c, 1, key="kb")
        await connect(c, 2, key="kc")
        await c.set_server_online("p1", {"live://1": 3}, 3, 1, TTL)
        keys = set(await r.keys(p + "*"))
        assert keys == {p + "conn_id", p + "users", p + "servers", p + "srv:p1", p + "u:1", p + "u:2",
                        p + "k:ka", p + "k:kb", p + "k:kc", *(p + f"s:{i}" for i in (1, 2, 3))}
        assert await r.type(p + "s:1") == "string" and await r.type(p + "u:1") == "set"
        assert await r.type(p + "users") == "zset" and await r.type(p + "srv:p1") == "string"
        assert set(await r.smembers(p + "u:1")) == {str(a.conn_id), str(b.conn_id)}
        assert await r.get(p + "k:ka") == str(a.conn_id)
        for k in (p + "s:1", p + "u:1", p + "k:ka", p + "srv:p1"):
            assert 0 < await r.pttl(k) <= TTL * 1000
        assert await r.ttl(p + "conn_id") == -1
        # renewing with a longer TTL pushes every key of the session forward, not its siblings'
        assert await c.renew_session(1, a.conn_id, 5.0)
        for k in (p + f"s:{a.conn_id}", p + "u:1", p + "k:ka"):
            assert 4000 < await r.pttl(k) <= 5000
        assert 0 < await r.pttl(p + f"s:{b.conn_id}") <= TTL * 1000
        assert 4000 < await r.zscore(p + "users", "1") - await r.zscore(p + "users", "2") <= 5000
        assert await c.del_session(1, a.conn_id)
        assert await c.del_session(1, b.conn_id)  # the user's last session: u:1 and its zset entry go
        assert not await r.exists(p + "u:1") and await r.zscore(p + "users", "1") is None
        assert await c.user_count() == 1
        # nobody renews anything any more, nobody reads: Redis alone forgets them
        await asyncio.sleep(TTL + 0.3)
        assert set(await r.keys(p + "*")) == {p + "conn_id", p + "users", p + "servers"}
        # the next periodic reads trim the indexes too
        assert await c.user_count() == 0
        assert await c.servers_online() == {}
        assert set(await r.keys(p + "*")) == {p + "conn_id"}
    rb.run(body)


def test_redis_lazy_cleanup_of_user_set(rb):
    async def body(c):
        r, p = c.redis, rb.prefix
        short = await connect(c, 1, ttl=TTL)
        long = await connect(c, 1, ttl=TTL * 4)
        assert await r.pttl(p + "u:1") > TTL * 3000  # the set lives as long as its longest member
        await asyncio.sleep(TTL + 0.2)
        assert set(await r.smembers(p + "u:1")) == {str(short.conn_id), str(long.conn_id)}
        assert ids((await c.sessions([1]))[1]) == [long.conn_id]
        assert set(await r.smembers(p + "u:1")) == {str(long.conn_id)}
        assert await c.user_count() == 1
        # a user whose last session expired is not counted once a read has noticed it, even if an
        # earlier, longer-lived sibling (deleted since) had pushed the user's expiry further
        await c.del_session(1, long.conn_id)
        a = await connect(c, 2, ttl=TTL * 5)
        b = await connect(c, 2, ttl=TTL)
        assert await c.del_session(2, a.conn_id)
        await asyncio.sleep(TTL + 0.2)
        assert await c.user_count() == 1  # b's expiry is not known without a read: bounded over-count
        assert await c.sessions([2]) == {}
        assert not await r.exists(p + "u:2")
        assert await c.user_count() == 0
        assert b.conn_id
    rb.run(body)


def test_redis_prefixes_are_isolated(redis_url):
    async def go():
        a = RedisCache(redis_url, prefix=f"a{uuid.uuid4().hex[:8]}:")
        b = RedisCache(redis_url, prefix=f"b{uuid.uuid4().hex[:8]}:")
        try:
            s = await connect(a, 1, key="same")
            assert await b.sessions([1]) == {} and await b.sessions_by_keys(["same"]) == {}
            assert await b.alloc_conn_id() == 1 and s.conn_id == 1
            assert await b.user_count() == 0
        finally:
            await a.close()
            await b.close()
    run(go())


def test_redis_unreachable_raises_connection_error():
    port = free_port()  # nothing listens there

    async def go():
        c = RedisCache(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5, retries=1)
        try:
            t0 = time.monotonic()
            with pytest.raises(RedisConnectionError):
                await c.alloc_conn_id()
            with pytest.raises(RedisConnectionError):
                await c.sessions([1])
            with pytest.raises(RedisConnectionError):
                await c.set_server_online("p", {}, 0, 0, 1.0)
            assert time.monotonic() - t0 < 10
        finally:
            await c.close()
    run(go())


def test_parse_sentinels():
    assert parse_sentinels(["10.0.0.1:26379", "s2:26380", "s3", "[::1]:5000", "::1"]) == [
        ("10.0.0.1", 26379), ("s2", 26380), ("s3", 26379), ("::1", 5000), ("::1", 26379)]
    for bad in ["", "h:x", "h:0", "h:70000", ":1"]:
        with pytest.raises(ValueError):
            parse_sentinels([bad])


def test_sentinel_config_object():
    c = RedisCache(sentinels=["10.0.0.1:26379", "10.0.0.2:26380"], master="imgate-master", prefix="x:",
                   db=3, password="pw", sentinel_password="spw", socket_timeout=1.5)
    try:
        assert c.sentinel is not None
        addrs = [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
                 for s in c.sentinel.sentinels]
        assert addrs == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
        assert all(s.connection_pool.connection_kwargs.get("password") == "spw" for s in c.sentinel.sentinels)
        pool = c.redis.connection_pool
        assert pool.service_name == "imgate-master" and pool.is_master
        kw = pool.connection_kwargs
        assert (kw["db"], kw["password"], kw["socket_timeout"], kw["decode_responses"]) == (3, "pw", 1.5, True)
        assert c.prefix == "x:"
    finally:
        run(c.close())
    with pytest.raises(ValueError):
        RedisCache()
    with pytest.raises(ValueError):
        RedisCache("redis://127.0.0.1:6379/0", sentinels=["h:1"])


def _sentinel_conf(master_port: int) -> str:
    return (f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 500\n"
            "sentinel failover-timeout mymaster 3000\n"
            "sentinel parallel-syncs mymaster 1\n")


async def _wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if await pred():
                return
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


@pytest.fixture
def sentinel_trio(redis_workdir):
    """A master, a replica and one sentinel watching them, all private to the test."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed")
    procs = []
    try:
        master = RedisProc(redis_workdir)
        procs.append(master)
        replica = RedisProc(redis_workdir, "--replicaof", "127.0.0.1", str(master.port))
        procs.append(replica)
        sentinel = RedisProc(redis_workdir, sentinel_conf=_sentinel_conf(master.port))
        procs.append(sentinel)
    except RuntimeError as e:
        for p in procs:
            p.stop()
        pytest.skip(f"cannot start a sentinel setup here: {e}")
    yield master, replica, sentinel
    for p in procs:
        p.stop()


def test_real_sentinel_and_failover(sentinel_trio):
    master, replica, sentinel = sentinel_trio

    async def go():
        raw = redis.asyncio.Redis(port=sentinel.port, decode_responses=True)
        try:
            async def replica_known():
                return len(await raw.execute_command("SENTINEL", "REPLICAS", "mymaster")) >= 1
            await _wait_for(replica_known, 15, "the sentinel to discover the replica")
        finally:
            await raw.aclose()

        c = RedisCache(sentinels=[f"127.0.0.1:{sentinel.port}"], master="mymaster", prefix="sent:",
                       socket_timeout=1.0)
        try:
            addr = await c.sentinel.discover_master("mymaster")
            assert addr == ("127.0.0.1", master.port)
            before = [await connect(c, 1, ttl=60), await connect(c, 2, ttl=60)]
            await c.set_server_online("p1", {"live://1": 2}, 2, 1, 60)
            assert await c.user_count() == 2

            async def replicated():  # the replica has it all
                return await c.redis.execute_command("WAIT", 1, 500) == 1
            await _wait_for(replicated, 20, "the replica to acknowledge the writes")

            master.kill()

            async def promoted():
                return await c.sentinel.discover_master("mymaster") == ("127.0.0.1", replica.port)
            await _wait_for(promoted, 30, "the sentinel to promote the replica")

            async def usable():
                return await c.renew_session(1, before[0].conn_id, 60)
            await _wait_for(usable, 15, "the cache to reach the new master")

            found = await c.sessions([1, 2])
            assert {m: ids(v) for m, v in found.items()} == {1: [before[0].conn_id], 2: [before[1].conn_id]}
            after = await connect(c, 3, ttl=60)
            assert after.conn_id > max(s.conn_id for s in before)
            assert set(await c.servers_online()) == {"p1"}
            assert await c.user_count() == 3
        finally:
            await c.close()
    run(go(), timeout=90)
