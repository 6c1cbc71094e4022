"""A short `make chaos` (tests/chaosutil.py): 50 clients in one process send sequence-numbered messages,
single chats and group messages (two write-mode groups fanned out by the consumers, one read-mode group),
through the whole cluster (Redis behind Sentinel, Kafka, the Galera pair, 2 proxies, 2 logic, 2 im, 2
consumers, push) while a proxy, a logic, a consumer, the Redis master and a MariaDB node are killed -9
in turn and brought back. Sending stops once the last fault is over; every inbox and group timeline is
then read and checked against the clients' own record of what was acknowledged."""

from __future__ import annotations

import pytest

pytest.importorskip("asyncmy")

from chaosgroups import FAIL_KEYS as GROUP_FAIL_KEYS  # noqa: E402
from chaosutil import ChaosServices, Plan, make_cluster, run_chaos  # noqa: E402

pytestmark = pytest.mark.cluster


def test_faults_in_turn_lose_duplicate_reuse_and_skip_nothing(tmp_path, kafka_process, galera_process):
    services = ChaosServices(tmp_path, kafka=kafka_process, galera=galera_process).start()
    cluster = None
    try:
        cluster = make_cluster(tmp_path, services, kafka_timeout=3.0).start()
        # sending lasts until the faults are over and 1,500 sends are acknowledged, however loaded the machine
        plan = Plan(clients=50, workers=1, rate=60.0, duration=40.0, settle=10.0, target=1500, warmup=4.0, gap=4.0,
                    down=2.0, faults=["proxy", "logic", "consumer", "redis", "mariadb"],
                    small_groups=2, small_size=5, read_size=25, group_share=0.3)
        report = run_chaos(cluster, services, plan, tmp_path, say=lambda m: None)
    finally:
        if cluster is not None:
            cluster.stop()
        services.stop()
    assert report["fault_error"] is None
    assert report["faults_injected"] == plan.faults
    assert report["acknowledged"] >= 1500, report
    # the inboxes against the clients' count: every acknowledged message in both of its inboxes, at the
    # seq its reply named, once; every inbox 1..max; nothing stored that the clients did not send
    bad = {k: report[k] for k in ("lost", "duplicated", "seqs_reused", "seqs_skipped", "acked_seq_mismatch")}
    assert bad == dict.fromkeys(bad, 0), (bad, report["lost_examples"])
    assert report["inbox_entries"] == 2 * (report["single_acknowledged"] + report["stored_unacknowledged"])
    assert report["abandoned"] == 0 and report["stored_unacknowledged"] == 0
    # groups: each acknowledged message once in its timeline at its gseq, the timelines gapless, every
    # member's inbox exactly what the model of the timeline says (write mode), nothing in read mode
    groups = report["groups"]
    assert groups["acknowledged_write"] > 0 and groups["acknowledged_read"] > 0, groups
    gbad = {k: groups[k] for k in GROUP_FAIL_KEYS}
    assert gbad == dict.fromkeys(gbad, 0), (gbad, groups["lost_examples"])
    assert groups["inbox_entries"] == groups["inbox_expected"] > groups["acknowledged_write"], groups
    assert groups["stored_unacknowledged"] == 0, groups
    # live pushes are best effort (a member between connections misses them, and syncs), but most
    # members are online most of the time: read mode goes through the group's room on the proxies
    assert groups["delivered_read"] * 2 >= groups["told_read"] > 0, groups
    assert groups["delivered_write"] * 2 >= groups["told_write"] > 0, groups
    # sending went on after every fault (the stop signal comes only once the last one is over)
    assert all(u["acked_after_restore"] > 0 for u in report["unavailability"]), report["unavailability"]
