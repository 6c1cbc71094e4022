"""Configuration of a node: defaults, TOML file, command-line overrides (BRIEF: ports and flags)."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

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
    # listeners (goim's ports); loopback unless told otherwise ("0.0.0.0:3101" for every interface)
    tcp: str = "127.0.0.1:3101"
    ws: str = "127.0.0.1:3102"
    http: str = "127.0.0.1:3111"
    # TLS (docs/security.md): certificate and key files (PEM; reloaded on SIGHUP). With them the proxy
    # also listens for wss:// on `wss`, for goim TCP over TLS on `tls_tcp` when set, and the HTTP API
    # speaks HTTPS when http_tls is true
    tls_cert: str = ""
    tls_key: str = ""
    wss: str = "127.0.0.1:3103"
    tls_tcp: str = ""
    http_tls: bool = False
    # identity of this proxy process in the session registry
    server_id: str = ""
    # auth: "jwt" (HS256, user id in `sub`) or "none" (goim's auth body as it is)
    auth: str = "jwt"
    jwt_secret: str = ""
    jwt_require_exp: bool = True      # a client token without exp is refused (it would never expire)
    jwt_max_ttl: float = 604800.0     # ... and one whose exp is further ahead than this (0 = no maximum)
    data_dir: str = "./data"
    # connection handling
    handshake_timeout: float = 5.0
    heartbeat_timeout: float = 90.0  # goim clients beat every 30 s; three missed beats close
    max_frame_body: int = 65536
    max_pending: int = 1 << 20       # bytes queued per connection before it is a slow consumer
    merge_window: float = 0.0        # seconds; 0 = coalesce within one event-loop iteration
    max_rooms_per_conn: int = 64
    shutdown_grace: float = 5.0
    # what one client may cost (imgate.proxy.limits): frames per second per connection after auth,
    # in bursts of client_op_burst (past it: op 6 "rate limited" and close; 0 = no limit), and open
    # connections per client address (0 = no limit) except from the exempt networks
    client_op_rate: float = 100.0
    client_op_burst: float = 200.0
    max_conns_per_ip: int = 5000
    conn_limit_exempt: list = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # HTTP API
    max_http_body: int = 1 << 20
    # API credentials: "key" (API keys / JWTs with scopes, see docs/security.md) or "none" (open)
    api_auth: str = "key"
    metrics_auth: bool = True         # /metrics needs the "metrics" scope; false: open to anyone
    api_jwt_max_ttl: float = 86400.0  # a JWT credential for the API may live this long at most
    http_request_timeout: float = 30.0  # seconds from a request's first byte to its last (head and body)
    # how often proxies report room counts and logic absorbs them (seed 5.3)
    online_interval: float = 1.0
    # demo page helpers (token minting for the page); off unless asked for
    demo: bool = False
    # ---- cluster roles (imgate proxy | logic | push); see docs/cluster.md
    rpc: str = "127.0.0.1:3109"          # proxy: internal RPC (push -> proxy); logic: its own (3119)
    logic_rpc: str = "127.0.0.1:3119"    # logic: internal RPC listener (proxy -> logic)
    logic_addrs: list = field(default_factory=lambda: ["127.0.0.1:3119"])  # proxy: logic instances, in order
    proxies: dict = field(default_factory=dict)  # push: {server_id: "host:rpc_port"} of every proxy
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinels: list = field(default_factory=list)  # ["host:port", ...]; then redis_master names the set
    redis_master: str = "mymaster"
    kafka: str = "127.0.0.1:9092"        # bootstrap servers
    kafka_topic: str = "imgate-push"
    kafka_timeout: float = 5.0           # seconds a push may wait for Kafka before the API answers 503
    room_merge_window: float = 0.0       # push: merge pushes to one room over this window into one op-9 batch
    rpc_pool: int = 4                    # connections per RPC peer
    rpc_tls: bool = False                # RPC over TLS: listeners use tls_cert/tls_key, callers trust rpc_tls_ca only
    rpc_tls_ca: str = ""                 # the CA (PEM) the cluster's RPC certificates are pinned to

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
        if self.auth not in ("jwt", "none"):
            raise ConfigError(f"auth: expected 'jwt' or 'none', got {self.auth!r}")
        if self.api_auth not in ("key", "none"):
            raise ConfigError(f"api_auth: expected 'key' or 'none', got {self.api_auth!r}")
        for key in ("rpc", "logic_rpc"):
            parse_hostport(getattr(self, key), key)
        for i, addr in enumerate(self.logic_addrs):
            parse_hostport(addr, f"logic_addrs[{i}]")
        for sid, addr in self.proxies.items():
            parse_hostport(addr, f"proxies.{sid}")
        if self.room_merge_window < 0:
            raise ConfigError(f"room_merge_window: must be >= 0, got {self.room_merge_window}")
        if self.rpc_pool <= 0:
            raise ConfigError(f"rpc_pool: must be > 0, got {self.rpc_pool}")
        for key in ("handshake_timeout", "heartbeat_timeout", "shutdown_grace", "online_interval", "kafka_timeout",
                    "api_jwt_max_ttl", "http_request_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        for key in ("client_op_rate", "client_op_burst", "max_conns_per_ip", "jwt_max_ttl"):
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
        for key in ("max_frame_body", "max_pending", "max_http_body", "max_rooms_per_conn"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
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
            tables = {"serve", "proxy", "logic", "push"}
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

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)
