"""The HTTP server's request path with compiled handlers (imgate.http._request.Handler) on a real
connection: the API-key guard in front of the push-by-mid route decides every request, each reply's
head names its own status and type, and every answer is counted under its own route and status.

The connection reuses what repeats from one request to the next (the reply head, the count key): these
tests vary what repeats and check each answer against what was sent, read back independently."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from http import HTTPStatus

from imgate.http._protocol import HttpProtocol
from imgate.http._reply import encode_response
from imgate.http.apikeys import ApiAuth
from imgate.http.messages import HttpError, Response
from imgate.http.server import HttpServer, Router
from imgate.logic._push_routes import PushMidsRoute
from test_http_fastpath import Transport  # the connection's stand-in transport

PUSHER = "imk_test_pusher"    # an API key (its prefix: remembered once verified) with the push scope
READER = "imk_test_reader"    # one with the query scope only


def replies(out: bytes) -> list[tuple[int, str, bytes]]:
    """(status, content type, body) of each reply in ``out``, read by splitting the bytes."""
    got = []
    while out:
        head, _, rest = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1" and reason == HTTPStatus(int(status)).phrase, lines[0]
        fields = dict(line.split(": ", 1) for line in lines[1:])
        size = int(fields["Content-Length"])
        got.append((int(status), fields.get("Content-Type"), rest[:size]))
        out = rest[size:]
    return got


def serve(router: Router, requests: list[bytes], counts: dict) -> list[tuple[int, str, bytes]]:
    async def go():
        proto = HttpProtocol(HttpServer(router, idle_timeout=0, observer=counts))
        t = Transport()
        proto.connection_made(t)
        for data in requests:   # one read each: one reply written per read
            proto.data_received(data)
            await asyncio.sleep(0)
        return bytes(t.out)

    return replies(asyncio.run(go()))


def push(mid: int, key: str | None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key is not None else ""
    return (f"POST /goim/push/mids?operation=1000&mids={mid} HTTP/1.1\r\nHost: t\r\n{auth}"
            f"Content-Length: 2\r\n\r\nhi").encode()


def test_the_guard_decides_every_push_before_the_compiled_route():
    auth = ApiAuth("key")
    auth.add_key(PUSHER, ["push"])
    auth.add_key(READER, ["query"])
    pushed = []

    def push_mids(op, mids, body):
        pushed.append(mids[0])
        return 1

    def general(req):
        raise AssertionError(f"the compiled route declined {req!r}")

    router = Router(guard=auth)
    router.add("POST", "/goim/push/mids", PushMidsRoute(push_mids, general, lambda exc: None), scope="push")
    keys = [PUSHER, None, PUSHER, READER, "imk_unknown", PUSHER, "Bearer", PUSHER]
    got = serve(router, [push(mid, key) for mid, key in enumerate(keys)], {})
    want = {PUSHER: 200, None: 401, READER: 403, "imk_unknown": 401, "Bearer": 401}
    assert [status for status, _, _ in got] == [want[k] for k in keys]
    assert pushed == [mid for mid, key in enumerate(keys) if key == PUSHER]
    assert json.loads(got[0][2])["data"] == {"targets": 1}


def test_each_reply_and_count_follow_their_own_request():
    # the same route answering several statuses and types, two routes, a route that is not there,
    # a type equal to the last one but another string object: in an order that repeats and alternates
    def answer(req):
        q = req.query
        if "fail" in q:
            raise HttpError(int(q["fail"]), "refused")
        ctype = "text/plain" if "text" in q else "".join(["application/", "json"])
        return Response(int(q.get("status", 200)), b"n=" + req.path.encode(), ctype)

    router = Router()
    router.add("GET", "/a", answer)
    router.add("GET", "/b", answer)
    targets = ["/a", "/a", "/a?status=201", "/a?text", "/a", "/b", "/b?status=202", "/a?fail=400",
               "/nothere", "/a?status=201", "/b", "/a?text", "/a?text&status=201", "/a"]
    counts: dict = {}
    got = serve(router, [f"GET {t} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for t in targets], counts)

    want_replies, want_counts = [], Counter()
    for t in targets:
        path, _, query = t.partition("?")
        q = dict(p.partition("=")[::2] for p in query.split("&") if p)
        if path == "/nothere":
            status, ctype, route = 404, "application/json", "unmatched"
        elif "fail" in q:
            status, ctype, route = int(q["fail"]), "application/json", path
        else:
            status, ctype, route = int(q.get("status") or 200), "text/plain" if "text" in q else "application/json", path
        want_replies.append((status, ctype))
        want_counts[(route, status)] += 1
    assert [(status, ctype) for status, ctype, _ in got] == want_replies
    assert [body for status, _, body in got if status < 300] == [
        b"n=" + t.partition("?")[0].encode() for t, (s, _) in zip(targets, want_replies) if s < 300]
    assert counts == dict(want_counts)


def test_reply_heads_encoded_one_after_another():
    # encode_response alone, every pair of (status, type) after every other
    kinds = [(200, "application/json"), (201, "application/json"), (200, "text/plain"),
             (204, "application/json"), (200, "".join(["text/", "plain"]))]
    for first in kinds:
        for second in kinds:
            for status, ctype in (first, second, first):
                out = encode_response(Response(status, b"" if status == 204 else b"xyz", ctype), True, False, False)
                head = out.split(b"\r\n")[0].decode()
                assert head == f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"
                if status != 204:
                    assert replies(out) == [(status, ctype, b"xyz")]


def test_header_names_near_the_common_ones_keep_their_own_name():
    # the plain parser names "host", "content-length"... without a lookup: a name of the same length,
    # or in another case, must come out as itself in lower case (one request each: a name taken for
    # content-length would make the request not plain, and httptools would name it right)
    seen = []

    def record(req):
        seen.append(req.headers)
        return Response(200, b"", "text/plain")

    router = Router()
    router.add("POST", "/a", record)
    names = ["HOST", "Hosu", "Authorizatioo", "AUTHORIZATION", "Content-Lengti", "Content-Typf",
             "content-TYPE", "Host-", "X-Authorization"]
    got = serve(router, [f"POST /a HTTP/1.1\r\n{name}: v\r\ncontent-LENGTH: 2\r\n\r\nhi".encode()
                         for name in names], {})
    assert [status for status, _, _ in got] == [200] * len(names)
    assert seen == [{name.lower(): "v", "content-length": "2"} for name in names]
