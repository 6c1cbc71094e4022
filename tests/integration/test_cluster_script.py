"""`make cluster` (scripts/cluster.py) survives its members: a proxy killed is reported, the rest keep
serving, and the proxy is started again and back in service."""

from __future__ import annotations

import asyncio
import json
import re
import os
import signal
import subprocess
import sys
import urllib.request
import uuid

import pytest
import uvloop

from imgate import client as imclient
from imgate.auth import mint_token
from imgate.http.apikeys import KeyStore

from clusterutil import ROOT
from helpers import stop_process
from polling import wait_until, wait_until_async

pytestmark = pytest.mark.cluster


def test_a_proxy_killed_under_make_cluster_is_reported_and_restarted_and_the_rest_serve(
        tmp_path, redis_url, kafka_bootstrap):
    work = tmp_path / "cluster"
    out_path = tmp_path / "cluster.out"
    api_key = KeyStore(str(work / "data")).create("tests", ["push"])[1]  # read by the logic roles at start
    out = open(out_path, "wb")
    script = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "cluster.py"), "--work", str(work), "--free-ports",
         "--redis-url", redis_url, "--kafka", kafka_bootstrap, "--topic", f"imgate-push-{uuid.uuid4().hex[:8]}",
         "--restart-delay", "1"],
        stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out.close()

    def output() -> str:
        return out_path.read_text(errors="replace")

    def pid(name: str) -> int:
        return int((work / f"{name}.pid").read_text())

    try:
        wait_until(lambda: "imgate cluster is up" in output() or script.poll() is not None,
                   what="the cluster script to start its roles")
        assert script.poll() is None, output()
        ports = json.loads((work / "ports.json").read_text())
        # the roles make the secret as they start, which the script does not wait for
        secret_file = work / "data" / "jwt.secret"
        secret = wait_until(lambda: secret_file.exists() and secret_file.read_text().strip(),
                            what="a role to create the JWT secret")

        def push(mid: int, body: bytes) -> int:
            url = f"http://127.0.0.1:{ports['logic-1'][0]}/goim/push/mids?operation=1000&mids={mid}"
            try:
                req = urllib.request.Request(url, data=body, method="POST", headers={"Authorization": f"Bearer {api_key}"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    return json.loads(r.read())["data"]["targets"]
            except OSError:
                return -1

        async def client_on(proxy: str, mid: int):
            async def connected():
                try:
                    return await imclient.connect(f"tcp://127.0.0.1:{ports[proxy][0]}", mid=mid, heartbeat=None,
                                                  token=mint_token(secret, mid, ttl=600), timeout=10)
                except (OSError, imclient.ClientError):
                    return None
            return await wait_until_async(connected, what=f"a client to authenticate on proxy {proxy}")

        async def reaches(c, mid: int, body: bytes) -> None:
            async def arrived():
                await asyncio.get_running_loop().run_in_executor(None, push, mid, body)
                try:
                    while True:
                        if (await c.recv(timeout=0.5)).body == body:
                            return True
                except imclient.ClientTimeout:
                    return False
            await wait_until_async(arrived, what=f"a push by mid to reach user {mid}")

        async def go():
            b = await client_on("B", 8801)
            await reaches(b, 8801, b"before")
            a_pid = pid("A")
            os.kill(a_pid, signal.SIGKILL)
            await wait_until_async(lambda: f"A (pid {a_pid}) killed by signal 9" in output(),
                                   what="the script to report proxy A's death")
            assert script.poll() is None, output()
            # the rest keep serving: B's client gets pushes, a new client gets in on B
            await reaches(b, 8801, b"during")
            b2 = await client_on("B", 8802)
            await reaches(b2, 8802, b"new on B")
            # A comes back and is in service again
            await wait_until_async(lambda: "A restarted" in output(), what="proxy A to be restarted")
            a = await client_on("A", 8803)
            await reaches(a, 8803, b"A is back")
            for c in (a, b, b2):
                await c.close()

        uvloop.run(go())
    finally:
        stop_process(script)
        for f in work.glob("*.pid"):  # the script removes them once it stopped its roles: left only on failure
            try:
                p = int(f.read_text())
                if b"imgate" in open(f"/proc/{p}/cmdline", "rb").read():
                    os.kill(p, signal.SIGKILL)
            except (OSError, ValueError):
                pass
    assert script.returncode == 0, output()


def test_make_cluster_with_mariadb_runs_the_im_and_consumer_roles(tmp_path, redis_url, kafka_bootstrap, mariadb_addrs):
    """With a MariaDB pair, `make cluster` also starts two im roles behind the proxies and two consumers:
    a message from a client on A reaches one on B, stored by im-1 (its /metrics counts it), and a small
    group's message is fanned out to the member by a consumer (the im and logic roles run none)."""
    from services import create_database

    work = tmp_path / "cluster"
    out_path = tmp_path / "cluster.out"
    db = f"mc_{uuid.uuid4().hex[:8]}"
    create_database(mariadb_addrs, db)
    api_key = KeyStore(str(work / "data")).create("tests", ["admin"])[1]
    out = open(out_path, "wb")
    script = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "cluster.py"), "--work", str(work), "--free-ports",
         "--redis-url", redis_url, "--kafka", kafka_bootstrap, "--mariadb", ",".join(mariadb_addrs),
         "--mariadb-database", db, "--topic", f"imgate-push-{uuid.uuid4().hex[:8]}"],
        stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out.close()

    def output() -> str:
        return out_path.read_text(errors="replace")

    def im1(method: str, path: str, body: bytes | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{ports['im-1'][0]}{path}", data=body, method=method,
                                     headers={"Authorization": f"Bearer {api_key}"})
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.read()

    try:
        wait_until(lambda: "imgate cluster is up" in output() or script.poll() is not None,
                   what="the cluster script to start its roles")
        assert script.poll() is None, output()
        for name in ("logic-1", "im-1", "im-2", "consumer-1", "consumer-2", "A", "B"):
            # nine processes importing and migrating at once: slow on a loaded 2-core machine
            wait_until(lambda: "is up" in (work / f"{name}.log").read_text(), what=f"{name} to be up",
                       timeout=120)
        ports = json.loads((work / "ports.json").read_text())
        secret = (work / "data" / "jwt.secret").read_text().strip()

        async def go():
            def connect(proxy, mid):
                return imclient.connect(f"tcp://127.0.0.1:{ports[proxy][0]}", mid=mid, heartbeat=None,
                                        token=mint_token(secret, mid, ttl=600), timeout=15)
            a, b = await connect("A", 8901), await connect("B", 8902)
            stream = b.messages(0)
            reply = await a.send_message(8902, "hi", cmid="m1", timeout=15)
            got = await asyncio.wait_for(stream.__anext__(), 30)
            assert (got["cmid"], got["seq"], got["msg_id"]) == ("m1", 1, reply["msg_id"])
            made = json.loads(await asyncio.to_thread(im1, "POST", "/im/groups?uid=8901",
                                                      json.dumps({"members": [8902]}).encode()))
            group = made["data"]["group"]
            await asyncio.to_thread(im1, "POST", "/im/send?uid=8901",
                                    json.dumps({"cmid": "g1", "group": group, "content": 1}).encode())
            kinds = [(await asyncio.wait_for(stream.__anext__(), 30))["cmid"] for _ in range(2)]
            assert kinds[1] == "g1", kinds
            for c in (a, b):
                await c.close()

        uvloop.run(go())
        metrics = im1("GET", "/metrics").decode()
        assert any(line.startswith("imgate_im_messages_total") and float(line.split()[1]) >= 2
                   for line in metrics.splitlines()), metrics
    finally:
        if script.poll() is None:
            script.send_signal(signal.SIGTERM)
            try:
                script.wait(60)
            except subprocess.TimeoutExpired:
                script.kill()
    assert script.returncode == 0, output()
    consumers = (work / "consumer-1.log").read_text() + (work / "consumer-2.log").read_text()
    done = [int(n) for n in re.findall(r"(\d+) entries written", consumers)]
    # the group's creation to both members, g1 to the one who did not send it (the sender's own entry is
    # written with the message)
    assert sum(done) == 3, consumers
