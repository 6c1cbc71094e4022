"""Run imgate's roles as real processes (`imgate proxy|logic|push`) against a real Redis and Kafka."""

from __future__ import annotations

import asyncio

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from imgate.http.apikeys import KeyStore
from imgate.config import dump_toml

from helpers import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent


class RoleProcess:
    def __init__(self, role: str, name: str, config: dict, workdir: Path):
        self.role, self.name, self.config = role, name, config
        self.workdir = workdir
        self.conf_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "RoleProcess":
        self.conf_path.write_text(dump_toml(self.config))
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")
        offset = log.tell()  # a restart appends: look for "is up" after this point only
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgate", self.role, "--config", str(self.conf_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                up = b"is up" in f.read()
            if up:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not up after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        return stop_process(self.proc, timeout) if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """Two proxies (A, B), two logic (L1, L2), one push, on free loopback ports. With ``im_roles``: that
    many im roles (I1, I2, ...; proxy A prefers I1, B the last), and ``consumers`` consumer roles (C1,
    ...) doing the group fan-out (``common`` then names the MariaDB store)."""

    def __init__(self, workdir: Path, redis_url: str, kafka: str, im_roles: int = 0, consumers: int = 0, **common):
        self.workdir = workdir
        self.topic = f"imgate-push-{uuid.uuid4().hex[:8]}"
        logic_rpc = {"L1": free_port(), "L2": free_port()}
        self.common = dict(redis_url=redis_url, kafka=kafka, kafka_topic=self.topic, auth="none",
                           online_interval=0.2, kafka_timeout=3.0, heartbeat_timeout=30.0,
                           data_dir=str(workdir / "data"))
        self.common.update(common)
        # the logic roles read their API keys from the shared data dir: one admin key for http()
        self.api_key = KeyStore(self.common["data_dir"]).create("tests", ["admin"])[1]
        self.ports = {}
        self.procs: dict[str, RoleProcess] = {}
        for name in ("L1", "L2"):
            self.ports[name] = {"http": free_port(), "rpc": logic_rpc[name]}
            self.procs[name] = RoleProcess("logic", name, dict(
                self.common, server_id=name, http=f"127.0.0.1:{self.ports[name]['http']}",
                logic_rpc=f"127.0.0.1:{logic_rpc[name]}"), workdir)
        logic_addrs = [f"127.0.0.1:{logic_rpc['L1']}", f"127.0.0.1:{logic_rpc['L2']}"]
        self.fanout_topic = f"imgate-fanout-{uuid.uuid4().hex[:8]}"
        im_addrs = []
        for i in range(1, im_roles + 1):
            name = f"I{i}"
            self.ports[name] = {"http": free_port(), "rpc": free_port()}
            im_addrs.append(f"127.0.0.1:{self.ports[name]['rpc']}")
            self.procs[name] = RoleProcess("im", name, dict(
                self.common, server_id=name, http=f"127.0.0.1:{self.ports[name]['http']}",
                im_rpc=im_addrs[-1], group_consumer=not consumers, fanout_topic=self.fanout_topic), workdir)
        for i in range(1, consumers + 1):
            self.procs[f"C{i}"] = RoleProcess("consumer", f"C{i}", dict(
                self.common, server_id=f"C{i}", fanout_topic=self.fanout_topic, fanout_relay_after=2.0), workdir)
        if consumers:  # the logic roles' IM (auth, their /im/*) leaves the fan-out to the consumers too
            for name in ("L1", "L2"):
                self.procs[name].config.update(group_consumer=False, fanout_topic=self.fanout_topic)
        for k, name in enumerate(("A", "B")):
            self.ports[name] = {"tcp": free_port(), "ws": free_port(), "rpc": free_port()}
            self.procs[name] = RoleProcess("proxy", name, dict(
                self.common, server_id=name, tcp=f"127.0.0.1:{self.ports[name]['tcp']}",
                ws=f"127.0.0.1:{self.ports[name]['ws']}", rpc=f"127.0.0.1:{self.ports[name]['rpc']}",
                logic_addrs=logic_addrs, im_addrs=im_addrs[::-1] if k else im_addrs), workdir)
        self.procs["P"] = RoleProcess("push", "P", dict(
            self.common, server_id="P",
            proxies={n: f"127.0.0.1:{self.ports[n]['rpc']}" for n in ("A", "B")}), workdir)

    def start(self) -> "Cluster":
        """Start every role; if one fails to come up, the ones already started are stopped first."""
        try:
            order = ["L1", "L2"] + [n for n in self.procs if n[0] in "IC"] + ["A", "B", "P"]
            for name in order:
                self.procs[name].start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()

    def tcp_url(self, proxy: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[proxy]['tcp']}"

    def ws_url(self, proxy: str) -> str:
        return f"ws://127.0.0.1:{self.ports[proxy]['ws']}/sub"

    def http(self, logic: str, method: str, path: str, body: bytes | None = None, timeout: float = 15.0):
        url = f"http://127.0.0.1:{self.ports[logic]['http']}{path}"
        req = urllib.request.Request(url, data=body, method=method,
                                     headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.tail()}" for n, p in self.procs.items())


async def ahttp(cluster: Cluster, logic: str, method: str, path: str, body: bytes | None = None):
    """:meth:`Cluster.http` from inside an event loop (in a thread, so the loop keeps running)."""
    return await asyncio.get_running_loop().run_in_executor(None, cluster.http, logic, method, path, body)


def mariadb_cluster(workdir: Path, redis_url: str, kafka: str, mariadb_addrs: list, **kw) -> Cluster:
    """A Cluster whose IM runs on a fresh database of the MariaDB pair: the roles named ...1 write on the
    first node, those named ...2 on the second. ``kw`` as for Cluster (im_roles, consumers, config)."""
    from services import create_database

    db = f"c_{uuid.uuid4().hex[:10]}"
    create_database(mariadb_addrs, db)
    c = Cluster(workdir, redis_url, kafka, im_store="mariadb", mariadb_addrs=list(mariadb_addrs),
                mariadb_user="test", mariadb_database=db, **kw)
    for name, proc in c.procs.items():
        if name.endswith("2") and "mariadb_addrs" in proc.config:
            proc.config["mariadb_addrs"] = list(reversed(mariadb_addrs))
    return c


async def pushed_frame(client, timeout: float = 30) -> list:
    """The msgs of the next op-24 (IM push) frame ``client`` gets; other frames are skipped."""
    from imgate.im.protocol import OP_MSG_PUSH

    while True:
        frame = await client.recv(timeout=timeout)
        if frame.op == OP_MSG_PUSH:
            return json.loads(frame.body)["msgs"]


async def pushed(client) -> dict:
    """The next op-24 entry ``client`` gets, its frame holding exactly one."""
    msgs = await pushed_frame(client)
    assert len(msgs) == 1
    return msgs[0]

