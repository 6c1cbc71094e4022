"""MariaDbStore sends per second on a Galera pair of its own, batched against one send per transaction.

    PYTHONPATH=src .venv/bin/python benchmarks/mariadb_send_bench.py [--senders 64] [--seconds 5] [--rounds 3]

``--senders`` coroutines each send single-chat messages one after the other (the next once the last is
answered) to random users of 1,000, through one store writing on node 1 (pool 16). Rounds alternate
``batch_max`` 1 (every send its own transaction, as before batching) and 64, so both see the same
machine load; per round: sends/s, sends per commit, and the CPU seconds of both mariadbd per 1,000
sends. The driver shares the two cores with the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
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


async def one_round(addrs, db, batch_max: int, senders: int, seconds: float, pids) -> dict:
    store = MariaDbStore(addrs, user="test", database=db, batch_max=batch_max)
    await store.start()
    for u in range(1, USERS + 1, 50):
        await asyncio.gather(*(store.open_inbox(v) for v in range(u, min(u + 50, USERS + 1))))
    sent = [0]
    stop = time.monotonic() + seconds
    run = uuid.uuid4().hex[:6]

    async def sender(k):
        rng = random.Random(k)
        i = 0
        while time.monotonic() < stop:
            s, r = rng.sample(range(1, USERS + 1), 2)
            body = json.dumps({"n": i, "pad": "x" * 150})
            await store.send(NewMessage(s, f"{run}-{k}-{i}", single_conv(s, r), r, None, "text", body,
                                        digest_of(r, None, "text", body), (s, r)))
            sent[0] += 1
            i += 1

    commits0, cpu0, t0 = store.counters["commits"], cpu_seconds(pids), time.monotonic()
    await asyncio.gather(*(sender(k) for k in range(senders)))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pids) - cpu0
    commits = store.counters["commits"] - commits0
    await store.close()
    return {"batch_max": batch_max, "sends_per_s": sent[0] / elapsed, "sends_per_commit": sent[0] / max(1, commits),
            "db_cpu_s_per_1000": 1000 * cpu / max(1, sent[0])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--senders", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        galera = GaleraProcess(tmp).start()
        try:
            addrs = galera.addrs
            pids = [galera.member_pid("n1"), galera.member_pid("n2")]
            db = "bench"
            create_database(addrs, db)
            for r in range(args.rounds):
                for batch_max in (1, 64):
                    res = asyncio.run(one_round(addrs, db, batch_max, args.senders, args.seconds, pids))
                    print(f"round {r + 1} batch_max {batch_max:>2}: {res['sends_per_s']:7.0f} sends/s, "
                          f"{res['sends_per_commit']:5.1f} sends/commit, {res['db_cpu_s_per_1000']:.2f} "
                          f"mariadbd CPU-s per 1,000 sends", flush=True)
        finally:
            galera.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
