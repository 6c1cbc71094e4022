"""Groups in the chaos run (tests/chaosutil.py): which clients are in which group, making the groups
through the HTTP API, and the check of every member's inbox and every group's timeline against what
the clients had acknowledged.

Small groups (at most ``group_write_limit`` members) are in write mode: the consumers fan each message
out to every member's inbox while consumers are killed. A large group is in read mode: its messages
live in its timeline only (pulled with op 28). The oracle for both is the group's timeline read at the
end, run through the reference model (tests/groupmodel.py) for who must hold which gseq, and checked
itself against the clients' acknowledged sends.
"""

from __future__ import annotations

import json

from groupmodel import told
from polling import wait_until


def layout(workers: list[list[int]], small_per_worker: int, small_size: int, read_size: int) -> list[dict]:
    """Small groups among one driver's users (its first ones, so a driver knows all members); one read
    group of ``read_size`` members spread evenly over every driver. ``members[0]`` owns a group and
    ``reader`` (a member) reads its timeline at the end."""
    out = []
    for uids in workers:
        for k in range(min(small_per_worker, len(uids) // max(small_size, 1))):
            members = uids[k * small_size:(k + 1) * small_size]
            out.append(dict(members=members, mode="write", reader=members[-1]))
    everyone = [u for uids in workers for u in uids]
    if read_size:
        step = max(1, len(everyone) // read_size)
        members = everyone[::step][:read_size]
        out.append(dict(members=members, mode="read", reader=members[0]))
    return out


def create(cluster, groups: list[dict], via: str = "L1") -> list[dict]:
    """Each group made by its owner; its id and the mode the service put it in are filled in (a group
    whose mode is not the planned one fails the run: its check would mean something else)."""
    for g in groups:
        owner, rest = g["members"][0], g["members"][1:]
        body = json.dumps({"name": f"chaos-{g['mode']}", "members": rest}).encode()
        made = {}

        def try_create():  # the role may still be warming up its store connection
            status, reply = cluster.http(via, "POST", f"/im/groups?uid={owner}", body)
            made.update(reply or {})
            return status == 200

        wait_until(try_create, timeout=60, what=f"group of {owner} to be created (last reply {made})")
        g["group"] = made["data"]["group"]
        status, info = cluster.http(via, "GET", f"/im/groups?group={g['group']}")
        if status != 200 or info["data"]["mode"] != g["mode"]:
            raise RuntimeError(f"group {g['group']} is {info}, planned {g['mode']} mode")
    return groups


def check_groups(users: list[dict], timelines: dict, groups: list[dict]) -> dict:
    """Every acknowledged group message once in its group's timeline at the gseq its reply named; the
    timeline gapless; every member's inbox holding exactly the gseqs the model says (each once, in
    order, the sender's at the seq its reply named)."""
    inbox = {u["uid"]: u["inbox"] for u in users}
    pushed = {u["uid"]: u["pushed"] for u in users}
    r = dict.fromkeys(("acknowledged", "acknowledged_write", "acknowledged_read", "timeline_entries",
                       "timeline_lost", "timeline_duplicated", "gseqs_reused", "gseqs_skipped",
                       "acked_gseq_mismatch", "inbox_entries", "inbox_expected", "lost", "duplicated",
                       "unexpected", "out_of_order", "acked_seq_mismatch", "stored_unacknowledged",
                       "delivered_by_push", "push_expected", "unread_timelines", "delivered_write",
                       "told_write", "delivered_read", "told_read"), 0)
    r["lost_examples"] = []
    acked: dict[int, list] = {}  # group -> [(from, cmid, seq, gseq)]
    for u in users:
        for cmid, group, seq, gseq, *_t in u["gacked"]:
            acked.setdefault(group, []).append((u["uid"], cmid, seq, gseq))
    for g in groups:
        gid, mode = g["group"], g["mode"]
        mine = acked.get(gid, [])
        r["acknowledged"] += len(mine)
        r[f"acknowledged_{mode}"] += len(mine)
        timeline = timelines.get(str(gid))
        if timeline is None:
            r["unread_timelines"] += 1
            continue
        r["timeline_entries"] += len(timeline)
        gseqs = [m["gseq"] for m in timeline]
        distinct = set(gseqs)
        r["gseqs_reused"] += len(gseqs) - len(distinct)
        r["gseqs_skipped"] += (max(distinct) - len(distinct)) if distinct else 0
        at: dict[str, list[int]] = {}  # "from/cmid" -> gseqs in the timeline (clients' messages)
        for m in timeline:
            if m["type"] == "text":
                at.setdefault(f"{m['from']}/{m['cmid']}", []).append(m["gseq"])
        r["timeline_duplicated"] += sum(len(v) - 1 for v in at.values())
        keys = {f"{frm}/{cmid}" for frm, cmid, _s, _g in mine}
        r["stored_unacknowledged"] += sum(1 for k in at if k not in keys)
        for frm, cmid, _seq, gseq in mine:
            found = at.get(f"{frm}/{cmid}")
            if not found:
                r["timeline_lost"] += 1
                r["lost_examples"].append([gid, frm, cmid, "timeline"])
            elif gseq not in found:
                r["acked_gseq_mismatch"] += 1
        by_gseq = {m["gseq"]: m for m in timeline}
        sent_seq = {(frm, cmid): seq for frm, cmid, seq, _g in mine}
        expected: dict[int, list[int]] = {}
        for gseq, who, fanned in told(sorted(timeline, key=lambda m: m["gseq"]), mode):
            m = by_gseq[gseq]
            if m["type"] == "text" and m["cmid"] is not None:  # who of the others was told live
                others = set(who) - {m["from"]}
                got_it = sum(1 for w in others if m["cmid"] in pushed.get(w, {}))
                r["push_expected"] += len(others)
                r["delivered_by_push"] += got_it
                r[f"told_{mode}"] += len(others)  # (no test switches a group's mode mid-run)
                r[f"delivered_{mode}"] += got_it
            for w in who if fanned else ():
                expected.setdefault(w, []).append(gseq)
        for uid, entries in inbox.items():
            got = [(seq, gseq, cmid) for seq, cmid, _frm, group, gseq in entries if group == gid]
            want = expected.get(uid, [])
            r["inbox_entries"] += len(got)
            r["inbox_expected"] += len(want)
            gs = [gseq for _s, gseq, _c in got]
            if gs != sorted(gs):
                r["out_of_order"] += 1
            have = set(gs)
            r["duplicated"] += len(gs) - len(have)
            r["unexpected"] += len(have - set(want))
            for gseq in set(want) - have:
                r["lost"] += 1
                if len(r["lost_examples"]) < 10:
                    r["lost_examples"].append([gid, uid, gseq, "inbox"])
            for seq, _gseq, cmid in got:  # the sender's own entry: at the seq its 23 named
                want_seq = sent_seq.get((uid, cmid))
                if want_seq is not None and want_seq != seq:
                    r["acked_seq_mismatch"] += 1
    r["small_groups"] = sum(1 for g in groups if g["mode"] == "write")
    r["read_groups"] = sum(1 for g in groups if g["mode"] == "read")
    r["members"] = sorted({len(g["members"]) for g in groups})
    r["lost_examples"] = r["lost_examples"][:10]
    return r


# the counts that must be 0 in a correct run
FAIL_KEYS = ("timeline_lost", "timeline_duplicated", "gseqs_reused", "gseqs_skipped", "acked_gseq_mismatch",
             "lost", "duplicated", "unexpected", "out_of_order", "acked_seq_mismatch", "unread_timelines")
