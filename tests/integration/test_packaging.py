"""`pip wheel .` builds a working wheel that ships the compiled modules, stubs, .pxd contracts and py.typed."""

import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # built from a copy of the tracked files (and the generated C, to skip Cython): a build/ folder left
    # in the tree would otherwise slip files into the wheel that the package data no longer names
    tree = tmp_path_factory.mktemp("tree")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in [f for f in files.decode().split("\0") if f] + [str(p.relative_to(ROOT)) for p in ROOT.glob("src/imgate/**/*.c")]:
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(tree)],
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
    # the message stores' schemas (SQLite, MariaDB), read at start by imgate.im.sqlite / imgate.im.mysql
    assert {"imgate/im/schema/0001_init.sql", "imgate/im/schema/mysql/0001_init.sql"} <= names
    assert "imgate/_core/includes/system.pxd" in names
    # what a module cimporting imgate.core needs: the contract and the headers its .pxd files extern
    assert {"imgate/core.pxd", "imgate/_core/includes/imgate_ws.h", "imgate/_core/includes/imgate_debug.h"} <= names
    # the HTTP API's compiled modules, the push route and the compiled steps of a push
    http = ("http/_request", "http/_reply", "http/_plain", "http/_dispatch", "http/_httptools",
            "http/_protocol")
    push = ("logic/_push_routes", "logic/_push", "protocol/_job", "cache/_memory", "push/_route", "proxy/_delivery")
    for mod in http + push:
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


USES_CORE = """
# cython: language_level=3
from imgate.core cimport RoomTable, frame_pack, ws_header_size

def run():
    cdef bytes frame = frame_pack(1000, 7, b"hi", 2, 1)
    cdef RoomTable table = RoomTable()
    return frame, ws_header_size(200), len(table), type(table).__module__
"""

BUILD = """
import imgate, sys
from Cython.Build import cythonize
from setuptools import Extension, setup
assert imgate.__file__.startswith(sys.argv[1]), imgate.__file__  # the wheel's, not the source tree's
setup(script_args=["build_ext", "--inplace", "-q"], ext_modules=cythonize(
    [Extension("uses_core", ["uses_core.pyx"], include_dirs=[imgate.get_include()])],
    include_path=[sys.argv[1]], quiet=True))
"""


@pytest.mark.slow
def test_a_module_cimporting_imgate_core_builds_against_the_wheel_and_runs(wheel, tmp_path):
    site, mod = tmp_path / "site", tmp_path / "mod"
    zipfile.ZipFile(wheel).extractall(site)
    mod.mkdir()
    (mod / "uses_core.pyx").write_text(USES_CORE)
    (mod / "build.py").write_text(BUILD)
    env = dict(os.environ, PYTHONPATH=str(site))
    res = subprocess.run([sys.executable, "build.py", str(site)], cwd=mod, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    env["PYTHONPATH"] = f"{mod}{os.pathsep}{site}"
    code = "import uses_core; print(repr(uses_core.run()))"
    res = subprocess.run([sys.executable, "-c", code], cwd=mod, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    # a goim frame by hand: packLen 18, headerLen 16, ver 1, op 1000, seq 7, body "hi"; a 200-byte
    # server WebSocket frame has a 4-byte header (RFC 6455: 126 then a 16-bit length)
    expected = (struct.pack(">ihhii", 18, 16, 1, 1000, 7) + b"hi", 4, 0, "imgate._core.room")
    assert res.stdout.strip() == repr(expected)
