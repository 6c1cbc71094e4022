"""IM in cluster mode, on the shared MariaDB Galera pair, two proxies, push, Redis and Kafka, all real
processes, run twice: the IM service in the two logic roles (L1 writes on n1, L2 on n2), and in two im
roles (I1 on n1 behind proxy A, I2 on n2 behind B). ``cluster.im`` names the two that serve IM."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("asyncmy")

from imgate import client as imclient  # noqa: E402

from clusterutil import ahttp, mariadb_cluster, pushed  # noqa: E402
from helpers import run  # noqa: E402
from polling import wait_until_async  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", params=["logic", "im"])
def cluster(request, tmp_path_factory, redis_url, kafka_bootstrap, mariadb_addrs):
    roles = 2 if request.param == "im" else 0
    c = mariadb_cluster(tmp_path_factory.mktemp("imcluster"), redis_url, kafka_bootstrap, mariadb_addrs,
                        im_roles=roles)
    c.im = ("I1", "I2") if roles else ("L1", "L2")
    c.start()
    yield c
    c.stop()



def test_a_message_between_proxies_and_back_through_the_other_logic(cluster):
    async def go():
        x = await imclient.connect(cluster.ws_url("A"), mid=7001, heartbeat=None, timeout=15)
        y = await imclient.connect(cluster.tcp_url("B"), mid=7002, heartbeat=None, timeout=15)
        try:
            # X on proxy A -> L1 (n1); Y on proxy B gets it
            reply = await x.send_message(7002, {"n": 1}, cmid="x1", timeout=15)
            assert reply["seq"] == 1
            got = await pushed(y)
            assert (got["from"], got["seq"], got["content"], got["msg_id"]) == (7001, 1, {"n": 1}, reply["msg_id"])
            # a backend answers as Y through L2 (n2); X gets it on proxy A
            body = json.dumps({"cmid": "y1", "to": 7001, "content": "back"}).encode()
            status, sent = await ahttp(cluster, cluster.im[1], "POST", "/im/send?uid=7002", body)
            assert status == 200 and sent["data"]["seq"] == 2, sent
            got = await pushed(x)
            assert (got["from"], got["seq"], got["content"]) == (7002, 2, "back")
            # a resend of X's message through the other logic is the same message
            status, again = await ahttp(cluster, cluster.im[1], "POST", "/im/send?uid=7001",
                                        json.dumps({"cmid": "x1", "to": 7002, "content": {"n": 1}}).encode())
            assert status == 200 and (again["data"]["msg_id"], again["data"]["seq"]) == (reply["msg_id"], 1)
            # both inboxes, read through either logic, are 1..2 with the same entries
            page = await x.sync(0, 10, timeout=15)
            assert [(m["seq"], m["cmid"]) for m in page["msgs"]] == [(1, "x1"), (2, "y1")]
            for logic in cluster.im:
                status, page = await ahttp(cluster, logic, "GET", "/im/sync?uid=7002&after=0&limit=10")
                assert [(m["seq"], m["cmid"]) for m in page["data"]["msgs"]] == [(1, "x1"), (2, "y1")]
            # a new connection learns its newest seq at auth (op 8 inbox_seq, carried by the connect RPC)
            assert (x.inbox_seq, y.inbox_seq) == (0, 0)
            again = await imclient.connect(cluster.tcp_url("B"), mid=7001, heartbeat=None, timeout=15)
            assert again.inbox_seq == 2
            await again.close()
        finally:
            await x.close()
            await y.close()

    run(go())


def test_redis_flushed_mid_stream_reuses_and_skips_no_seq(cluster, redis_url):
    """Seqs live only in the SQL store: FLUSHALL on Redis in the middle of a stream of sends through
    both logic leaves every inbox 1..N, each acknowledged seq where its reply said."""
    import redis

    async def go():
        c = await imclient.connect(cluster.tcp_url("A"), mid=8002, heartbeat=None, timeout=15)  # opens its inbox
        await c.close()
        acked = []
        for i in range(120):
            if i == 60:
                await asyncio.to_thread(lambda: redis.Redis.from_url(redis_url).flushall())
            logic = cluster.im[i % 2]
            body = json.dumps({"cmid": f"r{i}", "to": 8002, "content": i}).encode()
            status, sent = await ahttp(cluster, logic, "POST", "/im/send?uid=8001", body)
            assert status == 200, sent
            acked.append((f"r{i}", sent["data"]["seq"]))
        assert [seq for _, seq in acked] == list(range(1, 121))
        for uid in (8001, 8002):
            status, page = await ahttp(cluster, cluster.im[1], "GET", f"/im/sync?uid={uid}&after=0&limit=1000")
            assert [(m["cmid"], m["seq"]) for m in page["data"]["msgs"]] == acked

    run(go())


def test_a_mariadb_node_killed_mid_stream_through_the_whole_cluster(cluster, galera_process):
    """Clients on both proxies stream messages (resending a refused or unanswered one with its cmid)
    while n1, the node L1 writes to, is killed -9: nothing acknowledged is lost, no seq is reused or
    skipped, and no send waits 10 s."""
    users = [9001, 9002, 9003, 9004]
    acked: dict[str, tuple] = {}  # cmid -> (sender, receiver, seq)
    longest = [0.0]

    async def sender(c, uid, stop):
        i = 0
        while not stop.is_set():
            to = users[(users.index(uid) + 1) % len(users)]
            cmid = f"k{uid}-{i}"
            began = asyncio.get_running_loop().time()
            while True:
                try:
                    reply = await c.send_message(to, i, cmid=cmid, timeout=15)
                    break
                except (imclient.ImRejected, imclient.ClientTimeout):
                    await asyncio.sleep(0.05)  # the client's resend, same cmid
            longest[0] = max(longest[0], asyncio.get_running_loop().time() - began)
            acked[cmid] = (uid, to, reply["seq"])
            i += 1

    async def go():
        clients = [await imclient.connect(cluster.ws_url("AB"[k % 2]), mid=u, heartbeat=None, timeout=15)
                   for k, u in enumerate(users)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(sender(c, u, stop)) for c, u in zip(clients, users)]
        try:
            await wait_until_async(lambda: len(acked) >= 100, what="100 acknowledged before the kill")
            before = len(acked)
            await asyncio.to_thread(galera_process.kill, "n1")
            await wait_until_async(lambda: len(acked) >= before + 100, what="100 more acknowledged after the kill")
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients:
                await c.close()
        inboxes = {}
        for u in users:
            status, page = await ahttp(cluster, cluster.im[1], "GET", f"/im/sync?uid={u}&after=0&limit=1000")
            assert status == 200, page
            inboxes[u] = page["data"]["msgs"]
        return inboxes

    try:
        inboxes = run(go(), timeout=240)
    finally:
        galera_process.start()  # n1 rejoins for the tests after this one
    print(f"\nlongest send across the kill of n1 ({cluster.im[0]} on it): {longest[0]:.2f}s")
    assert longest[0] < 10, f"a send waited {longest[0]:.1f}s across the failover"
    for u, msgs in inboxes.items():
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), f"user {u}: a seq skipped or reused"
    where = {(u, m["cmid"]): m["seq"] for u, msgs in inboxes.items() for m in msgs}
    for cmid, (s, r, seq) in acked.items():
        assert where.get((s, cmid)) == seq and (r, cmid) in where, f"acknowledged {cmid} lost"
    assert sum(map(len, inboxes.values())) == 2 * len(acked), "a message stored twice, or never acknowledged"
