"""MariaDbStore sends per second on a Galera pair of its own, batched against one send per transaction.

    PYTHONPATH=src .venv/bin/python benchmarks/mariadb_send_bench.py [--senders 64] [--seconds 5] [--rounds 3]

``--senders`` coroutines each send single-chat messages one after the other (the next once the last is
answered) to random users of 1,000, through one store writing on node 1 (pool 16). Rounds alternate
``batch_max`` 1 (every send its own transaction, as before batching) and 64, so both see the same
machine load; per round: sends/s, sends per commit, and the CPU seconds of both mariadbd per 1,000
sends. The driver shares the two cores with the servers.

``--compare sync_wait`` alternates instead the store's ``wsrep_sync_wait`` (7, what it sets, against 1,
reads only, as before 2026-11-30) at ``batch_max`` 64, and adds the median and p99 time of a send and
Galera's causal waits per transaction (``wsrep_causal_reads``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import GaleraProcess, create_database  # noqa: E402

from imgate.im.mysql import MariaDbStore  # noqa: E402
from imgate.im.protocol import single_conv  # noqa: E402
from imgate.im.store import NewMessage, digest_of  # noqa: E402

USERS = 1000


def cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks
    return total


class SyncWaitStore(MariaDbStore):
    """The store with another ``wsrep_sync_wait`` on each of its connections (None: the store's own)."""

    sync_wait: int | None = None

    async def _connect(self, node: int):
        conn = await super()._connect(node)
        if self.sync_wait is not None:
            async with conn.cursor() as cur:
                await cur.execute(f"SET SESSION wsrep_sync_wait = {int(self.sync_wait)}")
            await conn.commit()
        return conn


async def status(addr: str, name: str) -> int:
    import asyncmy

    host, _, port = addr.rpartition(":")
    conn = await asyncmy.connect(host=host, port=int(port), user="test", connect_timeout=10, read_timeout=60)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
            return int((await cur.fetchone())[1])
    finally:
        conn.close()


async def one_round(addrs, db, batch_max: int, senders: int, seconds: float, pids, sync_wait=None) -> dict:
    store = SyncWaitStore(addrs, user="test", database=db, batch_max=batch_max)
    store.sync_wait = sync_wait
    await store.start()
    for u in range(1, USERS + 1, 50):
        await asyncio.gather(*(store.open_inbox(v) for v in range(u, min(u + 50, USERS + 1))))
    sent = [0]
    times: list[float] = []
    stop = time.monotonic() + seconds
    run = uuid.uuid4().hex[:6]

    async def sender(k):
        rng = random.Random(k)
        i = 0
        while time.monotonic() < stop:
            s, r = rng.sample(range(1, USERS + 1), 2)
            body = json.dumps({"n": i, "pad": "x" * 150})
            began = time.perf_counter()
            await store.send(NewMessage(s, f"{run}-{k}-{i}", single_conv(s, r), r, None, "text", body,
                                        digest_of(r, None, "text", body), (s, r)))
            times.append(time.perf_counter() - began)
            sent[0] += 1
            i += 1

    commits0, cpu0, t0 = store.counters["commits"], cpu_seconds(pids), time.monotonic()
    causal0 = await status(addrs[0], "wsrep_causal_reads")
    await asyncio.gather(*(sender(k) for k in range(senders)))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pids) - cpu0
    commits = store.counters["commits"] - commits0
    causal = await status(addrs[0], "wsrep_causal_reads") - causal0
    await store.close()
    times.sort()
    return {"batch_max": batch_max, "sync_wait": sync_wait, "sends_per_s": sent[0] / elapsed,
            "sends_per_commit": sent[0] / max(1, commits), "db_cpu_s_per_1000": 1000 * cpu / max(1, sent[0]),
            "p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * times[int(0.99 * (len(times) - 1))],
            "causal_waits_per_commit": causal / max(1, commits)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--senders", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", choices=["batch", "sync_wait"], default="batch")
    args = ap.parse_args()
    arms = [(1, None), (64, None)] if args.compare == "batch" else [(64, 1), (64, 7)]
    with tempfile.TemporaryDirectory() as tmp:
        galera = GaleraProcess(tmp).start()
        try:
            addrs = galera.addrs
            pids = [galera.member_pid("n1"), galera.member_pid("n2")]
            db = "bench"
            create_database(addrs, db)
            for r in range(args.rounds):
                for batch_max, sync_wait in arms if r % 2 == 0 else arms[::-1]:
                    res = asyncio.run(one_round(addrs, db, batch_max, args.senders, args.seconds, pids, sync_wait))
                    arm = f"batch_max {batch_max:>2}" if sync_wait is None else f"sync_wait {sync_wait}"
                    print(f"round {r + 1} {arm}: {res['sends_per_s']:7.0f} sends/s, "
                          f"{res['sends_per_commit']:5.1f} sends/commit, {res['db_cpu_s_per_1000']:.2f} "
                          f"mariadbd CPU-s per 1,000 sends, send p50 {res['p50_ms']:.2f} / p99 {res['p99_ms']:.1f} ms, "
                          f"{res['causal_waits_per_commit']:.2f} causal waits per commit", flush=True)
        finally:
            galera.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
