"""The business's services in a cluster: every role its own process, the example backend its own too.
Proxies reach the upstream routes, the auth service and the webhooks only through logic's RPC."""

from __future__ import annotations

import json

import pytest

from imgate.core import FrameDecoder

from clusterutil import Cluster
from nodeutil import read_until_closed
from polling import wait_until
from test_upstream import Backend, Client

pytestmark = pytest.mark.cluster


class _Node:
    """What test_upstream's Client needs of a node: a proxy's TCP port."""

    def __init__(self, port):
        self.node = type("N", (), {"proxy": type("P", (), {"tcp_port": port})})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, redis_url, kafka_bootstrap):
    backend = Backend().start()
    c = Cluster(tmp_path_factory.mktemp("upstream-cluster"), redis_url, kafka_bootstrap,
                auth="http", auth_url=backend.url("/auth"), upstream_url=backend.url("/upstream"),
                upstream_routes={"102": backend.url("/status/502")}, webhook_url=backend.url("/events"))
    try:
        c.start()
    except BaseException:
        backend.stop()
        raise
    yield c, backend
    c.stop()
    backend.stop()


def test_upstream_auth_and_webhooks_through_logic(setup):
    cluster, backend = setup
    c = Client(_Node(cluster.ports["A"]["tcp"]))
    ok = c.auth(token="user:6001:live://60,team://62", platform="android")
    assert (ok["mid"], ok["room_id"], sorted(ok["rooms"])) == (6001, "live://60", ["live://60", "team://62"])
    c.send(4, 41, b"from proxy A")
    assert json.loads(c.read(5, 41).body) == {
        "user": 6001, "key": ok["key"], "conn_id": ok["conn_id"], "platform": "android", "room": "live://60",
        "op": 4, "seq": 41, "echo": "from proxy A"}
    c.send(102, 42, b"x")
    assert json.loads(c.read(103, 42).body) == {"ok": False, "code": "status", "error": "upstream answered HTTP 502",
                                                "status": 502}
    c.send(18, 43, b"live://61")
    c.read(19, 43)

    r = Client(_Node(cluster.ports["B"]["tcp"]))
    r.send(7, 1, json.dumps({"token": "stranger"}).encode())
    sixes = [f for f in FrameDecoder().feed(read_until_closed(r.sock)) if f.op == 6]
    assert json.loads(sixes[-1].body) == {"reason": "auth failed: unknown token", "reconnect": False}
    c.close()

    def mine():
        return [(e["event"], e.get("action"), e.get("room_id"), e["server"])
                for e in backend.get("/events")["events"] if e.get("conn_id") == ok["conn_id"]]
    wait_until(mine, equals=[("connect", None, "live://60", "A"), ("room", "join", "live://61", "A"),
                             ("disconnect", None, None, "A")],
               what=f"the connection's events through logic\n{cluster.logs()}")
