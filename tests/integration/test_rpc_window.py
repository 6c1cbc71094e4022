"""The coordinator's pushes to a worker, over a real unix socket: the write window (one-way requests
that follow a write within it leave together at its end) and packed requests (consecutive pushes
share one frame, in order with the rest)."""

from __future__ import annotations

import asyncio

from helpers import run
from polling import wait_until_async
from test_rpc_oneway import RECORD, count_writes, recorder_server

from imgate.protocol import pb
from imgate.rpc import RpcClient
from imgate.rpc.packed import pack_push

PACKED = pb.PUSH_CONNS_PACKED


async def iterations(n: int = 10) -> None:
    """Let the loop run n iterations: anything written per iteration would have been written."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_one_way_requests_inside_the_window_wait_for_its_end_and_a_call_takes_them_along(tmp_path):
    async def main():
        rec, srv = await recorder_server(tmp_path)
        conn = await RpcClient.connect("", 0, "test.oneway", path=srv.path)
        conn.write_window = 60.0  # from now on: the HELLO written before opened no window
        try:
            writes = count_writes(conn)
            conn.send(RECORD, b"a")  # nothing written for a window: it goes in this iteration's write
            await wait_until_async(lambda: rec.bodies == [b"a"], what="the first request")
            conn.send(RECORD, b"b")
            conn.send(RECORD, b"c")
            await iterations()
            assert writes == [17] and rec.bodies == [b"a"]  # held: the window is a minute long
            # a call does not wait for the window, and what was held leaves with it, before it
            assert await conn.call(RECORD, b"d") == b"ok"
            assert rec.bodies == [b"a", b"b", b"c", b"d"]
            assert writes == [17, 51]
        finally:
            conn.close()
            await srv.stop()

    run(main())


def test_what_the_window_held_leaves_by_itself_when_it_ends(tmp_path):
    async def main():
        rec, srv = await recorder_server(tmp_path)
        conn = await RpcClient.connect("", 0, "test.oneway", path=srv.path, write_window=0.05)
        try:
            writes = count_writes(conn)
            for k in range(5):  # bursts: the first of each opens a window, the rest wait for its end
                burst = [f"{k}.{i}".encode() for i in range(10)]
                for i, b in enumerate(burst):
                    conn.send(RECORD, b)
                    if i == 0:
                        await iterations(2)
                await wait_until_async(lambda: rec.bodies[-10:] == burst, what=f"burst {k} to arrive")
            assert len(rec.bodies) == 50 and len(writes) <= 10  # at most two writes a burst, not ten
        finally:
            conn.close()
            await srv.stop()

    run(main())


def test_consecutive_packed_requests_share_one_frame_in_order_with_the_others(tmp_path):
    async def main():
        rec, srv = await recorder_server(tmp_path)
        srv._methods[PACKED] = srv._methods[RECORD]  # record the packed frames' bodies too
        conn = await RpcClient.connect("", 0, "test.oneway", path=srv.path)
        try:
            writes = count_writes(conn)
            p = [pack_push([i], 1000, f"m{i}".encode()) for i in range(5)]
            conn.send_packed(PACKED, p[0])
            conn.send_packed(PACKED, p[1])
            conn.send(RECORD, b"between")  # a plain request closes the packed frame: order
            conn.send_packed(PACKED, p[2])
            await wait_until_async(lambda: len(rec.bodies) == 3, what="three frames")
            assert rec.bodies == [p[0] + p[1], b"between", p[2]]
            assert len(writes) == 1  # and all of it in one write
            # a packed frame stays within the server's limit: past it a new one starts
            conn.max_request_body = len(p[3]) + len(p[4]) - 1
            conn.send_packed(PACKED, p[3])
            conn.send_packed(PACKED, p[4])
            await wait_until_async(lambda: len(rec.bodies) == 5, what="two more frames")
            assert rec.bodies[3:] == [p[3], p[4]]
        finally:
            conn.close()
            await srv.stop()

    run(main())


def test_a_packed_run_that_fills_the_write_batch_is_written_whole_and_takes_no_more(tmp_path):
    """A packed run that brings the buffer to ``write_batch`` frames is written at once: it must be
    encoded as a frame then, and what is packed after it must open a new frame, not join one already
    sent (lost, though counted as sent)."""
    async def main():
        rec, srv = await recorder_server(tmp_path)
        srv._methods[PACKED] = srv._methods[RECORD]
        for window in (0.0, 60.0):
            conn = await RpcClient.connect("", 0, "test.oneway", path=srv.path, write_batch=2)
            conn.write_window = window
            rec.bodies.clear()
            try:
                p = [pack_push([i], 1000, f"m{i}".encode()) for i in range(6)]
                conn.send(RECORD, b"x")
                conn.send_packed(PACKED, p[0])  # the second frame: written at once
                conn.send_packed(PACKED, p[1])  # a new frame after it
                conn.send(RECORD, b"y")         # the write_batch-th frame: both written
                conn.send_packed(PACKED, p[2])
                conn.send_packed(PACKED, p[3])
                assert await conn.call(RECORD, b"z") == b"ok"
                assert rec.bodies == [b"x", p[0], p[1], b"y", p[2] + p[3], b"z"], window
            finally:
                conn.close()
        await srv.stop()

    run(main())
