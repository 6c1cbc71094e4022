"""`pip wheel .` builds a working wheel that ships the compiled modules, stubs, .pxd contracts and py.typed."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
    )
    (path,) = out.glob("imgate-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for mod in ("frame", "websocket", "room"):
        assert any(n.startswith(f"imgate/_core/{mod}.") and n.endswith(".so") for n in names), mod
        assert f"imgate/_core/{mod}.pyi" in names
        assert f"imgate/_core/{mod}.pxd" in names
    assert "imgate/py.typed" in names
    assert "imgate/_core/includes/system.pxd" in names
    # the HTTP API's compiled connection and push route
    for mod in ("http/_protocol", "logic/_push_routes"):
        assert any(n.startswith(f"imgate/{mod}.") and n.endswith(".so") for n in names), mod
        assert f"imgate/{mod}.pyi" in names


def test_wheel_imports_and_works(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "import imgate.core as c, imgate;"
        "assert imgate.__file__.startswith(%r), imgate.__file__;"
        "f = c.FrameDecoder().feed(c.encode_frame(7, 1, b'x'))[0];"
        "assert (f.op, f.seq, f.body) == (7, 1, b'x');"
        "print('ok')" % str(tmp_path)
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_core_example_runs():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "core_broadcast.py"), "--selftest"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "3 clients got the broadcast" in res.stdout
