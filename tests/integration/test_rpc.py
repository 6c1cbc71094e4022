"""The internal RPC (imgate.rpc) over real loopback sockets: adapters, pipelining, pool, fail-over, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest

from helpers import run
from nodeutil import read_until_closed
from polling import DEADLINE, wait_until_async

from imgate.auth import AuthError, NoAuth
from imgate.cache import MemoryCache
from imgate.core import FrameDecoder, encode_frame
from imgate.logic import Logic
from imgate.push import MemoryBus, PushJob, PushRouter
from imgate.rpc import (
    LOGIC_SERVICE, PROXY_SERVICE, RpcClient, RpcError, RpcPool, RpcRemoteError, RpcServer, RpcTimeout, RpcUnavailable,
    decode_job, encode_job, pb,
)
from imgate.rpc.wire import ERROR_OP, REPLY_FLAG, SEQ_MAX
from imgate.rpc.logic import LogicClient, LogicRpcService
from imgate.rpc.proxy import ProxyClient, ProxyRpcService

ROOM = "live://1000"
ECHO = 1000  # a raw (bytes in, bytes out) method id used by the transport tests


def auth_body(mid, room=ROOM, key="", accepts=()):
    return json.dumps({"mid": mid, "key": key, "room_id": room, "platform": "web", "accepts": list(accepts)}).encode()


def make_logic() -> Logic:
    cache = MemoryCache()
    return Logic(cache, MemoryBus(PushRouter()), NoAuth(), session_ttl=60, online_interval=0.1)


async def logic_server(logic=None, port=0):
    logic = logic or make_logic()
    svc = LogicRpcService(logic)
    await svc.start("127.0.0.1", port)
    return logic, svc


async def until(cond, what="the condition"):
    await wait_until_async(cond, what=what)


class FakeProxy:
    """Records what push asked for; answers like a proxy would."""

    server_id = "proxy-1"

    def __init__(self):
        self.calls = []

    def push_conns(self, conn_ids, op, body):
        self.calls.append(("conns", conn_ids, op, body))
        return len(conn_ids)

    def push_room_batch(self, room_id, frames):
        self.calls.append(("batch", room_id, frames))
        return len(FrameDecoder(max_body=1 << 20).feed(frames))

    def push_all(self, op, body, speed=0):
        self.calls.append(("all", op, body, speed))
        return 42

    def join_conns(self, conn_ids, room_id):
        self.calls.append(("join", conn_ids, room_id))
        return len(conn_ids)

    def leave_conns(self, conn_ids, room_id):
        self.calls.append(("leave", conn_ids, room_id))
        return len(conn_ids)


class AsyncFakeProxy(FakeProxy):
    async def push_room_batch(self, room_id, frames):
        await asyncio.sleep(0)
        return FakeProxy.push_room_batch(self, room_id, frames)


async def echo_server(handlers=None, **kw):
    async def echo(body: bytes) -> bytes:
        if body.startswith(b"sleep:"):
            await asyncio.sleep(float(body[6:].split(b":")[0]))
        return body

    h = {ECHO: echo}
    h.update(handlers or {})
    srv = RpcServer("test.echo", h, **kw)
    await srv.start("127.0.0.1", 0)
    return srv


# ------------------------------------------------------------------------------------------ adapters


def test_logic_round_trip_every_method():
    async def main():
        logic, svc = await logic_server()

        async def upstream(server, conn_id, mid, op, seq, body):
            return json.dumps({"server": server, "conn_id": conn_id, "mid": mid, "op": op, "seq": seq,
                               "body": body.decode()}).encode()

        logic.upstream_handler = upstream
        client = LogicClient([svc.addr], pool_size=2)
        try:
            c = await client.connect("proxy-a", auth_body(123, key="k1", accepts=[1000, 1001]))
            assert (c.mid, c.key, c.room_id, c.accepts, c.platform) == (123, "k1", ROOM, (1000, 1001), "web")
            assert c.conn_id > 0
            c2 = await client.connect("proxy-a", auth_body(2 ** 62, room=""))
            assert c2.mid == 2 ** 62 and len(c2.key) == 32 and c2.accepts == () and c2.room_id == ""
            sessions = await logic.session(123)
            assert [(s["conn_id"], s["server"], s["key"]) for s in sessions] == [(c.conn_id, "proxy-a", "k1")]

            assert await client.heartbeat("proxy-a", c.conn_id, 123) is True
            assert await client.heartbeat("proxy-a", 999999, 5) is False

            reply = json.loads(await client.receive("proxy-a", c.conn_id, 123, 4, 77, b"hello"))
            assert reply == {"server": "proxy-a", "conn_id": c.conn_id, "mid": 123, "op": 4, "seq": 77, "body": "hello"}
            logic.upstream_handler = None
            assert await client.receive("proxy-a", c.conn_id, 123, 4, 78, b"x") == b""

            await client.renew_online("proxy-a", {ROOM: 2, "live://2": 1}, 2, 1)
            servers = await logic.cache.servers_online()
            assert servers["proxy-a"]["rooms"] == {ROOM: 2, "live://2": 1}
            assert servers["proxy-a"]["conns"] == 2

            assert await client.disconnect("proxy-a", c.conn_id, 123) is None
            assert await logic.session(123) == []
            assert logic.counters["disconnects"] == 1
        finally:
            await client.close()
            await svc.stop()

    run(main())


def test_disconnects_and_heartbeats_are_coalesced():
    async def main():
        logic, svc = await logic_server()
        client = LogicClient([svc.addr], pool_size=1)
        try:
            conns = await asyncio.gather(*[client.connect("p", auth_body(i + 1)) for i in range(300)])
            before = svc.server.requests
            oks = await asyncio.gather(*[client.heartbeat("p", c.conn_id, c.mid) for c in conns]
                                       + [client.heartbeat("p", 10 ** 9, 1)])
            assert oks == [True] * 300 + [False]
            assert svc.server.requests - before == 1  # one request carried 301 heartbeats
            before = svc.server.requests
            await asyncio.gather(*[client.disconnect("p", c.conn_id, c.mid) for c in conns])
            assert svc.server.requests - before == 1
            assert logic.counters["disconnects"] == 300
            assert await logic.cache.user_count() == 0
        finally:
            await client.close()
            await svc.stop()

    run(main())


def test_auth_error_propagates_with_its_message():
    async def main():
        logic, svc = await logic_server()
        client = LogicClient([svc.addr])
        try:
            for bad in (b"not json", json.dumps({"mid": "abc"}).encode(), json.dumps([1]).encode()):
                with pytest.raises(AuthError) as direct:
                    await logic.connect("p", bad)
                with pytest.raises(AuthError) as remote:
                    await client.connect("p", bad)
                assert str(remote.value) == str(direct.value) and str(direct.value)
            # the connection is still fine afterwards
            assert (await client.connect("p", auth_body(5))).mid == 5
        finally:
            await client.close()
            await svc.stop()

    run(main())


@pytest.mark.parametrize("proxy_cls", [FakeProxy, AsyncFakeProxy])
def test_proxy_round_trip_every_method(proxy_cls):
    async def main():
        proxy = proxy_cls()
        svc = ProxyRpcService(proxy)
        await svc.start()
        client = ProxyClient("proxy-1", svc.addr, pool_size=2)
        try:
            assert await client.push_conns([1, 2, 3], 1000, b"m1") == 3
            assert await client.push_room(ROOM, 1001, b"m2") == 1  # a batch of one frame
            frames = encode_frame(1000, 0, b"a") + encode_frame(1000, 0, b"bb")
            assert await client.push_room_batch(ROOM, frames) == 2
            assert await client.push_all(1002, b"m3", 500) == 42
            assert proxy.calls == [
                ("conns", [1, 2, 3], 1000, b"m1"),
                ("batch", ROOM, encode_frame(1001, 0, b"m2")),
                ("batch", ROOM, frames),
                ("all", 1002, b"m3", 500),
            ]
        finally:
            await client.close()
            await svc.stop()

    run(main())


def test_push_job_codec():
    jobs = [
        PushJob("conns", 1000, b"\x00body", server="proxy-9", conn_ids=[1, 2 ** 40]),
        PushJob("room", 1001, b"r", room_id=ROOM),
        PushJob("all", 1002, b"", speed=300),
    ]
    for job in jobs:
        assert decode_job(encode_job(job)) == job
    with pytest.raises(ValueError, match="kind"):
        decode_job(pb.PushJobMsg(kind="nope").SerializeToString())
    with pytest.raises(ValueError, match="undecodable"):
        decode_job(b"\xff\xff\xff")


# ------------------------------------------------------------------------------------------ transport


def test_pipelining_1000_calls_on_one_connection():
    async def main():
        srv = await echo_server()
        pool = RpcPool(srv.addr, "test.echo", size=1, max_in_flight=2000)
        try:
            assert await pool.wait_ready()
            payloads = [f"call-{i}".encode() * (i % 5 + 1) for i in range(1000)]
            replies = await asyncio.gather(*[pool.call_raw(ECHO, p) for p in payloads])
            assert replies == payloads
            assert srv.connections == 1 and pool.live == 1
            assert pool.connections()[0].requests == 1001  # hello + 1000
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_out_of_order_replies():
    async def main():
        logic, svc = await logic_server()
        gates = {b"a": asyncio.Event(), b"b": asyncio.Event(), b"c": asyncio.Event()}
        arrived = []

        async def upstream(server, conn_id, mid, op, seq, body):
            arrived.append(body)
            await gates[body].wait()  # each request is answered when the test opens its gate
            return body

        logic.upstream_handler = upstream
        client = LogicClient([svc.addr], pool_size=1)
        try:
            done = []

            async def call(body):
                done.append(await client.receive("p", 1, 1, 4, 0, body))

            calls = [asyncio.ensure_future(call(b)) for b in (b"a", b"b", b"c")]
            await until(lambda: sorted(arrived) == [b"a", b"b", b"c"], "all three requests in flight")
            for body in (b"c", b"b", b"a"):  # answered in the reverse order of sending
                gates[body].set()
                await until(lambda: done and done[-1] == body, f"the reply to {body!r}")
            await asyncio.gather(*calls)
            assert done == [b"c", b"b", b"a"]  # sent first, answered last, on one connection
            assert svc.server.connections == 1
        finally:
            await client.close()
            await svc.stop()

    run(main())


def test_backpressure_bounds_in_flight():
    async def main():
        active = {"now": 0, "max": 0}

        async def slow(body):
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            await asyncio.sleep(0.01)
            active["now"] -= 1
            return body

        srv = await echo_server({ECHO + 1: slow})
        client = await RpcClient.connect("127.0.0.1", srv.port, "test.echo", max_in_flight=8)
        try:
            replies = await asyncio.gather(*[client.call(ECHO + 1, str(i).encode()) for i in range(200)])
            assert replies == [str(i).encode() for i in range(200)]
            assert 1 <= active["max"] <= 8
        finally:
            client.close()
            await srv.stop()

    run(main())


def test_seq_wraps():
    async def main():
        srv = await echo_server()
        client = await RpcClient.connect("127.0.0.1", srv.port, "test.echo")
        try:
            client._seq = SEQ_MAX - 3
            replies = await asyncio.gather(*[client.call(ECHO, bytes([i])) for i in range(10)])
            assert replies == [bytes([i]) for i in range(10)]
            assert 0 < client._seq < 10
        finally:
            client.close()
            await srv.stop()

    run(main())


def test_pool_spreads_calls_over_its_connections():
    async def main():
        srv = await echo_server()
        pool = RpcPool(srv.addr, "test.echo", size=4)
        try:
            pool.start()
            await until(lambda: pool.live == 4)
            await asyncio.gather(*[pool.call_raw(ECHO, b"sleep:0.01") for _ in range(400)])
            counts = [c.requests - 1 for c in pool.connections()]
            assert sum(counts) == 400 and len(counts) == 4
            assert min(counts) >= 50, counts
            assert srv.connections == 4
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_server_killed_then_restarted():
    async def main():
        srv = await echo_server()
        port = srv.port
        pool = RpcPool(srv.addr, "test.echo", size=4)
        try:
            pool.start()
            await until(lambda: pool.live == 4)
            assert await pool.call_raw(ECHO, b"before") == b"before"
            await srv.stop()
            pool.start()
            await until(lambda: pool.live == 0)
            for _ in range(3):
                # fails at once, not after the call's timeout (120 s here; the deadline only bounds a hang)
                with pytest.raises(RpcUnavailable):
                    await asyncio.wait_for(pool.call_raw(ECHO, b"during", timeout=120), DEADLINE)
            srv = RpcServer("test.echo", {ECHO: lambda b: b})  # a fresh server on the same port
            await srv.start("127.0.0.1", port)
            await until(lambda: pool.live == 4)
            assert await pool.call_raw(ECHO, b"after") == b"after"
            assert pool.reconnects >= 1
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_no_server_at_all_fails_fast():
    async def main():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        pool = RpcPool(f"127.0.0.1:{port}", "test.echo", size=2, timeout=120, connect_timeout=120)
        try:
            # fails at once rather than waiting for a connection (the deadline only bounds a hang)
            with pytest.raises(RpcUnavailable, match="no live connection"):
                await asyncio.wait_for(pool.call_raw(ECHO, b"x"), DEADLINE)
        finally:
            await pool.close()

    run(main())


def test_logic_client_fails_over_and_back():
    async def main():
        logic1, svc1 = await logic_server()
        logic2, svc2 = await logic_server()
        port1 = svc1.port
        client = LogicClient([svc1.addr, svc2.addr], pool_size=2)
        try:
            assert await client.start()
            await until(lambda: all(p.healthy for p in client.pools))
            c = await client.connect("p", auth_body(1))
            assert logic1.counters["connects"] == 1 and logic2.counters["connects"] == 0

            await svc1.stop()  # logic 1 dies
            # connect is not retried once written; a call made before the client has seen the close
            # could be written to the dying connection, so wait for the client to see it first
            await until(lambda: not client.pools[0].healthy)
            for i in range(20):
                c = await client.connect("p", auth_body(100 + i))
                assert await client.heartbeat("p", c.conn_id, c.mid) is True
                assert await client.receive("p", c.conn_id, c.mid, 4, i, b"x") == b""
                await client.renew_online("p", {ROOM: i}, i, 1)
                await client.disconnect("p", c.conn_id, c.mid)
            assert logic2.counters["connects"] == 20 and logic2.counters["disconnects"] == 20
            assert logic1.counters["connects"] == 1

            # logic 1 returns: it is first in the list, so it is used again once reconnected
            svc1 = LogicRpcService(logic1)
            await svc1.start("127.0.0.1", port1)
            await until(lambda: client.pools[0].healthy)
            await client.connect("p", auth_body(7))
            assert logic1.counters["connects"] == 2
        finally:
            await client.close()
            await svc1.stop()
            await svc2.stop()

    run(main())


def test_logic_client_spread_uses_every_logic():
    async def main():
        logic1, svc1 = await logic_server()
        logic2, svc2 = await logic_server()
        client = LogicClient([svc1.addr, svc2.addr], pool_size=1, spread=True)
        try:
            await client.start()
            await until(lambda: all(p.healthy for p in client.pools))
            for i in range(20):
                await client.connect("p", auth_body(i + 1))
            assert logic1.counters["connects"] == 10 and logic2.counters["connects"] == 10
        finally:
            await client.close()
            await svc1.stop()
            await svc2.stop()

    run(main())


def test_connect_written_then_logic_dies_is_not_repeated():
    """A connect that reached a logic which then died is surfaced, not replayed on the next logic."""

    async def main():
        logic1, svc1 = await logic_server()
        logic2, svc2 = await logic_server()
        entered = asyncio.Event()

        class SlowAuth(NoAuth):
            def authenticate(self, body):
                entered.set()
                return super().authenticate(body)

        logic1.auth = SlowAuth()
        orig = logic1.cache.alloc_conn_id

        async def hang():
            await asyncio.Event().wait()  # never answers: logic 1 dies with the connect in progress
            return await orig()

        logic1.cache.alloc_conn_id = hang
        client = LogicClient([svc1.addr, svc2.addr], pool_size=1)
        try:
            await client.start()
            await until(lambda: all(p.healthy for p in client.pools))
            call = asyncio.ensure_future(client.connect("p", auth_body(1)))
            await asyncio.wait_for(entered.wait(), DEADLINE)
            await svc1.stop()
            with pytest.raises(RpcUnavailable) as e:
                await call
            assert e.value.sent is True
            assert logic2.counters["connects"] == 0
            # idempotent calls do move on; new connects go to logic 2
            await client.renew_online("p", {}, 0, 0)
            assert (await client.connect("p", auth_body(2))).mid == 2
            assert logic2.counters["connects"] == 1
        finally:
            await client.close()
            await svc2.stop()

    run(main())


def test_unsent_request_on_dead_connection_moves_to_a_live_one():
    async def main():
        srv = await echo_server()
        pool = RpcPool(srv.addr, "test.echo", size=2)
        try:
            pool.start()
            await until(lambda: pool.live == 2)
            a, b = pool.connections()
            fut = a.request(ECHO, b"x", asyncio.get_running_loop().time() + 5)
            a.abort("test")  # dies before the write at the end of this iteration
            with pytest.raises(RpcUnavailable) as e:
                await fut
            assert e.value.sent is False
            # through the pool: the dead connection is skipped and the call goes to b
            assert pool.live == 1
            assert await pool.call_raw(ECHO, b"y") == b"y"
            assert b.requests == 2
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def _raw_hello(service="test.echo", seq=1) -> bytes:
    return encode_frame(pb.HELLO, seq, pb.Hello(service=service, client_id="raw", version=1).SerializeToString())


def _read_all(sock) -> bytes:
    return read_until_closed(sock)


def test_malformed_frames_close_only_that_connection():
    async def main():
        srv = await echo_server(max_body=1024)
        pool = RpcPool(srv.addr, "test.echo", size=2)
        loop = asyncio.get_running_loop()
        try:
            pool.start()
            await until(lambda: pool.live == 2)
            bad_inputs = [
                _raw_hello() + struct.pack(">ihhii", 20, 15, 1, ECHO, 2) + b"xxxx",  # headerLen 15
                _raw_hello() + struct.pack(">ihhii", 16 + 4096, 16, 1, ECHO, 2),      # body over max_body
                struct.pack(">ihhii", -5, 16, 1, pb.HELLO, 1),                          # negative packLen
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                                  # not frames at all
            ]
            for data in bad_inputs:
                s = socket.create_connection(("127.0.0.1", srv.port))
                s.sendall(data)
                await loop.run_in_executor(None, _read_all, s)  # returns once the server closed it
                s.close()
                assert await pool.call_raw(ECHO, b"still fine") == b"still fine"
            assert srv.protocol_errors >= 3
            assert pool.live == 2
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_handler_exceptions_become_error_replies():
    async def main():
        def boom(body):
            raise RuntimeError("kaboom")

        async def aboom(body):
            await asyncio.sleep(0)
            raise KeyError("missing")

        def bad(body):
            raise ValueError("bad value 7")

        srv = await echo_server({ECHO + 1: boom, ECHO + 2: aboom, ECHO + 3: bad})
        pool = RpcPool(srv.addr, "test.echo", size=1)
        try:
            with pytest.raises(RpcRemoteError) as e:
                await pool.call_raw(ECHO + 1, b"")
            assert (e.value.kind, e.value.code, e.value.message) == ("internal", 13, "kaboom")
            with pytest.raises(RpcRemoteError) as e:
                await pool.call_raw(ECHO + 2, b"")
            assert e.value.kind == "internal" and "missing" in e.value.message
            with pytest.raises(RpcRemoteError) as e:
                await pool.call_raw(ECHO + 3, b"")
            assert (e.value.kind, e.value.message) == ("bad_request", "bad value 7")
            with pytest.raises(RpcRemoteError) as e:
                await pool.call_raw(4242, b"")
            assert e.value.kind == "unimplemented"
            with pytest.raises(RpcRemoteError) as e:  # undecodable request body
                await pool.call_raw(pb.PUSH_ROOM_BATCH, b"\xff\xff")
            assert e.value.kind in ("unimplemented", "bad_request")
            assert await pool.call_raw(ECHO, b"ok") == b"ok"  # still serving, same connection
            assert srv.connections == 1 and srv.handler_errors == 2
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_bad_request_body_is_bad_request():
    async def main():
        svc = ProxyRpcService(FakeProxy())
        await svc.start()
        pool = RpcPool(svc.addr, PROXY_SERVICE, size=1)
        try:
            with pytest.raises(RpcRemoteError) as e:
                await pool.call_raw(pb.PUSH_ROOM_BATCH, b"\xff\xff\xff")
            assert e.value.kind == "bad_request"
            req = pb.PushConnsReq(conn_ids=[1], op=1000, body=b"x").SerializeToString()
            assert pb.CountReply.FromString(await pool.call_raw(pb.PUSH_CONNS, req)).count == 1  # still serving
        finally:
            await pool.close()
            await svc.stop()

    run(main())


def test_wrong_service_is_rejected():
    async def main():
        logic, svc = await logic_server()
        psvc = ProxyRpcService(FakeProxy())
        await psvc.start()
        try:
            with pytest.raises(RpcRemoteError) as e:
                await RpcClient.connect("127.0.0.1", svc.port, PROXY_SERVICE)
            assert e.value.kind == "wrong_service" and LOGIC_SERVICE in e.value.message
            # push pointed at a logic port: unavailable, saying why
            client = ProxyClient("proxy-1", svc.addr, pool_size=1)
            with pytest.raises(RpcUnavailable, match="serves 'imgate.logic'"):
                await client.push_room(ROOM, 1000, b"x")
            await client.close()
            # a proxy with another server id refuses push's connection
            with pytest.raises(RpcRemoteError, match="proxy-1"):
                await RpcClient.connect("127.0.0.1", psvc.port, PROXY_SERVICE, server_id="proxy-2")
            # a raw client that skips HELLO gets an error reply, then EOF
            s = socket.create_connection(("127.0.0.1", svc.port))
            s.sendall(encode_frame(pb.CONNECT, 1, b""))
            data = await asyncio.get_running_loop().run_in_executor(None, _read_all, s)
            s.close()
            frames = FrameDecoder(max_body=1 << 20).feed(data)
            assert [f.op for f in frames] == [ERROR_OP]
            assert pb.RpcError.FromString(frames[0].body).kind == "bad_request"
            assert svc.server.rejected == 3
        finally:
            await svc.stop()
            await psvc.stop()

    run(main())


def test_raw_wire_format():
    """The documented framing: op = method, reply op = method | 0x10000, seq echoed."""

    async def main():
        svc = ProxyRpcService(FakeProxy())
        await svc.start()
        loop = asyncio.get_running_loop()
        try:
            s = socket.create_connection(("127.0.0.1", svc.port))
            s.sendall(_raw_hello(PROXY_SERVICE, seq=9)
                      + encode_frame(pb.PUSH_ROOM_BATCH, 77, pb.PushRoomBatchReq(
                          room_id=ROOM, frames=encode_frame(1000, 0, b"x")).SerializeToString()))

            def read_two():
                dec, out = FrameDecoder(max_body=1 << 20), []
                s.settimeout(3)
                while len(out) < 2:
                    out += dec.feed(s.recv(65536))
                return out

            frames = await loop.run_in_executor(None, read_two)
            s.close()
            assert [(f.op, f.seq) for f in frames] == [(pb.HELLO | REPLY_FLAG, 9), (pb.PUSH_ROOM_BATCH | REPLY_FLAG, 77)]
            assert pb.HelloReply.FromString(frames[0].body).service == PROXY_SERVICE
            assert pb.CountReply.FromString(frames[1].body).count == 1
        finally:
            await svc.stop()

    run(main())


def test_timeout():
    async def main():
        gate = asyncio.Event()
        answered = []

        async def held(body):
            await gate.wait()  # answers only once the caller has given up
            answered.append(body)
            return body

        srv = await echo_server({ECHO + 1: held})
        pool = RpcPool(srv.addr, "test.echo", size=1, timeout=0.2)
        try:
            with pytest.raises(RpcTimeout):
                await pool.call_raw(ECHO + 1, b"late")
            assert isinstance(RpcTimeout("x"), TimeoutError)
            conn = pool.connections()[0]
            assert conn.in_flight == 0  # an expired request frees its slot
            gate.set()  # its late reply goes out now and must be ignored by the client
            await until(lambda: answered == [b"late"], "the late reply to be sent")
            assert await pool.call_raw(ECHO, b"next", timeout=DEADLINE) == b"next"
            assert pool.connections() == [conn]
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_hello_timeout_drops_silent_connections():
    async def main():
        srv = await echo_server(hello_timeout=0.2)
        try:
            s = socket.create_connection(("127.0.0.1", srv.port))
            # closed by the server (read_until_closed fails if it only goes quiet)
            data = await asyncio.get_running_loop().run_in_executor(None, _read_all, s)
            s.close()
            assert data == b""
            assert srv.connections == 0
        finally:
            await srv.stop()

    run(main())


def test_pool_fill_balance_concentrates_then_spills():
    async def main():
        srv = await echo_server()
        pool = RpcPool(srv.addr, "test.echo", size=4, balance="fill", fill_limit=10)
        try:
            pool.start()
            await until(lambda: pool.live == 4)
            for _ in range(5):
                await pool.call_raw(ECHO, b"x")
            assert sorted(c.requests - 1 for c in pool.connections()) == [0, 0, 0, 5]
            await asyncio.gather(*[pool.call_raw(ECHO, b"sleep:0.05") for _ in range(35)])
            assert sum(1 for c in pool.connections() if c.requests > 1) == 4
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_generated_code_is_current(tmp_path):
    """src/imgate/protocol/imgate_pb2.py is what `make proto` makes from proto/imgate.proto."""
    pytest.importorskip("grpc_tools")
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
                          "proto/imgate.proto"], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "imgate_pb2.py").read_text() == (root / "src/imgate/protocol/imgate_pb2.py").read_text(), \
        "imgate_pb2.py is stale: run make proto"


def test_real_proxy_through_both_rpcs():
    """A goim client authenticates at a real Proxy whose logic is remote (LogicClient), then push reaches
    it through ProxyClient -> ProxyRpcService(Proxy)."""
    from imgate.config import Config
    from imgate.proxy.server import Proxy

    async def main():
        logic, lsvc = await logic_server()
        await logic.start()
        cfg = Config(tcp="127.0.0.1:0", ws="127.0.0.1:0", http="127.0.0.1:0", auth="none",
                     online_interval=0.1, server_id="proxy-rpc").validate()
        lclient = LogicClient([lsvc.addr], pool_size=2)
        proxy = Proxy(cfg, lclient, asyncio.get_running_loop())
        await proxy.start()
        psvc = ProxyRpcService(proxy)
        await psvc.start()
        pclient = ProxyClient("proxy-rpc", psvc.addr, pool_size=2)
        reader = writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            writer.write(encode_frame(7, 1, auth_body(77)))
            dec = FrameDecoder(max_body=1 << 20)

            async def next_frame(op):
                while True:
                    for f in dec.feed(await asyncio.wait_for(reader.read(65536), DEADLINE)):
                        if f.op == op:
                            return f

            reply = json.loads((await next_frame(8)).body)
            assert reply["mid"] == 77 and reply["room_id"] == ROOM
            assert [s["conn_id"] for s in await logic.session(77)] == [reply["conn_id"]]

            assert await pclient.push_conns([reply["conn_id"]], 1000, b"unicast") == 1
            assert (await next_frame(1000)).body == b"unicast"
            assert await pclient.push_room(ROOM, 1001, b"room") == 1
            assert (await next_frame(1001)).body == b"room"
            await until(lambda: logic.room_online(ROOM) == 1)  # renew_online over RPC, absorbed by logic

            # a refused auth reaches the client with logic's reason
            r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            w2.write(encode_frame(7, 1, b"{bad json"))
            data = await asyncio.wait_for(r2.read(65536), DEADLINE)
            notice = json.loads([f for f in FrameDecoder(max_body=1 << 20).feed(data) if f.op == 6][0].body)
            with pytest.raises(AuthError) as direct:
                await logic.connect("x", b"{bad json")
            assert notice == {"reason": f"auth failed: {direct.value}", "reconnect": False}
            w2.close()

            writer.close()
            await until(lambda: logic.counters["disconnects"] == 1)
            assert await logic.session(77) == []
        finally:
            if writer is not None:
                writer.close()
            await pclient.close()
            await psvc.stop()
            await proxy.stop(0.1)
            await lclient.close()
            await lsvc.stop()
            await logic.stop()

    run(main())


def test_connections_killed_under_load():
    """Connections die at random under load: every call ends (answered correctly or RpcUnavailable), idempotent
    calls are retried on the survivors, and the pool heals."""
    import random

    async def main():
        srv = await echo_server()
        pool = RpcPool(srv.addr, "test.echo", size=4)
        outcomes = {"ok": 0, "unavailable": 0, "idem_ok": 0}
        stop = False

        async def caller(i):
            n = 0
            while not stop:
                n += 1
                body = f"{i}:{n}".encode()
                idem = n % 2 == 0
                try:
                    assert await pool.call_raw(ECHO, body, idempotent=idem) == body
                    outcomes["idem_ok" if idem else "ok"] += 1
                except RpcUnavailable:
                    outcomes["unavailable"] += 1

        kills = [0]

        async def killer():
            rnd = random.Random(7)
            while not stop:
                await asyncio.sleep(0.05)
                conns = list(srv._conns)
                if conns:
                    rnd.choice(conns).transport.abort()
                    kills[0] += 1

        try:
            pool.start()
            await until(lambda: pool.live == 4)
            tasks = [asyncio.ensure_future(caller(i)) for i in range(200)]
            k = asyncio.ensure_future(killer())
            # enough calls of both kinds succeed while connections keep dying (counted, not timed)
            await until(lambda: kills[0] >= 10 and outcomes["ok"] > 1000 and outcomes["idem_ok"] > 1000,
                        "calls to keep succeeding through 10 connection kills")
            stop = True
            await asyncio.gather(*tasks, k)
            await until(lambda: pool.live == 4)
            assert await pool.call_raw(ECHO, b"healed") == b"healed"
            assert all(c.in_flight == 0 for c in pool.connections())
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_oversized_request_refused_locally():
    async def main():
        srv = await echo_server(max_body=1000)
        pool = RpcPool(srv.addr, "test.echo", size=1)
        try:
            with pytest.raises(RpcError) as e:
                await pool.call_raw(ECHO, b"x" * 1001)
            assert e.value.kind == "bad_request" and "1000" in str(e.value)
            assert await pool.call_raw(ECHO, b"x" * 1000) == b"x" * 1000  # the connection was kept
            assert srv.protocol_errors == 0
        finally:
            await pool.close()
            await srv.stop()

    run(main())


# ------------------------------------------------------------------------------------------ unix sockets


def test_logic_and_proxy_over_unix_sockets(tmp_path):
    """The workers' transport: the same RPC on ``unix:/path`` addresses, both directions."""
    async def main():
        logic = make_logic()
        svc = LogicRpcService(logic)
        await svc.start(path=str(tmp_path / "logic.sock"))
        assert svc.addr == f"unix:{tmp_path}/logic.sock"
        proxy = FakeProxy()
        psvc = ProxyRpcService(proxy)
        await psvc.start(path=str(tmp_path / "w0.sock"))
        client = LogicClient([svc.addr], pool_size=2)
        push = ProxyClient("proxy-1", psvc.addr, pool_size=1)
        try:
            c = await client.connect("proxy-1", auth_body(77, key="ku"))
            assert [(s["conn_id"], s["key"]) for s in await logic.session(77)] == [(c.conn_id, "ku")]
            assert await push.push_conns([c.conn_id], 1000, b"hi") == 1
            assert proxy.calls == [("conns", [c.conn_id], 1000, b"hi")]
            # nothing listens on TCP: the sockets are the files
            assert {p.name for p in tmp_path.iterdir()} == {"logic.sock", "w0.sock"}
        finally:
            await push.close()
            await client.close()
            await psvc.stop()
            await svc.stop()

    run(main())


def test_rpc_addresses_in_the_config():
    from imgate.config import Config, ConfigError

    assert Config(rpc="unix:/run/imgate/w0.sock", logic_addrs=["unix:/run/imgate/logic.sock"]).validate()
    for bad in ("unix:relative.sock", "unix:/" + "x" * 120, "nowhere"):
        with pytest.raises(ConfigError):
            Config(rpc=bad).validate()
