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

__all__ = ["MessageStore", "NewMessage", "Stored", "SyncPage", "ReadResult", "msg_json", "digest_of",
           "INTERNAL_CMID_PREFIX"]

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


def digest_of(to, group, type_: str, content: str) -> bytes:
    """The identity of a send request's body (what a resend must repeat)."""
    return hashlib.sha256(json.dumps([to, group, type_, content]).encode()).digest()[:16]


def msg_json(seq: int, msg_id: int, conv: str, sender: int, to, group, type_: str, content, ts: int,
             cmid: str) -> str:
    """One msg (docs/im.md "Wire protocol") as JSON text; ``content`` is already JSON text (None: dropped by retention)."""
    target = f'"to":{to}' if group is None else f'"group":{group}'
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
