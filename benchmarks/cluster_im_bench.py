"""Cluster single chat: messages per second and per CPU-second of every server process together, and
send-to-delivery latency, at a series of offered rates (`make bench-cluster-im`).

Runs the chaos run's cluster without faults (tests/chaosutil.py: Redis behind Sentinel, Kafka, the
MariaDB Galera pair with garbd, 2 proxies, 2 logic with the IM service on MariaDB, push, and the im and
consumer roles when the cluster helper has them) and, for each rate, client processes
(tests/chaos_driver.py) that send single-chat messages for DURATION seconds. In the middle of each step
(from 20 % to 90 % of it) it reads utime + stime of every process from /proc/PID/stat; the figures:

- acked/s: acknowledged sends whose ack fell in that window, per second;
- per CPU-s: those sends per CPU-second of the server processes (roles, MariaDB, garbd, Redis and its
  Sentinels, Kafka); the clients' CPU is shown apart;
- p50/p99: from the sender's first try to the op-24 push at the receiver (same clock), over the step;
- the CPU split per process, to say where the time goes, and each process's microseconds of CPU per
  message with those of its busiest threads (/proc/PID/task: the event loop, librdkafka's threads, a
  JVM's network and coordinator threads);
- MariaDB statements per message, both nodes together (SHOW GLOBAL STATUS: Questions, Com_select, ...).

"Sustained" is a step whose acked/s is at least 95 % of the offered rate with no send refused or
timed out. The machine has 2 cores shared with everything else that runs: compare steps of one run.

    PYTHONPATH=src .venv/bin/python benchmarks/cluster_im_bench.py --rates 50,100,200,300 --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from chaosutil import ChaosServices, Plan, make_cluster, percentile, start_drivers, stop_drivers, wait_drivers, wait_ready  # noqa: E402,E501

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
        return None


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of one process (threads of one name added up): which loop spends it."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


STATEMENTS = ("Com_select", "Com_insert", "Com_update", "Com_commit", "Com_rollback", "Com_savepoint",
              "Questions", "wsrep_local_cert_failures", "wsrep_local_bf_aborts")


def db_counters(addrs: list[str]) -> dict[str, int]:
    """The MariaDB statement counters of every node, added up (SHOW GLOBAL STATUS)."""
    import asyncio

    import asyncmy

    async def go():
        out: dict[str, int] = {}
        for addr in addrs:
            host, _, port = addr.rpartition(":")
            try:
                conn = await asyncmy.connect(host=host, port=int(port), user="test", autocommit=True,
                                             connect_timeout=10, read_timeout=60)
            except Exception:  # noqa: BLE001 - a node that does not answer counts nothing
                continue
            async with conn.cursor() as cur:
                await cur.execute("SHOW GLOBAL STATUS")
                for name, value in await cur.fetchall():
                    if name in STATEMENTS:
                        out[name] = out.get(name, 0) + int(value)
            conn.close()
        return out

    return asyncio.run(go())


def all_pids(cluster, services, drivers) -> dict[str, int]:
    pids = {f"{p.role} {n}": p.proc.pid for n, p in cluster.procs.items() if p.alive}
    pids.update(services.pids())
    pids.update({f"client {k}": proc.pid for k, (proc, _, _) in enumerate(drivers)})
    return pids


def sample(pids: dict[str, int]) -> dict[str, float]:
    return {name: c for name, pid in pids.items() if (c := cpu_seconds(pid)) is not None}


def sample_threads(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    return {name: thread_seconds(pid) for name, pid in pids.items() if not name.startswith("client")}


def thread_split(before: dict, after: dict, messages: int) -> dict[str, dict[str, float]]:
    """Per process, the threads that spent CPU in the window: microseconds of CPU per acked message."""
    out = {}
    for proc, threads in after.items():
        spent = {t: v - before.get(proc, {}).get(t, 0.0) for t, v in threads.items()}
        out[proc] = {t: round(v / max(1, messages) * 1e6) for t, v in sorted(spent.items(), key=lambda x: -x[1])
                     if v > 0}
    return out


def step(cluster, services, rate: float, args, workdir: Path, first_uid: int) -> dict:
    # no stop signal: the drivers send single chats for exactly the step's duration
    plan = Plan(clients=args.clients, workers=args.workers, rate=rate, duration=args.duration, max_extra=0.0)
    drivers = start_drivers(cluster, plan, workdir, grace=30.0, first_uid=first_uid)
    try:
        begin = wait_ready(drivers)
        pids = all_pids(cluster, services, drivers)
        t_from, t_to = begin + 0.2 * args.duration, begin + 0.9 * args.duration
        time.sleep(max(0.0, t_from - time.time()))
        db0 = db_counters(services.galera.addrs)
        cpu0, thr0, w0 = sample(pids), sample_threads(pids), time.time()
        time.sleep(max(0.0, t_to - time.time()))
        cpu1, thr1, w1 = sample(pids), sample_threads(pids), time.time()
        db1 = db_counters(services.galera.addrs)
        results = wait_drivers(drivers, args.duration + 300)
    finally:
        stop_drivers(drivers)
    users = [u for r in results for u in r["users"]]
    pushed = {u["uid"]: u["pushed"] for u in users}
    in_window, latencies, refused = 0, [], 0
    for u in users:
        refused += sum(n for k, n in u["errors"].items() if k.startswith(("refused", "timeout")))
        for cmid, to, _seq, first, ack, _tries in u["acked"]:
            in_window += w0 <= ack < w1
            got = pushed.get(to, {}).get(cmid)
            if got is not None:
                latencies.append(got[1] - first)
    cpu = {n: round(cpu1[n] - cpu0[n], 2) for n in cpu1 if n in cpu0}
    server = sum(v for n, v in cpu.items() if not n.startswith("client"))
    clients = sum(v for n, v in cpu.items() if n.startswith("client"))
    window = w1 - w0
    acked_per_s = in_window / window
    return dict(rate=rate, acked_per_s=round(acked_per_s, 1), window_s=round(window, 1),
                server_cpu_s=round(server, 2), server_cores=round(server / window, 2),
                client_cpu_s=round(clients, 2), per_cpu_s=round(in_window / server, 1) if server else 0.0,
                p50_ms=round(percentile(latencies, 0.5) * 1000, 1), p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
                refused_or_timed_out=refused, sustained=acked_per_s >= 0.95 * rate and refused == 0,
                cpu_split={n: round(v / server * 100, 1) for n, v in sorted(cpu.items(), key=lambda x: -x[1])
                           if not n.startswith("client") and server},
                cpu_us_per_msg={n: round(v / max(1, in_window) * 1e6) for n, v in sorted(cpu.items(), key=lambda x: -x[1])},
                threads_us_per_msg=thread_split(thr0, thr1, in_window),
                # the statements both nodes ran (counted where the client sent them) per acked message
                db_per_msg={k: round((db1[k] - db0.get(k, 0)) / max(1, in_window), 2) for k in db1})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="50,100,150,200,250", help="offered messages per second, one step each")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per step")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "cluster-im-latest.json"))
    ap.add_argument("--workdir", default="")
    ap.add_argument("--kafka-jit", choices=("full", "c1"), default="c1",
                    help="c1: the test services' quick-start JIT setting (TieredStopAtLevel=1); full: the JVM's"
                         " default, as a deployment runs it (a run of minutes still spends a core-share compiling)")
    ap.add_argument("--intervals", choices=("test", "default"), default="test",
                    help="test: the cluster helper's short periods (online reports every 0.2 s, outbox sweep after"
                         " 2 s); default: the roles' own defaults (1 s, 5 s), as a deployment runs them")
    ap.add_argument("--writers", choices=("both", "one"), default="both",
                    help="MariaDB nodes the roles write on: both (the roles named ...2 prefer the second node,"
                         " as in the chaos run) or one (every role prefers the first; the second is the standby)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a TERM still stops every process (finally)
    if args.kafka_jit == "full" and "KAFKA_JVM_OPTS" not in os.environ:  # (scripts/services.sh reads it)
        os.environ["KAFKA_JVM_OPTS"] = "-XX:+UseG1GC -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true"
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imgate-clbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    services = ChaosServices(workdir)
    cluster = None
    steps = []
    try:
        services.start()
        extra = dict(online_interval=1.0) if args.intervals == "default" else {}
        cluster = make_cluster(workdir, services, kafka_timeout=5.0, **extra)
        for name, proc in cluster.procs.items():
            if args.intervals == "default" and "fanout_relay_after" in proc.config:
                proc.config["fanout_relay_after"] = 5.0
        if args.writers == "one":
            for proc in cluster.procs.values():
                if "mariadb_addrs" in proc.config:
                    proc.config["mariadb_addrs"] = list(services.galera.addrs)
        cluster.start()
        for k, rate in enumerate(float(r) for r in args.rates.split(",")):
            s = step(cluster, services, rate, args, workdir, first_uid=100_000 + k * 10_000)
            steps.append(s)
            print(f"offered {rate:6.0f}/s  acked {s['acked_per_s']:6.1f}/s  {s['per_cpu_s']:6.1f} per server"
                  f" CPU-s ({s['server_cores']} cores)  p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms"
                  f"  refused/timeouts {s['refused_or_timed_out']}{'  sustained' if s['sustained'] else ''}",
                  flush=True)
            print("  statements per message: " + ", ".join(f"{k} {v}" for k, v in s["db_per_msg"].items()), flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
        services.stop()
    best = max((s for s in steps if s["sustained"]), key=lambda s: s["rate"], default=None)
    if best:
        print(f"highest sustained: {best['rate']:.0f}/s; CPU split there (% of server CPU, us per message,"
              f" the busiest threads):")
        for name, pct in best["cpu_split"].items():
            threads = ", ".join(f"{t} {us}" for t, us in list(best["threads_us_per_msg"].get(name, {}).items())[:4])
            print(f"  {name:<22} {pct:5.1f} %  {best['cpu_us_per_msg'][name]:6d} us  ({threads})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(dict(steps=steps, best=best, args=vars(args),
                                               loadavg=os.getloadavg()), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
