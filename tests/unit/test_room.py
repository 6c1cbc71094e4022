"""Room connection table over real loopback sockets: membership, broadcast, coalescing, slow consumers."""

import asyncio
import gc
import socket
import struct
import tracemalloc

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from imgate.core import FrameDecoder, RoomTable, encode_frame
from polling import wait_until_async


def tcp_pairs(n):
    """n connected loopback TCP pairs: (server_side, client_side), both non-blocking."""
    lsock = socket.create_server(("127.0.0.1", 0), backlog=n + 16)
    port = lsock.getsockname()[1]
    pairs = []
    try:
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = lsock.accept()
            s.setblocking(False)
            c.setblocking(False)
            pairs.append((s, c))
    finally:
        lsock.close()
    return pairs


def rest_of_stream(s, c):
    """Close the server side's writing half and read what the client still gets up to that end:
    whatever the table had sent (or still sends) shows up here, with no waiting on a clock."""
    s.shutdown(socket.SHUT_WR)
    return read_exact(c, 1 << 22, timeout=30)


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test says so: timers (call_later) are due
    exactly when the test has advanced past them."""

    def __init__(self):
        super().__init__()
        self.now = 1000.0

    def time(self):
        return self.now


def close_all(pairs):
    for s, c in pairs:
        s.close()
        c.close()


def read_available(sock, limit=1 << 22):
    out = bytearray()
    while len(out) < limit:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_exact(sock, n, timeout=5.0):
    sock.settimeout(timeout)
    try:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)
    finally:
        sock.setblocking(False)


def ws_messages(data):
    """Split unmasked server WebSocket frames into (opcode, payload)."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert not b1 & 0x80, "server frames are never masked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack(">H", data[i : i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack(">Q", data[i : i + 8])[0], i + 8
        assert b0 & 0x80, "FIN set"
        out.append((b0 & 0x0F, data[i : i + n]))
        i += n
    return out


@pytest.fixture
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


# ---------------------------------------------------------------- membership


def test_join_leave_move_and_counts():
    t = RoomTable()
    pairs = tcp_pairs(3)
    try:
        for i, (s, _) in enumerate(pairs):
            t.add(i, s)
        assert len(t) == 3 and 1 in t and 9 not in t
        assert t.join(0, "live://1") and t.join(1, "live://1") and t.join(2, "live://2")
        assert not t.join(0, "live://1"), "joining twice is a no-op"
        assert t.room_count("live://1") == 2 and t.room_count("nope") == 0
        assert sorted(t.room_members("live://1")) == [0, 1]
        assert t.rooms() == {"live://1": 2, "live://2": 1}
        t.join(0, "live://2")
        assert sorted(t.rooms_of(0)) == ["live://1", "live://2"]
        t.move(1, "live://1", "live://3")
        assert t.rooms() == {"live://1": 1, "live://2": 2, "live://3": 1}
        assert t.leave(0, "live://1") and not t.leave(0, "live://1")
        assert "live://1" not in t.rooms(), "empty rooms disappear"
        assert t.remove(2) and not t.remove(2)
        assert t.rooms() == {"live://2": 1, "live://3": 1}
        with pytest.raises(KeyError, match="unknown connection 2"):
            t.join(2, "x")
        with pytest.raises(KeyError, match="already registered"):
            t.add(0, pairs[0][0])
    finally:
        close_all(pairs)


def test_rooms_per_connection_are_bounded():
    t = RoomTable(max_rooms_per_conn=3)
    a, b = socket.socketpair()
    try:
        t.add("c", a)
        for r in range(3):
            t.join("c", r)
        with pytest.raises(ValueError, match="already in 3 rooms"):
            t.join("c", 99)
    finally:
        a.close()
        b.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["join", "leave", "move", "remove", "add"]),
                          st.integers(0, 7), st.integers(0, 3), st.integers(0, 3)), max_size=80))
def test_membership_matches_a_model(ops):
    """Swap-remove bookkeeping stays right under any sequence of joins, leaves, moves and removes."""
    socks = [socket.socketpair() for _ in range(8)]
    try:
        t = RoomTable()
        model = {}
        for i in range(8):
            t.add(i, socks[i][0])
            model[i] = set()
        for op, cid, r1, r2 in ops:
            if op == "add":
                if cid not in model:
                    t.add(cid, socks[cid][0])
                    model[cid] = set()
                continue
            if cid not in model:
                continue
            if op == "join":
                assert t.join(cid, r1) == (r1 not in model[cid])
                model[cid].add(r1)
            elif op == "leave":
                assert t.leave(cid, r1) == (r1 in model[cid])
                model[cid].discard(r1)
            elif op == "move":
                t.move(cid, r1, r2)
                model[cid].discard(r1)
                model[cid].add(r2)
            else:
                t.remove(cid)
                del model[cid]
        expected = {}
        for cid, rooms in model.items():
            assert sorted(t.rooms_of(cid)) == sorted(rooms)
            for r in rooms:
                expected.setdefault(r, set()).add(cid)
        assert t.rooms() == {r: len(m) for r, m in expected.items()}
        for r, members in expected.items():
            assert sorted(t.room_members(r)) == sorted(members)
    finally:
        for a, b in socks:
            a.close()
            b.close()


# ---------------------------------------------------------------- delivery


def test_broadcast_reaches_each_member_once_in_order():
    pairs = tcp_pairs(50)
    t = RoomTable()
    try:
        for i, (s, _) in enumerate(pairs):
            t.add(i, s)
            t.join(i, "room" if i % 5 else "other")
        frames = [encode_frame(1000, n, b"msg-%d" % n) for n in range(20)]
        for f in frames:
            assert t.broadcast("room", f) == 40
        t.flush()
        assert t.stats()["write_calls"] == 40, "20 frames went out in one write per member"
        for i, (s, c) in enumerate(pairs):
            expected = b"".join(frames) if i % 5 else b""
            assert rest_of_stream(s, c) == expected, "each frame once for members, nothing for others"
    finally:
        close_all(pairs)


def test_frames_are_encoded_once_per_kind_for_websocket_members():
    pairs = tcp_pairs(4)
    t = RoomTable()
    try:
        for i, (s, _) in enumerate(pairs):
            t.add(i, s, websocket=i >= 2)
            t.join(i, "r")
        f1 = encode_frame(1000, 1, b"a" * 10)
        f2 = encode_frame(1000, 2, b"b" * 300)  # 16-bit WebSocket length
        t.broadcast("r", f1)
        t.broadcast("r", f2)
        t.flush()
        for i, (_, c) in enumerate(pairs):
            if i < 2:
                assert read_exact(c, len(f1) + len(f2)) == f1 + f2
            else:
                data = read_exact(c, 2 + len(f1) + 4 + len(f2))
                assert ws_messages(data) == [(2, f1), (2, f2)], "one binary message per frame"
    finally:
        close_all(pairs)


def test_users_index_and_send_users():
    pairs = tcp_pairs(5)
    t = RoomTable()
    try:
        for i, (s, _) in enumerate(pairs):
            t.add(i, s)
        # user 7 has conns 0, 1 and 2 (1 filters ops), user 8 has conn 3, conn 4 has no user
        for conn, user in ((0, 7), (1, 7), (2, 7), (3, 8)):
            t.set_user(conn, user)
        t.set_accepts(1, [1001])
        assert t.users() == 2 and sorted(t.user_conns(7)) == [0, 1, 2] and t.user_of(4) is None
        assert t.send_users([7], b"a", op=1000) == 2            # 1 does not accept 1000
        assert t.send_users([7, 8, 7, 99], b"b") == 4            # each conn once, unknown user skipped
        t.flush()
        t.set_user(2, 8)                                         # moves to another user
        assert sorted(t.user_conns(7)) == [0, 1] and sorted(t.user_conns(8)) == [2, 3]
        t.remove(0)                                              # leaves the index with the table
        t.set_user(3, None)
        assert t.user_conns(7) == [1] and t.user_conns(8) == [2] and t.users() == 2
        assert t.send_users([7, 8], b"c") == 2
        t.flush()
        t.remove(1)
        t.remove(2)
        assert t.users() == 0 and t.send_users([7, 8], b"d") == 0
        t.flush()
        got = [rest_of_stream(s, c) for s, c in pairs]
        assert got[0] == b"ab" and got[1] == b"bc" and got[2] == b"abc" and got[3] == b"b" and got[4] == b""
        with pytest.raises(KeyError):
            t.set_user("ghost", 1)
    finally:
        close_all(pairs)


def test_unicast_multicast_all_and_accepts_filter():
    pairs = tcp_pairs(4)
    t = RoomTable()
    try:
        for i, (s, _) in enumerate(pairs):
            t.add(i, s)
            t.join(i, "r")
        t.set_accepts(1, [1001, 1000])
        assert t.accepts(1) == [1000, 1001] and t.accepts(0) is None
        assert t.send(0, b"uni", op=5000)
        assert not t.send(1, b"filtered", op=5000)
        assert t.send_many([2, 3, "ghost"], b"multi") == 2
        assert t.broadcast("r", b"room1001", op=1001) == 4
        assert t.broadcast("r", b"room7", op=7) == 3
        assert t.broadcast_all(b"all") == 4
        t.flush()
        t.set_accepts(1, None)
        assert t.send(1, b"x", op=5000)
        t.flush()
        got = [rest_of_stream(s, c) for s, c in pairs]
        assert got[0] == b"uni" + b"room1001" + b"room7" + b"all"
        assert got[1] == b"room1001" + b"all" + b"x"
        assert got[2] == got[3] == b"multi" + b"room1001" + b"room7" + b"all"
    finally:
        close_all(pairs)


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
