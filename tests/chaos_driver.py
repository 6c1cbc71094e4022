"""One process of the chaos run's clients: ``python chaos_driver.py SPEC.json OUT.json``.

SPEC: ``{"uids": [...], "proxies": [url, ...], "rate": msgs/s for the whole process, "stop": path,
"max_duration": seconds, "grace": seconds, "seed": int, "ready": path, "progress": path, "groups":
[{"group", "members", "reader"}, ...], "group_share": fraction}``. Each user keeps one connection (to proxies[k % n] first,
the next one when that fails) and sends sequence-numbered messages (cmid ``"<uid>-<i>"``), one at a
time, paced so that the process sends ``rate`` per second: to a group it is a member of with
probability ``group_share``, else a single chat to another user of this process. Sending goes on until
the file ``stop`` exists (the orchestrator's signal, once every fault is over) or ``max_duration`` has
passed; a send unacknowledged ``grace`` seconds after that is abandoned. A send that times out or is
refused with a retryable code is resent with the same cmid; a broken connection is reconnected first.
When every user is connected the file ``ready`` gets the unix time sending starts; every 5 s the
file ``progress`` gets the number of acknowledged sends. At the end each user
reads its whole inbox (op 26 pages), each group's ``reader`` of this process its group's timeline (op
28 pages), and OUT gets, per user, what it sent and had acknowledged, what came to it by op 24, its
inbox, and the timelines, for the parent to check against each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

import uvloop

from imgate import client as imclient

SEND_TIMEOUT = 10.0
RETRYABLE = {503, 500, 429}  # the service's "nothing stored, try again" answers


class User:
    def __init__(self, uid: int, proxies: list[str], first: int):
        self.uid, self.proxies, self.proxy = uid, proxies, first
        self.conn: imclient.Client | None = None
        self.acked: list[list] = []  # [cmid, to, seq, t_first_try, t_ack, tries]
        self.gacked: list[list] = []  # [cmid, group, seq, gseq, t_first_try, t_ack, tries]
        self.abandoned: list[list] = []  # [cmid, to or "g:G", t_first_try]
        self.pushed: dict[str, list] = {}  # cmid -> [seq, t_received] (first time only)
        self.push_dups = 0  # the same entry pushed again (resend of an unacked push: allowed)
        self.errors: dict[str, int] = {}
        self.reconnects = 0
        self.inbox: list[list] = []  # [seq, cmid, from, group or None, gseq or None]

    def count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def on_push(self, frame) -> None:
        if frame.op != imclient.OP_MSG_PUSH:
            return
        now = time.time()
        top = 0
        for m in json.loads(frame.body).get("msgs", ()):
            cmid, seq = m.get("cmid"), int(m.get("seq", 0))
            top = max(top, seq)
            if cmid in self.pushed:
                self.push_dups += 1
            else:
                self.pushed[cmid] = [seq, now]
        if top and self.conn is not None and not self.conn.closed:
            try:
                self.conn.ack(top)
            except imclient.ClientError:
                pass

    async def connect(self, give_up: float) -> None:
        """Connect to the current proxy, or the next ones in turn, until one takes the user."""
        backoff = 0.1
        while True:
            url = self.proxies[self.proxy % len(self.proxies)]
            try:
                conn = await imclient.connect(url, mid=self.uid, heartbeat=20.0, timeout=5.0)
                conn.on_push = self.on_push
                self.conn = conn
                return
            except (imclient.ClientError, OSError) as e:
                self.count(f"connect: {type(e).__name__}")
            if time.time() > give_up:
                raise TimeoutError(f"user {self.uid} could not connect to any proxy")
            self.proxy += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)

    async def reconnect(self, give_up: float) -> None:
        if self.conn is not None:
            await self.conn.close()
        self.reconnects += 1
        await self.connect(give_up)

    async def send(self, to: int | None, group: int | None, i: int, give_up) -> None:
        """To user ``to`` or to ``group``, until acknowledged (or ``give_up()``): the same cmid every time."""
        cmid = f"{self.uid}-{i}"
        first, tries, backoff = time.time(), 0, 0.2
        target = to if group is None else f"g:{group}"
        while time.time() < give_up():
            tries += 1
            try:
                if self.conn is None or self.conn.closed:
                    await self.reconnect(give_up())
                if group is None:
                    reply = await self.conn.send_message(to, {"i": i}, cmid=cmid, timeout=SEND_TIMEOUT)
                else:
                    reply = await self.conn.send_group(group, {"i": i}, cmid=cmid, timeout=SEND_TIMEOUT)
            except imclient.ImRejected as e:
                self.count(f"refused {e.code}: {''.join(c for c in str(e.error)[:60] if not c.isdigit())}")
                if e.code not in RETRYABLE:
                    self.abandoned.append([cmid, target, first])
                    return
                # exponential: a 503 may come from an overloaded service still working on the
                # first try, and quick resends would add to its queue
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 4.0)
                continue
            except imclient.ClientTimeout:
                self.count("timeout")
                continue
            except (imclient.ClientError, OSError, TimeoutError) as e:
                self.count(f"connection: {type(e).__name__}")
                self.conn = None
                continue
            if group is None:
                self.acked.append([cmid, to, int(reply["seq"]), first, time.time(), tries])
            else:
                self.gacked.append([cmid, group, int(reply["seq"]), int(reply["gseq"]), first, time.time(), tries])
            return
        self.abandoned.append([cmid, target, first])

    async def read_pages(self, fetch, position: str, give_up: float, what: str) -> list:
        """Every message of ``fetch(after)`` pages (op 26 or 28) until one has no more; ``position``
        names the field the next page starts after (seq or gseq)."""
        after, out = 0, []
        while time.time() < give_up:
            try:
                if self.conn is None or self.conn.closed:
                    await self.reconnect(give_up)
                page = await fetch(after)
            except (imclient.ClientError, OSError, TimeoutError) as e:
                self.count(f"{what}: {type(e).__name__}")
                if not isinstance(e, imclient.ImRejected):
                    self.conn = None
                await asyncio.sleep(0.2)
                continue
            out += page["msgs"]
            after = max([after] + [int(m[position]) for m in page["msgs"]])
            if not page.get("has_more"):
                return out
        self.count(f"{what}: gave up")
        return out

    async def read_inbox(self, give_up: float) -> None:
        msgs = await self.read_pages(lambda after: self.conn.sync(after, 200, timeout=SEND_TIMEOUT), "seq",
                                     give_up, "sync")
        self.inbox = [[int(m["seq"]), m.get("cmid"), m.get("from"), m.get("group"), m.get("gseq")] for m in msgs]

    async def read_timeline(self, group: int, give_up: float) -> list:
        """The group's whole timeline (op 28 pages): [{gseq, type, content, cmid, from}, ...]."""
        msgs = await self.read_pages(lambda after: self.conn.group_pull(group, after, 200, timeout=SEND_TIMEOUT),
                                     "gseq", give_up, "pull")
        return [{k: m.get(k) for k in ("gseq", "type", "content", "cmid", "from")} for m in msgs]

    def result(self) -> dict:
        return dict(uid=self.uid, acked=self.acked, gacked=self.gacked, abandoned=self.abandoned, pushed=self.pushed,
                    push_dups=self.push_dups, errors=self.errors, reconnects=self.reconnects, inbox=self.inbox)


class Stop:
    """When sending ends: once the orchestrator's stop file exists, or at the latest ``max_duration``
    after the start; sends still unacknowledged ``grace`` seconds later are abandoned."""

    def __init__(self, path: str, begin: float, max_duration: float, grace: float):
        self.path, self.grace = path, grace
        self.at = begin + max_duration

    def poll(self) -> None:
        if self.at > time.time() and os.path.exists(self.path):
            self.at = time.time()

    def sending(self) -> bool:
        return time.time() < self.at

    def give_up(self) -> float:
        return self.at + self.grace


async def main(spec: dict) -> dict:
    uids = spec["uids"]
    proxies = spec["proxies"]
    rng = random.Random(spec.get("seed", 1))
    users = [User(u, proxies, k) for k, u in enumerate(uids)]
    mine = set(uids)
    groups_of: dict[int, list[int]] = {}  # uid -> the groups it sends to
    for g in spec.get("groups", ()):
        for m in g["members"]:
            if m in mine:
                groups_of.setdefault(m, []).append(g["group"])
    share = spec.get("group_share", 0.0)
    sem = asyncio.Semaphore(50)  # a bounded connect storm at the start

    async def first_connect(u: User):
        async with sem:
            await u.connect(time.time() + 120)

    await asyncio.gather(*(first_connect(u) for u in users))
    begin = time.time()
    stop = Stop(spec["stop"], begin, spec["max_duration"], spec["grace"])
    with open(spec["ready"], "w") as f:
        f.write(f"{begin}\n")
    interval = len(users) / max(spec["rate"], 0.001)  # each user's time between sends

    async def run(u: User):
        await asyncio.sleep(rng.random() * interval)  # spread the users over one interval
        next_at, i = time.monotonic(), 0
        mine_groups = groups_of.get(u.uid, [])
        while stop.sending():
            if mine_groups and rng.random() < share:
                await u.send(None, rng.choice(mine_groups), i, stop.give_up)
            else:
                to = rng.choice(uids)
                while to == u.uid:
                    to = rng.choice(uids)
                await u.send(to, None, i, stop.give_up)
            i += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - interval)  # no burst to catch up after a stall

    async def watch():  # the stop file; how far the run has come, for the orchestrator and the log
        k = 0
        while True:
            await asyncio.sleep(0.25)
            stop.poll()
            k += 1
            if k % 20 == 0:
                n = sum(len(u.acked) + len(u.gacked) for u in users)
                with open(spec["progress"] + ".tmp", "w") as f:
                    f.write(f"{n}\n")
                os.replace(spec["progress"] + ".tmp", spec["progress"])  # never read half-written
            if k % 120 == 0:
                print(f"{time.time() - begin:6.0f}s acknowledged {n}", flush=True)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(run(u) for u in users))
    watcher.cancel()
    end = time.time()
    end_deadline = stop.give_up() + 120
    await asyncio.sleep(1.0)  # the last op-24 pushes are on their way

    async def finish(u: User):
        async with sem:
            await u.read_inbox(end_deadline)

    await asyncio.gather(*(finish(u) for u in users))
    by_uid = {u.uid: u for u in users}
    timelines = {}
    for g in spec.get("groups", ()):
        if g["reader"] in by_uid:
            timelines[str(g["group"])] = await by_uid[g["reader"]].read_timeline(g["group"], end_deadline)
    for u in users:
        if u.conn is not None:
            await u.conn.close()
    return {"begin": begin, "end": end, "users": [u.result() for u in users], "timelines": timelines}


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    out = uvloop.run(main(spec))
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
