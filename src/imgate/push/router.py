"""The push router: push jobs to the proxies that hold their targets (goim's job).

One router serves both deployments, with one plan for a batch of jobs:

- unicast/multicast jobs name their proxy (logic resolved the sessions): one call to that proxy; a job
  for a proxy the router does not know (it died) is counted in ``skipped`` and dropped;
- room jobs go to every proxy (as goim's job does; a proxy without the room answers 0 at once). Sending
  them only to the proxies last seen with the room lost the pushes made in the moment after a room's
  first member joined a new proxy. Room jobs for one room in one batch travel as one ``push_room_batch``
  at the place of the first of them;
- broadcast-all goes to every proxy.

Embedded, logic's in-process bus hands each job to :meth:`PushRouter.route_nowait`, which calls the
proxy's ``*_nowait`` methods at once. In the push role, Kafka batches go to :meth:`PushRouter.route`,
which awaits each proxy's calls in order (different proxies concurrently).
"""

from __future__ import annotations

import asyncio
import logging

from imgate.core import encode_frame
from imgate.protocol import KIND_ALL, KIND_CONNS, KIND_JOIN, KIND_LEAVE, KIND_ROOM, PushJob
from imgate.protocol.interfaces import ProxyAPI
from imgate.push._route import route_nowait

log = logging.getLogger("imgate.push")

# what a plan asks of a proxy: (method, args), the method by name, awaitable and at once
CONNS = ("push_conns", "push_conns_nowait")           # args: conn_ids, op, body
ROOM = ("push_room_batch", "push_room_batch_nowait")  # args: room_id, frames (encoded, back to back)
ALL = ("push_all", "push_all_nowait")                 # args: op, body, speed
JOIN = ("join_conns", "join_conns_nowait")            # args: conn_ids, room_id
LEAVE = ("leave_conns", "leave_conns_nowait")         # args: conn_ids, room_id


class PushRouter:
    def __init__(self, proxies: dict[str, ProxyAPI] | None = None):
        self.proxies: dict[str, ProxyAPI] = dict(proxies or {})
        # jobs for unknown proxies, calls that failed (nothing counts the routed ones: a unicast would
        # pay two attribute writes and two int allocations for numbers nobody reads)
        self.skipped = 0
        # draining proxies -> the rooms they still hold: no room push for any other room (discovery)
        self.draining: dict[str, set[str]] = {}

    def add_proxy(self, proxy: ProxyAPI) -> None:
        self.proxies[proxy.server_id] = proxy

    def plan(self, jobs: list[PushJob]) -> dict[str, list[tuple]]:
        """Each proxy's calls for ``jobs``, in the jobs' order."""
        calls: dict[str, list] = {}
        rooms: dict[str, list] = {}  # room id -> [room id, its frames]: the args of its one call
        for job in jobs:
            kind = job.kind
            if kind == KIND_CONNS:
                if job.server in self.proxies:
                    calls.setdefault(job.server, []).append((CONNS, (job.conn_ids, job.op, job.body)))
                else:
                    self._unknown(job)
            elif kind == KIND_ROOM:
                args = rooms.get(job.room_id)
                if args is None:
                    rooms[job.room_id] = args = [job.room_id, []]
                    draining = self.draining
                    for sid in self.proxies:
                        if draining and sid in draining and job.room_id not in draining[sid]:
                            continue
                        calls.setdefault(sid, []).append((ROOM, args))
                args[1].append(encode_frame(job.op, 0, job.body))
            elif kind == KIND_JOIN or kind == KIND_LEAVE:  # in order with the server's other jobs
                if job.server in self.proxies:
                    calls.setdefault(job.server, []).append((JOIN if kind == KIND_JOIN else LEAVE,
                                                             (job.conn_ids, job.room_id)))
                else:
                    self._unknown(job)
            elif kind == KIND_ALL:
                for sid in self.proxies:
                    calls.setdefault(sid, []).append((ALL, (job.op, job.body, job.speed)))
            else:
                raise ValueError(f"unknown push job kind {kind!r}")
        for args in rooms.values():
            args[1] = b"".join(args[1])  # the batch's frames, once for every proxy
        return calls

    def _unknown(self, job: PushJob) -> None:
        """A conns job for a proxy the router does not know (it died): counted and dropped."""
        self.skipped += 1
        log.warning("push to unknown server %s dropped (%d conns)", job.server, len(job.conn_ids))

    route_nowait = route_nowait  # compiled (push/_route.pyx): one job, delivered at once

    async def route(self, jobs: list[PushJob]) -> None:
        """Deliver a batch; returns once every live proxy accepted its part (then Kafka commits)."""
        await asyncio.gather(*(self._run(sid, calls) for sid, calls in self.plan(jobs).items()))

    async def _run(self, sid: str, calls: list) -> None:
        proxy = self.proxies.get(sid)
        if proxy is None:  # dropped by discovery since the plan was made
            self.skipped += len(calls)
            return
        for (awaitable, _), args in calls:
            try:
                await getattr(proxy, awaitable)(*args)
            except Exception as e:
                # a dead proxy's clients reconnect elsewhere and resync; don't block the others
                self.skipped += 1
                log.warning("push %s to %s failed: %s", awaitable, sid, e)
