"""Configuration of a node: defaults, TOML file, command-line overrides (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from dataclasses import dataclass, field, fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def dump_toml(values: dict) -> str:
    """Flat key = value TOML for generated configs (scripts/cluster.py, the cluster tests)."""

    def val(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"no TOML form for {type(v).__name__} {v!r}")

    return "".join(f"{k} = {val(v)}\n" for k, v in values.items())


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


#: an internal RPC address on a unix socket: ``unix:/absolute/path`` (the workers of one host)
UNIX_PREFIX = "unix:"
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes, the last one a NUL


def check_rpc_addr(value: str, key: str) -> None:
    """An RPC address: HOST:PORT, or ``unix:/path`` (absolute, short enough for a socket)."""
    value = str(value).strip()
    if value.startswith(UNIX_PREFIX):
        path = value[len(UNIX_PREFIX):]
        if not path.startswith("/"):
            raise ConfigError(f"{key}: a unix socket address needs an absolute path (unix:/dir/name.sock), got {value!r}")
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise ConfigError(f"{key}: unix socket path is {len(os.fsencode(path))} bytes long, the limit is "
                              f"{MAX_UNIX_PATH}: {path!r}")
        return
    parse_hostport(value, key)


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'PORT' -> (host, port); empty host means all interfaces."""
    value = str(value).strip()
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"{key}: port {p} is out of range 0-65535")
    return host or "0.0.0.0", p


@dataclass
class Config:
    # Listeners (goim's ports); loopback unless told otherwise ("0.0.0.0:3101" serves every interface)
    tcp: str = "127.0.0.1:3101"  # goim over TCP, HOST:PORT
    ws: str = "127.0.0.1:3102"  # goim over WebSocket (path /sub), HOST:PORT
    http: str = "127.0.0.1:3111"  # the HTTP API, HOST:PORT
    # TLS (docs/security.md)
    tls_cert: str = ""  # PEM certificate file; with it the proxy also serves wss on `wss`; reloaded on SIGHUP
    tls_key: str = ""  # PEM key file of tls_cert
    wss: str = "127.0.0.1:3103"  # goim over WebSocket over TLS (path /sub), HOST:PORT; only with tls_cert
    tls_tcp: str = ""  # goim over TCP over TLS, HOST:PORT (e.g. 127.0.0.1:3104); empty: off
    http_tls: bool = False  # the HTTP API speaks HTTPS with tls_cert
    # Identity and auth
    server_id: str = ""  # this proxy in the session registry; default host:tcp-port
    auth: str = "jwt"  # "jwt" (HS256, user id in `sub`) or "none" (goim's auth body as it is)
    jwt_secret: str = ""  # the HS256 secret; see above for where it comes from when empty
    jwt_require_exp: bool = True  # a client token without `exp` is refused (it would never expire)
    jwt_max_ttl: float = 604800.0  # seconds: a client token whose `exp` is further ahead is refused; 0 = no maximum
    data_dir: str = "./data"  # where state lives (the generated JWT secret, the API keys, the IM store im.db)
    # Connections
    handshake_timeout: float = 5.0  # seconds for the WebSocket upgrade and the auth frame (counted: handshake_timeouts)
    heartbeat_timeout: float = 90.0  # goim clients beat every 30 s; three missed beats close
    max_frame_body: int = 65536  # bytes of one frame's body a client may send
    max_pending: int = 1 << 20  # bytes queued per connection before it is a slow consumer
    merge_window: float = 0.0  # seconds; 0 = coalesce within one event-loop iteration
    max_rooms_per_conn: int = 64  # rooms one connection may join
    shutdown_grace: float = 5.0  # seconds to flush the op-6 notices at shutdown
    close_grace: float = 2.0  # seconds a closed connection's op-6 notice waits for the client to make room (a slow consumer); then the socket closes and the notice is counted dropped (close_notices_dropped)
    workers: int = 1  # proxy processes sharing the client ports (serve, proxy); 0: one per core
    reuse_port: bool = False  # listen with SO_REUSEPORT (set for the workers)
    worker_restart_delay: float = 1.0  # seconds before a dead worker is started again
    worker_push_window: float = 0.002  # seconds a one-way request to a worker (a push by mid/key or to a room, a room join or leave) may wait for the next to share one write; 0 = one write per event-loop iteration
    max_auths_per_second: int = 4000  # auths passed to logic per second, the rest get op 6 "busy" + retry_ms (0: no limit); 4,000 x ~233 CPU-us per auth (make bench storm) is most of a core
    # What one client may cost (imgate.proxy.limits; each refusal counted in /metrics)
    client_op_rate: float = 100.0  # frames per second a connection may send after auth (token bucket); 0 = no limit
    client_op_burst: float = 200.0  # the bucket's size: past it, op 6 "rate limited" and close (rate_limited)
    max_conns_per_ip: int = 5000  # open connections per client address; the next gets op 6 or 429 (ip_limit_refusals); 0 = no limit
    max_conns_per_user: int = 64  # live connections of one user (mid > 0; 0 is goim's anonymous client) in the node or cluster; the next auth gets op 6 "auth failed: too many connections for this user" (user_limit_refusals); re-using one's own key replaces, not adds; 0 = no limit
    conn_limit_exempt: list = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])  # networks max_conns_per_ip does not apply to
    # HTTP API
    max_http_body: int = 1 << 20  # bytes of one request's body
    http_request_timeout: float = 30.0  # seconds from a request's first byte to its last, head and body: then 408 (http_request_timeouts)
    api_auth: str = "key"  # "key": routes need Authorization: Bearer with their scope (docs/security.md); "none": open, warned at start
    metrics_auth: bool = True  # /metrics needs the "metrics" scope; false opens it
    api_jwt_max_ttl: float = 86400.0  # seconds: an API JWT whose `exp` is further ahead is refused
    # Online counts
    online_interval: float = 1.0  # seconds between a proxy's room-count reports and logic's absorbing them
    # Demo
    demo: bool = False  # the demo page at / may mint tokens for any user and gets a push key (loopback only; never in production)
    # IM (docs/im.md)
    im: bool = True  # false: no IM service (IM ops and /im/* answer 503), no store
    im_store: str = "sqlite"  # "sqlite" (<data_dir>/im.db) or "mariadb" (the mariadb_* keys; docs/cluster.md)
    im_sync: str = "full"  # SQLite synchronous: "full" fsyncs every commit; "normal" survives a kill, not a power loss
    im_busy_timeout: float = 5.0  # seconds a write waits for a locked database before it is refused
    im_batch_max: int = 512  # writes committed together at most
    im_max_queue: int = 20000  # writes waiting for the writer; more are refused (503)
    im_retention_days: float = 0.0  # inbox entries older than this are removed; 0 keeps them
    im_retention_entries: int = 0  # entries kept per inbox; 0 keeps all
    im_prune_interval: float = 3600.0  # seconds between retention sweeps by age
    im_max_bytes: int = 0  # the database file's size cap (0: none); a full store refuses sends
    max_message_bytes: int = 16384  # a message's content, as JSON
    ack_timeout: float = 5.0  # seconds before an unacked op-24 entry is pushed again
    ack_retries: int = 3  # pushes again at most, per entry and connection
    im_max_unacked: int = 1000  # entries tracked per connection (the oldest is dropped)
    im_sync_max_limit: int = 1000  # largest SYNC page
    im_max_inflight: int = 256  # proxy: IM requests of one connection waiting for an answer
    im_user_rate: float = 100.0  # IM sends and reads (ops 22, 32) per second per user, across its connections to one logic (token bucket); past the burst a 23/33 with code 429 "rate limited", nothing stored (im_rate_limited); 0 = no limit
    im_user_burst: float = 300.0  # the per-user bucket's size
    group_max_members: int = 100_000  # members of one group at most
    group_write_limit: int = 200  # a group with more members is in read fan-out mode (one timeline)
    group_hysteresis: int = 20  # a read-mode group goes back to write mode at group_write_limit minus this
    group_consumer: bool = True  # run the write fan-out consumer in this process (false: another process does)
    # The IM store on MariaDB (im_store = "mariadb"; docs/cluster.md "Message store")
    mariadb_addrs: list = field(default_factory=lambda: ["127.0.0.1:3306"])  # servers in order of preference; failover goes down the list
    mariadb_user: str = "imgate"  # needs SELECT, INSERT, UPDATE, DELETE and CREATE on the database
    mariadb_password: str = ""  # when empty, $IMGATE_MARIADB_PASSWORD
    mariadb_database: str = "im"  # must exist; the store creates and migrates its tables
    mariadb_pool: int = 16  # connections per process
    mariadb_failover_timeout: float = 20.0  # seconds an operation is retried (failover, conflicts) before it is refused (503)
    # Cluster roles (imgate proxy | logic | push); see docs/cluster.md
    rpc: str = "127.0.0.1:3109"  # proxy: internal RPC listener (push -> proxy)
    logic_rpc: str = "127.0.0.1:3119"  # logic: internal RPC listener (proxy -> logic)
    logic_addrs: list = field(default_factory=lambda: ["127.0.0.1:3119"])  # proxy: logic instances, in order
    proxies: dict = field(default_factory=dict)  # push: {server_id: "host:rpc_port"}; overrides discovery
    im_rpc: str = "127.0.0.1:3129"  # im: internal RPC listener (proxy -> im)
    im_addrs: list = field(default_factory=list)  # proxy: im instances, in order; empty: logic serves the IM ops
    fanout_topic: str = "imgate-fanout"  # Kafka topic of the group fan-out jobs (im -> consumer)
    fanout_relay_after: float = 5.0  # consumer: seconds before an outbox job nobody took from Kafka is done anyway
    advertise_rpc: str = ""              # proxy: host:port push reaches its RPC at (default: the rpc listener's)
    redis_url: str = "redis://127.0.0.1:6379/0"  # the cache service
    redis_sentinels: list = field(default_factory=list)  # ["host:port", ...]; then redis_master names the set
    redis_master: str = "mymaster"  # the Sentinel master set's name
    kafka: str = "127.0.0.1:9092"  # bootstrap servers
    kafka_topic: str = "imgate-push"  # the push jobs' topic
    kafka_timeout: float = 5.0  # seconds a push may wait for Kafka before the API answers 503
    room_merge_window: float = 0.0  # push: merge pushes to one room over this window into one op-9 batch
    rpc_pool: int = 4  # connections per RPC peer
    # Upstream RPC, external auth and webhooks (logic); see docs/upstream.md
    upstream_url: str = ""  # the business's HTTP service for op 4 (and business ops 100-999 without a route)
    upstream_routes: dict = field(default_factory=dict)  # {"op": "url"}: op 4 or 100-999 to its own service
    upstream_timeout: float = 3.0  # seconds for the whole upstream request; past it the client gets a timeout error
    upstream_conn_limit: int = 8  # upstream messages one connection may have in flight (the proxy checks it)
    upstream_limit: int = 1024  # upstream requests one logic may have in flight
    upstream_pool: int = 100  # keep-alive sockets to the upstream services
    auth_url: str = ""  # auth = "http": the service that answers each op-7 body
    auth_timeout: float = 2.0  # seconds for the auth service's answer
    auth_cache_ttl: float = 10.0  # seconds an auth answer is reused for the same token (0: never)
    auth_cache_size: int = 100000  # tokens whose answer is kept
    webhook_url: str = ""  # connect, disconnect and room events are POSTed here in batches (empty: off)
    webhook_batch: int = 100  # events per POST at most
    webhook_queue: int = 100000  # events waiting at most; past it new events are dropped and counted
    webhook_timeout: float = 5.0  # seconds for one POST
    webhook_max_backoff: float = 30.0  # seconds between retries at most (doubling from 0.1)
    rpc_tls: bool = False  # RPC over TLS: listeners present tls_cert/tls_key, callers trust rpc_tls_ca alone
    rpc_tls_ca: str = ""  # the CA (PEM) the cluster's RPC certificates are pinned to

    def validate(self) -> "Config":
        for key in ("tcp", "ws", "http", "wss"):
            parse_hostport(getattr(self, key), key)
        if self.tls_tcp:
            parse_hostport(self.tls_tcp, "tls_tcp")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key: give both (PEM files) or neither")
        for key in ("tls_cert", "tls_key"):
            if getattr(self, key) and not os.path.isfile(getattr(self, key)):
                raise ConfigError(f"{key}: no such file {getattr(self, key)!r}")
        if (self.http_tls or self.tls_tcp) and not self.tls_cert:
            raise ConfigError("http_tls and tls_tcp need tls_cert and tls_key")
        if self.rpc_tls and not (self.tls_cert and self.rpc_tls_ca):
            raise ConfigError("rpc_tls needs tls_cert, tls_key and rpc_tls_ca")
        if self.rpc_tls_ca and not os.path.isfile(self.rpc_tls_ca):
            raise ConfigError(f"rpc_tls_ca: no such file {self.rpc_tls_ca!r}")
        if self.api_auth not in ("key", "none"):
            raise ConfigError(f"api_auth: expected 'key' or 'none', got {self.api_auth!r}")
        if self.auth not in ("jwt", "none", "http"):
            raise ConfigError(f"auth: expected 'jwt', 'none' or 'http', got {self.auth!r}")
        if self.auth == "http" and not self.auth_url:
            raise ConfigError("auth_url: auth = \"http\" needs the auth service's URL")
        for op in self.upstream_routes:
            if not str(op).isdigit() or not (int(op) == 4 or 100 <= int(op) < 1000):
                raise ConfigError(f"upstream_routes: op {op!r} is not 4 or 100-999")
        urls = {"upstream_url": self.upstream_url, "auth_url": self.auth_url, "webhook_url": self.webhook_url}
        urls.update({f"upstream_routes.{op}": url for op, url in self.upstream_routes.items()})
        for key, url in urls.items():
            if url and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
                raise ConfigError(f"{key}: expected an http:// or https:// URL, got {url!r}")
        for key in ("upstream_timeout", "auth_timeout", "webhook_timeout", "webhook_max_backoff"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.auth_cache_ttl < 0:
            raise ConfigError(f"auth_cache_ttl: must be >= 0, got {self.auth_cache_ttl}")
        for key in ("upstream_conn_limit", "upstream_limit", "upstream_pool", "auth_cache_size",
                    "webhook_batch", "webhook_queue"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        for i, addr in enumerate(self.im_addrs):
            parse_hostport(addr, f"im_addrs[{i}]")
        if self.fanout_relay_after <= 0:
            raise ConfigError(f"fanout_relay_after: must be > 0, got {self.fanout_relay_after}")
        for key in ("rpc", "logic_rpc", "im_rpc"):
            check_rpc_addr(getattr(self, key), key)
        for i, addr in enumerate(self.logic_addrs):
            check_rpc_addr(addr, f"logic_addrs[{i}]")
        if self.advertise_rpc:
            check_rpc_addr(self.advertise_rpc, "advertise_rpc")
        for sid, addr in self.proxies.items():
            check_rpc_addr(addr, f"proxies.{sid}")
        if self.room_merge_window < 0:
            raise ConfigError(f"room_merge_window: must be >= 0, got {self.room_merge_window}")
        if self.rpc_pool <= 0:
            raise ConfigError(f"rpc_pool: must be > 0, got {self.rpc_pool}")
        for key in ("handshake_timeout", "heartbeat_timeout", "shutdown_grace", "close_grace", "online_interval", "kafka_timeout",
                    "api_jwt_max_ttl", "http_request_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        for key in ("client_op_rate", "client_op_burst", "max_conns_per_ip", "max_conns_per_user", "jwt_max_ttl"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0 (0 = no limit), got {getattr(self, key)}")
        if self.client_op_rate and self.client_op_burst < 1:
            raise ConfigError(f"client_op_burst: must be >= 1 with a rate limit, got {self.client_op_burst}")
        for i, net in enumerate(self.conn_limit_exempt):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ConfigError(f"conn_limit_exempt[{i}]: {e}") from None
        if self.merge_window < 0:
            raise ConfigError(f"merge_window: must be >= 0, got {self.merge_window}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0 (0: one per core), got {self.workers}")
        if not 0 <= self.worker_push_window <= 1:
            raise ConfigError(f"worker_push_window: must be between 0 and 1 second, got {self.worker_push_window}")
        if self.worker_restart_delay < 0:
            raise ConfigError(f"worker_restart_delay: must be >= 0, got {self.worker_restart_delay}")
        if self.max_auths_per_second < 0:
            raise ConfigError(f"max_auths_per_second: must be >= 0 (0: no limit), got {self.max_auths_per_second}")
        for key in ("max_frame_body", "max_pending", "max_http_body", "max_rooms_per_conn"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.im_store not in ("sqlite", "mariadb"):
            raise ConfigError(f"im_store: expected 'sqlite' or 'mariadb', got {self.im_store!r}")
        for i, addr in enumerate(self.mariadb_addrs):
            parse_hostport(addr, f"mariadb_addrs[{i}]")
        if self.mariadb_pool <= 0 or self.mariadb_failover_timeout <= 0:
            raise ConfigError("mariadb_pool and mariadb_failover_timeout must be > 0")
        if not self.mariadb_password:
            self.mariadb_password = os.environ.get("IMGATE_MARIADB_PASSWORD", "")
        if self.im_sync not in ("full", "normal"):
            raise ConfigError(f"im_sync: expected 'full' or 'normal', got {self.im_sync!r}")
        for key in ("im_busy_timeout", "ack_timeout", "im_prune_interval"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        for key in ("im_batch_max", "im_max_queue", "max_message_bytes", "im_max_unacked", "im_sync_max_limit",
                    "im_max_inflight", "group_max_members", "group_write_limit"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.im_user_rate and self.im_user_burst < 1:
            raise ConfigError(f"im_user_burst: must be >= 1 with a rate limit, got {self.im_user_burst}")
        if not 0 <= self.group_hysteresis < self.group_write_limit:
            raise ConfigError(f"group_hysteresis: must be >= 0 and below group_write_limit, got {self.group_hysteresis}")
        for key in ("im_retention_days", "im_retention_entries", "ack_retries", "im_max_bytes", "im_user_rate"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if not self.server_id:
            self.server_id = f"{os.uname().nodename}:{parse_hostport(self.tcp, 'tcp')[1]}"
        if self.auth == "jwt" and not self.jwt_secret:
            self.jwt_secret = os.environ.get("IMGATE_JWT_SECRET", "")
        return self

    def addr(self, key: str) -> tuple[str, int]:
        return parse_hostport(getattr(self, key), key)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **overrides) -> "Config":
        """Defaults, then the TOML file (shared top-level keys, then the role's table), then overrides."""
        values: dict = {}
        if path is not None:
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except FileNotFoundError:
                raise ConfigError(f"config file {path} does not exist") from None
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config file {path}: {e}") from None
            # top-level keys are shared; the role's own table ([serve], [proxy], [logic], [push]) wins
            section = overrides.get("_section", "serve")
            tables = {"serve", "proxy", "logic", "push", "im", "consumer"}
            merged = {k: v for k, v in data.items() if k not in tables}
            own = data.get(section, {})
            if not isinstance(own, dict):
                raise ConfigError(f"config file {path}: [{section}] must be a table")
            merged.update(own)
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(merged) - known)
            if unknown:
                raise ConfigError(f"config file {path}: unknown keys {', '.join(unknown)}")
            values.update(merged)
        overrides.pop("_section", None)
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        kinds = {"float": (int, float), "int": int, "bool": bool, "str": str, "list": list, "dict": dict}
        for f in fields(cls):
            v = getattr(cfg, f.name)
            want = kinds.get(f.type)
            if want and (not isinstance(v, want) or (f.type in ("int", "float") and isinstance(v, bool))):
                raise ConfigError(f"{f.name}: expected {f.type}, got {type(v).__name__} {v!r}")
            if f.type == "float":
                setattr(cfg, f.name, float(v))
        return cfg.validate()
