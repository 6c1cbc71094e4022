"""Security findings of issue 14, each reproduced against a real node: a test here fails on the code
before the fix (key hijack, open API, unbounded room ids, HTTP trickle, op floods, JWT without exp,
slow consumers)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import uvloop

from imgate import client as imclient

from nodeutil import NodeThread, wait_until


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro, timeout=60):
    return uvloop.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def node():
    n = NodeThread(handshake_timeout=2.0, heartbeat_timeout=30.0).start()
    yield n
    n.stop()


async def http(node, method, path, body=None, **kw):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: node.http(method, path, body, **kw))


# ---------------------------------------------------------------- 1. connection keys belong to their user


def test_another_user_cannot_take_over_a_key(node):
    async def go():
        victim = await imclient.connect(node.tcp_url, mid=501, key="victim-key", heartbeat=None)
        with pytest.raises(imclient.AuthRejected) as refused:
            await imclient.connect(node.ws_url, mid=502, key="victim-key", heartbeat=None)
        assert "another user" in refused.value.reason
        # the key still leads to the victim: a push by key reaches it and nobody else
        status, reply = await http(node, "POST", "/goim/push/keys?operation=1000&keys=victim-key", b"for 501")
        assert (status, reply["data"]) == (200, {"targets": 1}), reply
        got = await victim.recv(timeout=5)
        assert (got.op, got.body) == (1000, b"for 501")
        status, reply = await http(node, "GET", "/session?uid=502")
        assert reply["data"] == [], "the refused connection left no session"
        await victim.close()

    run(go())


def test_the_same_user_reusing_a_key_replaces_only_their_own_connection(node):
    async def go():
        old = await imclient.connect(node.tcp_url, mid=511, key="phone", heartbeat=None)
        new = await imclient.connect(node.tcp_url, mid=511, key="phone", heartbeat=None)
        status, reply = await http(node, "POST", "/goim/push/keys?operation=1000&keys=phone", b"to the newest")
        assert reply["data"] == {"targets": 1}
        assert (await new.recv(timeout=5)).body == b"to the newest"
        with pytest.raises(imclient.ClientTimeout):
            await old.recv(timeout=0.3)
        await old.close()
        await new.close()

    run(go())


def test_generated_keys_are_long_random_and_distinct(node):
    async def go():
        keys = []
        for _ in range(5):
            c = await imclient.connect(node.tcp_url, mid=521, heartbeat=None)
            keys.append(json.loads(c.auth_reply)["key"])
            await c.close()
        assert len(set(keys)) == 5
        for k in keys:
            # 128 random bits from `secrets`, in hex
            assert len(k) == 32 and all(ch in "0123456789abcdef" for ch in k), k

    run(go())


# ---------------------------------------------------------------- 2. the HTTP API needs a credential

# what anyone may call: liveness, the API description, the demo page's static files
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/"), ("GET", "/demo.js")}


def test_every_route_but_the_open_ones_refuses_a_request_without_credential(node):
    routes = node.node.http.router.routes()
    assert ("POST", "/goim/push/all") in routes and ("GET", "/list") in routes
    for method, path in routes:
        body = b"x" if method == "POST" else None
        status, reply = node.http(method, path + "?operation=1000&mids=1&keys=k&type=live&room=1", body,
                                  api_key=None)
        if (method, path) in OPEN_ROUTES:
            assert status == 200, (method, path, status)
            continue
        assert status == 401, (method, path, status, reply)
        assert reply["code"] == -401 and reply["data"] is None and "Bearer" in reply["message"]
        status, reply = node.http(method, path, body, api_key="imk_0000_not-a-key")
        assert (status, reply["code"]) == (401, -401), (method, path)


def test_push_all_without_credential_reaches_nobody(node):
    async def go():
        c = await imclient.connect(node.tcp_url, mid=531, heartbeat=None)
        status, _ = await http(node, "POST", "/goim/push/all?operation=1000", b"spam", api_key=None)
        assert status == 401
        with pytest.raises(imclient.ClientTimeout):
            await c.recv(timeout=0.3)
        await c.close()

    run(go())


def test_scopes_decide_what_a_key_may_call(node):
    from imgate.auth.apikeys import KeyStore

    store = KeyStore(node.config.data_dir)
    _, pusher = store.create("pusher", ["push"])
    _, reader = store.create("reader", ["query"])
    _, scraper = store.create("scraper", ["metrics"])
    grid = [  # (route, credential) -> expected status
        ("POST", "/goim/push/mids?operation=1000&mids=1", pusher, 200),
        ("POST", "/goim/push/all?operation=1000", reader, 403),
        ("GET", "/session?uid=1", reader, 200),
        ("GET", "/goim/online/total", pusher, 403),
        ("GET", "/list", reader, 403),   # keys of every session: admin only
        ("GET", "/list", node.api_key, 200),
        ("GET", "/metrics", scraper, 200),
        ("GET", "/metrics", pusher, 403),
    ]
    # the key file is re-read at most once a second: wait until the node knows the new keys
    wait_until(lambda: node.http("GET", "/metrics", api_key=scraper)[0] == 200, what="new keys known")
    for method, path, key, want in grid:
        status, reply = node.http(method, path, b"x" if method == "POST" else None, api_key=key)
        assert status == want, (method, path, status, reply)
        if want == 403:
            assert reply["code"] == -403 and "scope" in reply["message"]


def imgate_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "imgate", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_apikey_cli_create_list_revoke_and_a_running_node_follows(node):
    data_dir = node.config.data_dir
    made = imgate_cli("apikey", "create", "--scope", "push", "--name", "backend", "--data-dir", data_dir)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("imk_")
    kid = key.split("_")[1]
    listed = imgate_cli("apikey", "list", "--data-dir", data_dir)
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith(kid))
    assert "push" in line and "backend" in line
    stored = open(os.path.join(data_dir, "apikeys.json")).read()
    assert key not in stored and key.split("_", 2)[2] not in stored, "only a hash is stored"
    assert oct(os.stat(os.path.join(data_dir, "apikeys.json")).st_mode & 0o777) == "0o600"
    push = "/goim/push/mids?operation=1000&mids=1"
    wait_until(lambda: node.http("POST", push, b"x", api_key=key)[0] == 200, what="the new key accepted")
    assert imgate_cli("apikey", "revoke", kid, "--data-dir", data_dir).returncode == 0
    wait_until(lambda: node.http("POST", push, b"x", api_key=key)[0] == 401, what="the revoked key refused")
    assert imgate_cli("apikey", "revoke", kid, "--data-dir", data_dir).returncode == 1
    bad = imgate_cli("apikey", "create", "--scope", "everything", "--data-dir", data_dir)
    assert bad.returncode == 2 and "scopes must be among" in bad.stderr


def test_jwt_credentials_carry_scope_and_a_bounded_exp():
    import jwt

    from imgate.auth.apikeys import mint_api_token

    secret = "api-secret-for-tests-0123456789abcdef"
    n = NodeThread(auth="jwt", jwt_secret=secret, api_jwt_max_ttl=600).start()
    try:
        push = "/goim/push/mids?operation=1000&mids=1"
        assert n.http("POST", push, b"x", api_key=mint_api_token(secret, ["push"], ttl=60))[0] == 200
        assert n.http("POST", push, b"x", api_key=mint_api_token(secret, ["query"], ttl=60))[0] == 403
        now = int(time.time())
        forever = jwt.encode({"scope": "push", "iat": now}, secret, algorithm="HS256")
        assert n.http("POST", push, b"x", api_key=forever)[0] == 401, "a JWT without exp is refused"
        too_long = jwt.encode({"scope": "push", "exp": now + 3600}, secret, algorithm="HS256")
        assert n.http("POST", push, b"x", api_key=too_long)[0] == 401, "exp beyond api_jwt_max_ttl"
        expired = jwt.encode({"scope": "push", "exp": now - 5}, secret, algorithm="HS256")
        assert n.http("POST", push, b"x", api_key=expired)[0] == 401
        forged = jwt.encode({"scope": "admin", "exp": now + 60}, "another-secret-0123456789abcdef-xyz", algorithm="HS256")
        assert n.http("GET", "/list", api_key=forged)[0] == 401
    finally:
        n.stop()


def test_api_auth_none_is_open_and_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="imgate.auth"):
        n = NodeThread(api_auth="none").start()
    try:
        assert any("api_auth" in r.getMessage() and "open" in r.getMessage() for r in caplog.records)
        status, reply = n.http("GET", "/list", api_key=None)
        assert status == 200 and reply["code"] == 0
    finally:
        n.stop()


def test_metrics_may_be_opened_by_config():
    n = NodeThread(metrics_auth=False).start()
    try:
        assert n.http("GET", "/metrics", api_key=None)[0] == 200
        assert n.http("GET", "/list", api_key=None)[0] == 401
    finally:
        n.stop()


def test_a_route_that_declares_no_scope_needs_admin():
    from imgate.auth.apikeys import ApiAuth
    from imgate.http.server import PUBLIC, Request, Response, Router

    auth = ApiAuth("key")
    auth.add_key("pusher", ["push"])
    auth.add_key("root", ["admin"])
    r = Router(auth)
    r.add("GET", "/new", lambda req: Response(200, b"new"))          # no declaration
    r.add("GET", "/open", lambda req: Response(200, b"open"), PUBLIC)

    def call(path, key=None):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        try:
            return r.resolve("GET", path)(Request("GET", path, headers=headers)).status
        except Exception as e:  # HttpError
            return e.status

    assert r.scope("GET", "/new") == "admin"
    assert (call("/new"), call("/new", "pusher"), call("/new", "root")) == (401, 403, 200)
    assert call("/open") == 200


def test_listeners_default_to_loopback():
    from imgate.config import Config

    cfg = Config().validate()
    for key in ("tcp", "ws", "http", "rpc", "logic_rpc"):
        assert cfg.addr(key)[0] == "127.0.0.1", key
    assert cfg.api_auth == "key" and cfg.metrics_auth is True


def test_serve_prints_the_key_it_creates_and_the_demo_gets_it_from_loopback(tmp_path):
    ports = [free_port() for _ in range(3)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgate", "serve", "--auth", "none", "--demo", "--tcp", f"127.0.0.1:{ports[0]}",
         "--ws", f"127.0.0.1:{ports[1]}", "--http", f"127.0.0.1:{ports[2]}", "--data-dir", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(5)]
        assert "is up" in lines[0], proc.stderr.read()
        while not any("demo key" in ln for ln in lines):
            lines.append(proc.stdout.readline())
        admin = next(ln for ln in lines if "API key" in ln).split()[2]
        demo = next(ln for ln in lines if "demo key" in ln).split()[2]
        base = f"http://127.0.0.1:{ports[2]}"

        def get(path, key=None, method="GET", body=None):
            req = urllib.request.Request(base + path, data=body, method=method,
                                         headers={"Authorization": f"Bearer {key}"} if key else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert get("/list", admin)[0] == 200
        assert get("/list")[0] == 401
        status, reply = get("/demo/config")
        assert status == 200 and reply["data"]["api_key"] == demo
        assert get("/goim/push/room?operation=1000&type=live&room=1", demo, "POST", b"hi")[0] == 200
        assert get("/list", demo)[0] == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


# ---------------------------------------------------------------- 3. room ids are bounded in every op


def test_long_room_ids_are_refused_in_change_join_and_leave(node):
    from imgate.auth import MAX_ROOM_ID_LEN

    async def go():
        c = await imclient.connect(node.ws_url, mid=541, room_id="live://short", heartbeat=None)
        rooms_before = node.stats()["rooms"]
        huge = "big://" + "r" * 60_000
        for op in (12, 18, 20):
            reply = await c.request(op, huge.encode())
            assert reply.op == op + 1
            answer = json.loads(reply.body)
            assert answer["ok"] is False and "limit" in answer["error"], answer
            assert len(reply.body) < 200, "the error does not echo the room id"
        just_over = "big://" + "r" * (MAX_ROOM_ID_LEN - 5)
        answer = json.loads((await c.request(18, just_over.encode())).body)
        assert answer["ok"] is False and f"the limit is {MAX_ROOM_ID_LEN}" in answer["error"]
        at_limit = "big://" + "r" * (MAX_ROOM_ID_LEN - 6)
        assert json.loads((await c.request(18, at_limit.encode())).body)["ok"] is True
        assert node.stats()["rooms"] == rooms_before + 1, "only the room within the limit was made"
        # the connection keeps serving
        assert await c.heartbeat() == 1
        await c.close()

    run(go())


# ---------------------------------------------------------------- 4. trickling clients get a deadline


def trickle(port, data: bytes, every: float, limit: float, first: bytes = b""):
    """Send ``first`` at once, then ``data`` a byte at a time, one every ``every`` s, until the server
    closes or ``limit`` s pass. Returns (seconds until closed or None, what the server sent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(first)
    s.setblocking(False)
    start = time.monotonic()
    got = b""
    try:
        i = 0
        while time.monotonic() - start < limit:
            try:
                chunk = s.recv(65536)
                if not chunk:
                    return time.monotonic() - start, got
                got += chunk
            except BlockingIOError:
                pass
            except ConnectionResetError:
                return time.monotonic() - start, got
            try:
                s.send(data[i % len(data):i % len(data) + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start, got
            i += 1
            time.sleep(every)
        return None, got
    finally:
        s.close()


def test_a_trickled_http_request_is_cut_off_at_its_deadline():
    # idle timeout far away: only the request deadline can end this
    n = NodeThread(http_request_timeout=1.0).start()
    try:
        n.node.http.idle_timeout = 60
        head = (b"POST /goim/push/mids?operation=1000&mids=1 HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100000\r\n" + b"X-Pad: " + b"a" * 1000)
        closed_after, got = trickle(n.node.http_port, head, every=0.05, limit=15)
        assert closed_after is not None, "a trickling client held the connection"
        assert b" 408 " in got.split(b"\r\n", 1)[0], got[:200]
        assert n.node.http.request_timeouts == 1
        status, text = n.http("GET", "/metrics")
        assert b"imgate_http_request_timeouts_total 1.0" in text
        # a slow body counts too: the head whole, then the body byte by byte
        body_head = b"POST /goim/push/mids?operation=1000&mids=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        closed_after, got = trickle(n.node.http_port, b"b" * 5000, every=0.05, limit=15, first=body_head)
        assert closed_after is not None and b" 408 " in got
        assert n.node.http.request_timeouts == 2
        # normal requests are untouched
        assert n.http("GET", "/healthz")[0] == 200
    finally:
        n.stop()


def test_a_trickled_websocket_upgrade_is_cut_off_at_the_handshake_deadline():
    n = NodeThread(handshake_timeout=1.0).start()
    try:
        upgrade = (b"GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + b"X-Pad: " + b"a" * 1000)
        closed_after, _ = trickle(n.node.proxy.ws_port, upgrade, every=0.05, limit=15)
        assert closed_after is not None, "a trickling upgrade held the connection"
        wait_until(lambda: n.stats()["handshake_timeouts"] >= 1, what="the timeout counted")
    finally:
        n.stop()


# ---------------------------------------------------------------- 5. what one client may cost


def notice_in(data: bytes) -> dict | None:
    from imgate.core import FrameDecoder

    sixes = [f for f in FrameDecoder(max_body=1 << 20).feed(data) if f.op == 6]
    return json.loads(sixes[-1].body) if sixes else None


def authed_socket(node, mid):
    from imgate.core import encode_frame

    s = socket.create_connection(("127.0.0.1", node.node.proxy.tcp_port), timeout=5)
    s.sendall(encode_frame(7, 1, json.dumps({"mid": mid, "room_id": "live://flood"}).encode()))
    return s


def test_a_connection_flooding_ops_is_told_and_closed_while_a_normal_one_is_not():
    from imgate.core import encode_frame

    from nodeutil import read_until_closed

    n = NodeThread(client_op_rate=20, client_op_burst=40).start()
    try:
        async def normal():
            c = await imclient.connect(n.tcp_url, mid=551, heartbeat=None)
            for _ in range(30):   # 30 beats at 10 a second: within the rate
                await c.heartbeat()
                await asyncio.sleep(0.1)
            await c.close()

        flood = authed_socket(n, 552)
        flood.sendall(b"".join(encode_frame(4, i, b"spam") for i in range(500)))
        got = read_until_closed(flood, timeout=10)
        flood.close()
        assert notice_in(got) == {"reason": "rate limited", "reconnect": False}
        run(normal())
        assert n.stats()["rate_limited"] == 1
        assert b"imgate_rate_limited_total 1.0" in n.http("GET", "/metrics")[1]
    finally:
        n.stop()


def test_connections_per_address_are_bounded():
    from nodeutil import read_until_closed

    n = NodeThread(max_conns_per_ip=3, conn_limit_exempt=[]).start()
    try:
        held = [authed_socket(n, 560 + i) for i in range(3)]
        wait_until(lambda: n.stats()["connections"] == 3, what="three connections")
        extra = socket.create_connection(("127.0.0.1", n.node.proxy.tcp_port), timeout=5)
        assert notice_in(read_until_closed(extra, timeout=10)) == {
            "reason": "too many connections from this address", "reconnect": False}
        extra.close()
        ws = socket.create_connection(("127.0.0.1", n.node.proxy.ws_port), timeout=5)
        assert read_until_closed(ws, timeout=10).startswith(b"HTTP/1.1 429 ")
        ws.close()
        assert n.stats()["ip_limit_refusals"] == 2
        held.pop().close()
        wait_until(lambda: n.stats()["sockets"] == 2, what="a slot freed")
        async def again():
            c = await imclient.connect(n.tcp_url, mid=569, heartbeat=None)
            await c.close()
        run(again())
        for s in held:
            s.close()
    finally:
        n.stop()


def test_loopback_is_exempt_from_the_address_limit_by_default():
    n = NodeThread(max_conns_per_ip=2).start()
    try:
        async def go():
            cs = [await imclient.connect(n.tcp_url, mid=570 + i, heartbeat=None) for i in range(4)]
            for c in cs:
                await c.close()
        run(go())
        assert n.stats()["ip_limit_refusals"] == 0
    finally:
        n.stop()


# ---------------------------------------------------------------- 6. client tokens expire


def test_a_client_jwt_must_carry_a_bounded_exp():
    import jwt

    from imgate.auth import AuthError, JwtAuth, mint_token

    secret = "client-secret-for-tests-0123456789abcdef"
    now = int(time.time())
    body = lambda token: json.dumps({"mid": 0, "token": token}).encode()  # noqa: E731
    auth = JwtAuth(secret, max_ttl=3600)
    assert auth.authenticate(body(mint_token(secret, 7, ttl=60))).mid == 7
    with pytest.raises(AuthError, match="no exp claim"):
        auth.authenticate(body(jwt.encode({"sub": "7"}, secret, algorithm="HS256")))
    with pytest.raises(AuthError, match="lives too long"):
        auth.authenticate(body(jwt.encode({"sub": "7", "exp": now + 7200}, secret, algorithm="HS256")))
    # configured otherwise: no exp is accepted, and no maximum
    lax = JwtAuth(secret, require_exp=False, max_ttl=None)
    assert lax.authenticate(body(jwt.encode({"sub": "7"}, secret, algorithm="HS256"))).mid == 7
    assert lax.authenticate(body(jwt.encode({"sub": "7", "exp": now + 10**8}, secret, algorithm="HS256"))).mid == 7

    n = NodeThread(auth="jwt", jwt_secret=secret).start()
    try:
        async def go():
            with pytest.raises(imclient.AuthRejected) as refused:
                await imclient.connect(n.tcp_url, token=jwt.encode({"sub": "8"}, secret, algorithm="HS256"),
                                       heartbeat=None)
            assert "exp" in refused.value.reason
            c = await imclient.connect(n.tcp_url, token=mint_token(secret, 8, ttl=600), heartbeat=None)
            await c.close()
        run(go())
    finally:
        n.stop()
    assert imgate_cli("token", "--user", "1", "--ttl", str(30 * 86400), "--secret", secret).returncode == 2


# ---------------------------------------------------------------- 7. slow consumers


def non_reader(node, mid, room):
    """An authenticated TCP client with a tiny receive window that reads nothing until told."""
    from imgate.core import encode_frame

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", node.node.proxy.tcp_port))
    s.sendall(encode_frame(7, 1, json.dumps({"mid": mid, "room_id": room}).encode()))
    return s


def flood_room(node, room, until, body=b"z" * 32768, most=2000):
    t, r = room.split("://")
    for _ in range(most):
        if until():
            return
        assert node.http("POST", f"/goim/push/room?operation=1000&type={t}&room={r}", body)[0] == 200
    raise AssertionError("the slow consumer was never closed")


def test_a_slow_consumer_that_reads_again_gets_its_close_notice():
    from nodeutil import read_until_closed

    n = NodeThread(max_pending=65536).start()
    try:
        s = non_reader(n, 581, "slow://1")
        wait_until(lambda: n.stats()["connections"] == 1, what="auth")
        flood_room(n, "slow://1", lambda: n.stats()["slow_consumer_closes"] >= 1)
        got = read_until_closed(s, timeout=10)   # the client reads again, within the close deadline
        s.close()
        assert notice_in(got) == {"reason": "slow consumer", "reconnect": True}
        assert got.endswith(b'{"reason": "slow consumer", "reconnect": true}'), "the notice is the last frame, whole"
        assert n.stats()["close_notices_dropped"] == 0
    finally:
        n.stop()


def test_a_notice_that_never_finds_room_is_counted_as_dropped():
    n = NodeThread(max_pending=65536).start()
    try:
        s = non_reader(n, 582, "slow://2")
        wait_until(lambda: n.stats()["connections"] == 1, what="auth")
        flood_room(n, "slow://2", lambda: n.stats()["slow_consumer_closes"] >= 1)
        wait_until(lambda: n.stats()["close_notices_dropped"] == 1, timeout=15, what="the dropped notice counted")
        assert b"imgate_close_notices_dropped_total 1.0" in n.http("GET", "/metrics")[1]
        s.close()
    finally:
        n.stop()


def test_the_openapi_document_says_which_scope_each_route_needs(node):
    status, doc = node.http("GET", "/openapi.json", api_key=None)
    assert status == 200 and doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    router = node.node.http.router
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            scope = router.scope(method.upper(), path)
            if scope == "public":
                assert op["security"] == [], path
            else:
                assert op["security"] == [{"bearer": [scope]}] and "401" in op["responses"], (method, path)
    assert doc["paths"]["/list"]["get"]["security"] == [{"bearer": ["admin"]}]


def test_bad_security_settings_are_refused_with_the_key_named(tmp_path):
    from imgate.config import Config, ConfigError

    for values, key in [
        (dict(api_auth="maybe"), "api_auth"),
        (dict(client_op_rate=-1.0), "client_op_rate"),
        (dict(client_op_burst=0.5), "client_op_burst"),
        (dict(max_conns_per_ip=-3), "max_conns_per_ip"),
        (dict(conn_limit_exempt=["not-a-network"]), "conn_limit_exempt[0]"),
        (dict(tls_cert=str(tmp_path / "c.pem")), "tls_cert and tls_key"),
        (dict(tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem")), "tls_cert: no such file"),
        (dict(http_tls=True), "http_tls and tls_tcp need tls_cert"),
        (dict(http_request_timeout=0.0), "http_request_timeout"),
        (dict(jwt_max_ttl=-1.0), "jwt_max_ttl"),
    ]:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            Config.load(None, **values)
