"""Security findings of issue 14, each reproduced against a real node: a test here fails on the code
before the fix (key hijack, open API, unbounded room ids, HTTP trickle, op floods, JWT without exp,
slow consumers)."""

from __future__ import annotations

import asyncio
import json

import pytest
import uvloop

from imgate import client as imclient

from nodeutil import NodeThread


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
            # 128 random bits from `secrets` in URL-safe base64: 22 characters
            assert len(k) >= 22 and all(ch.isalnum() or ch in "-_" for ch in k), k

    run(go())
