"""Every core of a host: ``imgate serve --workers N`` and ``imgate proxy --workers N``.

``serve``: this process becomes the coordinator. It keeps what must be shared (the in-memory
cache, logic, the IM service, the push router and the HTTP API) and runs N proxy workers, each an
``imgate proxy`` process. The workers listen on the same TCP and WebSocket ports with
``SO_REUSEPORT`` (the kernel spreads the connections), talk to the coordinator's logic over the
internal RPC on unix sockets (in a private directory, mode 0700), and report their own RPC address
(a unix socket there too) in their online reports, where the
coordinator's push router finds them (``imgate.push.discovery``). A room push goes to every worker
once, and each delivers it to its own members: once per member. A worker that dies is reported and
started again (``imgate.supervisor``); its clients reconnect, and the kernel hands them to the others
meanwhile.

``proxy``: N proxies of a cluster sharing the client ports, each with its own server id
(``<server_id>/w<i>``) and RPC port (``rpc`` port + i), found by push in Redis like any proxy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

from imgate.cache import MemoryCache
from imgate.config import MAX_UNIX_PATH, Config, ConfigError, dump_toml
from imgate.http.apikeys import api_auth_from_config
from imgate.http.server import PUBLIC, HttpServer
from imgate.logic import Logic, backends
from imgate.logic.http_api import build_routes
from imgate.metrics import Metrics
from imgate.node import Node, load_or_create_secret
from imgate.push import PushRouter
from imgate.push.discovery import Discovery
from imgate.push.service import Bus, BusUnavailable
from imgate.rpc.logic import serve_logic
from imgate.rpc.proxy import ProxyClient
from imgate.rpc.wire import RpcError
from imgate.supervisor import Supervisor

log = logging.getLogger("imgate.workers")


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class RouterBus(Bus):
    """The coordinator's bus. ``publish`` (room and broadcast pushes): accepted once every worker took
    the job. ``publish_nowait`` (pushes by mid or key, IM deliveries): queued at once as a one-way
    request on the RPC connection to the worker holding the target (``ProxyClient.push_conns_nowait``),
    in order, several in one write; refused (503) when that worker has no live connection or is not
    reading. Being ``nowait``, logic answers these pushes without a coroutine (``Logic.pushes_wait``)."""

    nowait = True

    def __init__(self, router: PushRouter):
        self.router = router

    def publish_nowait(self, job) -> int:
        try:
            return self.router.route_nowait(job)
        except RpcError as e:
            raise BusUnavailable(f"worker {job.server or '(room)'} did not take it: {e}") from None

    async def publish(self, job) -> None:
        await self.router.route([job])


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT and never listening: it fixes the port (even port 0) that the
    workers then listen on, and takes no connections itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_config(cfg: Config, **over) -> dict:
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    values.update(workers=1, reuse_port=True, **over)
    return values


class Coordinator:
    """``imgate serve --workers N``: logic, cache, IM, push and HTTP here; proxies in N processes."""

    def __init__(self, config: Config, workers: int):
        self.config = config
        self.n = workers
        self.supervisor = Supervisor(restart_delay=config.worker_restart_delay,
                                     say=lambda m: log.warning("worker %s", m))
        self._tmp = tempfile.TemporaryDirectory(prefix="imgate-workers-")
        self.im = None
        self.demo_api_key = ""
        self.tls = None  # the workers own the client listeners; TLS ones are not shared (refused below)
    async def start(self) -> None:
        cfg = self.config
        if cfg.tls_cert or cfg.http_tls:
            raise ConfigError("workers: TLS listeners are not shared between workers yet; run with workers = 1 "
                              "or put a TLS terminator in front")
        if cfg.auth == "jwt":
            cfg.jwt_secret = load_or_create_secret(cfg)
        tcp_host, tcp_port = cfg.addr("tcp")
        ws_host, ws_port = cfg.addr("ws")
        self._reserved = [reserve_port(tcp_host, tcp_port), reserve_port(ws_host, ws_port)]
        self.tcp_port = self._reserved[0].getsockname()[1]
        self.ws_port = self._reserved[1].getsockname()[1]
        self.cache = MemoryCache()
        self.push = PushRouter()
        self.bus = RouterBus(self.push)
        self.logic = Logic(self.cache, self.bus, backends.authenticator(cfg),
                           session_ttl=cfg.heartbeat_timeout * 2, online_interval=cfg.online_interval,
                           max_conns_per_user=cfg.max_conns_per_user)
        self.im_store = None
        if cfg.im:
            Node._make_im(self)  # the same IM service and store as the one-process node
        self.discovery = Discovery(self.cache, self.push, lambda sid, addr: ProxyClient(
            sid, addr, pool_size=cfg.rpc_pool, write_window=cfg.worker_push_window),
                                   interval=min(cfg.online_interval, 0.5), grace=max(3 * cfg.online_interval, 3.0))
        self.logic.on_report = self.discovery.note  # a restarted worker's new address is used at once
        self.metrics = Metrics()
        self.metrics.add_source(lambda: dict(self.logic.counters))
        self.backends = backends.attach(self.logic, cfg)
        self.metrics.add_source(self.backends.stats)
        self.api_auth = api_auth_from_config(cfg)
        routes = build_routes(self.logic, metrics=self.metrics, api_auth=self.api_auth,
                              metrics_scope="metrics" if cfg.metrics_auth else PUBLIC)
        self.http = HttpServer(routes, max_body=cfg.max_http_body, request_timeout=cfg.http_request_timeout)
        await self.logic.start()
        if self.im is not None:
            await self.im_store.start()
            await self.im.start()
        # the workers' RPC, both ways, on unix sockets in a directory only this user may enter (mkdtemp
        # makes it 0700): no port to find, and nobody else on the host can call logic or push
        self.rpc = await serve_logic(self.logic, path=self._socket("logic"))
        self.discovery.start()
        host, port = cfg.addr("http")
        await self.http.start(host, port)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for i in range(self.n):
            conf = Path(self._tmp.name) / f"w{i}.toml"
            conf.write_text(dump_toml(worker_config(
                cfg, server_id=f"{cfg.server_id}/w{i}", tcp=_hostport(tcp_host, self.tcp_port),
                ws=_hostport(ws_host, self.ws_port), rpc="unix:" + self._socket(f"w{i}"), logic_addrs=[self.rpc.addr])))
            self.supervisor.start(f"w{i}", [sys.executable, "-m", "imgate", "proxy", "--config", str(conf)], env=env,
                                  die_with_parent=True)
        self._watch = asyncio.get_running_loop().create_task(self._watch_workers())

    def _socket(self, name: str) -> str:
        path = os.path.join(self._tmp.name, f"{name}.sock")
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise ConfigError(f"workers: the unix socket path {path!r} is too long ({MAX_UNIX_PATH} bytes at most); "
                              f"set TMPDIR to a shorter directory")
        return path

    async def _watch_workers(self) -> None:
        while True:
            self.supervisor.poll()
            await asyncio.sleep(0.2)

    def reload_tls(self) -> bool:
        """SIGHUP: nothing to reload here (no TLS listeners with workers)."""
        return False

    def worker_pids(self) -> dict[str, int]:
        return {name: c.proc.pid for name, c in self.supervisor.children.items() if c.proc and c.proc.poll() is None}

    @property
    def http_port(self) -> int:
        return self.http.port

    async def stop(self, grace: float | None = None) -> None:
        self._watch.cancel()
        grace = self.config.shutdown_grace if grace is None else grace
        # the workers tell their clients (op 6 shutdown) and then their sessions go
        await asyncio.get_running_loop().run_in_executor(None, self.supervisor.stop_all, grace + 5)
        await self.http.stop()
        await self.discovery.close()
        await self.rpc.stop()
        await self.logic.stop()
        await self.backends.close(self.config.shutdown_grace)
        if self.im is not None:
            await self.im.stop()
            await self.im_store.close()
        for s in self._reserved:
            s.close()
        self._tmp.cleanup()


async def run_proxy_workers(cfg: Config, n: int) -> int:
    """``imgate proxy --workers N``: N proxies sharing the client ports, supervised here."""
    tcp_host, tcp_port = cfg.addr("tcp")
    ws_host, ws_port = cfg.addr("ws")
    rpc_host, rpc_port = cfg.addr("rpc")
    reserved = [reserve_port(tcp_host, tcp_port), reserve_port(ws_host, ws_port)]
    tcp_port, ws_port = reserved[0].getsockname()[1], reserved[1].getsockname()[1]
    sup = Supervisor(restart_delay=cfg.worker_restart_delay, say=lambda m: print(f"worker {m}", flush=True))
    tmp = tempfile.TemporaryDirectory(prefix="imgate-workers-")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for i in range(n):
        conf = Path(tmp.name) / f"w{i}.toml"
        conf.write_text(dump_toml(worker_config(
            cfg, server_id=f"{cfg.server_id}/w{i}", tcp=_hostport(tcp_host, tcp_port), ws=_hostport(ws_host, ws_port),
            rpc=_hostport(rpc_host, rpc_port + i if rpc_port else 0))))
        sup.start(f"w{i}", [sys.executable, "-m", "imgate", "proxy", "--config", str(conf)], env=env,
                                  die_with_parent=True)
    print(f"imgate proxy {cfg.server_id}: {n} workers are up: tcp :{tcp_port}, ws :{ws_port}/sub", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        sup.poll()
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    await loop.run_in_executor(None, sup.stop_all, cfg.shutdown_grace + 5)
    for s in reserved:
        s.close()
    tmp.cleanup()
    return 0
