"""Push in a cluster: jobs from Kafka to the proxies that hold their targets, over RPC.

- unicast/multicast jobs name their proxy (logic resolved the sessions): one call to that proxy;
- room jobs go to every proxy (as goim's job does); a proxy without the room answers 0 at once.
  Sending them only to the proxies whose room list was last seen to have the room (absorbed every
  second) lost the pushes sent to a room in the second after its first member joined a new proxy.
  Jobs for one room in a batch (one Kafka poll, widened by `room_merge_window`) travel as one op-9
  batch;
- broadcast-all goes to every proxy.
Calls to one proxy keep the jobs' order; different proxies are served concurrently.
"""

from __future__ import annotations

import asyncio
import logging

from imgate.core import encode_frame
from imgate.protocol import KIND_ALL, KIND_CONNS, KIND_ROOM, PushJob

log = logging.getLogger("imgate.push")


class ClusterPush:
    def __init__(self, proxies: dict):
        self.proxies = proxies  # server_id -> ProxyClient (async push_conns/push_room_batch/push_all)
        self.delivered = 0
        self.skipped = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def deliver(self, jobs: list[PushJob]) -> None:
        """Deliver a batch; returns once every live proxy accepted its part (then Kafka commits)."""
        calls: dict[str, list] = {sid: [] for sid in self.proxies}
        room_frames: dict[str, list[bytes]] = {}
        for job in jobs:
            if job.kind == KIND_ROOM:
                room_frames.setdefault(job.room_id, []).append(encode_frame(job.op, 0, job.body))
            elif job.kind == KIND_CONNS:
                if job.server in calls:
                    calls[job.server].append(("push_conns", job.conn_ids, job.op, job.body))
                else:
                    self.skipped += 1
                    log.warning("push for unknown server %s dropped", job.server)
            elif job.kind == KIND_ALL:
                for sid in calls:
                    calls[sid].append(("push_all", job.op, job.body, job.speed))
        for room_id, frames in room_frames.items():
            batch = b"".join(frames)
            for sid in calls:
                calls[sid].insert(0, ("push_room_batch", room_id, batch))
        await asyncio.gather(*(self._run(sid, todo) for sid, todo in calls.items() if todo))

    async def _run(self, sid: str, todo: list) -> None:
        client = self.proxies[sid]
        for name, *args in todo:
            try:
                await getattr(client, name)(*args)
                self.delivered += 1
            except Exception as e:
                # a dead proxy's clients reconnect elsewhere and resync; don't block the others
                self.skipped += 1
                log.warning("push %s to %s failed: %s", name, sid, e)
