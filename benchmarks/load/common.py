"""Pieces shared by the load driver (run.py) and the load generators (gen.py).

Message body (what every pushed message carries, BODY_SIZE bytes):
    offset 0  uint64 big-endian  CLOCK_MONOTONIC nanoseconds when the pusher built the request
    offset 8  uint32 big-endian  sequence number of the message within its run
    offset 12 padding (b".")
CLOCK_MONOTONIC is one clock for every process of the machine, so a generator subtracts the stamp
from its own time.monotonic_ns() when the bytes arrive: that is the delivery latency.
"""

from __future__ import annotations

import os
import resource
import socket
import struct

OP_PUSH = 1000           # goim convention: business push operations are >= 1000
BODY_SIZE = 64           # bytes of each pushed message body (a short chat message)
BURST = 100              # messages per burst
PEER_PUSH_PATH = "/push"

_STAMP = struct.Struct(">QI")


def make_body(seq: int, now_ns: int) -> bytes:
    return _STAMP.pack(now_ns, seq) + b"." * (BODY_SIZE - _STAMP.size)


def http_post(path: str, body: bytes, host: str = "bench", api_key: str = "") -> bytes:
    """One HTTP/1.1 keep-alive POST, request head and body in one bytes object; ``api_key`` is sent
    as ``Authorization: Bearer`` when given (imgate's API needs one)."""
    auth = b"Authorization: Bearer %s\r\n" % api_key.encode() if api_key else b""
    return b"POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path.encode(), host.encode(), auth, len(body), body)


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------ the server, seen from outside

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_cpu(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # the command name is in parentheses and may contain spaces: split after the last ')'
    fields = raw[raw.rindex(b")") + 2:].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    """VmRSS of the process in bytes, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_times(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for a CPU), summed over the process's threads,
    from /proc/<pid>/task/*/schedstat: nanosecond counts, where /proc/<pid>/stat has 10 ms ticks.
    The CPU seconds are the same utime + stime, only finer."""
    run = wait = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                r, w, _ = f.read().split()
            run += int(r)
            wait += int(w)
        except (OSError, ValueError):
            pass  # a thread that just ended
    return run / 1e9, wait / 1e9


def machine_busy() -> float:
    """CPU-seconds the whole machine has spent busy (user, nice, system, irq, softirq, steal): /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def machine_steal() -> float:
    """CPU-seconds the hypervisor gave this VM's CPUs to someone else (steal in /proc/stat): time in
    which nothing of ours ran, whatever its priority."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / CLK_TCK


def proc_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Threads:"):
                return int(line.split()[1])
    return 0
