"""Room connection table over real loopback sockets, its output side: coalescing within a loop iteration and
a merge window, partial writes, slow consumers and bounded memory, final sends, failing transports."""

import asyncio
import gc
import socket
import struct
import tracemalloc

import pytest

from imgate.core import FrameDecoder, RoomTable, encode_frame
from polling import wait_until_async
from roomutil import (  # noqa: F401 (loop: a fixture)
    ManualClockLoop, close_all, loop, read_available, read_exact, rest_of_stream, tcp_pairs, ws_messages,
)

def test_coalescing_within_one_loop_iteration(loop):
    pairs = tcp_pairs(10)
    t = RoomTable(loop)

    async def scenario():
        for i, (s, _) in enumerate(pairs):
            t.add(i, s)
            t.join(i, "r")
        for n in range(30):
            t.broadcast("r", encode_frame(1000, n, b"x"))
        assert t.stats()["write_calls"] == 0, "nothing written before the loop turns"
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert t.stats()["write_calls"] == 10, "one write per connection for the whole iteration"

    loop.run_until_complete(scenario())
    for _, c in pairs:
        frames = FrameDecoder().feed(read_exact(c, 30 * 17))
        assert [f.seq for f in frames] == list(range(30))
    close_all(pairs)


def test_merge_window_delays_and_merges():
    """The window, not the loop iteration, decides when output leaves: on a clock the test moves."""
    loop = ManualClockLoop()
    pairs = tcp_pairs(2)
    t = RoomTable(loop, merge_window=0.05)

    async def turns(n=5):
        for _ in range(n):
            await asyncio.sleep(0)

    async def scenario():
        for i, (s, _) in enumerate(pairs):
            t.add(i, s)
            t.join(i, "r")
        t.broadcast("r", b"a")
        await turns()
        loop.now += 0.03
        t.broadcast("r", b"b")
        await turns()
        assert t.stats()["write_calls"] == 0, "0.03 s into a 0.05 s window: nothing written yet"
        loop.now += 0.021
        await turns()
        assert t.stats()["write_calls"] == 2, "the window has passed: one write per connection"

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert [rest_of_stream(s, c) for s, c in pairs] == [b"ab", b"ab"]
    close_all(pairs)


def test_big_payloads_survive_partial_writes(loop):
    """Output larger than the socket buffer goes out through add_writer, intact and in order."""
    (s, c), = tcp_pairs(1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    t = RoomTable(loop, max_pending=8 << 20)
    payloads = [bytes([n]) * 300_000 for n in range(1, 8)]
    received = bytearray()

    async def scenario():
        t.add("big", s)
        for p in payloads:
            t.send("big", p)
        await asyncio.sleep(0)
        assert t.pending("big") > 0, "the kernel could not take it all at once"

        def read_more():
            received.extend(read_available(c))
            return len(received) >= sum(map(len, payloads))

        await wait_until_async(read_more, what="every payload to arrive")
        assert t.pending("big") == 0

    loop.run_until_complete(scenario())
    assert bytes(received) == b"".join(payloads)
    s.close()
    c.close()


def test_slow_consumer_is_reported_and_memory_stays_flat(loop):
    """A client that never reads is cut off at its bound; others keep receiving; memory is flat."""
    pairs = tcp_pairs(3)
    slow_s, slow_c = pairs[0]
    slow_c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow_s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    overflowed = []
    t = RoomTable(loop, max_pending=64 * 1024, on_overflow=overflowed.append)
    frame = encode_frame(1000, 0, b"p" * 1000)
    readers_got = [0, 0]

    async def pump(rounds):
        for _ in range(rounds):
            for _ in range(20):
                t.broadcast("r", frame)
            await asyncio.sleep(0.001)
            for j, (_, c) in enumerate(pairs[1:]):
                readers_got[j] += len(read_available(c))

    async def scenario():
        for i, (s, _) in enumerate(pairs):
            t.add(i, s)
            t.join(i, "r")
        await pump(50)
        assert overflowed == [0], "the slow consumer was reported once"
        assert t.pending(0) == 0, "its queue was freed at once"
        tracemalloc.start()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await pump(200)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert after - before < 64 * 1024, f"memory grew by {after - before} bytes"
        assert overflowed == [0]
        assert t.stats()["overflows"] == 1
        # the owner now says goodbye and unregisters it
        t.send_final(0, encode_frame(6, 0, b'{"reason":"slow consumer","reconnect":true}'))
        assert 0 not in t and t.room_count("r") == 2
        def readers_caught_up():
            for j, (_, c) in enumerate(pairs[1:]):
                readers_got[j] += len(read_available(c))
            return readers_got == [250 * 20 * len(frame)] * 2

        await wait_until_async(readers_caught_up, what="the readers to get every frame")

    loop.run_until_complete(scenario())
    assert readers_got == [250 * 20 * len(frame)] * 2, "readers got every frame"
    close_all(pairs)


def test_send_final_keeps_the_stream_parseable(loop):
    """The last words follow the rest of a half-written frame, never cut into it."""
    (s, c), = tcp_pairs(1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    t = RoomTable(loop, max_pending=1 << 20)
    t.add(1, s)
    big = encode_frame(1000, 1, b"q" * 200_000)
    t.send(1, big)
    t.send(1, encode_frame(1000, 2, b"never sent"))
    t.flush()
    assert 0 < t.pending(1), "the first frame is half written"
    bye = encode_frame(6, 0, b'{"reason":"kicked","reconnect":false}')
    t.send_final(1, bye)
    assert 1 not in t
    s.shutdown(socket.SHUT_WR)
    got = read_exact(c, 1 << 21)
    # whatever reached the client is a prefix of: the whole big frame, then the op-6 frame
    assert got == (big + bye)[: len(got)]
    s.close()
    c.close()


def test_send_final_on_an_idle_connection_delivers_the_frame():
    (s, c), = tcp_pairs(1)
    t = RoomTable()
    t.add(1, s, websocket=True)
    bye = encode_frame(6, 0, b'{"reason":"shutdown","reconnect":true}')
    t.send_final(1, bye)
    assert ws_messages(read_exact(c, 2 + len(bye))) == [(2, bye)]
    s.close()
    c.close()


def test_write_error_is_reported(loop):
    (s, c), = tcp_pairs(1)
    errors = []
    t = RoomTable(loop, on_error=lambda cid, exc: errors.append((cid, type(exc))))
    t.add("gone", s)
    # the client vanishes with a reset
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()

    async def scenario():
        def send_until_the_reset_is_seen():
            t.send("gone", b"x" * 1000)
            return errors

        await wait_until_async(send_until_the_reset_is_seen, what="the write error to be reported", interval=0.005)

    loop.run_until_complete(scenario())
    assert errors and errors[0][0] == "gone" and issubclass(errors[0][1], OSError)
    assert not t.send("gone", b"more"), "nothing more is queued for a failed connection"
    t.remove("gone")
    s.close()


def test_transport_connections(loop):
    """A gateway that keeps asyncio transports (e.g. TLS) still gets coalesced, bounded output."""
    received = []

    class Client(asyncio.Protocol):
        def data_received(self, data):
            received.append(data)

    async def scenario():
        server_transports = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                server_transports.append(transport)

        srv = await loop.create_server(Server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        ct, _ = await loop.create_connection(Client, "127.0.0.1", port)
        await wait_until_async(lambda: server_transports, what="the server side of the connection")
        t = RoomTable(loop)
        t.add_transport("tls", server_transports[0], websocket=True)
        t.join("tls", "r")
        t.broadcast("r", b"one")
        t.broadcast("r", b"two")
        await wait_until_async(lambda: sum(map(len, received)) >= 10, what="both messages to arrive")
        assert t.stats()["write_calls"] == 1
        ct.close()
        srv.close()
        await srv.wait_closed()

    loop.run_until_complete(scenario())
    assert ws_messages(b"".join(received)) == [(2, b"one"), (2, b"two")]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_pending"):
        RoomTable(max_pending=0)
    with pytest.raises(ValueError, match="merge_window"):
        RoomTable(merge_window=-1)
    t = RoomTable()
    with pytest.raises(KeyError):
        t.send("nobody", b"x")
    assert t.broadcast("empty", b"x") == 0
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(ValueError, match="closed"):
        t.add(1, a)
    b.close()


def test_ws_data_gives_websocket_members_their_own_encoding():
    """An op-9 batch: TCP members get the inner frames, WebSocket members one op-9 frame."""
    from imgate.core import encode_batch

    pairs = tcp_pairs(2)
    t = RoomTable()
    try:
        t.add("tcp", pairs[0][0])
        t.add("ws", pairs[1][0], websocket=True)
        t.join("tcp", "r")
        t.join("ws", "r")
        inner = encode_frame(1000, 1, b"a") + encode_frame(1000, 2, b"b")
        batch = encode_batch([encode_frame(1000, 1, b"a"), encode_frame(1000, 2, b"b")])
        assert t.broadcast("r", inner, ws_data=batch) == 2
        assert t.send("ws", b"x", ws_data=b"y") and t.send_many(["tcp"], b"z", ws_data=b"w") == 1
        t.flush()
        assert read_exact(pairs[0][1], len(inner) + 1) == inner + b"z"
        assert ws_messages(read_exact(pairs[1][1], 2 + len(batch) + 3)) == [(2, batch), (2, b"y")]
    finally:
        close_all(pairs)


def test_overflow_keeps_the_half_written_frame_for_the_last_words(loop):
    """A slow consumer cut off mid-frame: the rest of that frame, then op 6. What its full socket does
    not take, send_final hands back for the owner to write once the socket drains."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    notice = encode_frame(6, 0, b'{"reason":"slow consumer","reconnect":true}')
    rests = []
    t = RoomTable(loop, max_pending=200_000, on_overflow=lambda cid: rests.append(t.send_final(cid, notice)))
    t.add(1, a)
    big = encode_frame(1000, 0, b"x" * 60000)
    t.send(1, big)
    t.flush()
    assert t.pending(1) > 0, "half written"
    for _ in range(10):  # a burst in one iteration: overflow
        if 1 not in t:
            break
        t.send(1, big)
    assert 1 not in t
    [rest] = rests
    assert rest, "the socket was full: the last words come back to the caller"
    assert rest == (big + notice)[-len(rest):], "what is owed is the end of the half-written frame and op 6"
    # the owner's part: write the rest as the peer reads, then FIN
    got = bytearray()
    while rest:
        got += read_available(b)
        try:
            rest = rest[a.send(rest):]
        except BlockingIOError:
            pass
    a.shutdown(socket.SHUT_WR)
    got += read_exact(b, 1 << 21)
    assert bytes(got) == big + notice, "the whole half-written frame, then the notice; the queued rest dropped"
    a.close()
    b.close()


def test_send_final_returns_nothing_when_everything_went_out():
    (s, c), = tcp_pairs(1)
    t = RoomTable()
    t.add(1, s)
    bye = encode_frame(6, 0, b'{"reason":"kicked","reconnect":false}')
    assert t.send_final(1, bye) == b""
    assert read_exact(c, len(bye)) == bye
    s.close()
    c.close()


def test_flush_survives_a_failing_transport(loop):
    """A transport whose write() raises is reported as failed; the table stays consistent."""
    errors = []

    class Broken:
        def is_closing(self):
            return False

        def write(self, data):
            raise RuntimeError("write after write_eof")

        def get_write_buffer_size(self):
            return 0

    t = RoomTable(loop, on_error=lambda cid, e: errors.append(cid))
    t.add_transport("x", Broken())
    a, b = socket.socketpair()
    t.add("ok", a)
    t.send("x", b"1")
    t.send("ok", b"2")
    t.flush()
    assert errors == ["x"]
    t.remove("x")
    t.send("ok", b"3")
    t.flush()
    assert read_exact(b, 2) == b"23"
    a.close()
    b.close()

