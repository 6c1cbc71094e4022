"""`make cluster`: a whole imgate cluster on loopback, in the foreground; Ctrl-C stops all of it.

Its own Redis (127.0.0.1:16379), single-node KRaft Kafka (127.0.0.1:19092) and MariaDB Galera pair
(127.0.0.1:13306 and 13307, with garbd; the IM store, user `test`, database `im`), two proxies
(A: TCP 3101, WS 3102, RPC 3109; B: TCP 4101, WS 4102, RPC 4109), two logic (HTTP 3111 and 4111;
RPC 3119 and 4119; both run the IM service, logic-1 on the first MariaDB node, logic-2 on the second)
and one push. State and logs live under .data/cluster/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from imgate.config import dump_toml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".data" / "cluster"
SERVICES = ROOT / "scripts" / "services.sh"
REDIS, KAFKA, KAFKA_CTRL = 16379, 19092, 19093
MARIADB = ("127.0.0.1:13306", "127.0.0.1:13307")


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", str(SERVICES), "install"], check=True)
    subprocess.run(["bash", str(SERVICES), "start-redis", str(REDIS), str(WORK)], check=True)
    subprocess.run(["bash", str(SERVICES), "start-kafka", str(KAFKA), str(KAFKA_CTRL), str(WORK)], check=True)
    subprocess.run(["bash", str(SERVICES), "start-galera", *(a.rpartition(":")[2] for a in MARIADB), str(WORK)],
                   check=True)
    common = dict(redis_url=f"redis://127.0.0.1:{REDIS}/0", kafka=f"127.0.0.1:{KAFKA}", auth="jwt",
                  data_dir=str(WORK / "data"), logic_addrs=["127.0.0.1:3119", "127.0.0.1:4119"],
                  im_store="mariadb", mariadb_user="test", mariadb_database="im")
    roles = [
        ("logic", "logic-1", dict(http="127.0.0.1:3111", logic_rpc="127.0.0.1:3119", mariadb_addrs=list(MARIADB))),
        ("logic", "logic-2", dict(http="127.0.0.1:4111", logic_rpc="127.0.0.1:4119",
                                  mariadb_addrs=list(reversed(MARIADB)))),
        ("proxy", "A", dict(tcp="127.0.0.1:3101", ws="127.0.0.1:3102", rpc="127.0.0.1:3109")),
        ("proxy", "B", dict(tcp="127.0.0.1:4101", ws="127.0.0.1:4102", rpc="127.0.0.1:4109")),
        ("push", "push-1", dict(proxies={"A": "127.0.0.1:3109", "B": "127.0.0.1:4109"})),
    ]
    procs: list[tuple[str, subprocess.Popen]] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
    stopping = False

    def stop_all(*_):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        print("\nstopping the cluster ...", flush=True)
        for _, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["bash", str(SERVICES), "stop", str(WORK)])

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    try:
        for role, name, extra in roles:
            conf = WORK / f"{name}.toml"
            conf.write_text(dump_toml(dict(common, server_id=name, **extra)))
            p = subprocess.Popen([sys.executable, "-m", "imgate", role, "--config", str(conf)], env=env, cwd=ROOT)
            procs.append((name, p))
            time.sleep(0.5 if role != "logic" else 1.0)
        print("\nimgate cluster is up (Ctrl-C stops everything):", flush=True)
        print("  proxy A   tcp://127.0.0.1:3101  ws://127.0.0.1:3102/sub  rpc :3109", flush=True)
        print("  proxy B   tcp://127.0.0.1:4101  ws://127.0.0.1:4102/sub  rpc :4109", flush=True)
        print("  logic     http://127.0.0.1:3111  http://127.0.0.1:4111", flush=True)
        print(f"  redis     127.0.0.1:{REDIS}   kafka 127.0.0.1:{KAFKA}   mariadb {' '.join(MARIADB)}", flush=True)
        print(f"  tokens    .venv/bin/imgate token --user ID --data-dir {WORK / 'data'}", flush=True)
        print(f"  API keys  .venv/bin/imgate apikey create --scope push --data-dir {WORK / 'data'}", flush=True)
        while not stopping:
            for name, p in procs:
                if p.poll() is not None and not stopping:
                    print(f"{name} exited with {p.returncode}; stopping the cluster", flush=True)
                    stop_all()
                    return 1
            time.sleep(0.5)
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
