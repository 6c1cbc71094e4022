"""imgate.client against a small in-test server that speaks goim v2 over TCP and WebSocket.

The fake server is built on imgate.core's server side (FrameDecoder, WebSocketHandshake,
WebSocketParser): its parser refuses unmasked client frames, so every passing WebSocket test also
proves that the client masks. End-to-end tests against a real imgate node live elsewhere.
"""
import asyncio
import json
import struct

import pytest
import uvloop

from imgate.client import (
    AuthRejected,
    ClientError,
    ClientTimeout,
    ConnectionClosed,
    Refused,
    _Protocol,
    _ws_client_frame,
    connect,
)
from imgate.client import Client as ClientClass
from polling import wait_until_async
from imgate.core import (
    WS_OP_BINARY,
    Frame,
    FrameDecoder,
    WebSocketError,
    WebSocketHandshake,
    WebSocketParser,
    encode_batch,
    encode_frame,
    encode_ws_close,
    encode_ws_frame,
    ws_unmask,
)

TRANSPORTS = ["tcp", "ws"]


LOOP = "asyncio"


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def loop_kind(request):
    """Every test runs on both event loops (uvloop is stricter about closed transports)."""
    global LOOP
    LOOP = request.param
    yield request.param
    LOOP = "asyncio"


def run(coro):
    if LOOP == "uvloop":
        return uvloop.run(asyncio.wait_for(coro, 60))
    return asyncio.run(asyncio.wait_for(coro, 60))


# -- the fake server ----------------------------------------------------------------------------

class FakeConn(asyncio.Protocol):
    def __init__(self, server, ws):
        self.server = server
        self.ws = ws
        self.hs = WebSocketHandshake() if ws else None
        self.parser = None
        self.decoder = FrameDecoder()
        self.received: list[Frame] = []
        self.messages: list[bytes] = []     # WebSocket data messages, unmasked by the parser
        self.auth: dict | None = None
        self.held: list[Frame] = []
        self.ws_error: WebSocketError | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.server.conns.append(self)

    def connection_lost(self, exc):
        if self in self.server.authed:
            self.server.authed.remove(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data):
        if self.ws:
            if self.parser is None:
                if not self.hs.feed(data):
                    return
                if self.server.bad_accept:
                    self.transport.write(self.hs.response.replace(b"Accept: ", b"Accept: x"))
                else:
                    self.transport.write(self.hs.response)
                if not self.hs.ok or self.hs.path != "/sub":
                    self.transport.close()
                    return
                self.parser = WebSocketParser(max_message=1 << 22)
                data = self.hs.leftover
            try:
                messages = self.parser.feed(data)
            except WebSocketError as e:
                self.ws_error = e
                self.transport.write(e.close_frame())
                self.transport.close()
                return
            out = self.parser.take_output()
            if out:
                self.transport.write(out)
            for _opcode, payload in messages:
                self.messages.append(payload)
                for frame in FrameDecoder(1 << 22).feed(payload):
                    self.handle(frame)
            if self.parser.closed:
                self.transport.close()
        else:
            for frame in self.decoder.feed(data):
                self.handle(frame)

    # what the server does with each request
    def handle(self, f: Frame):
        self.received.append(f)
        server = self.server
        if f.op == 7:
            self.auth = json.loads(f.body)
            verdict = server.on_auth(self.auth)
            if verdict == "close":
                self.transport.close()
            elif verdict:
                self.notice(verdict)
            else:
                server.authed.append(self)
                self.send(encode_frame(8, f.seq, server.auth_reply))
        elif f.op == 2:
            self.send(encode_frame(3, f.seq if server.echo_seq else 0,
                                   struct.pack(">i", len(server.authed))))
        elif f.op == 4:
            if f.body.startswith(b"hold"):
                # answer held requests in reverse order once two arrived
                self.held.append(f)
                if len(self.held) == 2:
                    for h in reversed(self.held):
                        self.send(encode_frame(5, h.seq, b"re:" + h.body))
                    self.held.clear()
            else:
                self.send(encode_frame(5, f.seq, b"re:" + f.body))
        elif f.op in (12, 14, 16, 18, 20):
            refusal = server.refuse.get(f.body)
            if refusal is not None:  # what imgate answers when it refuses
                body = json.dumps({"ok": False, "error": refusal}).encode()
            else:
                body = server.room_reply
            self.send(encode_frame(f.op + 1, f.seq if server.echo_seq else 0, body))
        elif f.op == 50:  # an IM-style request with a non-standard reply op
            self.send(encode_frame(1000, 0, b"push-before-reply"))
            self.send(encode_frame(51, f.seq, f.body[::-1]))

    # server -> client
    def send(self, frame: bytes):
        self.transport.write(encode_ws_frame(frame) if self.ws else frame)

    def push(self, op, body=b"", seq=0):
        self.send(encode_frame(op, seq, body))

    def push_batch(self, frames, wrap=None):
        """goim style: over TCP the inner frames go straight on the stream; over WS as one op 9."""
        if self.ws or wrap:
            self.send(encode_batch(frames))
        else:
            self.transport.write(b"".join(frames))

    def notice(self, reason, reconnect=False):
        self.send(encode_frame(6, 0, json.dumps({"reason": reason, "reconnect": reconnect})))
        if self.ws:
            self.transport.write(encode_ws_close(1000))
        self.transport.close()


class FakeServer:
    def __init__(self):
        self.conns: list[FakeConn] = []
        self.authed: list[FakeConn] = []
        self.reject: dict[int, str] = {}     # mid -> reason of the op-6 notice
        self.close_mids: set[int] = set()     # close without a notice
        self.auth_reply = b""
        self.echo_seq = True
        self.bad_accept = False
        self.refuse: dict[bytes, str] = {}    # request body of ops 12-20 -> error of an "ok": false reply
        self.room_reply = b""                 # reply body when not refused (goim: empty)

    def on_auth(self, body):
        mid = body.get("mid")
        if mid in self.close_mids:
            return "close"
        return self.reject.get(mid)

    async def start(self):
        loop = asyncio.get_running_loop()
        self.tcp = await loop.create_server(lambda: FakeConn(self, False), "127.0.0.1", 0)
        self.ws = await loop.create_server(lambda: FakeConn(self, True), "127.0.0.1", 0)
        return self

    def url(self, kind, path="/sub"):
        srv = self.tcp if kind == "tcp" else self.ws
        port = srv.sockets[0].getsockname()[1]
        return f"tcp://127.0.0.1:{port}" if kind == "tcp" else f"ws://127.0.0.1:{port}{path}"

    def conn_of(self, mid) -> FakeConn:
        return next(c for c in self.conns if c.auth and c.auth.get("mid") == mid)

    async def stop(self):
        for c in self.conns:
            c.transport.abort()
        self.tcp.close()
        self.ws.close()


async def with_server(body, kind, **server_opts):
    server = await FakeServer().start()
    for name, value in server_opts.items():
        setattr(server, name, value)
    try:
        return await body(server, server.url(kind))
    finally:
        await server.stop()


async def until(predicate):
    await wait_until_async(predicate, interval=0.005, what="the fake server or the client to get there")


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


# -- raw bytes, masking, WebSocket details ------------------------------------------------------

def test_send_raw_tcp_is_written_as_is():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        wire = encode_frame(4, 99, b"raw") + encode_frame(4, 100, b"raw2")
        client.send_raw(wire[:5])
        await asyncio.sleep(0.02)
        client.send_raw(wire[5:])
        await until(lambda: len(conn.received) == 3)
        assert [(f.seq, f.body) for f in conn.received[1:]] == [(99, b"raw"), (100, b"raw2")]
        await client.close()
    run(with_server(body, "tcp"))


def test_ws_client_frames_are_masked():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        # the server's WebSocketParser refuses unmasked frames: these arrive, so they were masked
        client.send_raw(b"opaque bytes")
        client.send_frame(1000, b"x" * 70000)     # 64-bit length
        client.send_frame(1000, b"y" * 300)       # 16-bit length
        await until(lambda: len(conn.messages) == 4)
        assert conn.ws_error is None
        assert conn.messages[1] == b"opaque bytes"
        assert [f.body for f in conn.received[1:]] == [b"x" * 70000, b"y" * 300]
        await client.close()
    run(with_server(body, "ws"))


def test_ws_frame_encoding_masks_with_fresh_masks():
    payload = b"goim frame" * 3
    a, b = _ws_client_frame(payload), _ws_client_frame(payload)
    assert a[0] == 0x82 and a[1] == 0x80 | len(payload)
    assert a[2:6] != b[2:6]                                 # a new mask per frame
    assert ws_unmask(a[6:], a[2:6]) == payload
    assert payload not in a
    for n, hl in [(125, 2), (126, 4), (65535, 4), (65536, 10)]:
        frame = _ws_client_frame(b"z" * n)
        parser = WebSocketParser(max_message=1 << 20)
        assert parser.feed(frame) == [(WS_OP_BINARY, b"z" * n)]
        assert len(frame) == hl + 4 + n
    unmasked = encode_ws_frame(b"abc")
    with pytest.raises(WebSocketError):
        WebSocketParser().feed(unmasked)


def test_ws_large_server_frames():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        conn.push(1000, b"m" * 200)       # 16-bit length
        conn.push(1000, b"L" * 100000)    # 64-bit length
        conn.push_batch([encode_frame(1001, 0, b"b" * 40000), encode_frame(1001, 0, b"c" * 40000)])
        got = [await client.recv(timeout=2) for _ in range(4)]
        assert [len(f.body) for f in got] == [200, 100000, 40000, 40000]
        assert got[1].body == b"L" * 100000
        await client.close()
    run(with_server(body, "ws"))


def test_ws_ping_gets_a_masked_pong():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        conn.transport.write(encode_ws_frame(b"are you there", opcode=0x9))
        await until(lambda: conn.parser.pongs_received == 1)
        assert conn.parser.last_pong == b"are you there"
        await client.close()
    run(with_server(body, "ws"))


def test_ws_client_close_handshake():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        server_conn_closed = conn.closed
        await client.close()
        await asyncio.wait_for(server_conn_closed, 30)
        assert conn.parser.closed and conn.parser.close_code == 1000
        with pytest.raises(ConnectionClosed, match="closed by the client"):
            await client.recv()
        with pytest.raises(ConnectionClosed):
            client.send_frame(1000)
        await client.close()  # twice is fine
    run(with_server(body, "ws"))


def test_ws_server_close_frame_is_echoed():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        conn.transport.write(encode_ws_close(1001, "going away"))
        with pytest.raises(ConnectionClosed) as info:
            await client.recv(timeout=2)
        assert client.ws_close_code == 1001 and client.ws_close_reason == "going away"
        assert info.value.ws_code == 1001
        assert "going away" in info.value.reason
        await until(lambda: conn.parser.closed)
        assert conn.parser.close_code == 1001
    run(with_server(body, "ws"))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_protocol_error_from_server_closes(kind):
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        bad = bytearray(encode_frame(1000, 0, b"x"))
        bad[4:6] = b"\x00\x0f"  # headerLen 15
        conn.send(bytes(bad))
        with pytest.raises(ConnectionClosed, match="protocol error: .*headerLen"):
            await client.recv(timeout=2)
    run(with_server(body, kind))


def test_ws_message_with_two_frames_is_a_protocol_error():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        conn = server.conn_of(1)
        conn.transport.write(encode_ws_frame(encode_frame(1000, 0, b"a") + encode_frame(1000, 0)))
        with pytest.raises(ConnectionClosed, match="exactly one frame"):
            await client.recv(timeout=2)
    run(with_server(body, "ws"))


def test_bad_op9_batch_is_a_protocol_error():
    async def body(server, url):
        client = await connect(url, mid=1, heartbeat=None)
        server.conn_of(1).push(9, encode_frame(1000, 0, b"abc")[:-1])  # batch ends mid-frame
        with pytest.raises(ConnectionClosed, match="op-9 batch"):
            await client.recv(timeout=2)
    run(with_server(body, "tcp"))


# -- the WebSocket reader, fed deterministically ------------------------------------------------

class StubTransport:
    def __init__(self):
        self.out = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data):
        self.out += data

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def is_closing(self):
        return self.closed or self.aborted


def stub_ws():
    async def make():
        return ClientClass(asyncio.get_running_loop(), "ws://stub/sub", websocket=True,
                           timeout=1, max_body=1 << 20)
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(make())
    proto = _Protocol(client, 1 << 20, "dGhlIHNhbXBsZSBub25jZQ==")
    proto.ws_head = None  # past the upgrade
    proto.handshake.set_result(None)
    transport = StubTransport()
    proto.connection_made(transport)
    client._transport = transport
    client._proto = proto
    return loop, client, proto, transport


def server_frame(payload, opcode=0x2, fin=True):
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes([b0, n])
    elif n < 65536:
        head = bytes([b0, 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 127]) + struct.pack(">Q", n)
    return head + payload


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_ws_reader_any_chunking(step):
    loop, client, proto, transport = stub_ws()
    try:
        f1 = encode_frame(1000, 1, b"a" * 10)
        f2 = encode_frame(1000, 2, b"b" * 300)
        f3 = encode_frame(1000, 3, b"c" * 70000)
        f4 = encode_frame(1001, 4, b"fragmented message")
        wire = (server_frame(f1) + server_frame(f2) + server_frame(f3)
                + server_frame(f4[:5], fin=False) + server_frame(b"ping!", opcode=0x9)
                + server_frame(f4[5:12], opcode=0x0, fin=False)
                + server_frame(f4[12:], opcode=0x0))
        for i in range(0, len(wire), step):
            proto.data_received(wire[i:i + step])
        assert not proto.failed
        got = [client.recv_nowait() for _ in range(4)]
        assert [(f.op, f.seq, len(f.body)) for f in got] == [
            (1000, 1, 10), (1000, 2, 300), (1000, 3, 70000), (1001, 4, 18)]
        assert got[3].body == b"fragmented message"
        # the pong went out masked, with the ping's payload
        parser = WebSocketParser()
        assert parser.feed(bytes(transport.out)) == []
        assert parser.pongs_received == 1 and parser.last_pong == b"ping!"
    finally:
        loop.close()


@pytest.mark.parametrize("wire, message", [
    # (the wording is the core codec's: the client parses with WebSocketParser(client=True))
    (bytes([0x82, 0x81, 1, 2, 3, 4, 5]), "masked server frame"),
    (bytes([0xC2, 0x01, 0]), "RSV1 set without a negotiated extension"),
    (bytes([0x83, 0x00]), "reserved opcode 3"),
    (bytes([0x8B, 0x00]), "reserved opcode 11"),
    (bytes([0x09, 0x00]), "fragmented control frame"),
    (bytes([0x80, 0x00]), "continuation frame without a message in progress"),
    (bytes([0x02, 0x01, 0]) + bytes([0x82, 0x01, 0]), "new data frame while a fragmented message is in progress"),
    (bytes([0x82, 0x7F]) + struct.pack(">Q", 1 << 40), "exceeds max_message"),
    (server_frame(b"short"), "protocol error"),
])
def test_ws_reader_violations(wire, message):
    loop, client, proto, transport = stub_ws()
    try:
        proto.data_received(wire)
        assert proto.failed and transport.aborted
        assert message in client._fail_reason
    finally:
        loop.close()


def test_ws_reader_close_frame():
    loop, client, proto, transport = stub_ws()
    try:
        proto.data_received(server_frame(encode_frame(1000, 0, b"last"))
                            + server_frame(b"\x03\xe9bye", opcode=0x8)
                            + server_frame(encode_frame(1000, 0, b"ignored")))
        assert client.recv_nowait().body == b"last"
        assert client.recv_nowait() is None
        assert (client.ws_close_code, client.ws_close_reason) == (1001, "bye")
        assert transport.closed
        parser = WebSocketParser()
        parser.feed(bytes(transport.out))
        assert parser.closed and parser.close_code == 1001   # echoed, masked
    finally:
        loop.close()
