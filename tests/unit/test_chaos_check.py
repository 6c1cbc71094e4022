"""The chaos run's checkers (chaosutil.check, chaosgroups.check_groups) on hand-made inboxes and group
timelines: each kind of damage is counted."""

from __future__ import annotations

import copy

import pytest

from chaosgroups import FAIL_KEYS, check_groups
from chaosutil import Fault, check


def user(uid, acked=(), inbox=(), pushed=None, gacked=()):
    """Inbox entries are (seq, cmid, from), or (seq, cmid, from, group, gseq) for a group's."""
    return dict(uid=uid, acked=[list(a) for a in acked], gacked=[list(a) for a in gacked], abandoned=[],
                pushed=pushed or {}, push_dups=0, errors={}, reconnects=0,
                inbox=[list(e) + [None, None] * (len(e) == 3) for e in inbox])


# user 1 sent two messages to user 2 (acked at seq 1 and 2 of its inbox); 2 sent one to 1 (its seq 1)
CLEAN = [
    user(1, acked=[("1-0", 2, 1, 10.0, 10.1, 1), ("1-1", 2, 2, 11.0, 14.0, 2)],
         inbox=[(1, "1-0", 1), (2, "1-1", 1), (3, "2-0", 2)], pushed={"2-0": [3, 12.3]}),
    user(2, acked=[("2-0", 1, 3, 12.0, 12.2, 1)],
         inbox=[(1, "1-0", 1), (2, "1-1", 1), (3, "2-0", 2)], pushed={"1-0": [1, 10.2]}),
]
DAMAGE = ("lost", "duplicated", "seqs_reused", "seqs_skipped", "acked_seq_mismatch")


def damaged(change):
    users = copy.deepcopy(CLEAN)
    change(users)
    return check(users, [], 0.0, 20.0)


def test_clean_run_counts_nothing_bad():
    r = check(copy.deepcopy(CLEAN), [], 0.0, 20.0)
    assert {k: r[k] for k in DAMAGE} == dict.fromkeys(DAMAGE, 0)
    assert (r["acknowledged"], r["delivered_by_push"], r["inbox_entries"], r["stored_unacknowledged"]) == (3, 2, 6, 0)
    assert r["longest_send_s"] == 3.0


@pytest.mark.parametrize("change, expected", [
    (lambda u: u[1]["inbox"].pop(1), {"lost": 1, "seqs_skipped": 1}),  # the receiver's entry gone: a hole
    (lambda u: u[0]["inbox"].append([4, "1-1", 1, None, None]), {"duplicated": 1}),
    (lambda u: u[1]["inbox"].append([3, "x", 9, None, None]), {"seqs_reused": 1}),
    (lambda u: u[0]["inbox"].__setitem__(2, [5, "2-0", 2, None, None]), {"seqs_skipped": 2}),
    (lambda u: u[0]["acked"][0].__setitem__(2, 2), {"acked_seq_mismatch": 1}),
])
def test_each_damage_is_counted(change, expected):
    r = damaged(change)
    assert {k: r[k] for k in DAMAGE} == dict(dict.fromkeys(DAMAGE, 0), **expected)


def test_a_lost_message_names_whose_inbox_lacks_it():
    assert damaged(lambda u: u[1]["inbox"].pop(1))["lost_examples"] == [[1, "1-1", 2, 2, "receiver"]]
    assert damaged(lambda u: u[0]["inbox"].pop(0))["lost_examples"] == [[1, "1-0", 2, 1, "sender"]]


def test_waits_count_for_the_last_fault_begun_before_the_ack():
    faults = [Fault("proxy", start=9.0, restored=10.0), Fault("redis", start=13.0, restored=13.5)]
    r = check(copy.deepcopy(CLEAN), faults, 0.0, 20.0)
    assert [(u["fault"], u["longest_send_s"], u["sends_over_1s"]) for u in r["unavailability"]] == [
        ("proxy", 0.2, 0), ("redis", 3.0, 1)]


# write-mode group 7 of users 11 (owner), 12, 13: its opening message, then 12's message (gseq 2) and 11's
# (gseq 3), each fanned out to all three; read-mode group 8 of 11 and 13: 13's message is in its timeline only
def text(gseq, frm, cmid):
    return dict(gseq=gseq, type="text", content={"i": 0}, cmid=cmid, **{"from": frm})


def opening(group, members):
    return dict(gseq=1, type="member", content={"add": members, "remove": [], "by": members[0]},
                cmid=f"~member:{group}:1", **{"from": members[0]})


GROUPS = [dict(group=7, mode="write", members=[11, 12, 13]), dict(group=8, mode="read", members=[11, 13])]
TIMELINES = {"7": [opening(7, [11, 12, 13]), text(2, 12, "12-5"), text(3, 11, "11-9")],
             "8": [opening(8, [11, 13]), text(2, 13, "13-1")]}


def group_inbox(seqs_from=1):
    return [(seqs_from + k, c, f, 7, g) for k, (c, f, g) in enumerate([("~member:7:1", 11, 1), ("12-5", 12, 2),
                                                                        ("11-9", 11, 3)])]


GROUP_USERS = [
    user(11, gacked=[("11-9", 7, 3, 3, 20.0, 20.1, 1)], inbox=group_inbox(), pushed={"12-5": [0, 1.0], "13-1": [0, 1.0]}),
    user(12, gacked=[("12-5", 7, 2, 2, 19.0, 19.2, 1)], inbox=group_inbox(), pushed={"11-9": [0, 1.0]}),
    user(13, gacked=[("13-1", 8, 0, 2, 21.0, 21.1, 1)], inbox=group_inbox()),
]


def group_check(change=lambda users, timelines: None):
    users, timelines = copy.deepcopy(GROUP_USERS), copy.deepcopy(TIMELINES)
    change(users, timelines)
    return check_groups(users, timelines, copy.deepcopy(GROUPS))


def test_clean_groups_count_nothing_bad():
    r = group_check()
    assert {k: r[k] for k in FAIL_KEYS} == dict.fromkeys(FAIL_KEYS, 0)
    assert (r["acknowledged"], r["acknowledged_write"], r["acknowledged_read"]) == (3, 2, 1)
    assert (r["inbox_entries"], r["inbox_expected"], r["timeline_entries"]) == (9, 9, 5)
    # told live: 12-5 to 11 and 13 (11 got it), 11-9 to 12 and 13 (12 did), 13-1 to 11 (it did)
    assert (r["delivered_by_push"], r["push_expected"], r["stored_unacknowledged"]) == (3, 5, 0)
    assert (r["delivered_write"], r["told_write"], r["delivered_read"], r["told_read"]) == (2, 4, 1, 1)


@pytest.mark.parametrize("change, expected", [
    (lambda u, t: u[2]["inbox"].pop(2), {"lost": 1}),  # 13 lacks 11-9
    (lambda u, t: u[1]["inbox"].append([4, "11-9", 11, 7, 3]), {"duplicated": 1}),
    (lambda u, t: u[0]["inbox"].append([4, "13-1", 13, 8, 2]), {"unexpected": 1}),  # read mode: no entry
    (lambda u, t: u[0]["inbox"].reverse(), {"out_of_order": 1}),
    (lambda u, t: u[0]["gacked"][0].__setitem__(2, 2), {"acked_seq_mismatch": 1}),
    (lambda u, t: u[0]["gacked"][0].__setitem__(3, 2), {"acked_gseq_mismatch": 1}),
    (lambda u, t: t["8"].pop(1), {"timeline_lost": 1}),
    (lambda u, t: t["8"].append(text(3, 13, "13-1")), {"timeline_duplicated": 1}),
    (lambda u, t: t["8"].append(text(2, 11, "11-50")), {"gseqs_reused": 1}),
    (lambda u, t: t["8"][1].__setitem__("gseq", 3), {"gseqs_skipped": 1, "acked_gseq_mismatch": 1}),
    (lambda u, t: t.pop("7"), {"unread_timelines": 1}),
])
def test_each_group_damage_is_counted(change, expected):
    r = group_check(change)
    assert {k: r[k] for k in FAIL_KEYS} == dict(dict.fromkeys(FAIL_KEYS, 0), **expected)


def test_a_member_removed_is_owed_nothing_after_its_removal():
    """The timeline's membership messages decide who is owed what: 13 removed at gseq 3 gets that
    notice (write mode tells the removed) and nothing after it."""
    def remove_13(users, timelines):
        t = timelines["7"]
        t.insert(2, dict(gseq=3, type="member", content={"add": [], "remove": [13], "by": 11}, cmid="~member:7:3",
                         **{"from": 11}))
        t[3]["gseq"] = 4
        users[0]["gacked"][0][2:4] = [4, 4]  # 11's own entry is now its seq 4, gseq 4
        for u in users:
            u["inbox"] = [e for e in u["inbox"] if e[4] != 3]
            u["inbox"].append([3, "~member:7:3", 11, 7, 3])
            if u["uid"] != 13:
                u["inbox"].append([4, "11-9", 11, 7, 4])

    r = group_check(remove_13)
    assert {k: r[k] for k in FAIL_KEYS} == dict.fromkeys(FAIL_KEYS, 0)
    assert r["inbox_expected"] == 3 + 3 + 3 + 2  # gseq 1, 2 and the removal to all three; gseq 4 to two
