"""The chaos run's checker (chaosutil.check) on hand-made inboxes: each kind of damage is counted."""

from __future__ import annotations

import copy

import pytest

from chaosutil import Fault, check


def user(uid, acked=(), inbox=(), pushed=None):
    return dict(uid=uid, acked=[list(a) for a in acked], abandoned=[], pushed=pushed or {}, push_dups=0,
                errors={}, reconnects=0, inbox=[list(e) for e in inbox])


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
    (lambda u: u[0]["inbox"].append([4, "1-1", 1]), {"duplicated": 1}),
    (lambda u: u[1]["inbox"].append([3, "x", 9]), {"seqs_reused": 1}),
    (lambda u: u[0]["inbox"].__setitem__(2, [5, "2-0", 2]), {"seqs_skipped": 2}),
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
