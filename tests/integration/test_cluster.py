"""Cluster mode end to end: every role its own process, real Redis and Kafka (seed 5.2, 5.3, 6, 7)."""

from __future__ import annotations

import asyncio
import shutil
import urllib.request

import pytest

from imgate import client as imclient
from imgate.config import Config

from clusterutil import Cluster, RoleProcess, ahttp
from helpers import free_port, run
from polling import wait_until_async
from services import redis_down

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_url, kafka_bootstrap):
    c = Cluster(tmp_path_factory.mktemp("cluster"), redis_url, kafka_bootstrap)
    c.start()
    yield c
    c.stop()


async def until(cluster, pred, what, **kw):
    """The polling helper, with the roles' logs in the failure."""
    try:
        return await wait_until_async(pred, what=what, interval=0.05, **kw)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{cluster.logs()}") from None


def _counter(cluster, logic: str, name: str) -> float:
    """One counter from a logic role's /metrics (text, not the JSON that Cluster.http reads)."""
    req = urllib.request.Request(f"http://127.0.0.1:{cluster.ports[logic]['http']}/metrics",
                                 headers={"Authorization": f"Bearer {cluster.api_key}"})
    with urllib.request.urlopen(req, timeout=15) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_unicast_through_logic_a_reaches_a_user_on_proxy_b(cluster):
    async def go():
        c = await imclient.connect(cluster.ws_url("B"), mid=5001, heartbeat=None)
        status, reply = await ahttp(cluster, "L1", "POST", "/goim/push/mids?operation=1000&mids=5001", b"via L1")
        assert status == 200 and reply["data"]["targets"] == 1, reply
        m = await c.recv(timeout=30)
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

        await until(cluster, both_report, "both proxies to report span://1")

        async def cluster_wide_heartbeat():  # op 3 counts the room across both proxies
            return all([await m.heartbeat() == 6 for m in (members[0], members[1])])

        await until(cluster, cluster_wide_heartbeat, "op 3 to count the room across both proxies")
        for k in range(10):
            status, reply = await ahttp(cluster, "L1" if k % 2 else "L2", "POST",
                                        "/goim/push/room?operation=1000&type=span&room=1", b"m%d" % k)
            assert status == 200, reply
        # then a last one: whatever a member gets before it is what it got twice, if anything
        await ahttp(cluster, "L1", "POST", "/goim/push/room?operation=1000&type=span&room=1", b"end")
        for c in members:
            got = [(await c.recv(timeout=30)).body for _ in range(11)]
            assert got == [b"m%d" % k for k in range(10)] + [b"end"]
        _, r = await ahttp(cluster, "L1", "GET", "/goim/online/top?type=span&limit=5")
        assert r["data"] == [{"room_id": "span://1", "count": 6}]
        for c in members:
            await c.close()

    run(go())


def test_one_users_connections_are_bounded_across_proxies(cluster):
    """70 connections of one user race in through both proxies; the default max_conns_per_user (64)
    holds exactly, since check and store are one Redis script (the proxies send their auths to the
    first healthy logic, L1; tests/cache_contract.py races adds over separate Redis connections)."""
    limit = Config().max_conns_per_user

    async def one(i):
        url = (cluster.tcp_url, cluster.ws_url)[i % 2]("AB"[i // 2 % 2])
        try:
            return await imclient.connect(url, mid=5600, key=f"race-{i}", heartbeat=None, timeout=60)
        except imclient.AuthRejected as e:
            return e.notice

    async def go():
        got = await asyncio.gather(*(one(i) for i in range(limit + 6)))
        held = [c for c in got if not isinstance(c, dict)]
        notices = [c for c in got if isinstance(c, dict)]
        assert len(held) == limit, notices
        assert notices == [{"reason": "auth failed: too many connections for this user", "reconnect": False}] * 6
        async def count():
            status, reply = await ahttp(cluster, "L1", "GET", "/session?uid=5600")
            return len(reply["data"]) if status == 200 else reply

        assert await count() == limit
        other = await imclient.connect(cluster.ws_url("B"), mid=5601, heartbeat=None, timeout=60)
        await held.pop().close()
        await until(cluster, count, "a slot freed", equals=limit - 1)
        held.append(await imclient.connect(cluster.tcp_url("A"), mid=5600, key="late", heartbeat=None, timeout=60))
        for c in held + [other]:
            await c.close()

    run(go())
    refusals = sum(_counter(cluster, logic, "imgate_user_limit_refusals_total") for logic in ("L1", "L2"))
    assert refusals == 6


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
                await c.recv(timeout=30)
        c = await imclient.connect(cluster.tcp_url("A"), mid=5400, room_id="fail://1", heartbeat=None)

        async def only_a():
            _, r = await ahttp(cluster, "L1", "GET", "/session?uid=5400")
            return "A" in [s["server"] for s in r["data"]]

        await until(cluster, only_a, "user 5400's session on A")
        status, reply = await ahttp(cluster, "L1", "POST", "/goim/push/mids?operation=1000&mids=5400", b"after")
        assert status == 200
        assert (await c.recv(timeout=30)).body == b"after"

        async def room_on_a():
            _, r = await ahttp(cluster, "L1", "GET", "/room?rid=fail://1")
            return r["data"]["servers"].get("A") == 1

        await until(cluster, room_on_a, "A to report fail://1")
        await ahttp(cluster, "L1", "POST", "/goim/push/room?operation=1000&type=fail&room=1", b"room")
        assert (await c.recv(timeout=30)).body == b"room"
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

        await until(cluster, accepted, "the push API to accept again")
        status, _ = await ahttp(cluster, "L2", "POST", "/goim/push/mids?operation=1000&mids=5500", b"end")
        assert status == 200
        rest = []
        while not rest or rest[-1] != b"end":
            rest.append((await c.recv(timeout=60)).body)
        assert b"refused" not in rest and b"again" in rest, rest
        await c.close()

    try:
        run(go(), timeout=240)
    finally:
        if not push.alive:
            push.start()


def test_redis_stopped_auth_is_unavailable_and_push_api_says_503(cluster, redis_process):
    """With the session registry down, a new client is told "auth unavailable" (reconnect: true) and a
    push that needs the registry gets 503; once Redis is back both work again."""
    async def go():
        with redis_down():
            for url in (cluster.tcp_url("A"), cluster.ws_url("B")):
                with pytest.raises(imclient.AuthRejected) as e:
                    await imclient.connect(url, mid=5600, heartbeat=None, timeout=30)
                assert e.value.notice == {"reason": "auth unavailable", "reconnect": True}, e.value.notice
            for logic in ("L1", "L2"):
                status, reply = await ahttp(cluster, logic, "POST", "/goim/push/mids?operation=1000&mids=5600", b"x")
                assert status == 503, reply
                assert reply["code"] != 0 and reply["message"], reply

        async def connects():
            try:
                return await imclient.connect(cluster.tcp_url("A"), mid=5600, heartbeat=None, timeout=30)
            except imclient.AuthRejected:
                return None

        c = await until(cluster, connects, "auth to work again once Redis is back")
        status, reply = await ahttp(cluster, "L1", "POST", "/goim/push/mids?operation=1000&mids=5600", b"back")
        assert status == 200 and reply["data"]["targets"] == 1, reply
        assert (await c.recv(timeout=30)).body == b"back"
        await c.close()

    run(go(), timeout=240)


def _empty_redis_restart(redis_process) -> None:
    """Redis crashes and comes back with nothing: no append-only file, no snapshot."""
    redis_process.stop(hard=True)
    data = redis_process.dir / "redis"
    for p in list(data.iterdir()):
        if p.name.startswith(("appendonly", "dump")):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    redis_process.start()


def test_redis_restarted_empty_under_unicast_load_loses_no_push_answered_200(cluster, redis_process):
    """Every client stays connected through an empty Redis restart; each push by mid is either
    refused (503, or an error while Redis is down) or answered 200 for one target, and every push
    answered 200 reaches its client. The proxies re-register their connections by themselves."""
    mids = list(range(7100, 7116))

    async def go():
        clients = {}
        for i, mid in enumerate(mids):
            url = cluster.tcp_url("A") if i % 2 else cluster.ws_url("B")
            clients[mid] = await imclient.connect(url, mid=mid, heartbeat=None, timeout=30)
        loop = asyncio.get_running_loop()
        accepted: dict[int, set[bytes]] = {mid: set() for mid in mids}
        refused = 0
        restarted = loop.run_in_executor(None, _empty_redis_restart, redis_process)
        accepted_after = 0
        n = 0
        # a steady stream of unicasts through both logic instances until, after the restart, 40 more
        # have been answered 200
        while not restarted.done() or accepted_after < 40:
            mid = mids[n % len(mids)]
            body = f"u{n}".encode()
            status, reply = await ahttp(cluster, ("L1", "L2")[n % 2], "POST",
                                        f"/goim/push/mids?operation=1000&mids={mid}", body)
            n += 1
            if status == 200:
                assert reply["data"]["targets"] == 1, f"answered 200 for a connected user without a target: {reply}"
                accepted[mid].add(body)
                if restarted.done():
                    accepted_after += 1
            else:
                assert status == 503, (status, reply)
                refused += 1
        await restarted

        async def all_delivered():
            for mid, c in clients.items():
                while (f := c.recv_nowait()) is not None:
                    accepted[mid].discard(f.body)
            return all(not left for left in accepted.values())

        await until(cluster, all_delivered, "every push answered 200 to reach its client")
        for c in clients.values():
            assert c.closed_reason is None, c.closed_reason
        # the registry names every client again
        for mid in mids:
            status, reply = await ahttp(cluster, "L2", "GET", f"/session?uid={mid}")
            assert len(reply["data"]) == 1, reply
        for c in clients.values():
            await c.close()

    run(go(), timeout=240)


def test_a_proxy_started_after_push_is_discovered_and_dropped_when_dead(cluster):
    """Push is told only of A and B. A proxy C started later registers itself through its online
    reports and gets room pushes and unicasts within a few online intervals; once killed, push drops
    it when its report has expired."""
    ports = {"tcp": free_port(), "ws": free_port(), "rpc": free_port()}
    a = cluster.procs["A"].config
    c_proc = RoleProcess("proxy", "C", dict(
        cluster.common, server_id="C", tcp=f"127.0.0.1:{ports['tcp']}", ws=f"127.0.0.1:{ports['ws']}",
        rpc=f"127.0.0.1:{ports['rpc']}", logic_addrs=a["logic_addrs"]), cluster.workdir)
    assert "C" not in cluster.procs["P"].config["proxies"]

    async def go():
        c_proc.start()
        try:
            c = await imclient.connect(f"tcp://127.0.0.1:{ports['tcp']}", mid=7300, room_id="live://7300",
                                       heartbeat=None, timeout=30)

            async def room_push_arrives():
                await ahttp(cluster, "L1", "POST", "/goim/push/room?operation=1000&type=live&room=7300", b"found")
                try:
                    return (await c.recv(timeout=0.5)).body == b"found"
                except imclient.ClientTimeout:
                    return False

            await until(cluster, room_push_arrives, "push to discover proxy C")
            status, reply = await ahttp(cluster, "L2", "POST", "/goim/push/mids?operation=1000&mids=7300", b"uni")
            assert status == 200 and reply["data"]["targets"] == 1, reply
            while (body := (await c.recv(timeout=30)).body) == b"found":
                pass  # room pushes of the polling that arrived late
            assert body == b"uni"
            await c.close()
        finally:
            c_proc.kill()

        def dropped():
            return "proxy C dropped" in cluster.procs["P"].log_path.read_text(errors="replace")

        await until(cluster, dropped, "push to drop the dead proxy C")

    run(go(), timeout=240)
