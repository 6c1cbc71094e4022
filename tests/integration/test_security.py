"""Who may connect as whom, against a real node (issue 14): connection keys belong to their user,
client tokens expire. Each test fails on the code before the fix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgate import client as imclient

from helpers import run
from nodeutil import NodeThread, module_node


ROOT = Path(__file__).resolve().parents[2]


node = module_node(handshake_timeout=2.0, heartbeat_timeout=30.0)


def imgate_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "imgate", *args], capture_output=True, text=True, env=env,
                          timeout=60)


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


