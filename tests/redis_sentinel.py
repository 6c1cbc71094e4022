"""A Redis master, one replica and three Sentinels on loopback, for the chaos run (the cluster's roles
reach Redis through the Sentinels, `redis_sentinels` + `redis_master`).

Every process is started here with its own pid kept, and stopped by that pid. ``kill_master()`` is a
crash of whichever node is the master now (SIGKILL); ``wait_failover()`` waits until the Sentinels name
the other node; ``restart()`` brings the killed node back as a replica of the new master.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

MASTER_SET = "mymaster"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(port: int, *args: str, timeout: float = 1.0) -> list | str | None:
    """One RESP command to 127.0.0.1:port; the reply decoded (None when nothing answers)."""
    import redis

    try:
        r = redis.Redis(port=port, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)
        try:
            return r.execute_command(*args)
        finally:
            r.close()
    except (redis.RedisError, OSError):
        return None


class RedisSentinelGroup:
    def __init__(self, directory: Path, sentinels: int = 3, down_after_ms: int = 1000):
        self.dir = Path(directory) / "redis-sentinel"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node_ports = [_free_port(), _free_port()]
        self.sentinel_ports = [_free_port() for _ in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items() if p.poll() is None}

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(["redis-server", *args], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.dir)
        log.close()

    def _start_node(self, index: int, replica_of: int | None) -> None:
        port = self.node_ports[index]
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--dbfilename", f"node{index}.rdb",
                "--logfile", str(self.dir / f"node{index}.log")]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(f"node{index}", args)
        self._wait(lambda: _command(port, "PING") is True, f"redis node{index} on :{port}")

    def start(self, timeout: float = 30.0) -> "RedisSentinelGroup":
        try:
            self._start_node(0, None)
            self._start_node(1, self.node_ports[0])
            for k, port in enumerate(self.sentinel_ports):
                conf = self.dir / f"sentinel{k}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / f'sentinel{k}.log'}\n"
                    f"sentinel monitor {MASTER_SET} 127.0.0.1 {self.node_ports[0]} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_SET} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {MASTER_SET} 4000\n"
                    f"sentinel parallel-syncs {MASTER_SET} 1\n")
                self._spawn(f"sentinel{k}", [str(conf), "--sentinel"])
            # every Sentinel knows the replica and the other Sentinels before a failover can be voted
            self._wait(lambda: all(self._sentinel_sees_all(p) for p in self.sentinel_ports),
                       "the sentinels to see the replica and each other", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinel_sees_all(self, port: int) -> bool:
        info = _command(port, "SENTINEL", "MASTER", MASTER_SET)
        if not isinstance(info, (list, dict)):
            return False
        fields = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2]))
        return (int(fields.get("num-slaves", 0)) >= 1
                and int(fields.get("num-other-sentinels", 0)) >= len(self.sentinel_ports) - 1)

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            addr = _command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_SET)
            if addr:
                return int(addr[1])
        return None

    def kill_master(self) -> int:
        """SIGKILL the node that is master now; returns its index."""
        port = self.master_port()
        index = self.node_ports.index(port)
        proc = self.procs[f"node{index}"]
        proc.kill()
        proc.wait(10)
        return index

    def wait_failover(self, old_index: int, timeout: float = 30.0) -> None:
        new_port = self.node_ports[1 - old_index]
        self._wait(lambda: all(self._names(p, new_port) for p in self.sentinel_ports)
                   and _command(new_port, "ROLE") not in (None,) and _command(new_port, "ROLE")[0] == "master",
                   f"the sentinels to promote :{new_port}", timeout)

    def _names(self, sentinel_port: int, port: int) -> bool:
        addr = _command(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_SET)
        return bool(addr) and int(addr[1]) == port

    def restart(self, index: int) -> None:
        """Start a killed node again as a replica of the other (the master now)."""
        self._start_node(index, self.node_ports[1 - index])

    def _wait(self, cond, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None and n.startswith("sentinel")]
            if dead:
                raise RuntimeError(f"{dead[0]} exited: see {self.dir}")
            if cond():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what} (logs in {self.dir})")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
