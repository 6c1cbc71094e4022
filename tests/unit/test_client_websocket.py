"""imgate.client's WebSocket side: masking, pings and closes, the reader fed deterministically, protocol
errors; against the fake server of fakegoim.py, and against a stub transport."""
import asyncio
import struct

import pytest

from fakegoim import TRANSPORTS, loop_kind, until, with_server  # noqa: F401 (loop_kind: autouse)
from helpers import run
from imgate.client import Client, ConnectionClosed, _Protocol, _ws_client_frame, connect
from imgate.core import (
    WS_OP_BINARY,
    WebSocketError,
    WebSocketParser,
    encode_frame,
    encode_ws_close,
    encode_ws_frame,
    ws_unmask,
)


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
        return Client(asyncio.get_running_loop(), "ws://stub/sub", websocket=True,
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

