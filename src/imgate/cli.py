"""`imgate` command line: serve (all roles in one process) and token."""

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
    p.add_argument("--tcp", help="TCP listener HOST:PORT (default 0.0.0.0:3101)")
    p.add_argument("--ws", help="WebSocket listener HOST:PORT, path /sub (default 0.0.0.0:3102)")
    p.add_argument("--http", help="HTTP API HOST:PORT (default 0.0.0.0:3111)")
    p.add_argument("--auth", choices=["jwt", "none", "http"],
                   help="jwt (default), none (goim's auth body as it is) or http (the service at auth_url)")
    p.add_argument("--data-dir", dest="data_dir", help="where state lives (default ./data)")
    p.add_argument("--demo", action="store_true", default=None,
                   help="let the demo page at / mint tokens for any user (never in production)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")


def _load(args) -> Config:
    return Config.load(args.config, tcp=args.tcp, ws=args.ws, http=args.http, auth=args.auth,
                       data_dir=args.data_dir, demo=args.demo)


async def _serve(cfg: Config) -> int:
    from imgate.gctune import settle as settle_gc
    from imgate.node import Node

    node = Node(cfg)
    await node.start()
    settle_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    p = node.proxy
    host = "127.0.0.1" if cfg.addr("http")[0] in ("0.0.0.0", "::") else cfg.addr("http")[0]
    print(f"imgate node {cfg.server_id} is up (auth: {cfg.auth})", flush=True)
    print(f"  goim TCP     tcp://{host}:{p.tcp_port}", flush=True)
    print(f"  WebSocket    ws://{host}:{p.ws_port}/sub", flush=True)
    print(f"  HTTP API     http://{host}:{node.http_port}/  (demo page; /openapi.json, /metrics)", flush=True)
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
                       ("push", "push: Kafka consumer delivering to the proxies over RPC (cluster mode)")):
        rp = sub.add_parser(role, help=text)
        rp.add_argument("--config", required=True, help=f"TOML config file (keys at top level or under [{role}])")
        rp.add_argument("--server-id", dest="server_id", help="stable id of this process (default from the config)")
        rp.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    tok = sub.add_parser("token", help="mint a JWT for a user")
    tok.add_argument("--user", type=int, required=True, help="user id (mid), goes into `sub`")
    tok.add_argument("--ttl", type=float, default=86400, help="seconds until it expires (default 86400)")
    tok.add_argument("--secret", help="HS256 secret (default: config, IMGATE_JWT_SECRET, or <data-dir>/jwt.secret)")
    tok.add_argument("--config", help="TOML config file")
    tok.add_argument("--data-dir", dest="data_dir", help="data dir of the node (default ./data)")
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
        if args.command in ("proxy", "logic", "push"):
            logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            from imgate.roles import run_role

            cfg = Config.load(args.config, server_id=args.server_id, _section=args.command)
            try:
                import uvloop
            except ImportError:  # pragma: no cover
                return asyncio.run(run_role(args.command, cfg))
            return uvloop.run(run_role(args.command, cfg))
        if args.command == "token":
            from imgate.auth import mint_token
            from imgate.node import load_or_create_secret

            cfg = Config.load(args.config, data_dir=args.data_dir, jwt_secret=args.secret)
            print(mint_token(load_or_create_secret(cfg, create=False), args.user, ttl=args.ttl))
            return 0
    except ConfigError as e:
        print(f"imgate: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"imgate: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
