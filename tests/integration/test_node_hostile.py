"""End-to-end: a real node against hostile and broken clients, TCP and WebSocket: bad frames and bodies, the
closes the server decides (op 6 first), WebSocket messages that are not goim frames. The node keeps serving."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import pytest

from imgate import client as imclient
from imgate.core import FrameDecoder, encode_frame
from imgate.proxy.channel import S_OPEN

from helpers import run
from nodeutil import (
    NodeThread, assert_still_serving, auth_body, module_node, notice_of, raw_tcp, read_until_closed, recv_exact,
    recv_frame, urls,
)
from polling import wait_until, wait_until_async

# a handshake timeout far above what a raw test needs to authenticate, even on a busy machine
node = module_node(handshake_timeout=30.0, heartbeat_timeout=30.0, max_pending=256 * 1024)


# ---------------------------------------------------------------- bad input


def test_garbage_bytes_get_op6_and_node_keeps_serving(node):
    s = raw_tcp(node)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
    n = notice_of(read_until_closed(s))
    assert n["reason"].startswith("protocol error: headerLen must be 16") or "packLen" in n["reason"], n
    assert n["reconnect"] is False
    s.close()
    assert_still_serving(node)


def test_frame_before_auth(node):
    s = raw_tcp(node)
    s.sendall(encode_frame(2, 1))
    n = notice_of(read_until_closed(s))
    assert n == {"reason": "the first frame must be auth (op 7), got op 2", "reconnect": False}
    s.close()


def test_oversized_frame(node):
    received = []

    async def record(server, conn_id, mid, op, seq, body):
        received.append((mid, seq, body))
        return b"ok"

    node.node.logic.upstream_handler = record
    try:
        s = raw_tcp(node)
        s.sendall(encode_frame(7, 1, auth_body(mid=5)))
        assert FrameDecoder().feed(s.recv(4096))[0].op == 8
        # an upstream message and then a header announcing 10 MB, in one write
        s.sendall(encode_frame(4, 2, b"before") + struct.pack(">ihhii", 16 + 10_000_000, 16, 1, 4, 3))
        data = read_until_closed(s)
        assert "exceeds the limit" in notice_of(data)["reason"]
        wait_until(lambda: received, what="the upstream message to reach logic")
        assert received == [(5, 2, b"before")], "the message before the bad header still reached logic"
    finally:
        node.node.logic.upstream_handler = None
    s.close()
    assert_still_serving(node)


def test_bad_auth_body(node):
    for body, why in [(b"not json", "json"), (b'{"mid": "x"}', "mid"), (b'{"mid": 1, "room_id": "bad"}', "room_id")]:
        s = raw_tcp(node)
        s.sendall(encode_frame(7, 1, body))
        n = notice_of(read_until_closed(s))
        assert n["reason"].startswith("auth failed") and why in n["reason"].lower(), n
        s.close()


def test_auth_timeout():
    n = NodeThread(handshake_timeout=0.5).start()
    try:
        s = raw_tcp(n)
        notice = notice_of(read_until_closed(s))
        assert notice == {"reason": "auth timeout: the first frame must be auth (op 7)", "reconnect": False}
        s.close()
    finally:
        n.stop()


def test_heartbeat_timeout():
    n = NodeThread(heartbeat_timeout=2.0).start()
    try:
        async def go():
            # both connect together; only d beats (ten times per timeout period)
            c = await imclient.connect(n.tcp_url, mid=1, heartbeat=None)
            d = await imclient.connect(n.tcp_url, mid=2, heartbeat=0.2)
            with pytest.raises(imclient.ConnectionClosed):
                while True:
                    await c.recv(timeout=30)
            assert c.closed_reason == {"reason": "heartbeat timeout", "reconnect": True}
            # d has lived at least as long as c did, past the timeout that closed c: beating keeps it
            assert not d.closed and await d.heartbeat() == 0
            await d.close()

        run(go())
    finally:
        n.stop()


def test_heartbeats_are_swept_every_eighth_of_the_timeout_and_the_unopened_every_period():
    # handshake 1 s, heartbeat 8 s: the channels not open (or closing) are swept every 0.5 s, all of
    # them every 1 s (8 / 8); a raw connection that never authenticates, one that stops beating, one
    # that beats; the sweep's set of unopened channels holds exactly the ones not open, and empties
    n = NodeThread(handshake_timeout=1.0, heartbeat_timeout=8.0).start()
    proxy = n.node.proxy
    try:
        async def go():
            def unopened_are_the_channels_not_open():
                return proxy._unopened == {ch for ch in list(proxy._channels) if ch.state != S_OPEN}

            raw = raw_tcp(n)
            wait_until(lambda: len(proxy._channels) == 1, what="accepted")
            assert unopened_are_the_channels_not_open() and len(proxy._unopened) == 1
            assert notice_of(read_until_closed(raw))["reason"].startswith("auth timeout")
            raw.close()
            await wait_until_async(lambda: not proxy._channels, what="the raw connection gone")
            c = await imclient.connect(n.tcp_url, mid=1, heartbeat=None)
            d = await imclient.connect(n.tcp_url, mid=2, heartbeat=0.5)
            assert len(proxy._channels) == 2 and not proxy._unopened  # open: only the heartbeat sweep
            assert unopened_are_the_channels_not_open()
            # a unicast finds the open ones by conn id, and only those
            assert set(proxy.conns_delivery.conns) == set(proxy._by_conn_id) and len(proxy._by_conn_id) == 2
            with pytest.raises(imclient.ConnectionClosed):
                while True:
                    await c.recv(timeout=60)
            assert c.closed_reason == {"reason": "heartbeat timeout", "reconnect": True}
            assert not d.closed and await d.heartbeat() == 0
            await d.close()
            await wait_until_async(lambda: not proxy._channels and not proxy._unopened, what="all gone")
            assert not proxy.conns_delivery.conns and not proxy._by_conn_id

        run(go())
    finally:
        n.stop()


def test_websocket_upgrade_errors(node):
    port = node.node.proxy.ws_port

    def upgrade(path="/sub", version="13", key=None):
        key = key or base64.b64encode(os.urandom(16)).decode()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n").encode())
        data = read_until_closed(s)
        s.close()
        return data

    assert upgrade(path="/nope").startswith(b"HTTP/1.1 404")
    assert upgrade(version="8").startswith(b"HTTP/1.1 426")
    assert upgrade(key="short").startswith(b"HTTP/1.1 400")
    assert_still_serving(node)


def test_websocket_binary_message_with_a_bad_goim_header(node):
    async def go():
        c = await imclient.connect(node.ws_url, mid=55, heartbeat=None)
        c.send_raw(b"\x00\x00\x00\x05garbage-not-a-frame")  # inside a binary message: bad goim header
        with pytest.raises(imclient.ConnectionClosed):
            while True:
                await c.recv(timeout=30)
        assert c.closed_reason["reason"].startswith("protocol error")

    run(go())
    assert_still_serving(node)


def test_slow_consumer_is_closed_with_op6_and_others_keep_receiving(node):
    """A client that never reads is cut off at its bound with op 6 "slow consumer"; a reading member of
    the room gets everything."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up sooner
    s.connect(("127.0.0.1", node.node.proxy.tcp_port))
    s.settimeout(30)
    s.sendall(encode_frame(7, 1, auth_body(mid=61, room="slow://r")))
    # the op-8 reply: the server has authenticated it (and put it in the room)
    assert recv_frame(s).op == 8
    before = node.stats()["slow_consumer_closes"]

    async def go():
        reader = await imclient.connect(node.tcp_url, mid=62, room_id="slow://r", heartbeat=None)
        loop = asyncio.get_running_loop()
        body = b"x" * 32000
        got = 0
        # the kernel's buffers absorb some first; then the 256 KiB queue bound is passed
        for i in range(600):
            await loop.run_in_executor(None, node.http, "POST", "/goim/push/room?operation=1000&type=slow&room=r", body)
            m = await reader.recv(timeout=30)
            assert m.body == body
            got += 1
            if node.stats()["slow_consumer_closes"] > before:
                break
        assert node.stats()["slow_consumer_closes"] == before + 1, f"not closed after {got} pushes"
        # the others keep receiving
        await loop.run_in_executor(None, node.http, "POST", "/goim/push/room?operation=1000&type=slow&room=r", b"after")
        assert (await reader.recv(timeout=30)).body == b"after"
        await reader.close()

    run(go())
    # the slow client's stream: whole pushes up to where it was cut, the op-6 notice, then the end (FIN)
    data = read_until_closed(s)
    frames = FrameDecoder(max_body=1 << 20).feed(data)
    assert frames, "nothing after the auth reply"
    assert all(f.op == 1000 and f.body == b"x" * 32000 for f in frames[:-1]), [f.op for f in frames]
    assert frames[-1].op == 6, f"the stream ended without the op-6 notice (last op {frames[-1].op})"
    assert json.loads(frames[-1].body) == {"reason": "slow consumer", "reconnect": True}
    s.close()
    assert_still_serving(node)


def test_http_bad_parameters(node):
    cases = [
        ("POST", "/goim/push/room?operation=x&type=live&room=1", b"m", "operation"),
        ("POST", "/goim/push/room?operation=1000&room=1", b"m", "type"),
        ("POST", "/goim/push/mids?operation=1000&mids=a,b", b"m", "mids"),
        ("POST", "/goim/push/keys?operation=1000", b"m", "keys"),
        ("POST", "/goim/push/room?operation=1000&type=live&room=1", b"", "empty"),
        ("GET", "/goim/online/top?type=live&limit=-1", None, "limit"),
        ("GET", "/session", None, "uid"),
        ("GET", "/count?type=bogus", None, "type"),
        ("GET", "/nope", None, "no route"),
    ]
    for method, path, body, word in cases:
        status, reply = node.http(method, path, body)
        assert 400 <= status < 500, (path, status, reply)
        assert reply["code"] != 0 and word in reply["message"].lower(), (path, reply)
    status, _ = node.http("POST", "/goim/push/all?operation=1000", b"x" * (2 << 20))
    assert status == 413
    assert_still_serving(node)


def test_openapi_metrics_health(node):
    status, doc = node.http("GET", "/openapi.json")
    assert status == 200 and "/goim/push/room" in doc["paths"]
    status, text = node.http("GET", "/metrics")
    assert status == 200 and b"imgate_connections" in text and b"imgate_frames_in_total" in text
    status, reply = node.http("GET", "/healthz")
    assert status == 200 and reply["data"]["status"] == "ok"


# ---------------------------------------------------------------- refusals and the closes the server decides


def test_room_operations_refused_get_ok_false_replies_and_the_connection_keeps_working():
    """Ops 12/18/20 with an invalid room id, and 18 past max_rooms_per_conn: the 13/19/21 reply says
    "ok": false with the reason, nothing changes, the connection stays; imgate.client raises Refused."""
    n = NodeThread(max_rooms_per_conn=2).start()
    try:
        async def go():
            c = await imclient.connect(n.tcp_url, mid=1, room_id="lim://a", heartbeat=None)
            watcher = await imclient.connect(n.tcp_url, mid=2, room_id="lim://c", heartbeat=None)
            for op, reply_op in ((12, 13), (18, 19), (20, 21)):
                for bad in (b"no-scheme", b"://x", b"t://"):
                    r = await c.request(op, bad, reply_op=reply_op)
                    assert (r.op, r.seq) == (reply_op, r.seq)
                    assert json.loads(r.body) == {"ok": False, "error": f"room id must look like type://id, got {bad.decode()!r}"}
            for call in (c.change_room, c.join_room, c.leave_room):
                with pytest.raises(imclient.Refused, match="type://id"):
                    await call("bad")
            assert c.room_id == "lim://a" and await c.heartbeat() == 1, "still in lim://a alone"

            # the limit: lim://a (from auth) + lim://b is 2; a third join is refused and changes nothing
            r = await c.request(18, b"lim://b", reply_op=19)
            assert json.loads(r.body) == {"ok": True, "room_id": "lim://b"}
            r = await c.request(18, b"lim://c", reply_op=19)
            refusal = json.loads(r.body)
            assert refusal["ok"] is False and "max_rooms_per_conn" in refusal["error"], refusal
            with pytest.raises(imclient.Refused, match="max_rooms_per_conn"):
                await c.join_room("lim://c")
            assert await watcher.heartbeat() == 1, "the refused joins did not put c in lim://c"
            # change room swaps (leave one, join one), so it is not refused at the limit
            await c.change_room("lim://c")
            assert await watcher.heartbeat() == 2 and await c.heartbeat() == 2
            # leaving frees a place: the join refused before now succeeds
            r = await c.request(20, b"lim://b", reply_op=21)
            assert json.loads(r.body) == {"ok": True, "room_id": "lim://b"}
            await c.join_room("lim://d")
            status, reply = await asyncio.get_running_loop().run_in_executor(
                None, n.http, "POST", "/goim/push/room?operation=1000&type=lim&room=d", b"in d")
            assert status == 200, reply
            assert (await c.recv(timeout=30)).body == b"in d"
            await c.close()
            await watcher.close()

        run(go())
    finally:
        n.stop()


def test_session_lost_by_the_registry_is_registered_again_and_the_client_stays():
    """A heartbeat renews the session; if the registry no longer has it (expired during an outage, a
    cache fail-over) the proxy, which holds the open connection, registers it again: the client stays
    connected and a push by mid reaches it."""
    n = NodeThread(heartbeat_timeout=3.0).start()  # renewals at most every heartbeat_timeout / 3
    try:
        async def go():
            c = await imclient.connect(n.tcp_url, mid=501, heartbeat=None)
            conn_id = json.loads(c.auth_reply)["conn_id"]
            cache = n.node.cache

            def on_node(coro):
                return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, n.loop))

            assert await on_node(cache.del_session(501, conn_id))

            async def registered_after_a_beat():
                await c.heartbeat()
                found = await on_node(cache.sessions([501]))
                if [s.conn_id for s in found.get(501, [])] == [conn_id]:
                    return True
                await asyncio.sleep(0.2)
                return False

            await wait_until_async(registered_after_a_beat, what="the proxy to register the session again")
            status, reply = await asyncio.get_running_loop().run_in_executor(
                None, n.http, "POST", "/goim/push/mids?operation=1000&mids=501", b"still here")
            assert status == 200 and reply["data"]["targets"] == 1, reply
            assert (await c.recv(timeout=30)).body == b"still here"
            assert c.closed_reason is None
            await c.close()

        run(go())
    finally:
        n.stop()


def test_auth_with_the_registry_unreachable_is_closed_with_auth_unavailable(node):
    """Logic cannot register the session (its cache is down): op 6 "auth unavailable", reconnect true;
    the node keeps serving once the cache is back."""
    cache = node.node.cache

    async def down(*args, **kwargs):
        raise ConnectionError("injected: the session registry is unreachable")

    names = ("alloc_conn_id", "add_session")
    for name in names:
        setattr(cache, name, down)
    try:
        async def go():
            for url in urls(node):
                with pytest.raises(imclient.AuthRejected) as e:
                    await imclient.connect(url, mid=502, heartbeat=None)
                assert e.value.notice == {"reason": "auth unavailable", "reconnect": True}

        run(go())
    finally:
        for name in names:
            delattr(cache, name)
    assert_still_serving(node)


# ---------------------------------------------------------------- WebSocket messages that are not goim frames


def ws_open(node) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", node.node.proxy.ws_port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, f"closed during the upgrade: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def ws_client_message(payload: bytes, opcode: int) -> bytes:
    """One final, masked client frame (RFC 6455 5.2), written out by hand."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_server_messages(data: bytes) -> list[tuple[int, bytes]]:
    """The server's unmasked frames as (opcode, payload)."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b0 & 0x80 and not b1 & 0x80, "server frames are final and unmasked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack(">H", data[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack(">Q", data[i:i + 8])[0], i + 8
        out.append((b0 & 0x0F, data[i:i + n]))
        i += n
    return out


@pytest.mark.parametrize("bad, notice, close_code", [
    (ws_client_message(b"hello as text", 0x1),
     "protocol error: text messages are not supported; send binary goim frames", 1003),
    (ws_client_message(encode_frame(2, 2, b"body")[:10], 0x2),
     "protocol error: a WebSocket message must carry whole goim frames", 1002),
], ids=["text-message", "partial-frame"])
def test_websocket_message_that_is_not_whole_goim_frames_gets_op6_and_close(node, bad, notice, close_code):
    s = ws_open(node)
    s.sendall(ws_client_message(encode_frame(7, 1, auth_body(mid=57, room="")), 0x2))
    head = recv_exact(s, 2)  # the op-8 reply: one binary message (16-bit length once it passes 125)
    assert head[0] == 0x82 and head[1] <= 126, head
    n = head[1] if head[1] < 126 else struct.unpack(">H", recv_exact(s, 2))[0]
    assert [f.op for f in FrameDecoder().feed(recv_exact(s, n))] == [8]
    s.sendall(bad)
    messages = ws_server_messages(read_until_closed(s))
    s.close()
    assert [op for op, _ in messages] == [0x2, 0x8], messages
    bye = FrameDecoder().feed(messages[0][1])
    assert [f.op for f in bye] == [6] and json.loads(bye[0].body) == {"reason": notice, "reconnect": False}
    assert struct.unpack(">H", messages[1][1][:2])[0] == close_code
    assert_still_serving(node)
