"""`make chaos`: the whole cluster on loopback under faults, every message counted (tests/chaosutil.py).

Starts Redis (master, replica, 3 Sentinels), Kafka and the MariaDB Galera pair with garbd, then the
roles (2 proxies, 2 logic with the IM service on MariaDB, push; im and consumer roles when the cluster
helper runs them), then CLIENTS clients in WORKERS processes that send sequence-numbered messages at RATE per second:
single chats, and group messages from the members of small write-mode groups (fanned out by the
consumers) and of one read-mode group. Meanwhile it kills -9, one after another and each brought back:
a proxy, a logic, (an im, a consumer,) push, the Redis master (Sentinel fails over), one MariaDB node,
and stops Kafka for 20 s, the faults spread over DURATION seconds. Sending goes on until SETTLE seconds
after the last fault was undone and TARGET sends are acknowledged (the drivers' stop signal), at most
MAX_EXTRA seconds past DURATION. At the end every client reads its inbox and one
member of each group the group's timeline, and the tables say what was acknowledged, delivered, lost,
duplicated, which seqs (and gseqs) were reused or skipped, and how long sends waited around each fault.
Exit status 1 when anything was lost, duplicated, reused or skipped, or a fault could not be injected
and undone.

With the defaults (1,000 clients offering 240 messages/s, faults over 600 s, 100,000 acknowledged):
30-40 minutes on the 2-core machine while other work kept its load average near 20 (50-70/s went
through), bounded by 600 + 2,400 s of sending.

    PYTHONPATH=src .venv/bin/python benchmarks/chaos.py --clients 1000 --rate 240 --duration 600 --target 100000
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from chaosgroups import FAIL_KEYS as GROUP_FAIL_KEYS  # noqa: E402
from chaosutil import ChaosServices, Plan, fault_kinds, make_cluster, run_chaos  # noqa: E402

FAIL_KEYS = ("lost", "duplicated", "seqs_reused", "seqs_skipped", "acked_seq_mismatch")


def table(report: dict) -> str:
    g = report["groups"]
    rows = [("clients", report["clients"]), ("sending time (s)", report["send_seconds"]),
            ("acknowledged (single + group)", report["acknowledged"]),
            ("acknowledged per s", report["acked_per_s"]),
            ("single chat: acknowledged", report["single_acknowledged"]),
            ("delivered live (op 24)", report["delivered_by_push"]),
            ("in the receiver's inbox", report["in_receivers_inbox"]),
            ("lost (acked, missing from an inbox)", report["lost"]),
            ("duplicated (one cmid stored twice)", report["duplicated"]),
            ("seqs reused", report["seqs_reused"]), ("seqs skipped", report["seqs_skipped"]),
            ("acked seq != stored seq", report["acked_seq_mismatch"]),
            ("stored, never acknowledged", report["stored_unacknowledged"]),
            ("abandoned sends", report["abandoned"]), ("reconnects", report["reconnects"]),
            ("send-to-delivery p50 / p99 (ms)",
             f"{report['send_to_delivery_p50_ms']} / {report['send_to_delivery_p99_ms']}"),
            ("longest send without a fault (s)", report["longest_send_without_fault_s"]),
            ("longest send of the run (s)", report["longest_send_s"]),
            ("groups: write mode / read mode", f"{g['small_groups']} / {g['read_groups']} (members {g['members']})"),
            ("group: acknowledged (write / read)",
             f"{g['acknowledged']} ({g['acknowledged_write']} / {g['acknowledged_read']})"),
            ("group: timeline entries", g["timeline_entries"]),
            ("group: lost from a timeline", g["timeline_lost"]),
            ("group: duplicated in a timeline", g["timeline_duplicated"]),
            ("group: gseqs reused / skipped", f"{g['gseqs_reused']} / {g['gseqs_skipped']}"),
            ("group: acked gseq != stored gseq", g["acked_gseq_mismatch"]),
            ("group: member inbox entries (expected)", f"{g['inbox_entries']} ({g['inbox_expected']})"),
            ("group: lost from a member's inbox", g["lost"]),
            ("group: duplicated in a member's inbox", g["duplicated"]),
            ("group: in an inbox, not expected", g["unexpected"]),
            ("group: inboxes out of gseq order", g["out_of_order"]),
            ("group: sender's seq != stored seq", g["acked_seq_mismatch"]),
            ("group: stored, never acknowledged", g["stored_unacknowledged"]),
            ("group: live deliveries (of members told)", f"{g['delivered_by_push']} ({g['push_expected']})")]
    lines = [f"  {k:<38} {v}" for k, v in rows]
    lines.append(f"  {'fault':<10} {'what':<52} {'down s':>7} {'longest send s':>15} {'sends > 1 s':>12}")
    for u in report["unavailability"]:
        lines.append(f"  {u['fault']:<10} {u['note']:<52} {u['down_s']:>7} {u['longest_send_s']:>15}"
                     f" {u['sends_over_1s']:>12}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4, help="client processes")
    ap.add_argument("--rate", type=float, default=240.0, help="messages per second, all clients together")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of sending at least")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds of sending after the last fault is undone")
    ap.add_argument("--target", type=int, default=100_000,
                    help="send until this many are acknowledged too (bounded by --duration + --max-extra)")
    ap.add_argument("--max-extra", type=float, default=2400.0, help="seconds of sending past --duration at most")
    ap.add_argument("--small-groups", type=int, default=8, help="write-mode groups per client process")
    ap.add_argument("--small-size", type=int, default=6, help="members of a write-mode group")
    ap.add_argument("--read-size", type=int, default=40,
                    help="members of the read-mode group (0: none; over group_write_limit, 20 here)")
    ap.add_argument("--group-share", type=float, default=0.4, help="share of a group member's sends to a group")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before the first fault")
    ap.add_argument("--faults", default="", help="comma-separated subset (default: every kind the cluster has)")
    ap.add_argument("--im-roles", type=int, default=2, help="im roles, when the cluster helper can start them")
    ap.add_argument("--consumers", type=int, default=2, help="consumer roles, likewise")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "chaos-latest.json"))
    ap.add_argument("--workdir", default="", help="keep configs and logs here (default: a temporary dir)")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a TERM still stops every process (finally)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imgate-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    say = lambda m: print(f"[{time.monotonic() - t0:6.1f}s] {m}", flush=True)  # noqa: E731
    services = ChaosServices(workdir)
    cluster = None
    try:
        say(f"starting Redis + Sentinel, Kafka, MariaDB Galera under {workdir}")
        services.start()
        cluster = make_cluster(workdir, services, im_roles=args.im_roles, consumers=args.consumers,
                               kafka_timeout=5.0)
        say("starting the roles: " + ", ".join(f"{n} ({p.role})" for n, p in cluster.procs.items()))
        cluster.start()
        kinds = [k for k in args.faults.split(",") if k] or fault_kinds(cluster)
        # faults spread over the sending time, the last one done well before the end
        budget = args.duration - args.warmup - 60.0 - (20.0 if "kafka" in kinds else 0.0)
        plan = Plan(clients=args.clients, workers=args.workers, rate=args.rate, duration=args.duration,
                    settle=args.settle, target=args.target, max_extra=args.max_extra, warmup=args.warmup, gap=max(5.0, budget / len(kinds) - 4.0), faults=kinds,
                    small_groups=args.small_groups, small_size=args.small_size, read_size=args.read_size,
                    group_share=args.group_share)
        report = run_chaos(cluster, services, plan, workdir, say)
    finally:
        say("stopping every process")
        if cluster is not None:
            cluster.stop()
        services.stop()
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    report["workdir"] = str(workdir)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"  client errors: {report['client_errors']}")
    if report.get("fault_error"):
        print(f"  {report['fault_error']}")
    print(f"  whole run {report['wall_seconds']} s; report in {args.json}")
    bad = {k: report[k] for k in FAIL_KEYS if report[k]}
    bad.update({f"group {k}": report["groups"][k] for k in GROUP_FAIL_KEYS if report["groups"][k]})
    if bad:
        print(f"FAILED: {bad}; examples of lost: {report['lost_examples']} {report['groups']['lost_examples']}")
    return 1 if bad or report.get("fault_error") else 0


if __name__ == "__main__":
    sys.exit(main())
