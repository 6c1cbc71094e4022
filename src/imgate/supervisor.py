"""Keep a set of child processes running: report a death, keep the others, restart the dead one
after a short delay. `make cluster` (scripts/cluster.py) runs its roles under one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict | None = None
    cwd: str | None = None
    proc: subprocess.Popen | None = None
    restart_at: float | None = None  # when a dead child is started again
    restarts: int = 0
    log: str | None = None  # file the child's output is appended to (None: inherit ours)
    pidfile: str | None = None
    die_with_parent: bool = False


def _parent_death_signal() -> None:
    """In the child, before exec: SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG; Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor:
    def __init__(self, restart_delay: float = 2.0, say=print, clock=time.monotonic):
        self.restart_delay = restart_delay
        self.say = say
        self.clock = clock
        self.children: dict[str, Child] = {}
        self.stopping = False

    def start(self, name: str, argv: list[str], *, env: dict | None = None, cwd: str | None = None,
              log: str | None = None, pidfile: str | None = None, die_with_parent: bool = False) -> Child:
        """Start ``argv``; ``die_with_parent``: the child gets SIGTERM when this process dies, even by
        SIGKILL (Linux), so workers never outlive their coordinator."""
        child = Child(name, list(argv), env, cwd, log=log, pidfile=pidfile, die_with_parent=die_with_parent)
        self.children[name] = child
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        out = open(child.log, "ab") if child.log else None
        child.proc = subprocess.Popen(child.argv, env=child.env, cwd=child.cwd, stdout=out,
                                      stderr=subprocess.STDOUT if out else None,
                                      preexec_fn=_parent_death_signal if child.die_with_parent else None)
        if out is not None:
            out.close()
        child.restart_at = None
        if child.pidfile:
            with open(child.pidfile, "w") as f:
                f.write(f"{child.proc.pid}\n")

    def poll(self) -> None:
        """Report children that died; start again those whose delay has passed."""
        if self.stopping:
            return
        now = self.clock()
        for child in self.children.values():
            p = child.proc
            if child.restart_at is None and p is not None and p.poll() is not None:
                code = p.returncode
                how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
                self.say(f"{child.name} (pid {p.pid}) {how}; restarting it in {self.restart_delay:g}s, "
                         f"the others keep running")
                child.restart_at = now + self.restart_delay
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
                self.say(f"{child.name} restarted (pid {child.proc.pid}, restart {child.restarts})")

    def stop_all(self, grace: float = 15.0) -> None:
        """SIGTERM every child (the last started first), SIGKILL those still there after ``grace``."""
        self.stopping = True
        live = [c.proc for c in reversed(list(self.children.values())) if c.proc and c.proc.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        end = self.clock() + grace
        for p in live:
            try:
                p.wait(max(0.1, end - self.clock()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for c in self.children.values():  # a stale pid file could name someone else's process later
            if c.pidfile:
                try:
                    os.unlink(c.pidfile)
                except FileNotFoundError:
                    pass
