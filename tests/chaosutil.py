"""The chaos run: the whole cluster on loopback, client processes (tests/chaos_driver.py) sending
sequence-numbered messages, faults injected one after another, and the check of every inbox against
what the clients had acknowledged. Used by `make chaos` (benchmarks/chaos.py), the short run in
tests/integration/test_chaos.py and the cluster IM benchmark (benchmarks/cluster_im_bench.py).

Services: :class:`ChaosServices` starts Redis behind Sentinel (tests/redis_sentinel.py), Kafka and the
MariaDB Galera pair (tests/services.py), or takes running Kafka/Galera objects from the caller. Roles:
:class:`clusterutil.Cluster` (2 proxies, 2 logic, push; and whatever im/consumer roles it starts)
configured with the Sentinels and `im_store = "mariadb"`. Every process is stopped by its pid.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from chaosgroups import check_groups, create as create_groups, layout as group_layout
from clusterutil import Cluster
from redis_sentinel import RedisSentinelGroup
from services import GaleraProcess, KafkaProcess, create_database

DRIVER = Path(__file__).resolve().parent / "chaos_driver.py"
# the roles a fault kills (the first process of each that the cluster runs), in this order
ROLE_FAULTS = ("proxy", "logic", "im", "consumer", "push")


class ChaosServices:
    """Redis + Sentinel (always private), Kafka and Galera (private unless passed in)."""

    def __init__(self, workdir: Path, kafka: KafkaProcess | None = None, galera: GaleraProcess | None = None):
        self.workdir = workdir
        self.redis = RedisSentinelGroup(workdir)
        self.own_kafka, self.own_galera = kafka is None, galera is None
        self.kafka = kafka or KafkaProcess(workdir)
        self.galera = galera or GaleraProcess(workdir)

    def start(self) -> "ChaosServices":
        try:
            self.redis.start()
            if self.own_kafka:
                self.kafka.start()
            if self.own_galera:
                self.galera.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.redis.stop()
        if self.own_kafka:
            self.kafka.stop()
        if self.own_galera:
            self.galera.stop()

    def pids(self) -> dict[str, int]:
        out = {f"redis-{n}": p for n, p in self.redis.pids().items()}
        if self.kafka.pid:
            out["kafka"] = self.kafka.pid
        for m in ("n1", "n2", "garbd"):
            pid = self.galera.member_pid(m)
            if pid:
                out[f"mariadb-{m}" if m != "garbd" else "garbd"] = pid
        return out


def make_cluster(workdir: Path, services: ChaosServices, im_roles: int = 2, consumers: int = 2, **extra) -> Cluster:
    """The cluster on these services; ``im_roles`` im and ``consumers`` consumer roles when the cluster
    helper can start them (before that, the IM service runs in the logic roles)."""
    db = f"chaos_{uuid.uuid4().hex[:10]}"
    # groups of a few dozen clients can then be in read mode (tests/chaosgroups.py)
    extra.setdefault("group_write_limit", 20)
    extra.setdefault("group_hysteresis", 2)
    create_database(services.galera.addrs, db)
    if "im_roles" in inspect.signature(Cluster).parameters:
        extra.update(im_roles=im_roles, consumers=consumers)
    c = Cluster(workdir, redis_url="redis://127.0.0.1:1/0", kafka=services.kafka.bootstrap,
                redis_sentinels=services.redis.sentinels, redis_master="mymaster",
                im_store="mariadb", mariadb_addrs=list(services.galera.addrs), mariadb_user="test",
                mariadb_database=db, heartbeat_timeout=60.0, **extra)
    for name, proc in c.procs.items():
        if name.endswith("2") and "mariadb_addrs" in proc.config:  # the second logic prefers the other node
            proc.config["mariadb_addrs"] = list(reversed(services.galera.addrs))
        if name == "B" and "logic_addrs" in proc.config:  # a proxy uses its first live logic: B the other one
            proc.config["logic_addrs"] = list(reversed(proc.config["logic_addrs"]))
    return c


@dataclass
class Fault:
    name: str
    start: float = 0.0  # unix time the fault began
    restored: float = 0.0  # unix time the killed thing was running again
    note: str = ""


@dataclass
class Plan:
    clients: int = 50
    workers: int = 1
    rate: float = 100.0  # messages per second, all clients together
    duration: float = 40.0  # seconds of sending at least; then until every fault is over and settled
    settle: float = 15.0  # seconds of sending after the last fault was restored
    target: int = 0  # and until the drivers have this many sends acknowledged (0: no such condition)
    max_extra: float = 600.0  # sending ends at duration + this whatever the faults do (a bound)
    warmup: float = 5.0  # seconds before the first fault
    gap: float = 8.0  # seconds between a fault's restore and the next fault
    down: float = 3.0  # seconds a killed role stays down
    kafka_down: float = 20.0
    faults: list[str] = field(default_factory=lambda: ["proxy", "logic", "redis", "mariadb"])
    # groups (tests/chaosgroups.py): write-mode groups per driver process, their size, the read-mode
    # group's size (0: none; it must be over the cluster's group_write_limit), and the share of sends
    # a group member makes to one of its groups
    small_groups: int = 2
    small_size: int = 5
    read_size: int = 0
    group_share: float = 0.3


def fault_kinds(cluster: Cluster) -> list[str]:
    """Every kind of fault this cluster can take: its roles first, then the services."""
    roles = {p.role for p in cluster.procs.values()}
    return [r for r in ROLE_FAULTS if r in roles] + ["redis", "mariadb", "kafka"]


class FaultInjector:
    def __init__(self, cluster: Cluster, services: ChaosServices, plan: Plan, say=print):
        self.cluster, self.services, self.plan, self.say = cluster, services, plan, say
        self.done: list[Fault] = []
        self.error: str | None = None

    def _first(self, role: str):
        return next(p for p in self.cluster.procs.values() if p.role == role)

    def inject(self, kind: str) -> Fault:
        f = Fault(kind, start=time.time())
        if kind in ROLE_FAULTS:
            proc = self._first(kind)
            f.note = f"kill -9 {proc.name}"
            proc.kill()
            time.sleep(self.plan.down)
            proc.start()
        elif kind == "redis":
            index = self.services.redis.kill_master()
            self.services.redis.wait_failover(index)
            f.note = f"kill -9 redis node{index} (master), Sentinel failover"
            self.services.redis.restart(index)
        elif kind == "mariadb":
            f.note = "kill -9 mariadb n1, rejoin"
            self.services.galera.kill("n1")
            time.sleep(self.plan.down)
            # a rejoin under load may need a full copy (SST): 58 s was seen, past the script's 60 s default
            os.environ.setdefault("MARIADB_START_TIMEOUT", "170")
            self.services.galera.start()
        elif kind == "kafka":
            f.note = f"Kafka stopped for {self.plan.kafka_down:.0f} s"
            self.services.kafka.stop()
            time.sleep(self.plan.kafka_down)
            self.services.kafka.start()
        else:
            raise ValueError(f"unknown fault {kind!r}")
        f.restored = time.time()
        self.say(f"fault {kind}: {f.note}; restored after {f.restored - f.start:.1f} s")
        self.done.append(f)
        return f

    def run(self, kinds: list[str], stop: threading.Event) -> None:
        try:
            if stop.wait(self.plan.warmup):
                return
            for kind in kinds:
                self.inject(kind)
                if stop.wait(self.plan.gap):
                    return
        except Exception as e:  # noqa: BLE001 - reported with the run, which goes on
            self.error = f"fault injection failed: {type(e).__name__}: {e}"
            self.say(self.error)


def worker_uids(plan: Plan, first_uid: int = 100_000) -> list[list[int]]:
    per = plan.clients // plan.workers
    return [list(range(first_uid + w * per, first_uid + (w + 1) * per)) for w in range(plan.workers)]


def start_drivers(cluster: Cluster, plan: Plan, workdir: Path, grace: float, groups: list[dict] = (),
                  first_uid: int = 100_000) -> list[tuple[subprocess.Popen, Path, Path]]:
    """The driver processes; without a stop signal they send for ``plan.duration + plan.max_extra``."""
    proxies = [cluster.tcp_url(n) if k % 2 == 0 else cluster.ws_url(n)
               for k, n in enumerate(n for n, p in cluster.procs.items() if p.role == "proxy")]
    out = []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    stop = workdir / "drivers.stop"
    stop.unlink(missing_ok=True)
    for w, uids in enumerate(worker_uids(plan, first_uid)):
        spec = dict(uids=uids, proxies=proxies, rate=plan.rate / plan.workers, stop=str(stop),
                    max_duration=plan.duration + plan.max_extra, grace=grace, seed=w + 1,
                    ready=str(workdir / f"driver{w}.ready"), progress=str(workdir / f"driver{w}.progress"),
                    groups=list(groups), group_share=plan.group_share)
        spec_path, out_path = workdir / f"driver{w}.json", workdir / f"driver{w}.out.json"
        for old in (Path(spec["ready"]), Path(spec["progress"]), out_path):  # a previous run's in the same dir
            old.unlink(missing_ok=True)
        spec_path.write_text(json.dumps(spec))
        log = open(workdir / f"driver{w}.log", "ab")
        proc = subprocess.Popen([sys.executable, str(DRIVER), str(spec_path), str(out_path)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        out.append((proc, Path(spec["ready"]), out_path))
    return out


def stop_drivers(drivers) -> None:
    for proc, _, _ in drivers:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def check(users: list[dict], faults: list[Fault], t_begin: float, t_end: float) -> dict:
    """Every inbox against the clients' own record of what was acknowledged (the oracle)."""
    inbox = {u["uid"]: u["inbox"] for u in users}
    pushed = {u["uid"]: u["pushed"] for u in users}
    acked = [(u["uid"], *a) for u in users for a in u["acked"]]  # (from, cmid, to, seq, first, ack, tries)
    where: dict[int, dict[str, list[int]]] = {}  # owner -> cmid -> seqs
    reused = skipped = duplicated = 0
    for owner, entries in inbox.items():
        seqs = [e[0] for e in entries]  # single and group entries share the owner's seqs
        distinct = set(seqs)
        reused += len(seqs) - len(distinct)
        skipped += (max(distinct) - len(distinct)) if distinct else 0
        by_cmid: dict[str, list[int]] = {}
        for seq, cmid, frm, group, _gseq in entries:
            if group is None:  # group entries: chaosgroups.check_groups
                by_cmid.setdefault(f"{frm}/{cmid}", []).append(seq)
        duplicated += sum(len(s) - 1 for s in by_cmid.values())
        where[owner] = by_cmid
    lost, wrong_seq, delivered, latencies = [], 0, 0, []
    acked_keys = set()
    for frm, cmid, to, seq, first, ack, _tries in acked:
        key = f"{frm}/{cmid}"
        acked_keys.add(key)
        mine, theirs = where.get(frm, {}).get(key), where.get(to, {}).get(key)
        if not mine or not theirs:
            lost.append([frm, cmid, to, seq, "sender" if not mine else "receiver"])
        elif seq not in mine:
            wrong_seq += 1
        got = pushed.get(to, {}).get(cmid)
        if got is not None:
            delivered += 1
            latencies.append(got[1] - first)
    stored_unacked = sum(1 for by in where.values() for key in by if key not in acked_keys) // 2
    waits = [(first, ack, ack - first) for _f, _c, _t, _s, first, ack, _n in acked]
    waits += [(first, ack, ack - first) for u in users for *_x, first, ack, _n in u["gacked"]]
    bounds = [f.start for f in faults] + [t_end]
    unavail = []
    for k, f in enumerate(faults):
        # a send's wait counts for the last fault begun before its ack (the one that held it up)
        inside = [w for _first, ack, w in waits if f.start <= ack < bounds[k + 1]]
        after = sum(1 for first, _ack, _w in waits if f.restored <= first < bounds[k + 1])
        unavail.append(dict(fault=f.name, note=f.note, down_s=round(f.restored - f.start, 2),
                            longest_send_s=round(max(inside, default=0.0), 2),
                            sends_over_1s=sum(1 for w in inside if w > 1.0), acked_after_restore=after))
    calm = [w for first, ack, w in waits if not faults or ack < faults[0].start]
    errors: dict[str, int] = {}
    for u in users:
        for k, n in u["errors"].items():
            errors[k] = errors.get(k, 0) + n
    return dict(
        clients=len(users), acknowledged=len(acked), delivered_by_push=delivered,
        in_receivers_inbox=len(acked) - sum(1 for x in lost if x[4] == "receiver"),
        lost=len(lost), lost_examples=lost[:10], duplicated=duplicated, seqs_reused=reused, seqs_skipped=skipped,
        acked_seq_mismatch=wrong_seq, stored_unacknowledged=stored_unacked,
        abandoned=sum(len(u["abandoned"]) for u in users),
        inbox_entries=sum(1 for e in inbox.values() for x in e if x[3] is None),
        push_resent=sum(u["push_dups"] for u in users), reconnects=sum(u["reconnects"] for u in users),
        send_seconds=round(t_end - t_begin, 1), acked_per_s=round(len(acked) / max(t_end - t_begin, 1e-9), 1),
        longest_send_s=round(max((w for *_x, w in waits), default=0.0), 2),
        longest_send_without_fault_s=round(max(calm, default=0.0), 2),
        send_to_delivery_p50_ms=round(percentile(latencies, 0.5) * 1000, 1),
        send_to_delivery_p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
        unavailability=unavail, client_errors=errors)


def wait_ready(drivers, timeout: float = 300.0) -> float:
    """Until every driver has connected its users; the latest start of sending (unix time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, _, out in drivers:
            if proc.poll() is not None:
                raise RuntimeError(f"a driver exited with {proc.returncode} before sending: see {out.parent}")
        if all(ready.exists() and ready.read_text().strip() for _, ready, _ in drivers):
            return max(float(ready.read_text()) for _, ready, _ in drivers)
        time.sleep(0.1)
    raise RuntimeError(f"the drivers did not connect their users within {timeout:.0f} s")


def wait_drivers(drivers, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    results = []
    for proc, _, out in drivers:
        proc.wait(max(1.0, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise RuntimeError(f"driver exited with {proc.returncode}: see {out.parent}/driver*.log")
        results.append(json.loads(out.read_text()))
    return results


def acknowledged(drivers) -> int:
    """The drivers' acknowledged sends as of their last progress files."""
    total = 0
    for _, ready, _ in drivers:
        try:
            total += int(ready.with_suffix(".progress").read_text())
        except (OSError, ValueError):
            pass
    return total


def stop_when_settled(drivers, faulting: threading.Thread, injector: FaultInjector, plan: Plan,
                      begin: float, stop_file: Path, say) -> None:
    """The drivers' stop signal: once the last fault is restored and ``plan.settle`` seconds of sending
    have followed it, not before ``plan.duration`` of sending (so every fault is followed by sends),
    and not before ``plan.target`` sends are acknowledged (the drivers stop by themselves at
    ``plan.duration + plan.max_extra`` whatever happens)."""
    while any(proc.poll() is None for proc, _, _ in drivers):
        if not faulting.is_alive():
            last = injector.done[-1].restored if injector.done else begin
            if time.time() >= max(begin + plan.duration, last + plan.settle) and acknowledged(drivers) >= plan.target:
                stop_file.write_text(f"{time.time()}\n")
                say(f"stop signal to the drivers after {time.time() - begin:.0f} s of sending")
                return
        time.sleep(0.5)


def run_chaos(cluster: Cluster, services: ChaosServices, plan: Plan, workdir: Path, say=print) -> dict:
    """Groups are made; drivers connect and send; faults follow the plan meanwhile; the drivers stop
    once the faults are over; then every inbox and timeline is checked. The drivers are stopped by pid
    whatever happens; the cluster and services are the caller's to stop."""
    drivers = []
    stop = threading.Event()
    injector = FaultInjector(cluster, services, plan, say)
    faulting = threading.Thread(target=injector.run, args=(plan.faults, stop), daemon=True)
    grace = 60.0
    groups = create_groups(cluster, group_layout(worker_uids(plan), plan.small_groups, plan.small_size,
                                                 plan.read_size))
    try:
        drivers = start_drivers(cluster, plan, workdir, grace, groups)
        begin = wait_ready(drivers)
        say(f"{plan.clients} clients connected ({len(groups)} groups); sending for at least "
            f"{plan.duration:.0f} s at {plan.rate:.0f}/s")
        faulting.start()
        stop_when_settled(drivers, faulting, injector, plan, begin, workdir / "drivers.stop", say)
        results = wait_drivers(drivers, plan.max_extra + grace + 400)
    finally:
        stop.set()
        if faulting.is_alive():  # its current fault ends with a restart: done before the caller stops all
            faulting.join()
        stop_drivers(drivers)
    end = max(r["end"] for r in results)
    users = [u for r in results for u in r["users"]]
    report = check(users, injector.done, begin, end)
    timelines = {g: t for r in results for g, t in r["timelines"].items()}
    report["groups"] = check_groups(users, timelines, groups)
    report["single_acknowledged"] = report["acknowledged"]
    report["acknowledged"] += report["groups"]["acknowledged"]
    report["acked_per_s"] = round(report["acknowledged"] / max(end - begin, 1e-9), 1)
    report["plan"] = {k: v for k, v in vars(plan).items()}
    report["faults_injected"] = [f.name for f in injector.done]
    report["fault_error"] = injector.error
    return report
