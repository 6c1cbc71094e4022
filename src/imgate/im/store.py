"""The message store contract: what imService needs from storage, whatever the database.

The embedded node uses :class:`imgate.im.sqlite.SqliteStore`; another database implements the same
class and runs the same contract tests (tests/unit/test_im_store.py, through its ``opened`` factory). Every write is one
transaction that stores the message, gives each inbox owner the next seq of *that owner's* inbox
(gapless, never reused: UNIQUE(owner, seq)) and updates the conversation list; an awaited write has
committed (durable under the store's fsync policy) when it returns.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from imgate.im.protocol import E_UNAVAILABLE, ImError

__all__ = ["MessageStore", "NewMessage", "Stored", "SyncPage", "ReadResult", "GroupLimits", "msg_json",
           "digest_of", "INTERNAL_CMID_PREFIX"]

# cmids the service makes itself (read notices) start with this; clients may not use it
INTERNAL_CMID_PREFIX = "~"


@dataclass(frozen=True)
class NewMessage:
    """A message to store. ``owners`` are the inboxes that get an entry, the sender's first."""

    sender: int
    cmid: str
    conv: str
    to: int | None          # the receiver of a single chat
    group: int | None       # the group of a group message (not sent yet: see docs/im.md)
    type: str
    content: str            # JSON text
    digest: bytes           # identifies the request: a resend of the cmid must carry the same one
    owners: tuple


@dataclass
class Stored:
    """The outcome of a send. ``duplicate``: the cmid was stored before; nothing new was written and
    ``seqs`` holds only the sender's original seq. ``entries`` maps owner -> the msg JSON of that
    owner's entry (what op 24 carries), empty for a duplicate."""

    msg_id: int
    ts: int
    seqs: dict
    duplicate: bool = False
    entries: dict = field(default_factory=dict)
    gseq: int | None = None     # a group message's place in the group's timeline
    job: int | None = None      # a write-mode group message: its fan-out job (fan_out does it)
    group: int | None = None
    msg: str | None = None      # a read-mode group message: its msg JSON (seq 0), pushed to online members
    earlier: list = field(default_factory=list)  # write mode: the sender's entries of older jobs, written first
    before: list = field(default_factory=list)  # fan_out: the group's older jobs it did first (Stored each)


@dataclass
class SyncPage:
    msgs: list              # msg JSON texts, seq ascending
    has_more: bool
    max_seq: int
    min_seq: int            # the oldest retained seq; entries below it are gone

    def truncated(self, after: int) -> bool:
        """True when entries after ``after`` were removed by retention (the client missed them)."""
        return after + 1 < self.min_seq


@dataclass
class ReadResult:
    read_seq: int           # the owner's read position in the conversation after the call
    notice: Stored | None   # the "read" message told to the peer, None if the position did not move
    peer: int = 0


@dataclass(frozen=True)
class GroupLimits:
    """The group rules the service configures: the member cap; a group with more than ``write_limit``
    members is in read mode, and goes back to write mode at ``write_limit - hysteresis`` members."""

    max_members: int = 100_000
    write_limit: int = 200
    hysteresis: int = 20

    def mode(self, current: str, members: int) -> str:
        if current == "write" and members > self.write_limit:
            return "read"
        if current == "read" and members <= self.write_limit - self.hysteresis:
            return "write"
        return current


def digest_of(to, group, type_: str, content: str) -> bytes:
    """The identity of a send request's body (what a resend must repeat)."""
    return hashlib.sha256(json.dumps([to, group, type_, content]).encode()).digest()[:16]


def msg_json(seq: int, msg_id: int, conv: str, sender: int, to, group, type_: str, content, ts: int,
             cmid: str, gseq=None) -> str:
    """One msg (docs/im.md "Wire protocol") as JSON text; ``content`` is already JSON text (None: dropped by retention)."""
    target = f'"to":{to}' if group is None else f'"group":{group},"gseq":{gseq}'
    return (f'{{"seq":{seq},"msg_id":"{msg_id}","conv":{json.dumps(conv)},"from":{sender},{target},'
            f'"type":{json.dumps(type_)},"content":{content if content is not None else "null"},'
            f'"ts":{ts},"cmid":{json.dumps(cmid)}}}')


class MessageStore(ABC):
    """Storage of messages, inboxes and conversations. Methods raise ``ImError`` for a request the
    store refuses (unknown receiver, cmid conflict, out of range) and ``ImError(E_UNAVAILABLE)``
    when it cannot write (nothing was stored then)."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def open_inbox(self, uid: int) -> int:
        """Make sure ``uid`` has an inbox; its newest seq (0 when empty)."""

    @abstractmethod
    async def has_inbox(self, uid: int) -> bool: ...

    @abstractmethod
    async def max_seq(self, uid: int) -> int: ...

    @abstractmethod
    async def send(self, msg: NewMessage) -> Stored: ...

    @abstractmethod
    async def sync(self, uid: int, after: int, limit: int) -> SyncPage:
        """Entries with seq > ``after``, at most ``limit``; ``after`` beyond the inbox is E_OUT_OF_RANGE."""

    @abstractmethod
    async def mark_read(self, uid: int, conv: str, seq: int) -> ReadResult:
        """Move ``uid``'s read position in ``conv`` up to ``seq`` (never back); when it moves, store a
        msg of type "read" in both inboxes so that the peer and the reader's other devices learn."""

    @abstractmethod
    async def conversations(self, uid: int, limit: int) -> str:
        """JSON text: a list of ``{"conv", "peer", "unread", "read_seq", "last": msg}``, newest first."""

    # ------------------------------------------------------------------ groups (docs/im.md "Groups")
    # Not abstract, so that a store without groups yet (the cluster's MariaDB store) still serves single
    # chat: its group calls are refused with E_UNAVAILABLE, and it reports no fan-out job and no
    # read-mode group. SqliteStore implements them all (imgate.im.sqlite_groups) and says so:
    supports_groups = False  # True: send() takes group messages and the calls below work
    # True: other processes write to the same store (their groups are news to this one's caches)
    shared = False
    # Every group message gets the group's next gseq (gapless) in the transaction that stores it. In
    # write mode that transaction also writes the sender's own entry (``seqs``/``entries``; the sender's
    # seq is kept with the message, so a resend of the cmid answers it) and stores a fan-out job (the
    # outbox) naming the other members; ``fan_out`` later writes their entries and deletes the job in
    # one transaction, so a job is done exactly once whatever crashes. To keep each inbox in gseq
    # order, the same transaction first writes the sender's entries of the group's older jobs not
    # done yet and takes the sender off them (their Stored in ``earlier``, delivered by the service).
    # A job may so end up with no owner left: fan_out then only deletes it. In read mode ``seqs`` is
    # {sender: 0} (no inbox entry).
    # Membership changes are messages of type "member" (and a mode switch one of type "mode"), stored
    # the same way, their fan-out naming every member (the actor too).

    async def create_group(self, owner: int, name: str, members: list, limits: GroupLimits) -> tuple:
        """(group id, Stored of its "member" message). Members get an inbox if they had none."""
        raise ImError(E_UNAVAILABLE, f"groups are not implemented by {type(self).__name__} yet")

    async def change_members(self, group: int, actor: int | None, add: list, remove: list, admins: list,
                             limits: GroupLimits) -> tuple:
        """(member count, mode, [Stored messages], switched: bool) after adding, removing, and making
        admins. ``actor``
        (None: the backend, acting as the owner) must be the owner or an admin. Refused (ImError):
        an unknown group (404), a non-admin actor (403), removing the owner (400), more than
        ``limits.max_members`` (409). May switch the mode (a "mode" message)."""
        raise ImError(E_UNAVAILABLE, f"groups are not implemented by {type(self).__name__} yet")

    async def group_info(self, group: int) -> dict | None:
        """``{"group", "name", "owner", "admins", "members", "mode", "max_gseq"}``, None if unknown."""
        raise ImError(E_UNAVAILABLE, f"groups are not implemented by {type(self).__name__} yet")

    async def group_members(self, group: int, gseq: int) -> list:
        """The members who may see the group's message ``gseq``: those who joined before it (empty if
        the group does not exist)."""
        raise ImError(E_UNAVAILABLE, f"groups are not implemented by {type(self).__name__} yet")

    async def fanout_jobs(self, limit: int) -> list:
        """Ids of the fan-out jobs not done yet, oldest first (the consumer's queue after a restart)."""
        return []

    async def fanout_jobs_older(self, age: float, limit: int) -> list:
        """Ids of the jobs queued more than ``age`` seconds ago and not done, oldest first (the consumer
        role's outbox sweep: jobs whose Kafka record never came)."""
        return []

    async def fan_out(self, job: int) -> Stored | None:
        """Write the job's inbox entries (each owner's next seq) and delete it, in one transaction;
        None when it was done already. ``entries``/``seqs`` hold the owners written. A store whose
        jobs may be done by concurrent transactions does the group's older jobs still pending first, in
        the same transaction, and returns them in ``before``: entries always follow gseq order."""
        raise ImError(E_UNAVAILABLE, f"groups are not implemented by {type(self).__name__} yet")

    async def fan_out_next(self, limit: int) -> list:
        """Fan out the ``limit`` oldest jobs, in id order; their Stored (the consumer's round). A store
        may do them in one transaction (SqliteStore does); each job is still done exactly once."""
        out = []
        for job in await self.fanout_jobs(limit):
            stored = await self.fan_out(job)
            if stored is not None:
                out.append(stored)
        return out

    async def group_pull(self, uid: int, group: int, after: int, limit: int) -> tuple:
        """(msg JSON texts with gseq > max(after, the member's join), has_more, max_gseq): the
        group's timeline, for a member only (403 otherwise). ``seq`` is 0 in these msgs."""
        raise ImError(E_UNAVAILABLE, f"groups are not implemented by {type(self).__name__} yet")

    async def group_ack(self, uid: int, group: int, gseq: int) -> int:
        """Move the member's read position up to ``gseq`` (never back); the position after."""
        raise ImError(E_UNAVAILABLE, f"groups are not implemented by {type(self).__name__} yet")

    async def has_read_groups(self) -> bool:
        """Whether any group is in read mode (read once at start: while none is, an auth needs no
        lookup of the user's group rooms)."""
        return False

    async def read_groups(self, uid: int) -> list:
        """``[{"group", "max_gseq", "cursor", "mode"}]``: the member's groups with messages in their
        timeline only: read mode, or back in write mode with read-mode messages (``max_gseq`` is the
        last of those; ``cursor`` is the read position)."""
        return []
