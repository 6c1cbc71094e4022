"""One-way RPC requests (seq 0: no reply) and the lane they travel on, over real sockets: what the
coordinator of ``imgate serve --workers`` uses for every push by mid or key."""

from __future__ import annotations

import asyncio

import pytest

from helpers import run
from polling import wait_until_async

from imgate.cache import MemoryCache, Session
from imgate.auth import NoAuth
from imgate.logic import Logic
from imgate.protocol import KIND_JOIN, PushJob
from imgate.push import PushRouter
from imgate.push.service import BusUnavailable
from imgate.rpc import RpcClient, RpcPool, RpcServer, RpcUnavailable
from imgate.rpc.proxy import ProxyClient, ProxyRpcService
from imgate.workers import RouterBus

RECORD = 1000  # a raw method: the server appends each body to a list, in the order handled
FAIL = 1001    # a raw method that always raises


class Recorder:
    def __init__(self):
        self.bodies: list[bytes] = []

    def handlers(self) -> dict:
        def record(body: bytes) -> bytes:
            self.bodies.append(body)
            return b"ok"

        def fail(body: bytes) -> bytes:
            raise ValueError(f"no such thing as {body.decode()}")

        return {RECORD: record, FAIL: fail}


async def recorder_server(tmp_path, **kw):
    rec = Recorder()
    srv = RpcServer("test.oneway", rec.handlers(), **kw)
    await srv.start(path=str(tmp_path / "oneway.sock"))
    return rec, srv


def count_writes(conn: RpcClient) -> list:
    """Wraps the connection's transport: each ``write`` call is recorded (its byte count)."""
    writes = []
    transport = conn._transport
    real = transport.write

    class Counting:
        def __getattr__(self, name):
            return getattr(transport, name)

        def write(self, data):
            writes.append(len(data))
            real(data)

    conn._transport = Counting()
    return writes


def count_frames_back(conn: RpcClient) -> list:
    """Every frame the server sends back on ``conn`` from now on (op, seq)."""
    seen = []
    decoder = conn._decoder

    class Seeing:
        def feed(self, data):
            frames = decoder.feed(data)
            seen.extend((f.op, f.seq) for f in frames)
            return frames

    conn._decoder = Seeing()
    return seen


def test_one_way_requests_of_one_iteration_arrive_in_order_in_one_write_and_get_no_reply(tmp_path):
    async def main():
        rec, srv = await recorder_server(tmp_path)
        conn = await RpcClient.connect("", 0, "test.oneway", path=srv.path)
        try:
            writes = count_writes(conn)
            back = count_frames_back(conn)
            bodies = [f"push-{i}".encode() for i in range(200)]
            for b in bodies:  # one loop iteration: no await in between
                conn.send(RECORD, b)
            await wait_until_async(lambda: len(rec.bodies) == 200, what="the 200 one-way requests to be handled")
            assert rec.bodies == bodies
            assert writes == [sum(16 + len(b) for b in bodies)]  # one write, every frame in it
            # a call after them: its reply is the first frame back (the server answers in order)
            assert await conn.call(RECORD, b"last") == b"ok"
            assert len(back) == 1 and back[0][1] != 0, back
            assert conn.in_flight == 0 and conn.oneway_errors == 0
        finally:
            conn.close()
            await srv.stop()

    run(main())


def test_a_failed_one_way_request_is_reported_back_and_the_connection_keeps_serving(tmp_path):
    async def main():
        rec, srv = await recorder_server(tmp_path)
        conn = await RpcClient.connect("", 0, "test.oneway", path=srv.path)
        try:
            conn.send(FAIL, b"gadget")
            conn.send(RECORD, b"after")
            await wait_until_async(lambda: conn.oneway_errors == 1, what="the one-way failure to be reported")
            assert "no such thing as gadget" in conn.last_oneway_error
            await wait_until_async(lambda: rec.bodies == [b"after"], what="the next request to be handled")
            assert not conn.is_closed
        finally:
            conn.close()
            await srv.stop()

    run(main())


def test_one_way_requests_to_a_peer_that_does_not_read_are_refused_not_buffered(tmp_path):
    async def main():
        rec, srv = await recorder_server(tmp_path)
        limit = 256 << 10
        conn = await RpcClient.connect("", 0, "test.oneway", path=srv.path, max_unread=limit)
        try:
            for c in srv._conns:
                c.transport.pause_reading()  # the peer stops reading: the socket buffers fill
            body = b"x" * (16 << 10)
            refused = None
            for i in range(2000):  # at most ~32 MB offered; the kernel holds far less
                try:
                    conn.send(RECORD, body)
                except RpcUnavailable as e:
                    refused = e
                    break
                await asyncio.sleep(0)  # an iteration: the queued frames are written
            assert refused is not None and "is not reading" in str(refused) and not refused.sent
            assert conn._wbytes + conn._transport.get_write_buffer_size() <= limit + len(body) + 16
            for c in srv._conns:
                c.transport.resume_reading()
            await wait_until_async(lambda: len(rec.bodies) == i, what="every accepted request to be handled")
            conn.send(RECORD, b"again")  # the peer reads again: accepted again
            await wait_until_async(lambda: rec.bodies[-1:] == [b"again"], what="the request after the pause")
        finally:
            conn.close()
            await srv.stop()

    run(main())


def test_pool_keeps_one_way_and_lane_calls_on_one_connection_in_order(tmp_path):
    async def main():
        rec, srv = await recorder_server(tmp_path)
        pool = RpcPool("unix:" + srv.path, "test.oneway", size=4)
        try:
            assert await pool.wait_ready()
            await wait_until_async(lambda: pool.live == 4, what="four connections")
            want = []
            for k in range(20):
                for i in range(10):
                    body = f"{k}.{i}".encode()
                    pool.send(RECORD, body)
                    want.append(body)
                body = f"{k}.call".encode()
                assert await pool.call_raw(RECORD, body, lane=True) == b"ok"
                want.append(body)
            assert rec.bodies == want
            assert sorted(c.requests - 1 for c in pool.connections()) == [0, 0, 0, len(want)]
        finally:
            await pool.close()
            await srv.stop()

    run(main())


def test_pool_without_a_live_connection_refuses_one_way_at_once(tmp_path):
    async def main():
        pool = RpcPool("unix:" + str(tmp_path / "nobody.sock"), "test.oneway", size=2)
        try:
            with pytest.raises(RpcUnavailable, match="no live connection"):
                pool.send(RECORD, b"x")
        finally:
            await pool.close()

    run(main())


class FakeProxy:
    server_id = "w0"

    def __init__(self):
        self.calls = []

    def push_conns(self, conn_ids, op, body):
        self.calls.append((list(conn_ids), op, body))
        return len(conn_ids)

    def push_room_batch(self, room_id, frames):
        return 0

    def join_conns(self, conn_ids, room_id):
        self.calls.append(("join", list(conn_ids), room_id))
        return len(conn_ids)

    def leave_conns(self, conn_ids, room_id):
        return 0

    def push_all(self, op, body, speed=0):
        return 0


def test_coordinator_pushes_by_mid_travel_one_way_and_a_dead_worker_is_refused(tmp_path):
    """Logic with a RouterBus (the coordinator's): a push by mid is answered without waiting for the
    worker, reaches it in order; once the worker is gone the push is refused (503), not dropped."""
    async def main():
        proxy = FakeProxy()
        svc = ProxyRpcService(proxy)
        await svc.start(path=str(tmp_path / "w0.sock"))
        router = PushRouter()
        router.add_proxy(ProxyClient("w0", svc.addr))
        try:
            cache = MemoryCache()
            logic = Logic(cache, RouterBus(router), NoAuth(), session_ttl=60, online_interval=1)
            assert not logic.pushes_wait  # answered at once: the compiled route, no coroutine
            for mid in (1, 2):
                await cache.add_session(Session(mid=mid, key=f"k{mid}", server="w0", conn_id=10 + mid), 60)
            await wait_until_async(lambda: router.proxies["w0"].healthy, what="the worker's connection")
            for i in range(50):
                assert logic.push_mids_nowait(1000, [1 + i % 2], f"m{i}".encode()) == 1
            await wait_until_async(lambda: len(proxy.calls) == 50, what="the 50 pushes at the worker")
            assert proxy.calls == [([11 + i % 2], 1000, f"m{i}".encode()) for i in range(50)]
            # an IM group's room join travels the same way, in order with the pushes
            logic.bus.publish_nowait(PushJob(KIND_JOIN, 0, b"", "w0", [11], "g://7"))
            assert logic.push_mids_nowait(1000, [1], b"after the join") == 1
            await wait_until_async(lambda: len(proxy.calls) == 52, what="the join and the push after it")
            assert proxy.calls[50:] == [("join", [11], "g://7"), ([11], 1000, b"after the join")]
            await svc.stop()
            await wait_until_async(lambda: not router.proxies["w0"].healthy, what="the worker's connection to drop")
            with pytest.raises(BusUnavailable, match="worker w0 did not take it"):
                logic.push_mids_nowait(1000, [1], b"lost?")
        finally:
            await router.proxies["w0"].close()
            await svc.stop()

    run(main())
