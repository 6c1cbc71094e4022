"""The `Cache` contract (tests/cache_contract.py) against RedisCache on a real redis-server, plus what
the contract cannot see: the keys left behind, Sentinel addresses, a real Sentinel and its failover.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

redis = pytest.importorskip("redis")
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402

from cache_contract import *  # noqa: E402,F401,F403 - the contract's tests, collected here against Redis
from cache_contract_anon import *  # noqa: E402,F401,F403 - and its cases for anonymous sessions (mid 0)
from cache_contract import TTL, RedisBackend, connect, ids  # noqa: E402
from helpers import free_port, run  # noqa: E402
from imgate.cache.redis import RedisCache, parse_sentinels  # noqa: E402
from polling import wait_until_async  # noqa: E402

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture
def backend(redis_url):
    return RedisBackend(redis_url)


# ---------------------------------------------------------------------- real redis-server processes

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


# ---------------------------------------------------------------------- Redis only

@pytest.fixture
def rb(redis_url):
    return RedisBackend(redis_url)


def test_redis_keys_left_behind(rb):
    """Keys that exist while sessions live, and what remains once a dead proxy's TTLs pass (simulated
    time: TTLs are rb.scale times the contract's)."""
    ms = rb.scale * 1000  # one contract second, in Redis ms

    async def body(c):
        r, p = c.redis, rb.prefix
        a = await connect(c, 1, key="ka")
        b = await connect(c, 1, key="kb")
        cc = await connect(c, 2, key="kc")
        await c.set_server_online("p1", {"live://1": 3}, 3, 1, TTL)
        keys = set(await r.keys(p + "*"))
        assert keys == {p + "conn_id", p + "epoch", p + "users", p + "servers", p + "srv:p1", p + "u:1", p + "u:2",
                        p + "k:ka", p + "k:kb", p + "k:kc", *(p + f"s:{s.conn_id}" for s in (a, b, cc))}
        assert await r.type(p + f"s:{a.conn_id}") == "string" and await r.type(p + "u:1") == "set"
        assert await r.type(p + "users") == "zset" and await r.type(p + "srv:p1") == "string"
        assert set(await r.smembers(p + "u:1")) == {str(a.conn_id), str(b.conn_id)}
        assert await r.get(p + "k:ka") == str(a.conn_id)
        for k in (p + f"s:{a.conn_id}", p + "u:1", p + "k:ka", p + "srv:p1"):
            assert 0 < await r.pttl(k) <= TTL * ms
        assert await r.ttl(p + "conn_id") == -1
        # renewing with a longer TTL pushes every key of the session forward, not its siblings'
        assert await c.renew_session(1, a.conn_id, 5.0)
        for k in (p + f"s:{a.conn_id}", p + "u:1", p + "k:ka"):
            assert 4 * ms < await r.pttl(k) <= 5 * ms
        assert 0 < await r.pttl(p + f"s:{b.conn_id}") <= TTL * ms
        assert 4 * ms < await r.zscore(p + "users", "1") - await r.zscore(p + "users", "2") <= 5 * ms
        assert await c.del_session(1, a.conn_id)
        assert await c.del_session(1, b.conn_id)  # the user's last session: u:1 and its zset entry go
        assert not await r.exists(p + "u:1") and await r.zscore(p + "users", "1") is None
        assert await c.user_count() == 1
        # nobody renews anything any more, nobody reads: their TTLs pass and Redis forgets them
        await rb.advance(TTL * 1.3)
        assert set(await r.keys(p + "*")) == {p + "conn_id", p + "epoch", p + "users", p + "servers"}
        # the next periodic reads trim the indexes too
        assert await c.user_count() == 0
        assert await c.servers_online() == {}
        assert set(await r.keys(p + "*")) == {p + "conn_id", p + "epoch"}
    rb.run(body)


def test_redis_keys_of_anonymous_sessions(rb):
    """mid 0 (anonymous) has its s: and k: keys only: no u:0 set, no users entry; renewal pushes both
    forward, a delete or its TTL leaves nothing behind."""
    ms = rb.scale * 1000

    async def body(c):
        r, p = c.redis, rb.prefix
        anon = [await connect(c, 0, key=f"v{i}") for i in range(3)]
        keys = set(await r.keys(p + "*"))
        assert keys == {p + "conn_id", p + "epoch", *(p + f"s:{s.conn_id}" for s in anon),
                        *(p + f"k:{s.key}" for s in anon)}
        assert await r.get(p + "k:v0") == str(anon[0].conn_id)
        assert await c.renew_session(0, anon[0].conn_id, 5.0)
        for k in (p + f"s:{anon[0].conn_id}", p + "k:v0"):
            assert 4 * ms < await r.pttl(k) <= 5 * ms
        assert await c.del_session(0, anon[1].conn_id)
        assert not await r.exists(p + f"s:{anon[1].conn_id}", p + "k:v1")
        await rb.advance(TTL * 1.3)  # v2 stopped beating: Redis forgets it
        assert set(await r.keys(p + "*")) == {p + "conn_id", p + "epoch", p + f"s:{anon[0].conn_id}", p + "k:v0"}
        # a u:0 set (and users entry) an older version left, in a cluster being upgraded: no push by mid 0 reads it
        await r.sadd(p + "u:0", str(anon[0].conn_id))
        await r.zadd(p + "users", {"0": 1})
        assert await c.sessions([0]) == {} and await c.sessions([0, 5]) == {}
    rb.run(body)


def test_redis_lazy_cleanup_of_user_set(rb):
    async def body(c):
        r, p = c.redis, rb.prefix
        short = await connect(c, 1, ttl=TTL)
        long = await connect(c, 1, ttl=TTL * 4)
        assert await r.pttl(p + "u:1") > TTL * 3 * rb.scale * 1000  # as long as its longest member
        await rb.advance(TTL * 1.2)
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
        await rb.advance(TTL * 1.2)
        assert await c.user_count() == 1  # b's expiry is not known without a read: bounded over-count
        assert await c.sessions([2]) == {}
        assert not await r.exists(p + "u:2")
        assert await c.user_count() == 0
        assert b.conn_id
    rb.run(body)


def test_redis_expires_keys_by_itself(redis_url):
    """Real time, real expiry: a session nobody renews or reads disappears from Redis on its own."""
    rb = RedisBackend(redis_url)

    async def go():
        c = rb.raw_cache()
        try:
            r, p = c.redis, rb.prefix
            s = await connect(c, 1, key="k1", ttl=0.2)
            await c.set_server_online("p1", {}, 0, 0, 0.2)
            assert await r.exists(p + f"s:{s.conn_id}", p + "u:1", p + "k:k1", p + "srv:p1") == 4

            async def left():
                return set(await r.keys(p + "*"))

            await wait_until_async(left, equals={p + "conn_id", p + "epoch", p + "users", p + "servers"},
                                   what="the session's keys to expire")
        finally:
            await c.close()
    run(go())


def test_redis_prefixes_are_isolated(redis_url):
    async def go():
        a = RedisCache(redis_url, prefix=f"a{uuid.uuid4().hex[:8]}:")
        b = RedisCache(redis_url, prefix=f"b{uuid.uuid4().hex[:8]}:")
        try:
            s = await connect(a, 1, key="same")
            assert await b.sessions([1]) == {} and await b.sessions_by_keys(["same"]) == {}
            # each prefix has its own counter: b's first id is its epoch's floor, a's second is one past a's first
            assert await b.alloc_conn_id() % 1024 == 1
            assert await a.alloc_conn_id() == s.conn_id + 1
            assert await b.user_count() == 0
        finally:
            await a.close()
            await b.close()
    run(go())


def test_redis_emptied_gets_a_new_epoch_and_conn_ids_keep_growing(redis_url):
    """A Redis that lost its data (here: its keys deleted) gets a new epoch from the next caller, and
    conn_ids never go back to ids that live connections may still hold; a restored session takes its
    key back only from an older connection."""
    async def go():
        c = RedisCache(redis_url, prefix=f"e{uuid.uuid4().hex[:8]}:")
        try:
            first = await c.epoch()
            assert await c.epoch() == first
            old = await connect(c, 1, key="shared")
            await c.sessions([1])
            assert c.seen_epoch == first
            async def redis_ms():
                sec, us = await c.redis.time()
                return sec * 1000 + us // 1000

            then = await redis_ms()

            async def later():
                return await redis_ms() > then

            await wait_until_async(later, what="the Redis clock to pass the first epoch's millisecond")
            await c.redis.delete(*(await c.redis.keys(c.prefix + "*")))
            await c.sessions([1])
            assert c.seen_epoch is None  # the lookup saw the loss
            newer = await connect(c, 2, key="shared")  # a new connection since the loss
            assert newer.conn_id > old.conn_id
            second = await c.epoch()
            assert second != first
            await c.restore_sessions([old], TTL)
            assert ids((await c.sessions([1]))[1]) == [old.conn_id]
            assert (await c.sessions_by_keys(["shared"]))["shared"].conn_id == newer.conn_id
            await c.mark_ready(second, "p1", TTL)
            assert await c.ready(second) == {"p1"}
        finally:
            await c.close()
    run(go())


def test_redis_unreachable_raises_connection_error():
    port = free_port()  # nothing listens there

    async def go():
        c = RedisCache(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5, retries=1)
        try:
            with pytest.raises(RedisConnectionError):
                await c.alloc_conn_id()
            with pytest.raises(RedisConnectionError):
                await c.sessions([1])
            with pytest.raises(RedisConnectionError):
                await c.set_server_online("p", {}, 0, 0, 1.0)
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


async def _wait_for(pred, what):
    # errors while the failover is under way are retried until the (generous) deadline
    await wait_until_async(pred, timeout=90, what=what, interval=0.1, ignore=(Exception,))


@pytest.fixture
def sentinel_trio(redis_workdir):
    """A master, a replica and one sentinel watching them, all private to the test."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed")
    procs = []
    try:  # a setup that does not start is a failure of the test, not a skip
        master = RedisProc(redis_workdir)
        procs.append(master)
        replica = RedisProc(redis_workdir, "--replicaof", "127.0.0.1", str(master.port))
        procs.append(replica)
        sentinel = RedisProc(redis_workdir, sentinel_conf=_sentinel_conf(master.port))
        procs.append(sentinel)
        yield master, replica, sentinel
    finally:
        for p in procs:
            p.stop()


def test_real_sentinel_and_failover(sentinel_trio):
    master, replica, sentinel = sentinel_trio

    async def go():
        raw = redis.asyncio.Redis(port=sentinel.port, decode_responses=True)
        try:
            async def replica_known():
                return len(await raw.execute_command("SENTINEL", "REPLICAS", "mymaster")) >= 1
            await _wait_for(replica_known, "the sentinel to discover the replica")
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
            await _wait_for(replicated, "the replica to acknowledge the writes")

            master.kill()

            async def promoted():
                return await c.sentinel.discover_master("mymaster") == ("127.0.0.1", replica.port)
            await _wait_for(promoted, "the sentinel to promote the replica")

            async def usable():
                return await c.renew_session(1, before[0].conn_id, 60)
            await _wait_for(usable, "the cache to reach the new master")

            found = await c.sessions([1, 2])
            assert {m: ids(v) for m, v in found.items()} == {1: [before[0].conn_id], 2: [before[1].conn_id]}
            after = await connect(c, 3, ttl=60)
            assert after.conn_id > max(s.conn_id for s in before)
            assert set(await c.servers_online()) == {"p1"}
            assert await c.user_count() == 3
        finally:
            await c.close()
    run(go(), timeout=400)
