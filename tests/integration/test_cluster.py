"""Cluster mode end to end: every role its own process, real Redis and Kafka (seed 5.2, 5.3, 6, 7)."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from imgate import client as imclient

from clusterutil import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_url, kafka_bootstrap, kafka_process):
    c = Cluster(tmp_path_factory.mktemp("cluster"), redis_url, kafka_bootstrap)
    try:
        c.start()
    except Exception:
        c.stop()
        raise
    yield c
    c.stop()


def run(coro, timeout=90):
    return uvloop.run(asyncio.wait_for(coro, timeout))


async def ahttp(cluster, logic, method, path, body=None):
    return await asyncio.get_running_loop().run_in_executor(None, cluster.http, logic, method, path, body)


async def until(pred, timeout=10.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(every)
    return False


def test_unicast_through_logic_a_reaches_a_user_on_proxy_b(cluster):
    async def go():
        c = await imclient.connect(cluster.ws_url("B"), mid=5001, heartbeat=None)
        status, reply = await ahttp(cluster, "L1", "POST", "/goim/push/mids?operation=1000&mids=5001", b"via L1")
        assert status == 200 and reply["data"]["targets"] == 1, reply
        m = await c.recv(timeout=15)
        assert (m.op, m.body) == (1000, b"via L1")
        # /session on either logic shows the user on proxy B
        for logic in ("L1", "L2"):
            status, reply = await ahttp(cluster, logic, "GET", "/session?uid=5001")
            assert [s["server"] for s in reply["data"]] == ["B"], reply
        await c.close()

    run(go())


def test_room_spanning_both_proxies_gets_each_message_once_per_member(cluster):
    async def go():
        members = []
        for i in range(6):
            proxy = "A" if i % 2 else "B"
            url = cluster.tcp_url(proxy) if i % 3 else cluster.ws_url(proxy)
            members.append(await imclient.connect(url, mid=5100 + i, room_id="span://1", heartbeat=None))
        # push absorbs the proxies' room lists periodically; wait until both report the room
        async def both_report():
            _, r = await ahttp(cluster, "L2", "GET", "/room?rid=span://1")
            return r["data"]["servers"] == {"A": 3, "B": 3}

        assert await until(both_report), cluster.logs()

        async def cluster_wide_heartbeat():  # op 3 counts the room across both proxies
            return all([await m.heartbeat() == 6 for m in (members[0], members[1])])

        assert await until(cluster_wide_heartbeat)
        for k in range(10):
            status, reply = await ahttp(cluster, "L1" if k % 2 else "L2", "POST",
                                        "/goim/push/room?operation=1000&type=span&room=1", b"m%d" % k)
            assert status == 200, reply
        for c in members:
            got = [(await c.recv(timeout=15)).body for _ in range(10)]
            assert got == [b"m%d" % k for k in range(10)]
        for c in members:
            with pytest.raises(asyncio.TimeoutError):
                await c.recv(timeout=0.3)
        _, r = await ahttp(cluster, "L1", "GET", "/goim/online/top?type=span&limit=5")
        assert r["data"] == [{"room_id": "span://1", "count": 6}]
        for c in members:
            await c.close()

    run(go())


def test_logic_killed_new_clients_authenticate_through_the_other(cluster):
    l1 = cluster.procs["L1"]

    async def go():
        l1.kill()
        for i in range(5):
            c = await imclient.connect(cluster.tcp_url("A"), mid=5200 + i, heartbeat=None, timeout=10)
            assert await c.heartbeat() == 0
            await c.close()
        status, reply = await ahttp(cluster, "L2", "POST", "/goim/push/mids?operation=1000&mids=5300", b"x")
        assert status == 200

    try:
        run(go())
    finally:
        l1.start()


def test_proxy_b_killed_clients_reconnect_to_a_and_get_pushes(cluster):
    b = cluster.procs["B"]

    async def go():
        c = await imclient.connect(cluster.tcp_url("B"), mid=5400, room_id="fail://1", heartbeat=None)
        b.kill()
        with pytest.raises(imclient.ConnectionClosed):
            while True:
                await c.recv(timeout=10)
        c = await imclient.connect(cluster.tcp_url("A"), mid=5400, room_id="fail://1", heartbeat=None)

        async def only_a():
            _, r = await ahttp(cluster, "L1", "GET", "/session?uid=5400")
            return "A" in [s["server"] for s in r["data"]]

        assert await until(only_a)
        status, reply = await ahttp(cluster, "L1", "POST", "/goim/push/mids?operation=1000&mids=5400", b"after")
        assert status == 200
        assert (await c.recv(timeout=15)).body == b"after"

        async def room_on_a():
            _, r = await ahttp(cluster, "L1", "GET", "/room?rid=fail://1")
            return r["data"]["servers"].get("A") == 1

        assert await until(room_on_a)
        await ahttp(cluster, "L1", "POST", "/goim/push/room?operation=1000&type=fail&room=1", b"room")
        assert (await c.recv(timeout=15)).body == b"room"
        await c.close()

    try:
        run(go())
    finally:
        b.start()


def test_kafka_stopped_push_api_says_503_and_accepted_pushes_survive(cluster, kafka_process):
    push = cluster.procs["P"]

    async def go():
        c = await imclient.connect(cluster.tcp_url("A"), mid=5500, heartbeat=None)
        loop = asyncio.get_running_loop()
        # accepted by Kafka while push is down: they wait in the topic
        await loop.run_in_executor(None, push.kill)
        for k in range(3):
            status, reply = await ahttp(cluster, "L1", "POST", "/goim/push/mids?operation=1000&mids=5500", b"queued-%d" % k)
            assert status == 200, reply
        await loop.run_in_executor(None, kafka_process.stop)
        try:
            status, reply = await ahttp(cluster, "L1", "POST", "/goim/push/mids?operation=1000&mids=5500", b"refused")
            assert status == 503, reply
            assert reply["code"] != 0 and "kafka" in reply["message"].lower(), reply
        finally:
            await loop.run_in_executor(None, kafka_process.start)
            await loop.run_in_executor(None, push.start)
        got = [(await c.recv(timeout=60)).body for _ in range(3)]
        assert got == [b"queued-0", b"queued-1", b"queued-2"], "every accepted push arrives, in order"
        # and the API accepts again
        async def accepted():
            s, _ = await ahttp(cluster, "L2", "POST", "/goim/push/mids?operation=1000&mids=5500", b"again")
            return s == 200

        assert await until(accepted, timeout=60, every=1.0)
        rest = []
        while True:
            try:
                rest.append((await c.recv(timeout=15 if not rest else 2)).body)
            except asyncio.TimeoutError:
                break
        assert b"refused" not in rest and b"again" in rest
        await c.close()

    try:
        run(go(), timeout=240)
    finally:
        if not push.alive:
            push.start()
