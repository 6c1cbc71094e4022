"""The HTTP API needs a credential (issue 14): API keys and JWTs with scopes, per-route scope
declarations, 401/403, the open mode, loopback defaults. Each test fails on the code before the fix."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from imgate import client as imclient

from helpers import free_port, run
from nodeutil import NodeThread, module_node
from polling import wait_until


ROOT = Path(__file__).resolve().parents[2]


node = module_node(handshake_timeout=2.0, heartbeat_timeout=30.0)


async def http(node, method, path, body=None, **kw):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: node.http(method, path, body, **kw))


# ---------------------------------------------------------------- 2. the HTTP API needs a credential

# what anyone may call: liveness, the API description, the demo page's static files
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/"), ("GET", "/demo.js"),
               ("GET", "/chat"), ("GET", "/chat.js"), ("GET", "/imgate-im.js")}


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
    from imgate.http.apikeys import KeyStore

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

    from imgate.http.apikeys import mint_api_token

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
    from imgate.http.apikeys import ApiAuth
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
        (dict(max_conns_per_user=-1), "max_conns_per_user"),
        (dict(conn_limit_exempt=["not-a-network"]), "conn_limit_exempt[0]"),
        (dict(tls_cert=str(tmp_path / "c.pem")), "tls_cert and tls_key"),
        (dict(tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem")), "tls_cert: no such file"),
        (dict(http_tls=True), "http_tls and tls_tcp need tls_cert"),
        (dict(http_request_timeout=0.0), "http_request_timeout"),
        (dict(jwt_max_ttl=-1.0), "jwt_max_ttl"),
    ]:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            Config.load(None, **values)
