"""Each role as its own process (cluster mode): `imgate proxy | logic | push | im | consumer`.

- proxy: client listeners + the RoomTable; talks to logic over RPC (pool, fail-over across
  `logic_addrs`) and serves push's deliveries on its RPC port (`rpc`, default :3109).
- logic: the HTTP API and the proxies' RPC (`logic_rpc`, default :3119); state in Redis; push jobs to
  Kafka. With ``im_store = "mariadb"`` it also runs the IM service on the shared MariaDB store (any
  logic can serve any user: the store holds every inbox).
- im: the IM service alone (docs/cluster.md "IM roles"): proxies that name it in `im_addrs` send it their
  IM frames over RPC (`im_rpc`, default :3129); backends call /im/* on its `http`. Stateless: every
  instance serves every user from the shared MariaDB store.
- consumer: the write fan-out of small groups, a Kafka consumer group on `fanout_topic` plus a sweep of
  the store's outbox (imgate.im.fanout).
- push: consumes Kafka, delivers over RPC to the proxies it discovers in Redis (their online reports
  carry their RPC address) and to those named in `proxies`.
Every role stops on SIGTERM/SIGINT within its grace period. The clients of Redis and Kafka come with
``pip install 'imgate[cluster]'``; a role that needs one that is missing says so before it starts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import socket

from imgate.config import Config, ConfigError
from imgate.gctune import settle as settle_gc

log = logging.getLogger("imgate.roles")


#: the client libraries each role needs beyond the embedded node's: (module, package to install)
NEEDS = {
    "proxy": (),
    "logic": (("redis", "redis"), ("confluent_kafka", "confluent-kafka")),
    "push": (("confluent_kafka", "confluent-kafka"),),
    "im": (("redis", "redis"), ("confluent_kafka", "confluent-kafka"), ("asyncmy", "asyncmy")),
    "consumer": (("redis", "redis"), ("confluent_kafka", "confluent-kafka"), ("asyncmy", "asyncmy")),
}


def check_packages(role: str, find=importlib.util.find_spec) -> None:
    """ConfigError naming every package ``role`` needs and this Python lacks."""
    missing = [package for module, package in NEEDS[role] if find(module) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"imgate {role} needs {' and '.join(missing)}, which {verb} not installed: "
                          f"pip install 'imgate[cluster]'")


async def _until_signal(role=None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if role is not None and getattr(role, "reload_tls", None):
        loop.add_signal_handler(signal.SIGHUP, role.reload_tls)   # new certificate, connections kept
    await stop.wait()


def make_cache(cfg: Config):
    from imgate.cache.redis import RedisCache

    if cfg.redis_sentinels:
        return RedisCache(sentinels=cfg.redis_sentinels, master=cfg.redis_master)
    return RedisCache(cfg.redis_url)


def _reachable(host: str) -> str:
    """A host others can dial for a listener bound to ``host`` (this machine's name for a wildcard)."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


class ProxyRole:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    async def start(self) -> None:
        from imgate.proxy import Proxy
        from imgate.rpc.logic import LogicClient
        from imgate.rpc.proxy import serve_proxy
        from imgate.rpc import tls as rpc_tls
        from imgate.rpc.wire import DEFAULT_TIMEOUT, unix_path

        cfg = self.cfg
        # logic answers an upstream message within upstream_timeout (with an error body at worst)
        self.logic = LogicClient(cfg.logic_addrs, pool_size=cfg.rpc_pool, client_id=cfg.server_id,
                                 timeout=max(DEFAULT_TIMEOUT, cfg.upstream_timeout + 2, cfg.auth_timeout + 2),
                                 ssl=rpc_tls.client_context(cfg))
        self.proxy = Proxy(cfg, self.logic, asyncio.get_running_loop())
        self.im = None
        if cfg.im_addrs:  # IM frames to the im roles; without them logic's IM service answers
            from imgate.rpc.im import ImClient

            self.im = self.proxy.im_api = ImClient(cfg.im_addrs, pool_size=cfg.rpc_pool, client_id=cfg.server_id,
                                                   ssl=rpc_tls.client_context(cfg))
        # RPC first: the proxy's first report, before it takes clients, tells where push reaches it
        path = unix_path(cfg.rpc)  # a worker of `serve --workers`: a unix socket in the coordinator's directory
        if path:
            self.rpc = await serve_proxy(self.proxy, path=path, ssl=rpc_tls.server_context(cfg))
            self.proxy.advertise = cfg.advertise_rpc or self.rpc.addr
        else:
            host, port = cfg.addr("rpc")
            self.rpc = await serve_proxy(self.proxy, host, port, ssl=rpc_tls.server_context(cfg))
            self.proxy.advertise = cfg.advertise_rpc or f"{_reachable(host)}:{self.rpc.port}"
        await self.proxy.start()
        print(f"imgate proxy {cfg.server_id} is up: tcp :{self.proxy.tcp_port}, ws :{self.proxy.ws_port}/sub, "
              f"rpc {self.rpc.addr if path else f':{self.rpc.port}'}, logic {', '.join(cfg.logic_addrs)}"
              f"{', im ' + ', '.join(cfg.im_addrs) if cfg.im_addrs else ''}", flush=True)

    def reload_tls(self) -> None:
        if self.proxy.tls is not None:
            self.proxy.tls.reload()

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.proxy.stop()
        await self.logic.close()
        if self.im is not None:
            await self.im.close()


class LogicRole:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    async def start(self) -> None:
        from imgate.http.apikeys import api_auth_from_config
        from imgate.http.server import PUBLIC, HttpServer
        from imgate.logic import Logic, backends
        from imgate.logic.http_api import build_routes
        from imgate.metrics import Metrics
        from imgate.node import load_or_create_secret, make_im
        from imgate.push.kafka import KafkaBus, ensure_topic
        from imgate.rpc import tls as rpc_tls
        from imgate.rpc.logic import serve_logic
        from imgate.rpc.wire import unix_path

        cfg = self.cfg
        if cfg.auth == "jwt":
            cfg.jwt_secret = load_or_create_secret(cfg)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_topic, cfg.kafka, cfg.kafka_topic)
        self.cache = make_cache(cfg)
        self.bus = KafkaBus(cfg.kafka, cfg.kafka_topic, timeout=cfg.kafka_timeout, client_id=f"imgate-logic-{cfg.server_id}")
        self.logic = Logic(self.cache, self.bus, backends.authenticator(cfg),
                           session_ttl=cfg.heartbeat_timeout * 2, online_interval=cfg.online_interval,
                           max_conns_per_user=cfg.max_conns_per_user)
        self.im_store = self.im = None
        if cfg.im and cfg.im_store == "mariadb":  # SQLite is one process's file: no IM on it in a cluster
            if importlib.util.find_spec("asyncmy") is None:
                raise ConfigError("im_store = \"mariadb\" needs asyncmy, which is not installed: pip install 'imgate[cluster]'")
            self.im_store, self.im = make_im(cfg, self.cache, self.bus)
            await self.im_store.start()
            await _publish_fanout(cfg, self.im)
            await self.im.start()
            self.logic.im = self.im
        await self.logic.start()
        self.backends = backends.attach(self.logic, cfg)
        self.metrics = Metrics()
        self.metrics.add_source(lambda: dict(self.logic.counters))
        self.metrics.add_source(self.backends.stats)
        if self.im is not None:
            self.metrics.add_source(self.im.stats)
        self.api_auth = api_auth_from_config(cfg)
        self.metrics.add_source(lambda: dict(self.api_auth.counters, http_request_timeouts=self.http.request_timeouts))
        routes = build_routes(self.logic, metrics=self.metrics, api_auth=self.api_auth,
                              metrics_scope="metrics" if cfg.metrics_auth else PUBLIC)
        self.http = HttpServer(routes, max_body=cfg.max_http_body,
                               request_timeout=cfg.http_request_timeout)
        host, port = cfg.addr("http")
        from imgate.proxy.tls import ServerTls

        self.tls = ServerTls.from_config(cfg) if cfg.http_tls else None
        await self.http.start(host, port, ssl=self.tls.context if self.tls else None)
        if self.tls is not None:
            self.reload_tls = self.tls.reload
        path = unix_path(cfg.logic_rpc)
        if path:
            self.rpc = await serve_logic(self.logic, path=path, ssl=rpc_tls.server_context(cfg))
        else:
            host, port = cfg.addr("logic_rpc")
            self.rpc = await serve_logic(self.logic, host, port, ssl=rpc_tls.server_context(cfg))
        store = f", IM store mariadb {','.join(cfg.mariadb_addrs)}" if self.im is not None else ""
        print(f"imgate logic {cfg.server_id} is up: http :{self.http.port}, "
              f"rpc {self.rpc.addr if path else f':{self.rpc.port}'}, "
              f"redis {cfg.redis_url}, kafka {cfg.kafka}{store}", flush=True)

    async def stop(self) -> None:
        await self.http.stop()
        await self.rpc.stop()
        await self.logic.stop()
        await self.backends.close(self.cfg.shutdown_grace)
        if self.im is not None:
            await _stop_im(self.im, self.im_store)
        await self.bus.close()
        await self.cache.close()


async def _publish_fanout(cfg: Config, im) -> None:
    """Without a consumer in this process (``group_consumer = false``), group fan-out jobs go to the
    consumer roles through Kafka (imgate.im.fanout)."""
    if cfg.group_consumer or not im.store.supports_groups:
        return
    from imgate.im.fanout import FanoutPublisher
    from imgate.push.kafka import ensure_topic

    await asyncio.get_running_loop().run_in_executor(None, ensure_topic, cfg.kafka, cfg.fanout_topic)
    im.fanout_publish = FanoutPublisher(cfg.kafka, cfg.fanout_topic, timeout=cfg.kafka_timeout,
                                        client_id=f"imgate-fanout-{cfg.server_id}")


async def _stop_im(im, store) -> None:
    await im.stop()
    if im.fanout_publish is not None:
        await im.fanout_publish.close()
    await store.close()


class _ImBase:
    """What the im and consumer roles share: Redis (sessions), Kafka (pushes), the MariaDB store."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    async def _open(self, consumer: bool):
        from imgate.node import make_im
        from imgate.push.kafka import KafkaBus, ensure_topic

        cfg = self.cfg
        if cfg.im_store != "mariadb":
            raise ConfigError("the im and consumer roles need im_store = \"mariadb\" (a store all of them share)")
        await asyncio.get_running_loop().run_in_executor(None, ensure_topic, cfg.kafka, cfg.kafka_topic)
        self.cache = make_cache(cfg)
        self.bus = KafkaBus(cfg.kafka, cfg.kafka_topic, timeout=cfg.kafka_timeout,
                            client_id=f"imgate-{cfg.server_id}")
        self.store, self.im = make_im(cfg, self.cache, self.bus)
        self.im.run_consumer = consumer
        await self.store.start()

    async def _close(self) -> None:
        await _stop_im(self.im, self.store)
        await self.bus.close()
        await self.cache.close()


class ImRole(_ImBase):
    """The IM service alone: the proxies' IM frames over RPC (``im_rpc``), /im/* over HTTP (``http``)."""

    async def start(self) -> None:
        import types

        from imgate.http.apikeys import api_auth_from_config
        from imgate.http.server import PUBLIC, HttpServer, Response, Router, ok
        from imgate.im.http import add_im_routes
        from imgate.metrics import Metrics
        from imgate.rpc import tls as rpc_tls
        from imgate.rpc.im import serve_im

        cfg = self.cfg
        await self._open(cfg.group_consumer)
        await _publish_fanout(cfg, self.im)
        await self.im.start()
        self.metrics = Metrics()
        self.metrics.add_source(self.im.stats)
        self.api_auth = api_auth_from_config(cfg)
        router = Router(self.api_auth)
        router.observer = self.metrics.http_counts
        add_im_routes(router.add, types.SimpleNamespace(im=self.im))

        async def metrics_route(req):
            body, ctype = self.metrics.render()
            return Response(200, body, ctype)

        async def healthz(req):
            return ok({"status": "ok", "role": "im"})

        router.add("GET", "/metrics", metrics_route, "metrics" if cfg.metrics_auth else PUBLIC)
        router.add("GET", "/healthz", healthz, PUBLIC)
        self.http = HttpServer(router, max_body=cfg.max_http_body, request_timeout=cfg.http_request_timeout)
        host, port = cfg.addr("http")
        await self.http.start(host, port)
        host, port = cfg.addr("im_rpc")
        self.rpc = await serve_im(self.im, host, port, ssl=rpc_tls.server_context(cfg), server_id=cfg.server_id)
        fanout = "in this process" if cfg.group_consumer else f"kafka topic {cfg.fanout_topic}"
        print(f"imgate im {cfg.server_id} is up: http :{self.http.port}, rpc :{self.rpc.port}, "
              f"mariadb {','.join(cfg.mariadb_addrs)}, group fan-out {fanout}", flush=True)

    async def stop(self) -> None:
        await self.rpc.stop()
        await self.http.stop()
        await self._close()


class ConsumerRole(_ImBase):
    """The write fan-out of small groups: a Kafka consumer group on ``fanout_topic`` plus the outbox
    sweep (imgate.im.fanout)."""

    async def start(self) -> None:
        from imgate.im.fanout import FanoutWorker, decode_job_id
        from imgate.push.kafka import PushConsumer, ensure_topic

        cfg = self.cfg
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_topic, cfg.kafka, cfg.fanout_topic)
        await self._open(False)
        await self.im.start()
        self.worker = FanoutWorker(self.im, relay_after=cfg.fanout_relay_after)
        self.worker.start()
        self.consumer = PushConsumer(cfg.kafka, cfg.fanout_topic, self.worker.handle,
                                     group=f"{cfg.fanout_topic}.consumer", batch=64, decode=decode_job_id)
        self.consumer.start(loop)
        print(f"imgate consumer {cfg.server_id} is up: kafka {cfg.kafka} topic {cfg.fanout_topic}, "
              f"mariadb {','.join(cfg.mariadb_addrs)}, outbox sweep after {cfg.fanout_relay_after:g}s", flush=True)

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.consumer.stop)
        await self.worker.stop()
        c = self.worker.counters
        print(f"imgate consumer {self.cfg.server_id}: {c['fanout_kafka_jobs']} jobs from Kafka, "
              f"{c['fanout_relayed']} from the outbox sweep, {self.im.counters['fanout_entries']} entries written",
              flush=True)
        await self._close()


class PushRole:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    async def start(self) -> None:
        from imgate.push.discovery import Discovery
        from imgate.push.router import PushRouter
        from imgate.push.kafka import PushConsumer, ensure_topic
        from imgate.rpc import tls as rpc_tls
        from imgate.rpc.proxy import ProxyClient

        cfg = self.cfg
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_topic, cfg.kafka, cfg.kafka_topic)
        ctx = rpc_tls.client_context(cfg)
        self.push = PushRouter()
        self.cache = make_cache(cfg)
        self.discovery = Discovery(self.cache, self.push,
                                   lambda sid, addr: ProxyClient(sid, addr, pool_size=cfg.rpc_pool, ssl=ctx),
                                   static=cfg.proxies, interval=cfg.online_interval,
                                   grace=max(3 * cfg.online_interval, 3.0))
        try:
            await self.discovery.refresh()
        except Exception as e:  # Redis away: the static proxies serve, discovery keeps trying
            log.warning("discovering proxies failed: %s", e)
        self.discovery.start()
        self.consumer = PushConsumer(cfg.kafka, cfg.kafka_topic, self.push.route, group=f"{cfg.kafka_topic}.push",
                                     merge_window=cfg.room_merge_window)
        self.consumer.start(loop)
        print(f"imgate push {cfg.server_id} is up: kafka {cfg.kafka} topic {cfg.kafka_topic}, "
              f"proxies {', '.join(f'{k}={v}' for k, v in cfg.proxies.items()) or '(discovered)'}", flush=True)

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.consumer.stop)
        await self.discovery.close()
        await self.cache.close()


ROLES = {"proxy": ProxyRole, "logic": LogicRole, "push": PushRole, "im": ImRole, "consumer": ConsumerRole}


async def run_role(name: str, cfg: Config) -> int:
    check_packages(name)
    role = ROLES[name](cfg)
    await role.start()
    settle_gc()
    await _until_signal(role)
    print(f"imgate {name} {cfg.server_id}: shutting down", flush=True)
    await role.stop()
    return 0
