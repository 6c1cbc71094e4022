"""What the benchmarks against a real `imgate serve` share: starting it on free loopback ports, its CPU
time, stopping it, percentiles (free_port from load/common.py, stop_process from tests/helpers.py). Import it with the benchmarks folder on ``sys.path`` (a benchmark run as
a script has it there)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "load"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import free_port, proc_times  # noqa: E402, F401  (free_port: for the benchmarks' helper processes)
from helpers import stop_process  # noqa: E402, F401  (SIGTERM, then SIGKILL past a timeout)

from imgate.config import dump_toml  # noqa: E402

#: where a benchmark's server listens unless its settings say otherwise: free loopback ports
LOOPBACK = {"tcp": "127.0.0.1:0", "ws": "127.0.0.1:0", "http": "127.0.0.1:0", "auth": "none"}


def server_cpu(pid: int) -> float:
    """CPU seconds the process has used, all its threads (schedstat: finer than /proc/<pid>/stat)."""
    return proc_times(pid)[0]


def loop_and_threads_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the main thread, which runs the event loop; CPU seconds of all the others: the
    store's writer, checkpointer and readers), from schedstat as :func:`server_cpu`. Which of the two
    a change relieved says which stage of a pipeline it helped."""
    main = proc_times_task(pid, pid)
    return main, proc_times(pid)[0] - main


def proc_times_task(pid: int, tid: int) -> float:
    """CPU seconds of one thread (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def start_serve(workdir: Path, settings: dict, **popen) -> tuple[subprocess.Popen, dict[str, str]]:
    """`imgate serve` with :data:`LOOPBACK` and ``settings`` (a config file in ``workdir``), logging
    warnings only; returns once its banner has named the HTTP API: the process and the URLs the banner
    gave (``{"tcp": "tcp://127.0.0.1:N", "ws": "ws://127.0.0.1:N", "http": "http://127.0.0.1:N"}``).
    ``popen`` goes to :class:`subprocess.Popen`. The caller stops the process."""
    conf = workdir / "serve.toml"
    conf.write_text(dump_toml({**LOOPBACK, **settings}))
    proc = subprocess.Popen([sys.executable, "-m", "imgate", "serve", "--config", str(conf), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    urls: dict[str, str] = {}
    said = []
    for line in proc.stdout:
        said.append(line)
        m = re.search(r"(tcp|ws|http)://[\d.]+:(\d+)", line)
        if m:
            urls[m.group(1)] = m.group(0)
        if line.lstrip().startswith("HTTP API"):
            return proc, urls
    proc.wait()
    raise RuntimeError("imgate serve ended before its banner named the HTTP API:\n" + "".join(said[-30:]))


def pct(values, p: float):
    """The ``p`` quantile (0..1) of ``values``, nearest rank; NaN for none."""
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")
