"""The reference model of a group's deliveries, derived from its timeline (tests of IM groups)."""

from __future__ import annotations


def told(timeline: list, creation_mode: str) -> list:
    """Per message of the timeline (gseq order): (gseq, the users told of it, whether it was fanned
    out to their inboxes). A message is fanned out in the mode in force when it was stored (a ``mode``
    message changes it for the messages after it, and is itself always fanned out) to the members of
    that moment; a ``member`` message also to the users it adds, and in write mode to those it removes."""
    mode, members, out = creation_mode, set(), []
    for m in timeline:
        c = m["content"]
        if m["type"] == "member":
            before = set(members)
            members = (members | set(c["add"])) - set(c["remove"])
            who = before | set(c["add"]) | (set(c["remove"]) if mode == "write" else set())
            fanned = mode == "write"
        elif m["type"] == "mode":
            who, fanned = set(members), True
            mode = c["mode"]
        else:
            who, fanned = set(members), mode == "write"
        out.append((m["gseq"], who, fanned))
    return out


def expected_inboxes(timeline: list, creation_mode: str) -> dict:
    """uid -> the gseqs its inbox must hold, in order."""
    out: dict = {}
    for gseq, who, fanned in told(timeline, creation_mode):
        for u in who if fanned else ():
            out.setdefault(u, []).append(gseq)
    return out
