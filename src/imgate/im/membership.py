"""The membership rules of groups, once for every store: pure decisions, no SQL.

A store reads the group's row and members inside its transaction, asks :func:`plan_create` or
:func:`plan_change` what the request does (or which :class:`~imgate.im.protocol.ImError` refuses it),
then writes what the plan says in its own SQL. The rules (docs/im.md "Groups"): at most
``group_max_members`` members; only the owner or an admin changes members (``actor`` None: the
backend, acting as the owner); the owner cannot be removed; admins must be members after the change;
a group crossing ``group_write_limit`` changes mode, and goes back ``hysteresis`` members below it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from imgate.im.protocol import E_CONFLICT, E_FORBIDDEN, ImError
from imgate.im.store import INTERNAL_CMID_PREFIX, GroupLimits, NewMessage, digest_of

__all__ = ["NewGroup", "MembershipChange", "plan_create", "plan_change", "group_conv", "system_message",
           "switch_mark"]


def group_conv(group: int) -> str:
    return f"g:{group}"


def _cap(count: int, limits: GroupLimits) -> None:
    if count > limits.max_members:
        raise ImError(E_CONFLICT, f"{count} members is beyond group_max_members ({limits.max_members})")


@dataclass(frozen=True)
class NewGroup:
    members: list       # sorted, the owner included
    mode: str

    def role(self, uid: int, owner: int) -> str:
        return "owner" if uid == owner else "member"


def plan_create(owner: int, members: list, limits: GroupLimits) -> NewGroup:
    everyone = sorted(set(members) | {owner})
    _cap(len(everyone), limits)
    return NewGroup(everyone, limits.mode("write", len(everyone)))


def create_note(owner: int, name: str, group: NewGroup) -> dict:
    """The body of the "member" message that opens a group's timeline."""
    return {"add": group.members, "remove": [], "by": owner, "name": name, "mode": group.mode}


@dataclass(frozen=True)
class MembershipChange:
    by: int             # who the announcements name (the owner when the backend acts)
    added: list         # sorted, not members before
    removed: list       # sorted, members before
    admins: list        # members made admins (an owner or admin among them stays what it is)
    count: int          # members after the change
    old_mode: str
    mode: str           # after the change
    old: frozenset      # members before

    @property
    def switched(self) -> bool:
        return self.mode != self.old_mode

    @property
    def members(self) -> list:
        """Members after the change, sorted."""
        return sorted((self.old | set(self.added)) - set(self.removed))

    def member_note(self) -> tuple | None:
        """(body, who gets it) of the "member" message, None when nobody joined or left. The removed
        learn of their removal; the added see it as their first message."""
        if not (self.added or self.removed):
            return None
        return {"add": self.added, "remove": self.removed, "by": self.by}, sorted(self.old | set(self.added))

    def mode_note(self) -> dict | None:
        """The body of the "mode" message announcing a switch (fanned out in write terms either way:
        every member learns of it in its inbox), None without a switch."""
        return {"mode": self.mode, "members": self.count} if self.switched else None


def plan_change(group: int, owner: int, count: int, mode: str, actor: int | None, actor_role: str | None,
                old, add: list, remove: list, admins: list, limits: GroupLimits) -> MembershipChange:
    """What ``add``/``remove``/``admins`` do to a group of ``count`` members ``old`` in ``mode``;
    ``actor_role`` is the actor's role now (None: not a member). Raises the request's refusal."""
    if actor is not None and actor_role not in ("owner", "admin"):
        raise ImError(E_FORBIDDEN, f"user {actor} is not the owner or an admin of group {group}")
    if owner in remove:
        raise ImError(E_CONFLICT, f"user {owner} is the owner of group {group} and cannot be removed")
    old = frozenset(old)
    added = sorted(set(add) - old)
    removed = sorted((set(remove) & old) - set(add))  # named in both: added wins
    new_count = count + len(added) - len(removed)
    _cap(new_count, limits)
    not_members = sorted(set(admins) - (old | set(added)) | (set(admins) & set(removed)))
    if not_members:
        raise ImError(E_CONFLICT, f"admins must be members of group {group}: {not_members} are not")
    return MembershipChange(owner if actor is None else actor, added, removed, sorted(set(admins)), new_count,
                            mode, limits.mode(mode, new_count), old)


def system_message(group: int, sender: int, type_: str, body: dict, gseq_next: int, token: str = "") -> NewMessage:
    """A message the service writes in a group (membership, mode); its cmid names its gseq, or the
    request's ``token`` (a store that must find it again when a commit's answer is lost), so that it
    is unique and never a client's."""
    content = json.dumps(body, separators=(",", ":"), sort_keys=True)
    cmid = f"{INTERNAL_CMID_PREFIX}{type_}:{group}:{f't{token}' if token else gseq_next}"
    return NewMessage(sender, cmid, group_conv(group), None, group, type_, content,
                      digest_of(None, group, type_, content), (sender,))


def switch_mark(mode: str, gseq: int) -> tuple:
    """(column of ``groups``, value) a switch to ``mode`` announced at ``gseq`` sets: into read mode,
    SYNC's cursors start there (what came before is in the inboxes); back in write mode, what came
    before is in the timeline only, and SYNC lists it until pulled."""
    return ("read_from", gseq) if mode == "read" else ("read_until", gseq - 1)
