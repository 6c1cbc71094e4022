"""imgate.http.server's answers to bad requests, against real sockets (the server of httpserverutil.py):
each one gets its status and a clear body, and the server keeps serving."""

import collections
import socket
import threading
import time

from httpserverutil import (  # noqa: F401 (loop_kind, observed, srv: fixtures)
    MAX_BODY, MAX_HEADER, Conn, ServerThread, get, loop_kind, make_router, observed, post, srv,
)
from imgate.http.server import Request, Response, Router




def test_404_unknown_route(srv, observed):
    c = Conn(srv.port)
    c.send(get("/x"))
    status, _, data = c.json()
    assert status == 404
    assert data == {"code": -404, "message": "no route for GET /x", "data": None}
    c.send(get("/echo"))  # the connection stays usable
    assert c.json()[0] == 200
    assert ("unmatched", 404) in observed and ("/echo", 200) in observed


def test_405_wrong_method_with_allow(srv, observed):
    c = Conn(srv.port)
    c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    status, headers, data = c.json()
    assert status == 405
    assert set(headers["allow"].split(", ")) == {"GET", "POST", "HEAD"}
    assert data["code"] == -405 and "PUT" in data["message"] and data["data"] is None
    assert ("/echo", 405) in observed


def test_dict_observer_is_counted_by_the_server(loop_kind):
    # the node's way: the metrics' count dict as the observer, bumped without a call per request
    r = make_router()
    counts = {}
    r.observer = counts
    s = ServerThread(r, loop_kind, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, idle_timeout=5).start()
    try:
        c = Conn(s.port)
        for target in ("/echo", "/echo", "/x", "/teapot"):
            c.send(get(target))
            c.json()
        c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        c.json()
        assert counts == {("/echo", 200): 2, ("unmatched", 404): 1, ("/teapot", 418): 1, ("/echo", 405): 1}
    finally:
        s.stop()


def test_counter_observer_and_router_with_its_own_resolve(loop_kind):
    # a dict subclass is counted in too; a router overriding resolve() is asked, not bypassed
    class Aliases(Router):
        def resolve(self, method, path):
            return super().resolve(method, "/echo" if path == "/alias" else path)

    r = Aliases()
    r.add("GET", "/echo", make_router().resolve("GET", "/echo"))
    counts = collections.Counter()
    r.observer = counts
    assert r.paths is None and make_router().paths is not None
    s = ServerThread(r, loop_kind, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, idle_timeout=5).start()
    try:
        c = Conn(s.port)
        for target in ("/alias", "/echo", "/nope"):
            c.send(get(target))
            c.json()
        assert counts == {("/alias", 200): 1, ("/echo", 200): 1, ("unmatched", 404): 1}
    finally:
        s.stop()


def test_big_replies_to_a_slow_reader_arrive_whole_and_in_order(loop_kind):
    # replies go straight to the socket while the transport holds nothing; once a send() falls short
    # the transport takes the rest, and the order, until it has drained
    big = b"z" * (1 << 20)

    def sized(req: Request) -> Response:
        return Response(200, req.query["i"].encode() + b":" + big)

    r = Router()
    r.add("GET", "/big", sized)
    s = ServerThread(r, loop_kind, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, idle_timeout=5).start()
    try:
        c = Conn(s.port)
        # 24 MiB of replies, more than the kernel buffers on both ends hold, each request in a read of
        # its own: while the client does not read, a send() falls short and later replies must queue
        # behind the transport's rest
        for i in range(24):
            c.send(get(f"/big?i={i}"))
            time.sleep(0.01)
        for i in range(24):
            status, _, body = c.response()
            assert status == 200 and body == str(i).encode() + b":" + big
        c.send(get("/big?i=99"))  # drained: straight to the socket again
        assert c.response()[2] == b"99:" + big
    finally:
        s.stop()


def test_413_from_content_length_before_reading(srv):
    c = Conn(srv.port)
    # Only the head is sent: the server must answer from Content-Length alone.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
    status, headers, data = c.json()
    assert status == 413
    assert data == {"code": -413, "message": f"request body exceeds {MAX_BODY} bytes", "data": None}
    assert headers["connection"] == "close"
    assert c.at_eof()


def test_413_big_body_actually_sent_still_gets_the_reply(srv):
    c = Conn(srv.port)
    body = b"x" * 300_000
    c.sock.settimeout(5)

    def sender():
        try:
            c.send(post("/echo", body))
        except OSError:
            pass

    t = threading.Thread(target=sender)
    t.start()
    status, _, data = c.json()
    t.join(5)
    assert status == 413 and data["message"] == f"request body exceeds {MAX_BODY} bytes"


def test_413_chunked_body_too_big(srv):
    c = Conn(srv.port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        c.send(b"190\r\n" + b"y" * 400 + b"\r\n")  # 5 x 400 bytes > 1000
    status, _, data = c.json()
    assert status == 413 and data["message"] == f"request body exceeds {MAX_BODY} bytes"
    assert c.at_eof()


def test_413_after_earlier_pipelined_request_is_answered_first(srv):
    c = Conn(srv.port)
    c.send(get("/slow?n=a&s=0.1") + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\n\r\n")
    assert c.json()[2]["data"] == {"slow": "a"}
    assert c.json()[0] == 413
    assert c.at_eof()


def test_431_header_section_too_big(srv):
    c = Conn(srv.port)
    c.send(get("/echo", f"X-Big: {'a' * (MAX_HEADER + 10)}\r\n"))
    status, _, data = c.json()
    assert status == 431 and data["code"] == -431 and str(MAX_HEADER) in data["message"]
    assert c.at_eof()


def test_431_many_headers_in_small_pieces(srv):
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n")
    try:
        for i in range(2000):
            c.send(f"X-H{i}: {'v' * 50}\r\n".encode())
    except OSError:
        pass
    status, _, data = c.json()
    assert status == 431


def test_431_unterminated_header_line(srv):
    # One header value that never ends, sent in pieces: bounded even though no callback fires.
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.1\r\nX-Endless: ")
    try:
        for _ in range(40):
            c.send(b"z" * 1024)
            time.sleep(0.005)
    except OSError:
        pass
    status, _, data = c.json()
    assert status == 431


def test_431_long_url(srv):
    c = Conn(srv.port)
    c.send(get("/echo?q=" + "u" * (MAX_HEADER + 1)))
    assert c.json()[0] == 431


def test_headers_just_under_the_limit_pass(srv):
    c = Conn(srv.port)
    c.send(get("/echo", f"X-Big: {'a' * (MAX_HEADER - 200)}\r\n"))
    assert c.json()[0] == 200


def test_malformed_request_400_then_server_serves_next_client(srv):
    c = Conn(srv.port)
    c.send(b"\x00\x01\x02 this is not http\r\n\r\n")
    status, headers, data = c.json()
    assert status == 400
    assert data == {"code": -400, "message": "malformed HTTP request", "data": None}
    assert headers["connection"] == "close"
    assert c.at_eof()
    c2 = Conn(srv.port)
    c2.send(get("/echo"))
    assert c2.json()[0] == 200


def test_malformed_after_good_request(srv):
    c = Conn(srv.port)
    c.send(get("/echo?n=1") + b"GET /echo HTTP/1.1\r\nBad Header Line\r\n\r\n")
    assert c.json()[0] == 200
    assert c.json()[0] == 400
    assert c.at_eof()


def test_handler_exception_500_and_connection_goes_on(srv, caplog):
    c = Conn(srv.port)
    with caplog.at_level("ERROR", logger="imgate.http"):
        c.send(get("/boom"))
        status, _, data = c.json()
    assert status == 500 and data == {"code": -500, "message": "internal error", "data": None}
    assert any("handler bug" in (r.exc_text or "") or (r.exc_info and "handler bug" in str(r.exc_info[1])) for r in caplog.records)
    c.send(get("/bad-return"))
    assert c.json()[0] == 500
    c.send(get("/echo"))
    assert c.json()[0] == 200
    c2 = Conn(srv.port)
    c2.send(get("/echo"))
    assert c2.json()[0] == 200


def test_http_error_from_handler(srv):
    c = Conn(srv.port)
    c.send(get("/teapot"))
    status, _, data = c.json()
    assert status == 418 and data == {"code": 4180, "message": "short and stout", "data": None}


def test_connection_close_honoured(srv):
    c = Conn(srv.port)
    c.send(get("/echo", "Connection: close\r\n") + get("/echo?never=1"))
    status, headers, _ = c.json()
    assert status == 200 and headers["connection"] == "close"
    assert c.at_eof()
    assert c.buf == b""  # the request after it was not answered


def test_http10_closes_unless_keep_alive(srv):
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.0\r\n\r\n")
    status, headers, data = c.json()
    assert status == 200 and data["data"]["version"] == "1.0"
    assert c.at_eof()
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = c.json()
    assert headers["connection"] == "keep-alive"
    c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.json()[0] == 200


def test_half_closed_client_still_gets_answers(srv):
    c = Conn(srv.port)
    c.send(get("/slow?n=x&s=0.05") + get("/echo?n=y"))
    c.sock.shutdown(socket.SHUT_WR)
    assert c.json()[2]["data"] == {"slow": "x"}
    assert c.json()[2]["data"]["query"] == {"n": "y"}
    assert c.at_eof()


def test_upgrade_request_answered_then_closed(srv):
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello")
    status, headers, _ = c.json()
    assert status == 200 and headers["connection"] == "close"
    assert c.at_eof()
