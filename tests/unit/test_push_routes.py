"""The compiled push-by-mid route against the interpreted handler it stands in front of.

For any query string and body, ``PushMidsRoute`` must answer what the general handler answers (status,
body, the HttpError raised) and make the same call to logic; it only takes the plain requests itself.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgate.core import FrameDecoder, RoomTable, encode_frame
from polling import wait_until
from imgate.http.messages import HttpError, Response
from imgate.http.server import Request
from imgate.logic import http_api
from imgate.logic._push_routes import PushMidsRoute


class FakeLogic:
    pushes_wait = False

    def __init__(self):
        self.calls = []

    def push_mids_nowait(self, op, mids, body):
        self.calls.append((op, list(mids), body))
        if 666 in mids:
            raise ValueError("no such user: 666")
        if 777 in mids:
            raise RuntimeError("a bug")
        return len(mids)

    def push_keys_nowait(self, op, keys, body):
        return len(keys)

    def __getattr__(self, name):  # the routes this test does not call
        return lambda *a: None


def handlers():
    logic = FakeLogic()
    router = http_api.build_routes(logic)
    route = router.resolve("POST", "/goim/push/mids")
    assert isinstance(route, PushMidsRoute)
    return logic, route


def answer(fn, req):
    try:
        resp = fn(req)
    except HttpError as e:
        return ("error", e.status, e.message)
    except RuntimeError as e:
        return ("bug", str(e))
    assert isinstance(resp, Response)
    return (resp.status, resp.body)


NUMBERS = st.one_of(st.integers(0, 10**12).map(str), st.sampled_from(["", "-1", "+2", "1e3", "٣", "00", "9" * 19,
                                                                        "2147483648", "666", "777", " 5", "5 "]))
QUERIES = st.one_of(
    st.builds(lambda a, b: f"operation={a}&mids={b}", NUMBERS, NUMBERS),
    st.builds(lambda a, b: f"mids={b}&operation={a}", NUMBERS, NUMBERS),
    st.builds(lambda a, b, c: f"operation={a}&mids={b},{c}", NUMBERS, NUMBERS, NUMBERS),
    st.builds(lambda a, b: f"operation={a}&mids={b}&mids={b}", NUMBERS, NUMBERS),
    st.builds(lambda a, b: f"operation={a}&mids={b}&x=1", NUMBERS, NUMBERS),
    st.builds(lambda a: f"operation={a}", NUMBERS),
    st.builds(lambda a, b: f"operation={a}&mids=%3{b}", NUMBERS, NUMBERS),
    st.text(alphabet="opeatinmds=&,0123456789%+ ", max_size=40),
)


@settings(max_examples=800, deadline=None)
@given(QUERIES, st.sampled_from([b"", b"x", b"hello" * 10]))
def test_compiled_route_answers_as_the_general_handler(qs, body):
    logic_a, route = handlers()
    logic_b, other = handlers()
    req = Request("POST", "/goim/push/mids", qs, {}, body)
    assert answer(route, req) == answer(other.general, req)
    assert logic_a.calls == logic_b.calls


def test_plain_request_is_answered_by_the_route_itself():
    logic, route = handlers()
    resp = route(Request("POST", "/goim/push/mids", "operation=1000&mids=42", {}, b"hi"))
    assert (resp.status, resp.body) == (200, b'{"code":0,"message":"","data":{"targets":1}}')
    assert logic.calls == [(1000, [42], b"hi")]
    with pytest.raises(HttpError) as e:
        route(Request("POST", "/goim/push/mids", "mids=666&operation=1", {}, b"x"))
    assert e.value.status == 400 and "666" in e.value.message


# -- the embedded node's route: the push through logic to the proxy's table


class DirectLogic:
    """Logic with a local proxy, as the embedded node has: ``push_mids_nowait`` is what the real one
    comes down to (logic's and the proxy's push counters, the sessions' connections,
    ``RoomTable.send_many``)."""

    pushes_wait = False

    def __init__(self, loop=None):
        self.table = RoomTable(loop)  # without a loop the test flushes
        self.counters = {"pushes": 0}
        self.proxy_counters = {"pushes": 0}
        self.socks = []
        self.conns = {}  # user -> its connections
        # user 1: one TCP conn; 2: two conns; 3: a conn accepting op 1000 only; 4: a WebSocket conn
        for lid, (user, ws, accepts) in enumerate([(1, False, None), (2, False, None), (2, False, None),
                                                   (3, False, [1000]), (4, True, None)]):
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            self.socks += [a, b]
            self.table.add(lid, a, websocket=ws)
            self.conns.setdefault(user, []).append(lid)
            if accepts:
                self.table.set_accepts(lid, accepts)

    def push_mids_nowait(self, op, mids, body):
        self.counters["pushes"] += 1
        self.proxy_counters["pushes"] += 1
        lids = [lid for mid in dict.fromkeys(mids) for lid in self.conns.get(mid, ())]
        return self.table.send_many(lids, encode_frame(op, 0, body), op) if lids else 0

    def push_keys_nowait(self, op, keys, body):
        return 0

    def received(self):
        """What each connection's client got."""
        self.table.flush()
        out = []
        for b in self.socks[1::2]:
            try:
                out.append(b.recv(1 << 16))
            except BlockingIOError:
                out.append(b"")
        return out

    def close(self):
        for s in self.socks:
            s.close()

    def __getattr__(self, name):
        return lambda *a: None


def direct_route():
    logic = DirectLogic()
    route = http_api.build_routes(logic).resolve("POST", "/goim/push/mids")
    assert isinstance(route, PushMidsRoute)
    return logic, route


USER_QUERIES = st.builds(
    lambda op, mid, swap: f"mids={mid}&operation={op}" if swap else f"operation={op}&mids={mid}",
    st.sampled_from(["1000", "1001", "7", "0", "", "x"]),
    st.sampled_from(["1", "2", "3", "4", "5", "0", "2,2", "1,4", ""]),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(USER_QUERIES, QUERIES), st.sampled_from([b"", b"x", b"hello" * 10]))
def test_direct_route_pushes_as_logic_would(qs, body):
    (la, route), (lb, other) = direct_route(), direct_route()
    try:
        req = Request("POST", "/goim/push/mids", qs, {}, body)
        assert answer(route, req) == answer(other.general, req)
        assert (la.counters, la.proxy_counters) == (lb.counters, lb.proxy_counters)
        assert la.received() == lb.received()
    finally:
        la.close()
        lb.close()


def test_direct_route_reaches_every_device_of_the_user():
    logic, route = direct_route()
    try:
        resp = route(Request("POST", "/goim/push/mids", "operation=1000&mids=2", {}, b"hi"))
        assert resp.json() == {"code": 0, "message": "", "data": {"targets": 2}}
        got = logic.received()
        frame = encode_frame(1000, 0, b"hi")
        assert got[1] == got[2] == frame and got[0] == got[3] == got[4] == b""
        assert logic.counters["pushes"] == logic.proxy_counters["pushes"] == 1
        # op 1001 is not among user 3's accepted ops: counted as a push, reaching nobody
        resp = route(Request("POST", "/goim/push/mids", "operation=1001&mids=3", {}, b"hi"))
        assert resp.json()["data"] == {"targets": 0} and logic.received() == [b""] * 5
    finally:
        logic.close()


def test_direct_route_writes_at_once_and_keeps_order():
    loop = asyncio.new_event_loop()
    logic = DirectLogic(loop)
    route = http_api.build_routes(logic).resolve("POST", "/goim/push/mids")
    client = logic.socks[1]  # user 1's only connection
    dec = FrameDecoder()

    def push(body):
        return route(Request("POST", "/goim/push/mids", "operation=1000&mids=1", {}, body))

    def drain():
        loop.run_until_complete(asyncio.sleep(0.001))  # let the loop flush and serve its writers
        out = []
        while True:
            try:
                out += [(f.op, f.body) for f in dec.feed(client.recv(1 << 20))]
            except BlockingIOError:
                return out

    def collect(n):
        """The next n frames the client gets (and, read at the same time, anything extra)."""
        got = []

        def enough():
            got.extend(drain())
            return len(got) >= n

        wait_until(enough, what=f"{n} frames to reach the client", interval=0)
        return got

    try:
        # nothing queued for the connection: the push is on its socket before the loop runs again
        assert push(b"now").status == 200
        assert [(f.op, f.body) for f in dec.feed(client.recv(1 << 16))] == [(1000, b"now")]
        # a burst to one user in one go: written at once for the first, the rest in one flush
        calls = logic.table.write_calls
        for i in range(50):
            push(b"%d" % i)
        assert logic.table.write_calls - calls <= 5
        assert collect(50) == [(1000, b"%d" % i) for i in range(50)]
        # something queued ahead (not yet flushed): the push waits behind it
        logic.table.send(0, encode_frame(5, 0, b"ahead"))
        push(b"behind")
        assert collect(2) == [(5, b"ahead"), (1000, b"behind")]
        # a client that does not read: a short write arms the writer, the rest follows in order
        logic.socks[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        logic.socks[1].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        big = b"y" * 5000  # 40 of them stay within the table's max_pending: no overflow
        sent = [push(big + b"%d" % i) for i in range(40)]
        assert all(r.status == 200 for r in sent) and logic.table.pending(0) > 0
        assert collect(40) == [(1000, big + b"%d" % i) for i in range(40)]
        assert logic.table.pending(0) == 0
    finally:
        logic.close()
        loop.close()
