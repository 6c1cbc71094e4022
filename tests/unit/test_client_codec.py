"""imgate.client against a small in-test server that speaks goim v2 over TCP and WebSocket.

The fake server is built on imgate.core's server side (FrameDecoder, WebSocketHandshake,
WebSocketParser): its parser refuses unmasked client frames, so every passing WebSocket test also
proves that the client masks. End-to-end tests against a real imgate node live elsewhere.
"""
import asyncio

import pytest

from fakegoim import TRANSPORTS, loop_kind, until, with_server  # noqa: F401 (loop_kind: autouse)
from helpers import run
from imgate.client import AuthRejected, ClientError, ClientTimeout, ConnectionClosed, Refused, connect
from imgate.core import WebSocketHandshake, encode_frame, encode_ws_frame


# -- auth handshake -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TRANSPORTS)
def test_auth_handshake(kind):
    async def body(server, url):
        server.auth_reply = b'{"key":"k1"}'
        client = await connect(url, mid=7, key="k1", room_id="live://1000", platform="web",
                               accepts=[1000, 1001], token="tok", heartbeat=None)
        conn = server.conn_of(7)
        assert conn.received[0].op == 7 and conn.received[0].seq >= 1
        assert conn.auth == {"mid": 7, "key": "k1", "room_id": "live://1000", "platform": "web",
                             "accepts": [1000, 1001], "token": "tok"}
        assert client.auth_reply == b'{"key":"k1"}'
        assert (client.mid, client.key, client.room_id) == (7, "k1", "live://1000")
        assert not client.closed
        await client.close()
        assert client.closed
    run(with_server(body, kind))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_auth_body_without_token_is_goims(kind):
    async def body(server, url):
        client = await connect(url, mid=3, heartbeat=None)
        assert server.conn_of(3).auth == {"mid": 3, "key": "", "room_id": "", "platform": "python",
                                          "accepts": []}
        await client.close()
    run(with_server(body, kind))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_auth_rejected_with_notice(kind):
    async def body(server, url):
        server.reject[66] = "token expired"
        with pytest.raises(AuthRejected) as info:
            await connect(url, mid=66, heartbeat=None)
        assert info.value.reason == "token expired"
        assert str(info.value) == "token expired"
        assert info.value.notice == {"reason": "token expired", "reconnect": False}
        assert isinstance(info.value, ClientError)
    run(with_server(body, kind))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_auth_rejected_by_close(kind):
    async def body(server, url):
        server.close_mids.add(9)
        with pytest.raises(AuthRejected) as info:
            await connect(url, mid=9, heartbeat=None)
        assert "closed" in info.value.reason
        assert info.value.notice is None
    run(with_server(body, kind))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_notice_before_auth(kind):
    async def main():
        class Kicker(asyncio.Protocol):
            """Sends op 6 at once (over WS after a proper 101) and closes."""
            def connection_made(self, t):
                self.t = t
                self.hs = WebSocketHandshake()
                if kind == "tcp":
                    self.kick()

            def data_received(self, data):
                if kind == "ws" and self.hs.feed(data):
                    self.t.write(self.hs.response)
                    self.kick()

            def kick(self):
                frame = encode_frame(6, 0, b'{"reason":"server is full","reconnect":true}')
                self.t.write(encode_ws_frame(frame) if kind == "ws" else frame)
                self.t.close()

        srv = await asyncio.get_running_loop().create_server(Kicker, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        url = f"tcp://127.0.0.1:{port}" if kind == "tcp" else f"ws://127.0.0.1:{port}/sub"
        with pytest.raises(AuthRejected) as info:
            await connect(url, heartbeat=None)
        assert info.value.reason == "server is full"
        assert info.value.notice == {"reason": "server is full", "reconnect": True}
        srv.close()
    run(main())


def test_auth_timeout():
    async def main():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)  # never answers
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(ClientTimeout, match="no auth reply within 0.2 s"):
            await connect(f"tcp://127.0.0.1:{port}", timeout=0.2)
        with pytest.raises(TimeoutError):
            await connect(f"ws://127.0.0.1:{port}/sub", timeout=0.2)
        srv.close()
    run(main())


def test_connect_errors():
    async def main():
        with pytest.raises(ValueError, match="url must be"):
            await connect("http://127.0.0.1:1/")
        with pytest.raises(ValueError, match="no host"):
            await connect("tcp://:3101")
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        srv.close()
        await srv.wait_closed()
        with pytest.raises(OSError):
            await connect(f"tcp://127.0.0.1:{port}")
    run(main())


def test_ws_upgrade_refused():
    async def main():
        class Refuser(asyncio.Protocol):
            def connection_made(self, t):
                t.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nno entry\n")

        srv = await asyncio.get_running_loop().create_server(Refuser, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(ClientError, match="websocket upgrade refused: HTTP 403 Forbidden: no entry"):
            await connect(f"ws://127.0.0.1:{port}/sub", heartbeat=None)
        srv.close()
    run(main())


def test_ws_upgrade_to_a_wrong_path():
    async def body(server, url):
        # imgate.core's handshake answers 101 for any path; the fake server then closes
        with pytest.raises(AuthRejected):
            await connect(url.replace("/sub", "/other"), heartbeat=None)
    run(with_server(body, "ws"))


def test_ws_bad_accept_key():
    async def body(server, url):
        with pytest.raises(ClientError, match="Sec-WebSocket-Accept"):
            await connect(url, heartbeat=None)
    run(with_server(body, "ws", bad_accept=True))


def test_ws_path_and_query_are_sent():
    async def body(server, url):
        client = await connect(url + "?room=1", mid=1, heartbeat=None)
        conn = server.conn_of(1)
        assert conn.hs.path == "/sub" and conn.hs.query == "room=1"
        assert conn.hs.headers["sec-websocket-version"] == "13"
        await client.close()
    run(with_server(body, "ws"))


# -- pushes, batches ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TRANSPORTS)
def test_pushes_in_order(kind):
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        for i in range(50):
            conn.push(1000 + i % 3, b"m%d" % i, seq=i)
        got = [await client.recv(timeout=2) for _ in range(50)]
        assert [(f.op, f.seq, f.body) for f in got] == [
            (1000 + i % 3, i, b"m%d" % i) for i in range(50)]
        await client.close()
    run(with_server(body, kind))


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_op9_batches_are_unpacked(kind, wrap):
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        conn.push(1000, b"before")
        conn.push_batch([encode_frame(1001, 0, b"a"), encode_frame(1002, 5, b""),
                         encode_frame(1003, 0, b"c" * 300)], wrap=wrap)
        conn.push(1000, b"after")
        got = [await client.recv(timeout=2) for _ in range(5)]
        assert [(f.op, f.seq, f.body) for f in got] == [
            (1000, 0, b"before"), (1001, 0, b"a"), (1002, 5, b""), (1003, 0, b"c" * 300),
            (1000, 0, b"after")]
        assert client.recv_nowait() is None
        await client.close()
    run(with_server(body, kind))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_async_iteration_and_server_notice(kind):
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        conn.push(1000, b"one")
        conn.push_batch([encode_frame(1000, 0, b"two"), encode_frame(1000, 0, b"three")])
        conn.notice("kicked by the admin", reconnect=True)
        bodies = [f.body async for f in client]
        assert bodies == [b"one", b"two", b"three"]
        assert client.closed
        assert client.closed_reason == {"reason": "kicked by the admin", "reconnect": True}
        with pytest.raises(ConnectionClosed) as info:
            await client.recv()
        assert info.value.reason == "kicked by the admin"
        assert info.value.notice == {"reason": "kicked by the admin", "reconnect": True}
        if kind == "ws":
            assert client.ws_close_code == 1000
        with pytest.raises(ConnectionClosed):
            await client.heartbeat()
        with pytest.raises(ConnectionClosed):
            client.send_raw(b"x")
    run(with_server(body, kind))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_server_close_wakes_a_waiting_recv(kind):
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        waiting = asyncio.ensure_future(client.recv())
        for _ in range(3):  # a few loop turns: the recv is now waiting
            await asyncio.sleep(0)
        assert not waiting.done()
        server.conn_of(1).transport.close()
        with pytest.raises(ConnectionClosed) as info:
            await waiting
        assert info.value.notice is None
        assert client.closed_reason is None
    run(with_server(body, kind))


def test_recv_timeout():
    async def body(server, url):
        client = await connect(url, heartbeat=None)
        with pytest.raises(ClientTimeout, match="no push within 0.05 s"):
            await client.recv(timeout=0.05)
        with pytest.raises(TimeoutError):
            await client.recv(timeout=0.01)
        server.conns[0].push(1000, b"late")
        assert (await client.recv(timeout=1)).body == b"late"
        await client.close()
    run(with_server(body, "tcp"))


def test_on_push_callback():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        got = []
        client.on_push = got.append
        server.conn_of(1).push_batch([encode_frame(1000, 0, b"%d" % i) for i in range(10)])
        await until(lambda: len(got) == 10)
        assert [f.body for f in got] == [b"%d" % i for i in range(10)]
        assert client.queued == 0
        await client.close()
    run(with_server(body, "tcp"))


# -- requests and replies -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", TRANSPORTS)
def test_heartbeat_returns_online_count(kind):
    async def body(server, url):
        a = await connect(url, mid=1, heartbeat=None)
        assert await a.heartbeat() == 1
        b = await connect(url, mid=2, heartbeat=None)
        c = await connect(url, mid=3, heartbeat=None)
        assert await a.heartbeat() == 3
        assert await c.heartbeat() == 3
        await b.close()
        await until(lambda: len(server.authed) == 2)
        assert await a.heartbeat() == 2
        with pytest.raises(ClientTimeout):  # heartbeat replies are not pushes
            await a.recv(timeout=0.05)
        await a.close()
        await c.close()
    run(with_server(body, kind))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_room_and_sub_requests(kind):
    async def body(server, url):
        client = await connect(url, mid=1, room_id="live://1", heartbeat=None)
        conn = server.conn_of(1)
        await client.change_room("live://2")
        assert client.room_id == "live://2"
        await client.join_room("chat://9")
        await client.leave_room("chat://9")
        await client.sub([1000, 1001])
        await client.unsub((1001,))
        reqs = [(f.op, f.body) for f in conn.received[1:]]
        assert reqs == [(12, b"live://2"), (18, b"chat://9"), (20, b"chat://9"),
                        (14, b"1000,1001"), (16, b"1001")]
        seqs = [f.seq for f in conn.received]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)   # auto-increasing
        with pytest.raises(ClientTimeout):  # no reply leaked into the push queue
            await client.recv(timeout=0.05)
        await client.close()
    run(with_server(body, kind))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_refused_room_and_sub_operations_raise_refused(kind):
    async def body(server, url):
        server.room_reply = b'{"ok": true, "room_id": "x"}'
        server.refuse = {b"bad": "room id must look like type://id, got 'bad'",
                         b"full://1": "connection is already in 2 rooms (the limit)",
                         b"1,x": "body must be comma-separated int32 operation numbers"}
        client = await connect(url, mid=1, room_id="live://1", heartbeat=None)
        for call, arg, op in [(client.join_room, "full://1", 18), (client.join_room, "bad", 18),
                              (client.leave_room, "bad", 20), (client.change_room, "bad", 12)]:
            with pytest.raises(Refused) as e:
                await call(arg)
            assert e.value.op == op and e.value.error == server.refuse[arg.encode()]
            assert e.value.reply == {"ok": False, "error": server.refuse[arg.encode()]}
            assert server.refuse[arg.encode()] in str(e.value)
        assert client.room_id == "live://1", "a refused change_room does not move the client's record"
        # Refused is a ClientError, and the connection is still usable afterwards
        assert issubclass(Refused, ClientError)
        server.refuse[b"7"] = "nope"
        for call in (client.sub, client.unsub):
            with pytest.raises(Refused, match="nope"):
                await call([7])
        await client.change_room("live://2")  # "ok": true passes
        assert client.room_id == "live://2"
        assert await client.heartbeat() == 1
        await client.close()
    run(with_server(body, kind))


def test_replies_without_seq_echo_resolve_oldest_request():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        assert await client.heartbeat() == 1
        await client.change_room("live://5")
        await client.sub([1000])
        with pytest.raises(ClientTimeout):
            await client.recv(timeout=0.05)
        await client.close()
    run(with_server(body, "tcp", echo_seq=False))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_send_matches_replies_by_seq(kind):
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        assert await client.send(b"hello") == b"re:hello"
        assert await client.send("text") == b"re:text"
        # the server answers these two in reverse order
        first, second = await asyncio.gather(client.send(b"hold-1"), client.send(b"hold-2"))
        assert (first, second) == (b"re:hold-1", b"re:hold-2")
        await client.close()
    run(with_server(body, kind))


def test_request_with_custom_reply_op_and_interleaved_push():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        reply = await client.request(50, b"abc")
        assert (reply.op, reply.body) == (51, b"cba")
        push = await client.recv(timeout=1)
        assert (push.op, push.body) == (1000, b"push-before-reply")
        await client.close()
    run(with_server(body, "ws"))


def test_request_timeout_cleans_up():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        with pytest.raises(ClientTimeout, match="no reply op 5 to op 4 within 0.1 s"):
            await client.send(b"hold-alone", timeout=0.1)
        assert client._pending == {}
        await client.close()
    run(with_server(body, "tcp"))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_automatic_heartbeat(kind):
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=0.03)
        conn = server.conn_of(1)
        await until(lambda: sum(f.op == 2 for f in conn.received) >= 3)
        with pytest.raises(ClientTimeout):      # the replies are consumed, not queued
            await client.recv(timeout=0.05)
        assert len(client._pending) <= 1
        await client.close()
        quiet = await connect(url, mid=2, heartbeat=None)
        await asyncio.sleep(0.1)
        assert not any(f.op == 2 for f in server.conn_of(2).received)
        await quiet.close()
    run(with_server(body, kind))

