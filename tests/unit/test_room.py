"""Room connection table over real loopback sockets: membership, broadcast, unicast, multicast (its output
queues, coalescing and slow consumers: test_room_output.py)."""

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgate.core import RoomTable, encode_frame
from roomutil import close_all, read_exact, rest_of_stream, tcp_pairs, ws_messages

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
