"""The im and consumer roles in the cluster: two im instances on the MariaDB Galera pair behind two
proxies (A prefers I1, B prefers I2), two consumers doing the group fan-out, two logic, push, Redis and
Kafka, all real processes."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("asyncmy")

from imgate import client as imclient  # noqa: E402
from imgate.im.protocol import OP_MSG_PUSH  # noqa: E402

from clusterutil import ahttp, mariadb_cluster, pushed, pushed_frame  # noqa: E402
from helpers import run  # noqa: E402
from polling import wait_until_async  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_url, kafka_bootstrap, mariadb_addrs):
    c = mariadb_cluster(tmp_path_factory.mktemp("imroles"), redis_url, kafka_bootstrap, mariadb_addrs,
                        im_roles=2, consumers=2, group_write_limit=20, group_hysteresis=2)
    c.start()
    yield c
    c.stop()



def im_stats(cluster, name: str) -> dict:
    status, _ = cluster.http(name, "GET", "/healthz")
    assert status == 200
    url = f"http://127.0.0.1:{cluster.ports[name]['http']}/metrics"
    import urllib.request
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster.api_key}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("imgate_im_") and " " in line}


def test_a_message_between_proxies_through_different_im_instances(cluster):
    before = {n: im_stats(cluster, n).get("imgate_im_messages_total", 0) for n in ("I1", "I2")}

    async def go():
        x = await imclient.connect(cluster.ws_url("A"), mid=7101, heartbeat=None, timeout=15)
        y = await imclient.connect(cluster.tcp_url("B"), mid=7102, heartbeat=None, timeout=15)
        try:
            reply = await x.send_message(7102, {"n": 1}, cmid="x1", timeout=15)   # A -> I1 (n1)
            got = await pushed(y)
            assert (got["from"], got["seq"], got["content"], got["msg_id"]) == (7101, 1, {"n": 1}, reply["msg_id"])
            back = await y.send_message(7101, "back", cmid="y1", timeout=15)      # B -> I2 (n2)
            got = await pushed(x)
            assert (got["from"], got["seq"], got["content"]) == (7102, 2, "back") and back["seq"] == 2
            # a backend through I2's HTTP; a resend through I1's is the same message
            body = json.dumps({"cmid": "y2", "to": 7101, "content": 3}).encode()
            status, sent = await ahttp(cluster, "I2", "POST", "/im/send?uid=7102", body)
            assert status == 200 and sent["data"]["seq"] == 3, sent
            status, again = await ahttp(cluster, "I1", "POST", "/im/send?uid=7102", body)
            assert status == 200 and again["data"]["msg_id"] == sent["data"]["msg_id"]
            assert (await pushed(x))["cmid"] == "y2"
            for c in (x, y):
                page = await c.sync(0, 10, timeout=15)
                assert [(m["seq"], m["cmid"]) for m in page["msgs"]] == [(1, "x1"), (2, "y1"), (3, "y2")]
        finally:
            await x.close()
            await y.close()

    run(go())
    after = {n: im_stats(cluster, n).get("imgate_im_messages_total", 0) for n in ("I1", "I2")}
    # each instance stored what its proxy sent it (I2 also the backend's send): the roles did the work
    assert (after["I1"] - before["I1"], after["I2"] - before["I2"]) == (1, 2), (before, after)


def test_killing_an_im_instance_loses_nothing(cluster):
    """I1 killed -9 while A's client streams sends: the proxy fails over to I2; every acknowledged send
    is in both inboxes once, seqs 1..N."""
    acked: dict[str, int] = {}

    async def go():
        x = await imclient.connect(cluster.ws_url("A"), mid=7201, heartbeat=None, timeout=15)
        y = await imclient.connect(cluster.tcp_url("B"), mid=7202, heartbeat=None, timeout=15)
        try:
            for i in range(60):
                if i == 20:
                    await asyncio.to_thread(cluster.procs["I1"].kill)
                cmid = f"k{i}"
                while True:  # the client's resend of a 22 with no 23: same cmid
                    try:
                        acked[cmid] = (await x.send_message(7202, i, cmid=cmid, timeout=15))["seq"]
                        break
                    except (imclient.ImRejected, imclient.ClientTimeout):
                        await asyncio.sleep(0.05)
            return (await y.sync(0, 1000, timeout=15))["msgs"]
        finally:
            await x.close()
            await y.close()

    try:
        msgs = run(go(), timeout=120)
    finally:
        cluster.procs["I1"].start()
    assert sorted(acked.values()) == list(range(1, 61))
    assert [(m["seq"], m["cmid"]) for m in msgs] == sorted((s, c) for c, s in acked.items())


def test_a_group_fanned_out_by_one_consumer_while_the_other_is_killed(cluster):
    """Write-mode group messages streamed through both im roles while consumer C1 is killed -9 (by PID):
    C2 (after the Kafka rebalance) or the outbox sweep does its jobs; every member's inbox ends up with
    each message once, in gseq order, without gap, and an online member gets them pushed in order."""
    members = list(range(7302, 7312))
    n = 60

    async def inbox(uid):
        status, page = await ahttp(cluster, "I2", "GET", f"/im/sync?uid={uid}&after=0&limit=1000")
        assert status == 200, page
        return page["data"]["msgs"]

    async def go():
        status, made = await ahttp(cluster, "I1", "POST", "/im/groups?uid=7301",
                                   json.dumps({"name": "g", "members": members}).encode())
        assert status == 200, made
        g = made["data"]["group"]
        online = await imclient.connect(cluster.tcp_url("B"), mid=7305, heartbeat=None, timeout=15)
        sender = await imclient.connect(cluster.ws_url("A"), mid=7301, heartbeat=None, timeout=15)
        stream = online.messages(0)
        got = []
        try:
            for i in range(n):
                if i == 20:
                    pid = cluster.procs["C1"].proc.pid
                    await asyncio.to_thread(cluster.procs["C1"].kill)  # SIGKILL to that PID
                    assert cluster.procs["C1"].proc.returncode == -9, pid
                body = {"cmid": f"g{i}", "group": g, "content": i}
                status, sent = await ahttp(cluster, ("I1", "I2")[i % 2], "POST", "/im/send?uid=7301", json.dumps(body).encode())
                assert status == 200 and sent["data"]["gseq"] == i + 2, sent

            async def all_fanned_out():
                for uid in [7301] + members:
                    if len(await inbox(uid)) < n + 1:
                        return False
                return True

            await wait_until_async(all_fanned_out, timeout=60, interval=0.2, what="every member's inbox to be complete")
            while len(got) < n + 1:
                got.append(await asyncio.wait_for(stream.__anext__(), 30))
        finally:
            await online.close()
            await sender.close()
        return g, got

    try:
        g, got = run(go(), timeout=180)
    finally:
        cluster.procs["C1"].start()
    assert [m["gseq"] for m in got] == list(range(1, n + 2)) and [m["seq"] for m in got] == list(range(1, n + 2))
    for uid in [7301] + members:
        msgs = run(inbox(uid))
        assert [m["seq"] for m in msgs] == list(range(1, n + 2)), f"user {uid}: a seq skipped or repeated"
        assert [(m["group"], m["gseq"]) for m in msgs] == [(g, k) for k in range(1, n + 2)], f"user {uid}: order"
        assert [m["cmid"] for m in msgs[1:]] == [f"g{i}" for i in range(n)]


def test_read_mode_group_rooms_follow_membership_on_both_proxies(cluster):
    """A group over group_write_limit is in read mode: its members' connections on both proxies join its
    room when it is made (JOIN_CONNS over RPC from push), a member added while online joins, a removed
    one leaves; a group message reaches exactly the members online, through the room."""
    members = list(range(7402, 7430))  # 29 with the owner: over the limit of 20

    async def room_count(room):
        status, got = await ahttp(cluster, "L1", "GET", f"/room?rid={room}")
        assert status == 200, got
        return got["data"]["count"]

    async def group_push(c, cmid):
        """The msg ``cmid`` pushed to ``c`` (the membership notices before it skipped)."""
        while True:
            frame = await c.recv(timeout=30)
            if frame.op == OP_MSG_PUSH:
                for m in json.loads(frame.body)["msgs"]:
                    if m["cmid"] == cmid:
                        return m

    async def send(cmid):
        body = json.dumps({"cmid": cmid, "group": g[0], "content": cmid}).encode()
        status, sent = await ahttp(cluster, "I2", "POST", "/im/send?uid=7401", body)
        assert status == 200 and sent["data"]["seq"] == 0, sent  # read mode: the timeline only

    g = []

    async def go():
        a = await imclient.connect(cluster.ws_url("A"), mid=7402, heartbeat=None, timeout=15)
        b = await imclient.connect(cluster.tcp_url("B"), mid=7403, heartbeat=None, timeout=15)
        late = await imclient.connect(cluster.tcp_url("B"), mid=7450, heartbeat=None, timeout=15)
        try:
            status, made = await ahttp(cluster, "I1", "POST", "/im/groups?uid=7401",
                                       json.dumps({"name": "big", "members": members}).encode())
            assert status == 200, made
            g.append(made["data"]["group"])
            room = f"im://g:{g[0]}"
            status, info = await ahttp(cluster, "I2", "GET", f"/im/groups?group={g[0]}")
            assert info["data"]["mode"] == "read", info
            await wait_until_async(lambda: room_count(room), equals=2, interval=0.2, what="a and b in the room")
            await send("r1")
            for c in (a, b):
                got = await group_push(c, "r1")
                assert (got["cmid"], got["seq"], got["group"]) == ("r1", 0, g[0]), got
            status, changed = await ahttp(cluster, "I1", "POST", f"/im/groups/members?group={g[0]}",
                                          json.dumps({"add": [7450], "remove": [7403]}).encode())
            assert status == 200 and changed["data"]["mode"] == "read", changed
            await send("r2")
            for c in (a, late):
                assert (await group_push(c, "r2"))["cmid"] == "r2"
            # late (on B) has r2, so B's room push is done: b, removed, must not have had it
            status, _ = await ahttp(cluster, "I1", "POST", "/im/send?uid=7401",
                                    json.dumps({"cmid": "direct", "to": 7403, "content": "x"}).encode())
            assert status == 200
            assert [m["cmid"] for m in (await pushed_frame(b))] == ["direct"]
        finally:
            for c in (a, b, late):
                await c.close()

    run(go(), timeout=120)


def test_a_connection_made_after_another_process_made_a_read_group_joins_its_room(cluster):
    """The logic roles authenticate; a read-mode group made through an im role (another process) is
    news to them: a member connecting afterwards, on either proxy (A authenticates through L1, B
    through L2), still joins the group's room and gets its messages pushed live."""
    members = list(range(7461, 7490))  # 30 with the owner: over the limit of 20

    async def go():
        status, made = await ahttp(cluster, "I2", "POST", "/im/groups?uid=7460",
                                   json.dumps({"name": "made elsewhere", "members": members}).encode())
        assert status == 200, made
        g = made["data"]["group"]
        conns = [await imclient.connect(url, mid=m, heartbeat=None, timeout=15)
                 for url, m in ((cluster.tcp_url("A"), 7461), (cluster.ws_url("B"), 7462))]
        try:
            async def room_count():
                status, got = await ahttp(cluster, "L1", "GET", f"/room?rid=im://g:{g}")
                assert status == 200, got
                return got["data"]["count"]

            await wait_until_async(room_count, equals=2, interval=0.2, what="both new connections in the room")
            body = json.dumps({"cmid": "late-room", "group": g, "content": 1}).encode()
            status, sent = await ahttp(cluster, "I1", "POST", "/im/send?uid=7460", body)
            assert status == 200 and sent["data"]["seq"] == 0, sent
            for c in conns:
                while True:  # skip anything else pushed to it
                    msgs = [m for m in (await pushed_frame(c)) if m.get("cmid") == "late-room"]
                    if msgs:
                        assert (msgs[0]["group"], msgs[0]["seq"]) == (g, 0), msgs
                        break
        finally:
            for c in conns:
                await c.close()

    run(go(), timeout=120)
