"""`make cluster`: a whole imgate cluster on loopback, in the foreground; Ctrl-C stops all of it.

Its own Redis (127.0.0.1:16379), single-node KRaft Kafka (127.0.0.1:19092), MariaDB Galera pair (127.0.0.1:13306
and 13307, with garbd; user `test`, database `im`), two proxies
(A: TCP 3101, WS 3102, RPC 3109; B: TCP 4101, WS 4102, RPC 4109), two logic (HTTP 3111 and 4111;
RPC 3119 and 4119), two im (HTTP 3121 and 4121, RPC 3129 and 4129; proxy A prefers im-1, B im-2), two
consumers (the group fan-out, Kafka topic <topic>-fanout) and one push, which finds the proxies in Redis.
The -1 roles write on the first MariaDB node, the -2 roles on the second; logic keeps the store for what
auth needs (the inbox's newest seq, group rooms). State and logs live under
.data/cluster/. A role that dies is reported and started again after `--restart-delay` seconds; the
others keep running, so fail-over can be tried by hand (kill a proxy: its clients reconnect to the
other; it comes back).

Options for tests and second clusters: `--free-ports` (any free ports; the chosen ones are written to
WORK/ports.json), `--work DIR`, `--redis-url URL` and `--kafka HOST:PORT` (use running services instead
of starting them; then no MariaDB is started and there is no IM service (and no im or consumer role)
unless `--mariadb HOST:PORT,HOST:PORT` names running servers, `--mariadb-database` their database), `--topic`. Each role's pid is in WORK/<name>.pid, its output in WORK/<name>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from imgate.config import dump_toml  # noqa: E402
from imgate.supervisor import Supervisor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services.sh"
REDIS, KAFKA, KAFKA_CTRL = 16379, 19092, 19093
MARIADB = (13306, 13307)
FIXED = {"A": (3101, 3102, 3109), "B": (4101, 4102, 4109), "logic-1": (3111, 3119), "logic-2": (4111, 4119),
         "im-1": (3121, 3129), "im-2": (4121, 4129)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / ".data" / "cluster"))
    ap.add_argument("--free-ports", action="store_true")
    ap.add_argument("--redis-url")
    ap.add_argument("--kafka")
    ap.add_argument("--mariadb", help="HOST:PORT,HOST:PORT of a running MariaDB pair (user test)")
    ap.add_argument("--mariadb-database", default="im", help="its database (must exist; default im)")
    ap.add_argument("--topic", default="imgate-push", help="Kafka topic of the push jobs")
    ap.add_argument("--restart-delay", type=float, default=2.0)
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    own_services = not (args.redis_url and args.kafka)
    if own_services:
        subprocess.run(["bash", str(SERVICES), "install"], check=True)
        subprocess.run(["bash", str(SERVICES), "start-redis", str(REDIS), str(work)], check=True)
        subprocess.run(["bash", str(SERVICES), "start-kafka", str(KAFKA), str(KAFKA_CTRL), str(work)], check=True)
    ports = {n: tuple(free_port() for _ in p) for n, p in FIXED.items()} if args.free_ports else dict(FIXED)
    mariadb = args.mariadb.split(",") if args.mariadb else []
    if own_services and not mariadb:  # the IM store: a Galera pair (scripts/mariadb.sh)
        mports = [free_port(), free_port()] if args.free_ports else list(MARIADB)
        subprocess.run(["bash", str(SERVICES), "start-galera", *map(str, mports), str(work)], check=True)
        mariadb = [f"127.0.0.1:{p}" for p in mports]
    (work / "ports.json").write_text(json.dumps(ports))
    logic_addrs = [f"127.0.0.1:{ports[n][1]}" for n in ("logic-1", "logic-2")]
    common = dict(redis_url=args.redis_url or f"redis://127.0.0.1:{REDIS}/0", kafka=args.kafka or f"127.0.0.1:{KAFKA}",
                  kafka_topic=args.topic, auth="jwt", data_dir=str(work / "data"), logic_addrs=logic_addrs)
    # with MariaDB: the im roles serve the IM ops, the consumers fan out group messages (Kafka topic
    # imgate-fanout); logic keeps the store for what auth needs
    im = dict(im_store="mariadb", mariadb_user="test", mariadb_database=args.mariadb_database, group_consumer=False,
              fanout_topic=f"{args.topic}-fanout") if mariadb else {}

    def prefer(n: str) -> dict:  # the -1 roles write on the first MariaDB node, the -2 on the second
        return {"mariadb_addrs": mariadb[::1 if n.endswith("1") else -1]} if mariadb else {}

    roles = [("logic", n, dict(http=f"127.0.0.1:{ports[n][0]}", logic_rpc=f"127.0.0.1:{ports[n][1]}", **im,
                               **prefer(n))) for n in ("logic-1", "logic-2")]
    im_addrs = [f"127.0.0.1:{ports[n][1]}" for n in ("im-1", "im-2")] if mariadb else []
    if mariadb:
        roles += [("im", n, dict(http=f"127.0.0.1:{ports[n][0]}", im_rpc=f"127.0.0.1:{ports[n][1]}", **im,
                                 **prefer(n))) for n in ("im-1", "im-2")]
        roles += [("consumer", n, dict(**im, **prefer(n))) for n in ("consumer-1", "consumer-2")]
    roles += [("proxy", n, dict(tcp=f"127.0.0.1:{ports[n][0]}", ws=f"127.0.0.1:{ports[n][1]}",
                                rpc=f"127.0.0.1:{ports[n][2]}", im_addrs=im_addrs[::1 if n == "A" else -1]))
              for n in ("A", "B")]
    roles.append(("push", "push-1", {}))  # finds the proxies in Redis
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
    sup = Supervisor(restart_delay=args.restart_delay, say=lambda m: print(m, flush=True))

    def stop(*_):
        if not sup.stopping:
            print("\nstopping the cluster ...", flush=True)
            sup.stop_all()
            if own_services:
                subprocess.run(["bash", str(SERVICES), "stop", str(work)])

    signal.signal(signal.SIGINT, lambda *_: stop())
    signal.signal(signal.SIGTERM, lambda *_: stop())
    try:
        for role, name, extra in roles:
            conf = work / f"{name}.toml"
            conf.write_text(dump_toml(dict(common, server_id=name, **extra)))
            sup.start(name, [sys.executable, "-m", "imgate", role, "--config", str(conf)], env=env, cwd=str(ROOT),
                      log=str(work / f"{name}.log"), pidfile=str(work / f"{name}.pid"))
            time.sleep(1.0 if role in ("logic", "im") else 0.5)
        a, b, l1, l2 = ports["A"], ports["B"], ports["logic-1"], ports["logic-2"]
        print("\nimgate cluster is up (Ctrl-C stops everything; a role that dies is restarted):", flush=True)
        print(f"  proxy A   tcp://127.0.0.1:{a[0]}  ws://127.0.0.1:{a[1]}/sub  rpc :{a[2]}", flush=True)
        print(f"  proxy B   tcp://127.0.0.1:{b[0]}  ws://127.0.0.1:{b[1]}/sub  rpc :{b[2]}", flush=True)
        print(f"  logic     http://127.0.0.1:{l1[0]}  http://127.0.0.1:{l2[0]}", flush=True)
        if mariadb:
            i1, i2 = ports["im-1"], ports["im-2"]
            print(f"  im        http://127.0.0.1:{i1[0]}/im/*  http://127.0.0.1:{i2[0]}/im/*  (rpc :{i1[1]} :{i2[1]});"
                  f" consumers consumer-1, consumer-2", flush=True)
        print(f"  services  {common['redis_url']}  kafka {common['kafka']}"
              f"  mariadb {' '.join(mariadb) if mariadb else '(none: no IM)'}", flush=True)
        print(f"  logs      {work}/<role>.log", flush=True)
        print(f"  tokens    .venv/bin/imgate token --user ID --data-dir {work / 'data'}", flush=True)
        print(f"  API keys  .venv/bin/imgate apikey create --scope push --data-dir {work / 'data'}", flush=True)
        while not sup.stopping:
            sup.poll()
            time.sleep(0.2)
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
