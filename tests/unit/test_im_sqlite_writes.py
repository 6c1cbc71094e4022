"""What a group fan-out costs SqliteStore's writer thread in write calls: the WAL frames of its commit
and nothing else (no statement journal spilled to a temporary file, see _writer_main)."""

from __future__ import annotations

import os

import imgate.im.sqlite as sqlite_mod
from imgate.im.service import ImService
from imgate.im.sqlite import SqliteStore
from imgate.im.store import GroupLimits

from test_im_service import Jobs, Sessions

from helpers import run

MEMBERS = 300


def _writes(tid: int) -> int:
    """Write calls (write, pwrite, ...) the thread has made: /proc's per-task syscw."""
    with open(f"/proc/self/task/{tid}/io") as f:
        return int(next(line for line in f if line.startswith("syscw:")).split()[1])


def test_a_fan_out_writes_its_wal_frames_and_nothing_else(tmp_path, monkeypatch):
    """SQLite writes a WAL frame as two calls (its header, then the page); a fan-out of 300 members
    changes dozens of pages in one INSERT ... SELECT, whose statement journal spilled to a temporary
    file (past 64 KB) cost two more write calls per page before temp_store = MEMORY."""
    monkeypatch.setattr(sqlite_mod, "CHECKPOINT_EVERY", 1 << 30)  # the WAL only grows during the test

    async def go():
        store = SqliteStore(tmp_path / "im.db")
        await store.start()
        svc = ImService(store, Sessions({}), Jobs(), groups=GroupLimits(write_limit=MEMBERS + 10))
        g = (await svc.create_group(1, {"members": list(range(1, MEMBERS + 1))}))["group"]
        for i in range(20):  # history: the members' newest entries spread over many pages
            await svc.send(1, {"cmid": f"h{i}", "group": g, "content": "x" * 200})
            while await store.fan_out_next(16):
                pass
        wal = tmp_path / "im.db-wal"
        tid = store._writer.native_id
        size0, writes0 = os.path.getsize(wal), _writes(tid)
        await svc.send(1, {"cmid": "m", "group": g, "content": "x" * 200})
        assert len(await store.fan_out_next(16)) == 1
        frames = (os.path.getsize(wal) - size0) // (4096 + 24)
        writes = _writes(tid) - writes0
        assert frames >= 40, f"the fan-out changed only {frames} pages: past 16 a statement journal spills"
        assert writes <= 2 * frames + 8, f"{writes} write calls for {frames} WAL frames"
        await store.close()

    run(go())
