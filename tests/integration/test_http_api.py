"""imgate.logic.http_api against a fake logic service: parameter parsing and validation, envelopes, status
codes, the OpenAPI document's coverage, /metrics and /healthz. Requests go over a real socket to an
HttpServer on 127.0.0.1:0 running in a background event loop."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from urllib.parse import urlencode

import pytest
import uvloop

from imgate.http.server import HttpServer
from imgate.logic.http_api import build_routes
from imgate.metrics import Metrics


class FakeLogic:
    """Records every call; returns canned data. A room id or type of 'bad' raises ValueError."""

    pushes_wait = True

    def __init__(self):
        self.calls: list[tuple] = []
        self.healthy = True
        self.im = FakeIm(self)

    def _rec(self, *call):
        self.calls.append(call)

    async def push_keys(self, op, keys, body):
        self._rec("push_keys", op, keys, body)
        return len(keys)

    async def push_mids(self, op, mids, body):
        self._rec("push_mids", op, mids, body)
        return 2 * len(mids)

    async def push_room(self, op, room_id, body):
        self._rec("push_room", op, room_id, body)
        if room_id == "bad://bad":
            raise ValueError("room id bad://bad is not allowed")
        if room_id == "crash://1":
            raise RuntimeError("logic bug")
        return None

    async def push_all(self, op, speed, body):
        self._rec("push_all", op, speed, body)

    async def online_top(self, type, limit):
        self._rec("online_top", type, limit)
        return [{"room_id": f"{type}://1", "count": 9}, {"room_id": f"{type}://2", "count": 3}][:limit]

    async def online_room(self, type, rooms):
        self._rec("online_room", type, rooms)
        return {r: i for i, r in enumerate(rooms)}

    async def online_total(self):
        self._rec("online_total")
        return {"conn_count": 5, "ip_count": 2, "user_count": 4, "server_count": 1}

    async def session(self, mid):
        self._rec("session", mid)
        return [{"conn_id": 1, "key": "k", "server": "s1", "platform": "web", "room_id": "live://1", "connected_at": 1.5}]

    async def count(self, kind):
        self._rec("count", kind)
        return {"live://1": 3} if kind == "room" else {"s1": 3}

    async def room(self, rid):
        self._rec("room", rid)
        return {"room_id": rid, "count": 3, "servers": {"s1": 3}}

    async def list_sessions(self, limit):
        self._rec("list_sessions", limit)
        return [{"conn_id": i} for i in range(min(limit, 3))]

    def health(self):
        return {"ok": self.healthy, "status": "ok" if self.healthy else "broken"}


class FakeIm:
    """The IM service's HTTP-facing calls, recorded on the logic's list."""

    sync_max_limit = 1000

    def __init__(self, logic):
        self.logic = logic

    async def send(self, uid, req):
        self.logic._rec("im_send", uid, req)
        return {"cmid": req.get("cmid"), "msg_id": "1", "seq": 1, "ts": 0}

    async def sync(self, uid, req):
        self.logic._rec("im_sync", uid, req)
        return b'{"msgs":[],"has_more":false,"max_seq":0,"groups":[]}'

    async def conversations(self, uid, limit):
        self.logic._rec("im_conversations", uid, limit)
        return "[]"

    async def create_group(self, uid, body):
        self.logic._rec("im_create_group", uid, body)
        return {"group": 1}

    async def change_members(self, group, actor, body):
        self.logic._rec("im_change_members", group, actor, body)
        return {"members": 1, "mode": "write"}

    async def group_info(self, group):
        self.logic._rec("im_group_info", group)
        return {"group": group, "name": "", "owner": 1, "admins": [], "members": 1, "mode": "write", "max_gseq": 1}


class FakeDemo:
    def config(self):
        return {"ws_url": "ws://127.0.0.1:1/sub", "room_id": "live://1000", "mid": 7}

    def token(self, mid):
        return f"tok-{mid}"


class ApiServer:
    def __init__(self, logic, *, metrics=None, demo=None):
        self.loop = uvloop.new_event_loop()
        self.router = build_routes(logic, metrics=metrics, demo=demo)
        self.server = HttpServer(self.router, max_body=4096)
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)

    def request(self, method, path, body=None, params=None):
        if params is not None:
            path = f"{path}?{urlencode(params)}"
        self.conn.request(method, path, body=body)
        resp = self.conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("Content-Type", "")
        data = json.loads(raw) if ctype.startswith("application/json") else raw
        return resp.status, data, resp

    def stop(self):
        self.conn.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def logic():
    return FakeLogic()


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
def api(logic, metrics):
    s = ApiServer(logic, metrics=metrics, demo=FakeDemo())
    yield s
    s.stop()


def assert_bad(status, data, *needles, http_status=400):
    assert status == http_status, data
    assert data["code"] != 0 and data["data"] is None
    for n in needles:
        assert n in data["message"], (n, data["message"])


# ---------------------------------------------------------------------------------------------------------
# push routes


def test_push_keys(api, logic):
    status, data, _ = api.request("POST", "/goim/push/keys?operation=1000&keys=k1,%20k2,,k1", b"hello")
    assert status == 200
    assert data == {"code": 0, "message": "", "data": {"targets": 2}}
    assert logic.calls == [("push_keys", 1000, ["k1", "k2"], b"hello")]


def test_push_body_is_raw_bytes(api, logic):
    body = bytes(range(256))
    status, data, _ = api.request("POST", "/goim/push/keys?operation=5&keys=k", body)
    assert status == 200 and logic.calls[-1] == ("push_keys", 5, ["k"], body)


@pytest.mark.parametrize(
    "query, needles",
    [
        ("keys=k1", ["missing parameter 'operation'"]),
        ("operation=&keys=k1", ["'operation'", "integer"]),
        ("operation=abc&keys=k1", ["'operation'", "integer", "abc"]),
        ("operation=1.5&keys=k1", ["'operation'", "integer"]),
        ("operation=2147483648&keys=k1", ["'operation'", "int32"]),
        ("operation=-2147483649&keys=k1", ["'operation'", "int32"]),
        ("operation=1000", ["missing parameter 'keys'"]),
        ("operation=1000&keys=", ["'keys'"]),
        ("operation=1000&keys=,%20,", ["'keys'"]),
    ],
)
def test_push_keys_validation(api, logic, query, needles):
    status, data, _ = api.request("POST", f"/goim/push/keys?{query}", b"msg")
    assert_bad(status, data, *needles)
    assert logic.calls == []


def test_push_int32_bounds_accepted(api, logic):
    for op in (2147483647, -2147483648):
        status, _, _ = api.request("POST", f"/goim/push/keys?operation={op}&keys=k", b"m")
        assert status == 200
    assert [c[1] for c in logic.calls] == [2147483647, -2147483648]


@pytest.mark.parametrize("path", ["/goim/push/keys?operation=1&keys=k", "/goim/push/mids?operation=1&mids=1",
                                  "/goim/push/room?operation=1&type=t&room=r", "/goim/push/all?operation=1"])
def test_push_empty_body(api, logic, path):
    status, data, _ = api.request("POST", path, b"")
    assert_bad(status, data, "empty message body")
    assert logic.calls == []


def test_push_mids(api, logic):
    status, data, _ = api.request("POST", "/goim/push/mids?operation=1001&mids=1,%202,3,2", b"x")
    assert status == 200 and data["data"] == {"targets": 6}
    assert logic.calls == [("push_mids", 1001, [1, 2, 3], b"x")]


@pytest.mark.parametrize("mids", ["1,x", "1.0", "a", "99999999999999999999"])
def test_push_mids_validation(api, logic, mids):
    status, data, _ = api.request("POST", f"/goim/push/mids?operation=1&mids={mids}", b"x")
    assert_bad(status, data, "'mids'")
    assert logic.calls == []


def test_push_room(api, logic):
    status, data, _ = api.request("POST", "/goim/push/room?operation=1000&type=live&room=1000", b"hi room")
    assert status == 200 and data == {"code": 0, "message": "", "data": None}
    assert logic.calls == [("push_room", 1000, "live://1000", b"hi room")]


@pytest.mark.parametrize(
    "query, needles",
    [
        ("operation=1000&room=1", ["missing parameter 'type'"]),
        ("operation=1000&type=live", ["missing parameter 'room'"]),
        ("operation=1000&type=&room=1", ["'type'", "empty"]),
        ("operation=1000&type=live&room=%20", ["'room'", "empty"]),
        ("type=live&room=1", ["'operation'"]),
    ],
)
def test_push_room_validation(api, logic, query, needles):
    status, data, _ = api.request("POST", f"/goim/push/room?{query}", b"x")
    assert_bad(status, data, *needles)
    assert logic.calls == []


def test_logic_value_error_is_400_other_errors_500(api, logic):
    status, data, _ = api.request("POST", "/goim/push/room?operation=1&type=bad&room=bad", b"x")
    assert_bad(status, data, "room id bad://bad is not allowed")
    status, data, _ = api.request("POST", "/goim/push/room?operation=1&type=crash&room=1", b"x")
    assert status == 500 and data == {"code": -500, "message": "internal error", "data": None}


def test_push_all(api, logic):
    assert api.request("POST", "/goim/push/all?operation=1000", b"a")[0] == 200
    assert api.request("POST", "/goim/push/all?operation=1000&speed=50", b"b")[0] == 200
    assert logic.calls == [("push_all", 1000, 0, b"a"), ("push_all", 1000, 50, b"b")]
    status, data, _ = api.request("POST", "/goim/push/all?operation=1000&speed=-1", b"c")
    assert_bad(status, data, "'speed'")
    status, data, _ = api.request("POST", "/goim/push/all?operation=1000&speed=fast", b"c")
    assert_bad(status, data, "'speed'", "integer")
    assert len(logic.calls) == 2


def test_push_routes_are_post_only(api):
    status, data, resp = api.request("GET", "/goim/push/keys?operation=1&keys=k")
    assert status == 405 and resp.getheader("Allow") == "POST" and data["code"] == -405


def test_push_body_over_limit(api, logic):
    status, data, _ = api.request("POST", "/goim/push/keys?operation=1&keys=k", b"x" * 5000)
    assert status == 413 and data["message"] == "request body exceeds 4096 bytes"
    assert logic.calls == []


# ---------------------------------------------------------------------------------------------------------
# online routes and queries


def test_online_top(api, logic):
    status, data, _ = api.request("GET", "/goim/online/top?type=live&limit=1")
    assert status == 200 and data["data"] == [{"room_id": "live://1", "count": 9}]
    api.request("GET", "/goim/online/top?type=live")
    assert logic.calls == [("online_top", "live", 1), ("online_top", "live", 20)]


@pytest.mark.parametrize(
    "query, needles",
    [
        ("limit=5", ["missing parameter 'type'"]),
        ("type=live&limit=0", ["'limit'", "between 1 and 10000"]),
        ("type=live&limit=-3", ["'limit'"]),
        ("type=live&limit=10001", ["'limit'", "10000"]),
        ("type=live&limit=ten", ["'limit'", "integer"]),
    ],
)
def test_online_top_validation(api, logic, query, needles):
    status, data, _ = api.request("GET", f"/goim/online/top?{query}")
    assert_bad(status, data, *needles)
    assert logic.calls == []


def test_online_room(api, logic):
    status, data, _ = api.request("GET", "/goim/online/room?type=live&rooms=1000,1001")
    assert status == 200 and data["data"] == {"1000": 0, "1001": 1}
    assert logic.calls == [("online_room", "live", ["1000", "1001"])]
    assert_bad(*api.request("GET", "/goim/online/room?type=live")[:2], "missing parameter 'rooms'")
    assert_bad(*api.request("GET", "/goim/online/room?rooms=1")[:2], "missing parameter 'type'")
    assert_bad(*api.request("GET", "/goim/online/room?type=live&rooms=,")[:2], "'rooms'")


def test_online_total(api):
    status, data, _ = api.request("GET", "/goim/online/total")
    assert status == 200
    assert data["data"] == {"conn_count": 5, "ip_count": 2, "user_count": 4, "server_count": 1}


def test_session(api, logic):
    status, data, _ = api.request("GET", "/session?uid=42")
    assert status == 200 and data["data"][0]["key"] == "k"
    assert logic.calls == [("session", 42)]
    assert_bad(*api.request("GET", "/session")[:2], "missing parameter 'uid'")
    assert_bad(*api.request("GET", "/session?uid=bob")[:2], "'uid'", "integer")


def test_count(api, logic):
    assert api.request("GET", "/count?type=room")[1]["data"] == {"live://1": 3}
    assert api.request("GET", "/count?type=server")[1]["data"] == {"s1": 3}
    assert_bad(*api.request("GET", "/count?type=user")[:2], "'type'", "'room' or 'server'", "user")
    assert_bad(*api.request("GET", "/count")[:2], "missing parameter 'type'")
    assert logic.calls == [("count", "room"), ("count", "server")]


def test_room(api, logic):
    status, data, _ = api.request("GET", "/room", params={"rid": "live://1000"})
    assert status == 200 and data["data"] == {"room_id": "live://1000", "count": 3, "servers": {"s1": 3}}
    assert logic.calls == [("room", "live://1000")]
    assert_bad(*api.request("GET", "/room")[:2], "missing parameter 'rid'")


def test_list(api, logic):
    assert api.request("GET", "/list")[1]["data"] == [{"conn_id": 0}, {"conn_id": 1}, {"conn_id": 2}]
    api.request("GET", "/list?limit=2")
    assert logic.calls == [("list_sessions", 1000), ("list_sessions", 2)]
    assert_bad(*api.request("GET", "/list?limit=0")[:2], "'limit'")


def test_unknown_route(api):
    status, data, _ = api.request("GET", "/goim/push")
    assert status == 404 and data == {"code": -404, "message": "no route for GET /goim/push", "data": None}


# ---------------------------------------------------------------------------------------------------------
# service routes


def test_healthz(api, logic):
    status, data, _ = api.request("GET", "/healthz")
    assert status == 200 and data == {"code": 0, "message": "", "data": {"ok": True, "status": "ok"}}
    logic.healthy = False
    status, data, _ = api.request("GET", "/healthz")
    assert status == 503 and data["code"] == -503 and data["data"]["status"] == "broken"


def test_metrics_with_sources_and_http_counter(api, metrics):
    metrics.add_source(lambda: {"connections": 3, "frames_in": 10, "bytes_out": 7, "not_a_metric": 99})
    metrics.add_source(lambda: {"connections": 2, "frames_in": 5, "rooms": 4, "pushes": 1})
    api.request("GET", "/healthz")
    api.request("GET", "/nope")
    status, body, resp = api.request("GET", "/metrics")
    assert status == 200 and resp.getheader("Content-Type").startswith("text/plain")
    text = body.decode()
    lines = set(text.splitlines())
    assert "imgate_connections 5.0" in lines
    assert "imgate_rooms 4.0" in lines
    assert "imgate_frames_in_total 15.0" in lines
    assert "imgate_bytes_out_total 7.0" in lines
    assert "imgate_pushes_total 1.0" in lines
    assert "imgate_drops_total 0.0" in lines
    assert "# TYPE imgate_connections gauge" in lines
    assert "# TYPE imgate_frames_in_total counter" in lines or "# TYPE imgate_frames_in counter" in lines
    assert 'imgate_http_requests_total{route="/healthz",status="200"} 1.0' in lines
    assert 'imgate_http_requests_total{route="unmatched",status="404"} 1.0' in lines
    assert "not_a_metric" not in text


def test_metrics_source_failure_is_skipped():
    m = Metrics(process=False)

    def broken():
        raise RuntimeError("source down")

    good = m.add_source(lambda: {"connections": 1})
    m.add_source(broken)
    m.add_source(lambda: None)
    assert m.snapshot() == {"connections": 1}
    body, ctype = m.render()
    assert b"imgate_connections 1.0" in body and ctype.startswith("text/plain")
    m.remove_source(good)
    m.remove_source(good)  # twice is harmless
    assert m.snapshot() == {}


def test_metrics_registries_are_independent():
    a, b = Metrics(process=False), Metrics(process=False)
    a.observe_http("/x", 200)
    assert b'route="/x"' in a.render()[0] and b'route="/x"' not in b.render()[0]


def test_demo_page_and_script(api):
    status, body, resp = api.request("GET", "/")
    assert status == 200 and resp.getheader("Content-Type") == "text/html; charset=utf-8"
    for element in ("status", "online", "messages", "room", "message", "push-btn", "connect-btn", "heartbeat-btn"):
        assert f'id="{element}"'.encode() in body
    assert b'src="demo.js"' in body
    assert b"http://" not in body and b"https://" not in body  # no external resources
    status, js, resp = api.request("GET", "/demo.js")
    assert status == 200 and resp.getheader("Content-Type").startswith("text/javascript")
    assert b"http://" not in js and b"https://" not in js


def test_demo_routes(api):
    status, data, _ = api.request("GET", "/demo/config")
    assert status == 200 and data["data"]["room_id"] == "live://1000"
    status, data, _ = api.request("POST", "/demo/token?mid=7")
    assert status == 200 and data["data"] == {"mid": 7, "token": "tok-7"}
    assert_bad(*api.request("POST", "/demo/token?mid=x")[:2], "'mid'")
    assert_bad(*api.request("POST", "/demo/token")[:2], "missing parameter 'mid'")


def test_without_demo_the_demo_routes_are_404_but_the_page_is_served(logic):
    s = ApiServer(logic)
    try:
        assert s.request("GET", "/demo/config")[0] == 404
        assert s.request("POST", "/demo/token?mid=1")[0] == 404
        assert s.request("GET", "/")[0] == 200
        # with no Metrics given, build_routes makes its own: /metrics still answers
        status, body, _ = s.request("GET", "/metrics")
        assert status == 200 and b"imgate_connections 0.0" in body
        doc = s.request("GET", "/openapi.json")[1]
        assert not {"/demo/config", "/demo/token"} & set(doc["paths"])
        assert routes_of(s.router) == operations_of(doc)
    finally:
        s.stop()


# ---------------------------------------------------------------------------------------------------------
# OpenAPI


def routes_of(router) -> set[tuple[str, str]]:
    return {(m.lower(), p) for m, p in router.routes()}


def operations_of(doc) -> set[tuple[str, str]]:
    methods = {"get", "post", "put", "delete", "patch", "head", "options"}
    return {(m, p) for p, item in doc["paths"].items() for m in item if m in methods}


# The published HTTP contract, written out by hand (not derived from imgate.logic.openapi): each route
# with the query parameters a caller must give, and the optional ones it documents.
CONTRACT = {
    ("post", "/goim/push/keys"): ({"operation", "keys"}, set()),
    ("post", "/goim/push/mids"): ({"operation", "mids"}, set()),
    ("post", "/goim/push/room"): ({"operation", "type", "room"}, set()),
    ("post", "/goim/push/all"): ({"operation"}, {"speed"}),
    ("get", "/goim/online/top"): ({"type"}, {"limit"}),
    ("get", "/goim/online/room"): ({"type", "rooms"}, set()),
    ("get", "/goim/online/total"): (set(), set()),
    ("get", "/session"): ({"uid"}, set()),
    ("get", "/count"): ({"type"}, set()),
    ("get", "/room"): ({"rid"}, set()),
    ("get", "/list"): (set(), {"limit"}),
}


def test_openapi_served_and_covers_every_route(api):
    status, doc, resp = api.request("GET", "/openapi.json")
    assert status == 200 and resp.getheader("Content-Type") == "application/json"
    assert set(doc) >= {"openapi", "info", "paths", "components"}, "the document itself, no envelope"
    assert doc["openapi"].startswith("3.")
    # the real check: the document and the router list the same operations
    assert routes_of(api.router) == operations_of(doc)
    # and the published contract is in it, with its required and optional parameters
    assert set(CONTRACT) <= operations_of(doc)
    for (method, path), (required, optional) in CONTRACT.items():
        params = doc["paths"][path][method].get("parameters", [])
        assert {p["name"] for p in params if p["required"]} == required, (method, path)
        assert {p["name"] for p in params if not p["required"]} == optional, (method, path)
        assert all(p["in"] == "query" for p in params)


def _resolve(doc, obj):
    while isinstance(obj, dict) and "$ref" in obj:
        node = doc
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def test_openapi_document_is_well_formed(api):
    doc = api.request("GET", "/openapi.json")[1]  # what clients get
    assert doc["info"]["title"] and doc["info"]["version"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["summary"], (method, path)
            assert "200" in op["responses"], (method, path)
            for code, r in op["responses"].items():
                assert _resolve(doc, r)["description"], (method, path, code)
            for p in op.get("parameters", []):
                assert p["in"] == "query" and p["name"] and "schema" in p
            if path.startswith("/goim/push/"):
                assert method == "post"
                assert "application/octet-stream" in op["requestBody"]["content"]
                assert op["requestBody"]["required"] is True
    # every $ref points somewhere
    def walk(o):
        if isinstance(o, dict):
            if "$ref" in o:
                _resolve(doc, o)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(doc)
    env = doc["components"]["schemas"]["Envelope"]
    assert set(env["required"]) == {"code", "message", "data"}


def _example(param):
    if "example" in param:
        example = param["example"]
        if isinstance(example, list):   # an array parameter (style form, explode false): comma-separated
            assert param.get("explode") is False, param
            return ",".join(map(str, example))
        return str(example)
    schema = param["schema"]
    if "enum" in schema:
        return schema["enum"][0]
    return "1" if schema.get("type") == "integer" else "x"


def test_documented_required_parameters_are_enforced(api, logic):
    """For each route: the documented examples work, and leaving out any documented required parameter
    is a 400 naming it (the document and the handlers agree)."""
    for path, item in api.request("GET", "/openapi.json")[1]["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            required = [p["name"] for p in params if p["required"]]
            if not required:
                continue
            full = {p["name"]: _example(p) for p in params if p["required"]}
            json_body = "application/json" in op.get("requestBody", {}).get("content", {})
            body = (b"{}" if json_body else b"message") if "requestBody" in op else None
            status, data, _ = api.request(method.upper(), path, body, params=full)
            assert status == 200, (method, path, data)
            for name in required:
                partial = {k: v for k, v in full.items() if k != name}
                status, data, _ = api.request(method.upper(), path, body, params=partial)
                assert_bad(status, data, f"missing parameter '{name}'")
