"""The web IM module (src/imgate/static/imgate-im.js) under Node.js against a scripted server:
catch-up at connect, gaps filled by paged SYNC, duplicates and late pushes dropped, acks forward only,
the sender's own entry emitted from its 23. (The headless-Chromium test drives it against a real node.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_web_module_orders_fills_gaps_and_acks():
    out = subprocess.run([NODE, str(ROOT / "tests" / "unit" / "js" / "im_module_check.mjs"),
                          str(ROOT / "src" / "imgate" / "static" / "imgate-im.js")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["errors"] == []
    assert r["afterConnect"][:3] == [1, 2, 3], "connect catches up to the auth reply's inbox_seq"
    assert r["seen"] == list(range(1, 12)), "every entry once, in order (11: the client's own send)"
    assert r["acks"] == sorted(set(r["acks"])) and r["acks"][-1] == 11
    assert all(limit == 2 for _, limit in r["syncs"]) and [a for a, _ in r["syncs"]] == sorted(a for a, _ in r["syncs"])
    assert r["reply"]["seq"] == 11 and r["lastSeq"] == 11
