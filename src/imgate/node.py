"""The all-in-one node (`imgate serve`): every role in one process.

In-memory cache, in-process push bus, the proxy's listeners and logic's HTTP API on one event loop.
The cluster runs the same classes as separate processes behind Redis, Kafka and RPC.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from pathlib import Path

from imgate.auth import mint_token
from imgate.http.apikeys import api_auth_from_config
from imgate.cache import MemoryCache
from imgate.config import Config, ConfigError
from imgate.http.server import PUBLIC, HttpServer
from imgate.im.service import ImService
from imgate.im.sqlite import SqliteStore
from imgate.im.store import GroupLimits
from imgate.logic import Logic, backends
from imgate.logic.http_api import build_routes
from imgate.metrics import Metrics
from imgate.proxy import Proxy
from imgate.push import MemoryBus, PushRouter

log = logging.getLogger("imgate.node")

SECRET_FILE = "jwt.secret"


def load_or_create_secret(config: Config, create: bool = True) -> str:
    """The JWT secret: from config/env, else `<data_dir>/jwt.secret` (created once, mode 0600)."""
    if config.jwt_secret:
        return config.jwt_secret
    path = Path(config.data_dir) / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise ConfigError(
            f"no JWT secret: set jwt_secret in the config, IMGATE_JWT_SECRET, or run `imgate serve` once "
            f"with --data-dir {config.data_dir} so that it creates {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of the cluster made it first
        time.sleep(0.1)
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    log.warning("created a JWT secret in %s (set jwt_secret or IMGATE_JWT_SECRET to choose your own)", path)
    return secret


class Demo:
    """What the demo page needs: where to connect and, for the demo only, a token for any user."""

    def __init__(self, node: "Node"):
        self.node = node

    def config(self) -> dict:
        host, _ = self.node.config.addr("ws")
        host = "localhost" if host in ("0.0.0.0", "::") else host
        return {
            "ws_url": f"ws://{host}:{self.node.proxy.ws_port}/sub",
            # with TLS on: the page, when served over HTTPS, connects with wss (a https page may not use ws)
            "wss_url": f"wss://{host}:{self.node.proxy.wss_port}/sub" if self.node.proxy.wss_port else "",
            "ws_port": self.node.proxy.ws_port,
            "auth": self.node.config.auth,
            "room_id": "live://1000",
            "mid": secrets.randbelow(1_000_000) + 1,
            # the page pushes to its room with this in-memory key (scopes push and im); /demo/config answers
            # loopback peers only
            "api_key": self.node.demo_api_key,
        }

    def token(self, mid: int) -> str:
        if self.node.config.auth != "jwt":
            return ""
        return mint_token(self.node.config.jwt_secret, mid, ttl=3600)


def make_im_store(cfg: Config):
    """The message store ``cfg`` names: SQLite in ``data_dir`` (embedded) or MariaDB (cluster)."""
    if cfg.im_store == "mariadb":
        from imgate.im.mysql import MariaDbStore  # needs the cluster extra (asyncmy)
        return MariaDbStore(
            cfg.mariadb_addrs, user=cfg.mariadb_user, password=cfg.mariadb_password,
            database=cfg.mariadb_database, pool_size=cfg.mariadb_pool,
            failover_timeout=cfg.mariadb_failover_timeout, batch_max=cfg.im_batch_max, max_queue=cfg.im_max_queue,
            retention_days=cfg.im_retention_days,
            retention_entries=cfg.im_retention_entries, prune_interval=cfg.im_prune_interval)
    return SqliteStore(
        Path(cfg.data_dir) / "im.db", synchronous=cfg.im_sync, busy_timeout=cfg.im_busy_timeout,
        batch_max=cfg.im_batch_max, max_queue=cfg.im_max_queue, retention_days=cfg.im_retention_days,
        retention_entries=cfg.im_retention_entries, prune_interval=cfg.im_prune_interval,
        max_bytes=cfg.im_max_bytes)


def make_im(cfg: Config, cache, bus) -> tuple:
    """(store, ImService) for a node or a logic role; start the store, then the service."""
    store = make_im_store(cfg)
    return store, ImService(store, cache, bus, max_message_bytes=cfg.max_message_bytes,
                            ack_timeout=cfg.ack_timeout, ack_retries=cfg.ack_retries,
                            max_unacked=cfg.im_max_unacked, sync_max_limit=cfg.im_sync_max_limit,
                            max_page_bytes=min(cfg.max_pending // 2, 1 << 20),
                            groups=GroupLimits(cfg.group_max_members, cfg.group_write_limit, cfg.group_hysteresis),
                            consumer=cfg.group_consumer, user_rate=cfg.im_user_rate,
                            user_burst=cfg.im_user_burst)


class Node:
    def __init__(self, config: Config):
        self.config = config
        self.proxy: Proxy | None = None
        self.http: HttpServer | None = None
        self.logic: Logic | None = None
        self.demo_api_key = ""
        self.im: ImService | None = None

    async def start(self) -> None:
        cfg = self.config
        if cfg.auth == "jwt":
            cfg.jwt_secret = load_or_create_secret(cfg)
        loop = asyncio.get_running_loop()
        self.cache = MemoryCache()
        self.push = PushRouter()
        self.bus = MemoryBus(self.push)
        self.logic = Logic(
            self.cache, self.bus, backends.authenticator(cfg),
            session_ttl=cfg.heartbeat_timeout * 2, online_interval=cfg.online_interval,
            max_conns_per_user=cfg.max_conns_per_user,
        )
        self.im_store = None
        if cfg.im:
            self._make_im()
        self.proxy = Proxy(cfg, self.logic, loop)
        self.push.add_proxy(self.proxy)
        self.metrics = Metrics()
        self.metrics.add_source(self.proxy.stats)
        self.backends = backends.attach(self.logic, cfg)
        self.metrics.add_source(self.backends.stats)
        if self.im is not None:
            self.metrics.add_source(self.im.stats)
        self.api_auth = api_auth_from_config(cfg)
        self.metrics.add_source(self._refusals)
        if cfg.demo and not self.api_auth.open:
            self.demo_api_key = "imk_demo_" + secrets.token_urlsafe(24)
            # push: the demo page's room pushes; im: the chat page creates groups (POST /im/groups)
            self.api_auth.add_key(self.demo_api_key, ["push", "im"])
        routes = build_routes(self.logic, metrics=self.metrics, demo=Demo(self) if cfg.demo else None,
                              api_auth=self.api_auth, metrics_scope="metrics" if cfg.metrics_auth else PUBLIC)
        self.http = HttpServer(routes, max_body=cfg.max_http_body,
                               request_timeout=cfg.http_request_timeout)
        await self.logic.start()
        if self.im is not None:
            await self.im_store.start()
            await self.im.start()
        await self.proxy.start()
        host, port = cfg.addr("http")
        # HTTPS with the proxy's certificate (one context: a SIGHUP reload serves both)
        tls = self.proxy.tls.context if cfg.http_tls else None
        await self.http.start(host, port, ssl=tls)

    def _refusals(self) -> dict:
        """What the API's guard, the HTTP server and logic refused (for /metrics)."""
        return dict(self.api_auth.counters, http_request_timeouts=self.http.request_timeouts,
                    key_conflicts=self.logic.counters["key_conflicts"],
                    user_limit_refusals=self.logic.counters["user_limit_refusals"])

    def reload_tls(self) -> bool:
        """Re-read the certificate and key (SIGHUP): new TLS handshakes use them, open connections
        keep theirs. False when there is no TLS or the files could not be loaded."""
        return self.proxy is not None and self.proxy.tls is not None and self.proxy.tls.reload()

    def _make_im(self) -> None:
        """The IM service and its store (embedded: <data_dir>/im.db), plugged into logic."""
        self.im_store, self.im = make_im(self.config, self.cache, self.bus)
        self.logic.im = self.im

    @property
    def http_port(self) -> int:
        return self.http.port

    async def stop(self, grace: float | None = None) -> None:
        if self.http is not None:
            await self.http.stop()
        if self.proxy is not None:
            await self.proxy.stop(grace)
        if self.logic is not None:
            await self.logic.stop()
            await self.backends.close(self.config.shutdown_grace if grace is None else grace)
        if self.im is not None:
            await self.im.stop()
            await self.im_store.close()  # commits what is queued first
