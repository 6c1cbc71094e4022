"""RFC 6455 opening handshake, server side (imgate._core.ws_handshake through imgate._core.websocket):
the accept key against the RFC's example, good and bad upgrade requests, hostile bytes."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgate._core.websocket import WS_OP_BINARY, WebSocketHandshake, WebSocketParser, ws_accept_key
from test_websocket import client_frame


RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3


def test_accept_key_rfc_example():
    assert ws_accept_key(RFC_KEY) == RFC_ACCEPT
    assert ws_accept_key(RFC_KEY.encode()) == RFC_ACCEPT


def request(method="GET", target="/sub", version="1.1", headers=None, drop=()):
    base = {
        "Host": "server.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    base.update(headers or {})
    lines = [f"{method} {target} HTTP/{version}"]
    lines += [f"{k}: {v}" for k, v in base.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_response(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def test_valid_handshake():
    hs = WebSocketHandshake()
    assert hs.feed(request(target="/sub?room=live://1000"))
    assert hs.ok and hs.status == 101 and hs.error is None
    assert hs.path == "/sub" and hs.query == "room=live://1000" and hs.method == "GET"
    assert hs.headers["sec-websocket-key"] == RFC_KEY
    assert hs.response == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + RFC_ACCEPT.encode()
                           + b"\r\n\r\n")
    assert hs.leftover == b""


def test_handshake_case_insensitive_tokens_and_lists():
    hs = WebSocketHandshake()
    hs.feed(request(headers={"Upgrade": "WebSocket", "Connection": "keep-alive, UPGRADE"}))
    assert hs.ok


def test_handshake_split_over_many_feeds_with_leftover():
    frame = client_frame(b"early", WS_OP_BINARY)
    data = request() + frame
    hs = WebSocketHandshake()
    done = [hs.feed(data[i:i + 1]) for i in range(len(data))]
    first = done.index(True)
    assert not any(done[:first]) and len(request()) - 1 == first
    assert hs.ok
    assert hs.leftover == frame
    assert WebSocketParser().feed(hs.leftover) == [(WS_OP_BINARY, b"early")]


def test_handshake_leftover_in_one_chunk():
    hs = WebSocketHandshake()
    assert hs.feed(request() + b"\x81\x80rest")
    assert hs.ok and hs.leftover == b"\x81\x80rest"


def test_handshake_not_done_until_blank_line():
    hs = WebSocketHandshake()
    assert not hs.feed(request()[:-2])
    assert hs.response == b"" and not hs.ok and hs.status == 0
    assert hs.feed(b"\r\n")
    assert hs.ok


BAD_REQUESTS = [
    (request(method="POST"), 405, "method POST not allowed"),
    (request(version="1.0"), 400, "HTTP/1.1 required"),
    (request(drop=("Upgrade",)), 426, "missing Upgrade: websocket header"),
    (request(headers={"Upgrade": "h2c"}), 400, "Upgrade header does not name websocket"),
    (request(drop=("Connection",)), 400, "Connection header lacks the upgrade token"),
    (request(headers={"Connection": "keep-alive"}), 400, "Connection header lacks the upgrade token"),
    (request(drop=("Sec-WebSocket-Key",)), 400, "missing or invalid Sec-WebSocket-Key"),
    (request(headers={"Sec-WebSocket-Key": "c2hvcnQ="}), 400, "missing or invalid Sec-WebSocket-Key"),
    (request(headers={"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="}), 400, "missing or invalid Sec-WebSocket-Key"),
    (request(headers={"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"}), 400, "missing or invalid Sec-WebSocket-Key"),
    (request(drop=("Sec-WebSocket-Version",)), 426, "Sec-WebSocket-Version"),
    (request(headers={"Sec-WebSocket-Version": "8"}), 426, "Sec-WebSocket-Version"),
    (request(headers={"Content-Length": "5"}), 400, "must not have a body"),
    (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
    (b"GET /sub HTTP/1.1\r\nBad Header Line\r\n\r\n", 400, "malformed HTTP request"),
    (request(headers={"X-Big": "a" * 9000}), 431, "request head larger than 8192 bytes"),
]


@pytest.mark.parametrize("raw, status, reason", BAD_REQUESTS)
def test_bad_handshakes(raw, status, reason):
    hs = WebSocketHandshake()
    assert hs.feed(raw)
    assert not hs.ok
    assert hs.status == status
    assert reason in hs.error
    st_, headers, body = parse_response(hs.response)
    assert st_ == status
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert reason in body.decode()
    if status == 405:
        assert headers["allow"] == "GET"
    if status == 426 and "Version" in reason:
        assert headers["sec-websocket-version"] == "13"
    if status == 426:
        assert headers["upgrade"] == "websocket"


def test_duplicate_key_is_rejected():
    raw = request().replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Key: " + RFC_KEY.encode() + b"\r\n\r\n")
    hs = WebSocketHandshake()
    hs.feed(raw)
    assert hs.status == 400 and "Sec-WebSocket-Key" in hs.error


def test_oversized_head_without_terminator():
    hs = WebSocketHandshake(max_header_bytes=100)
    assert not hs.feed(b"GET /sub HTTP/1.1\r\n")
    assert hs.feed(b"X: " + b"a" * 100)
    assert hs.status == 431 and not hs.ok


def test_handshake_extra_headers_and_subprotocol():
    hs = WebSocketHandshake(extra_headers={"Server": "imgate"}, subprotocols=["goim", "chat"])
    hs.feed(request(headers={"Sec-WebSocket-Protocol": "chat, goim"}))
    assert hs.ok and hs.subprotocol == "goim"
    status, headers, _ = parse_response(hs.response)
    assert status == 101
    assert headers["server"] == "imgate"
    assert headers["sec-websocket-protocol"] == "goim"
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    hs = WebSocketHandshake(subprotocols=["goim"])
    hs.feed(request(headers={"Sec-WebSocket-Protocol": "mqtt"}))
    assert hs.ok and hs.subprotocol is None and b"Sec-WebSocket-Protocol" not in hs.response
    with pytest.raises(ValueError):
        WebSocketHandshake(extra_headers=[("X-Evil", "a\r\nSet-Cookie: x")])


def test_handshake_tolerates_leading_blank_lines_and_absolute_target():
    hs = WebSocketHandshake()
    hs.feed(b"\r\n\r\n" + request(target="http://server.example.com/sub?x=1"))
    assert hs.ok and hs.path == "/sub" and hs.query == "x=1"


@given(st.binary(max_size=300))
def test_handshake_never_raises(junk):
    hs = WebSocketHandshake(max_header_bytes=256)
    done = hs.feed(junk)
    if done:
        assert hs.response.startswith(b"HTTP/1.1 ")
        assert hs.status in (101, 400, 405, 426, 431)
