"""Build and load the plain C broadcast baseline (benchmarks/csrc/send_loop.c) through ctypes.

The shared library goes to benchmarks/bin/ (gitignored) and is rebuilt when missing or older than its
source. The build writes a temporary file and renames it, so concurrent runs never load a half-written
library.
"""

import ctypes
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "csrc", "send_loop.c")
BIN_DIR = os.path.join(HERE, "bin")
LIBRARY = os.path.join(BIN_DIR, "libsendloop.so")
CFLAGS = ["-O2", "-shared", "-fPIC"]


class BaselineUnavailable(RuntimeError):
    """No C compiler, or the baseline failed to compile."""


def _stale():
    try:
        return os.path.getmtime(LIBRARY) < os.path.getmtime(SOURCE)
    except FileNotFoundError:
        return True


def build(force=False):
    """Compile the baseline if needed; returns the library's path."""
    if not force and not _stale():
        return LIBRARY
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise BaselineUnavailable("no C compiler found (set CC)")
    os.makedirs(BIN_DIR, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libsendloop-", suffix=".so", dir=BIN_DIR)
    os.close(fd)
    try:
        proc = subprocess.run([*cc.split(), *CFLAGS, "-o", tmp, SOURCE], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BaselineUnavailable(f"{cc} failed:\n{proc.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, LIBRARY)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return LIBRARY


class SendLoop:
    """The loaded baseline, bound to a fixed list of descriptors (converted to a C array once)."""

    def __init__(self, fds, lib=None):
        self.lib = lib if lib is not None else load()
        self.n = len(fds)
        self.fds = (ctypes.c_int * self.n)(*fds)

    def send_each(self, data):
        """One send() of `data` per descriptor; returns how many sends took it all."""
        return self.lib.send_loop(self.fds, self.n, data, len(data))

    def send_each_batched(self, batch, frame_len, k):
        """`batch` is k frames of frame_len bytes back to back: one send() of all of it per descriptor."""
        assert len(batch) == frame_len * k
        return self.lib.send_loop_batched(self.fds, self.n, batch, frame_len, k)


_lib = None


def load():
    """The ctypes handle of the baseline library (built on first use)."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(build())
        lib.send_loop.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_char_p, ctypes.c_long]
        lib.send_loop.restype = ctypes.c_long
        lib.send_loop_batched.argtypes = [
            ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_char_p, ctypes.c_long, ctypes.c_int,
        ]
        lib.send_loop_batched.restype = ctypes.c_long
        _lib = lib
    return _lib


if __name__ == "__main__":
    print(build(force=True))
