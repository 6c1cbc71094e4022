"""`imgate` command line: serve (all roles in one process), the cluster roles, token, apikey."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from imgate.config import Config, ConfigError


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (keys as in docs/configuration.md)")
    p.add_argument("--tcp", help="TCP listener HOST:PORT (default 127.0.0.1:3101)")
    p.add_argument("--ws", help="WebSocket listener HOST:PORT, path /sub (default 127.0.0.1:3102)")
    p.add_argument("--http", help="HTTP API HOST:PORT (default 127.0.0.1:3111)")
    p.add_argument("--auth", choices=["jwt", "none", "http"],
                   help="jwt (default), none (goim's auth body as it is) or http (the service at auth_url)")
    p.add_argument("--data-dir", dest="data_dir", help="where state lives (default ./data)")
    p.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate: wss on --wss (3103), HTTPS with --http-tls")
    p.add_argument("--tls-key", dest="tls_key", help="PEM key of --tls-cert")
    p.add_argument("--http-tls", dest="http_tls", action="store_true", default=None, help="serve the HTTP API over TLS")
    p.add_argument("--api-auth", dest="api_auth", choices=["key", "none"],
                   help="key (default: the HTTP API needs an API key or token) or none (open API)")
    p.add_argument("--demo", action="store_true", default=None,
                   help="let the demo page at / mint tokens for any user (never in production)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument("--workers", type=int, help="proxy processes sharing the client ports (default 1; 0: one per core)")


def _load(args) -> Config:
    return Config.load(args.config, tcp=args.tcp, ws=args.ws, http=args.http, auth=args.auth,
                       data_dir=args.data_dir, demo=args.demo, api_auth=args.api_auth,
                       tls_cert=args.tls_cert, tls_key=args.tls_key, http_tls=args.http_tls, workers=args.workers)


def _workers(cfg: Config) -> int:
    if cfg.workers:
        return cfg.workers
    from imgate.workers import default_workers

    return default_workers()


def _first_key(cfg: Config) -> str:
    """An admin API key when the data dir has none yet (printed once: only its hash is kept)."""
    from imgate.http.apikeys import KeyStore

    store = KeyStore(cfg.data_dir)
    if cfg.api_auth != "key" or store.load():
        return ""
    _, token = store.create("initial", ["admin"])
    return token


async def _serve(cfg: Config) -> int:
    from imgate.gctune import settle as settle_gc
    from imgate.node import Node

    first_key = _first_key(cfg)
    n = _workers(cfg)
    if n > 1:
        from imgate.workers import Coordinator

        node = Coordinator(cfg, n)
    else:
        node = Node(cfg)
    await node.start()
    settle_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, node.reload_tls)   # new certificate, connections kept
    p = node.proxy if n == 1 else node
    host = "127.0.0.1" if cfg.addr("http")[0] in ("0.0.0.0", "::") else cfg.addr("http")[0]
    print(f"imgate node {cfg.server_id} is up (auth: {cfg.auth}{f', {n} workers' if n > 1 else ''})", flush=True)
    print(f"  goim TCP     tcp://{host}:{p.tcp_port}", flush=True)
    print(f"  WebSocket    ws://{host}:{p.ws_port}/sub", flush=True)
    if p.tls is not None:
        print(f"  WebSocket    wss://{host}:{p.wss_port}/sub  (TLS; SIGHUP reloads {cfg.tls_cert})", flush=True)
        if p.tls_tcp_port:
            print(f"  goim TLS     tls://{host}:{p.tls_tcp_port}", flush=True)
    scheme = "https" if cfg.http_tls else "http"
    print(f"  HTTP API     {scheme}://{host}:{node.http_port}/  (demo page; /openapi.json, /metrics)", flush=True)
    if cfg.im:
        print(f"  IM store     {Path(cfg.data_dir) / 'im.db'} (synchronous {cfg.im_sync}; chat demo: /chat)",
              flush=True)
    if cfg.auth == "jwt":
        print(f"  tokens       imgate token --user ID --data-dir {cfg.data_dir}", flush=True)
    for what, url in (("auth", cfg.auth_url if cfg.auth == "http" else ""), ("upstream", cfg.upstream_url),
                      ("webhooks", cfg.webhook_url)):
        if url:
            print(f"  {what:<12} {url}", flush=True)
    for op, url in sorted(cfg.upstream_routes.items(), key=lambda kv: int(kv[0])):
        print(f"  upstream {op:<4}{url}", flush=True)
    if first_key:
        print(f"  API key      {first_key}  (admin; created now, shown once: keep it)", flush=True)
        print(f"               curl -H 'Authorization: Bearer {first_key}' {scheme}://{host}:{node.http_port}/goim/online/total", flush=True)
    elif cfg.api_auth == "key":
        print(f"  API keys     imgate apikey create --scope push --data-dir {cfg.data_dir}", flush=True)
    else:
        print("  API          OPEN to anyone who reaches it (api_auth = \"none\")", flush=True)
    if node.demo_api_key:
        print(f"  demo key     {node.demo_api_key}  (push, im; in memory until the node stops)", flush=True)
    await stop.wait()
    print("shutting down: clients get op 6 (reconnect)", flush=True)
    await node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgate", description="imgate IM gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run every role in one process (embedded default)")
    _serve_args(serve)
    for role, text in (("proxy", "edge proxy: client listeners, rooms, delivery (cluster mode)"),
                       ("logic", "logic: HTTP API, auth, sessions in Redis, pushes to Kafka (cluster mode)"),
                       ("push", "push: Kafka consumer delivering to the proxies over RPC (cluster mode)"),
                       ("im", "im: the IM service (send, sync, pull, groups) on MariaDB, for proxies and backends "
                              "(cluster mode)"),
                       ("consumer", "consumer: the write fan-out of small groups, a Kafka consumer group "
                                    "(cluster mode)")):
        rp = sub.add_parser(role, help=text)
        rp.add_argument("--config", required=True, help=f"TOML config file (keys at top level or under [{role}])")
        rp.add_argument("--server-id", dest="server_id", help="stable id of this process (default from the config)")
        rp.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
        if role == "proxy":
            rp.add_argument("--workers", type=int,
                            help="proxy processes sharing the client ports (default 1; 0: one per core)")
    tok = sub.add_parser("token", help="mint a JWT for a user")
    tok.add_argument("--user", type=int, required=True, help="user id (mid), goes into `sub`")
    tok.add_argument("--ttl", type=float, default=86400, help="seconds until it expires (default 86400)")
    tok.add_argument("--secret", help="HS256 secret (default: config, IMGATE_JWT_SECRET, or <data-dir>/jwt.secret)")
    tok.add_argument("--config", help="TOML config file")
    tok.add_argument("--data-dir", dest="data_dir", help="data dir of the node (default ./data)")
    ak = sub.add_parser("apikey", help="manage the HTTP API's keys (create, list, revoke)")
    ak_sub = ak.add_subparsers(dest="apikey_command", required=True)
    for name, text in (("create", "make a key (printed once; only its hash is stored)"),
                       ("list", "show the keys (never the secrets)"), ("revoke", "delete a key by id")):
        p = ak_sub.add_parser(name, help=text)
        p.add_argument("--config", help="TOML config file")
        p.add_argument("--data-dir", dest="data_dir", help="data dir of the node (default ./data)")
        if name == "create":
            p.add_argument("--scope", action="append", required=True,
                           help="push, im, query, metrics or admin (repeat for several)")
            p.add_argument("--name", default="", help="a label to recognise the key by")
        if name == "revoke":
            p.add_argument("id", help="the key's id (the part after imk_, as `list` shows)")
    cert = sub.add_parser("cert", help="certificates for trying TLS")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True)
    dev = cert_sub.add_parser("dev", help="a local CA and a server certificate signed by it (openssl)")
    dev.add_argument("--out", default="./data/tls", help="directory for ca.crt, server.crt, server.key (default ./data/tls)")
    dev.add_argument("--name", action="append", help="host names and addresses (default localhost, 127.0.0.1, ::1)")
    args = parser.parse_args(argv)

    try:
        if args.command == "serve":
            logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            cfg = _load(args)
            try:
                import uvloop
            except ImportError:  # pragma: no cover
                return asyncio.run(_serve(cfg))
            return uvloop.run(_serve(cfg))
        if args.command in ("proxy", "logic", "push", "im", "consumer"):
            logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            from imgate.roles import run_role

            cfg = Config.load(args.config, server_id=args.server_id, _section=args.command,
                              workers=getattr(args, "workers", None))
            if args.command == "proxy" and _workers(cfg) > 1:
                from imgate.workers import run_proxy_workers

                return asyncio.run(run_proxy_workers(cfg, _workers(cfg)))
            try:
                import uvloop
            except ImportError:  # pragma: no cover
                return asyncio.run(run_role(args.command, cfg))
            return uvloop.run(run_role(args.command, cfg))
        if args.command == "token":
            from imgate.auth import mint_token
            from imgate.node import load_or_create_secret

            cfg = Config.load(args.config, data_dir=args.data_dir, jwt_secret=args.secret)
            if cfg.jwt_max_ttl and args.ttl > cfg.jwt_max_ttl:
                print(f"imgate: --ttl {args.ttl:g} is over jwt_max_ttl ({cfg.jwt_max_ttl:g} s): the node would "
                      f"refuse the token", file=sys.stderr)
                return 2
            print(mint_token(load_or_create_secret(cfg, create=False), args.user, ttl=args.ttl))
            return 0
        if args.command == "apikey":
            return _apikey(args)
        if args.command == "cert":
            from imgate.certs import make_dev_certs

            try:
                paths = make_dev_certs(args.out, tuple(args.name) if args.name else ("localhost", "127.0.0.1", "::1"))
            except RuntimeError as e:
                print(f"imgate: {e}", file=sys.stderr)
                return 1
            print(f"tls_cert = \"{paths['cert']}\"\ntls_key = \"{paths['key']}\"")
            print(f"clients trust {paths['ca_cert']} (curl --cacert {paths['ca_cert']})", file=sys.stderr)
            return 0
    except ConfigError as e:
        print(f"imgate: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"imgate: {e}", file=sys.stderr)
        return 1
    return 2


def _apikey(args) -> int:
    import time

    from imgate.http.apikeys import KeyStore

    cfg = Config.load(args.config, data_dir=args.data_dir)
    store = KeyStore(cfg.data_dir)
    if args.apikey_command == "create":
        try:
            rec, token = store.create(args.name, args.scope)
        except ValueError as e:
            print(f"imgate: {e}", file=sys.stderr)
            return 2
        print(token)
        print(f"id {rec.id}, scopes {' '.join(rec.scopes)}: shown once, only its hash is stored in {store.path}",
              file=sys.stderr)
        return 0
    if args.apikey_command == "list":
        for rec in store.load():
            made = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.created))
            print(f"{rec.id}\t{' '.join(rec.scopes)}\t{made}Z\t{rec.name}")
        return 0
    if store.revoke(args.id):
        print(f"revoked {args.id}")
        return 0
    print(f"imgate: no API key with id {args.id!r} in {store.path}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
