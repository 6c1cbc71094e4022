"""What logic needs from the cache service, whatever backs it."""

from __future__ import annotations

import abc

# One connection of one user, compiled (its fields are read in C by the embedded node's unicast)
from imgate.cache._memory import Session


class UserFull(Exception):
    """add_session refused a connection: its user already holds ``max_per_user`` live ones."""

    def __init__(self, mid: int, limit: int):
        super().__init__(f"user {mid} holds {limit} connections already")
        self.mid, self.limit = mid, limit


class Cache(abc.ABC):
    """`user_id -> conn_id -> server_id`, conn_id allocation, key -> connection, room counts per server.

    Sessions expire unless renewed (heartbeats renew them), so a proxy that dies leaves no ghosts.
    A cache in this process (``nowait`` True) also answers the session lookups of a push at once.
    """

    nowait = False
    # the epoch the last session lookup saw (None: the epoch key was missing); see imgate.cache.epoch
    seen_epoch: str | None = ""

    def sessions_nowait(self, mids: list[int]) -> dict[int, list[Session]]:
        """:meth:`sessions` without the await (only when ``nowait``)."""
        raise NotImplementedError(f"{type(self).__name__} answers only through sessions()")

    def user_sessions_nowait(self, mid: int) -> list[Session]:
        """One user's live sessions (``sessions_nowait([mid])``'s list, or []): a unicast's lookup
        without the dict."""
        return self.sessions_nowait([mid]).get(mid, [])

    def sessions_by_keys_nowait(self, keys: list[str]) -> dict[str, Session]:
        """:meth:`sessions_by_keys` without the await (only when ``nowait``)."""
        raise NotImplementedError(f"{type(self).__name__} answers only through sessions_by_keys()")

    @abc.abstractmethod
    async def alloc_conn_id(self) -> int:
        """A connection id unique across the cluster."""

    @abc.abstractmethod
    async def add_session(self, session: Session, ttl: float, max_per_user: int = 0) -> bool:
        """Register a connection and return True. A key belongs to one user: when a live session of
        *another* user holds ``session.key``, nothing is stored and the answer is False. A previous
        connection of the same user with that key is replaced in the key index (it stays the user's
        until it leaves).

        ``max_per_user`` > 0 bounds the user's live sessions: when they already hold that many,
        nothing is stored and :class:`UserFull` is raised. A connection that takes over a key from
        one of the user's live sessions replaces it, so that older one is not counted: while it
        leaves, the user holds at most ``max_per_user + 1``. Check and store are one atomic step.

        mid 0 is goim's anonymous client (a live room's viewers): nobody. Its sessions are not indexed
        by mid (no push by mid reaches them, :meth:`user_count` leaves them out, ``max_per_user`` does
        not apply); they are reached by key or room, renewed and removed by conn id in O(1)."""

    @abc.abstractmethod
    async def renew_session(self, mid: int, conn_id: int, ttl: float) -> bool:
        """Push the expiry forward; False if the session is gone (expired or removed)."""

    @abc.abstractmethod
    async def del_session(self, mid: int, conn_id: int) -> bool:
        """Remove a connection; False if it was not there."""

    @abc.abstractmethod
    async def sessions(self, mids: list[int]) -> dict[int, list[Session]]:
        """Live sessions of each user (users without any are left out; so is mid 0, which is nobody)."""

    @abc.abstractmethod
    async def sessions_by_keys(self, keys: list[str]) -> dict[str, Session]:
        """The live session holding each key (unknown keys are left out)."""

    @abc.abstractmethod
    async def list_sessions(self, limit: int) -> list[Session]:
        """Up to `limit` live sessions (debug listing)."""

    @abc.abstractmethod
    async def set_server_online(self, server: str, rooms: dict[str, int], conns: int, ips: int, ttl: float,
                                addr: str = "", draining: bool = False) -> None:
        """A proxy's periodic report: room online counts, connections, distinct client IPs, and for
        discovery its RPC address and whether it is draining."""

    @abc.abstractmethod
    async def servers_online(self) -> dict[str, dict]:
        """{server: {"rooms": {room: count}, "conns": n, "ips": n, "updated": t, "addr": str, "draining": bool}}
        for servers whose report is live."""

    @abc.abstractmethod
    async def user_count(self) -> int:
        """Users with at least one session (may include sessions about to expire)."""

    # ------------------------------------------------------------------ loss and repair

    async def epoch(self) -> str:
        """The cache's epoch id, made when missing: a new id means the cache lost its data."""
        return "memory"

    async def restore_sessions(self, sessions: list[Session], ttl: float) -> None:
        """Register connections that already existed (after a loss): a key goes back to its session
        only if no newer connection holds it."""
        for s in sessions:
            await self.add_session(s, ttl)

    async def mark_ready(self, epoch: str, server: str, ttl: float) -> None:
        """``server`` re-registered all its sessions for ``epoch``."""

    async def ready(self, epoch: str) -> set[str]:
        """The servers that re-registered for ``epoch``."""
        return set()

    async def close(self) -> None:
        return None
