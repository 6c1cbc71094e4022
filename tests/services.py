"""pytest plugin: a real Redis and a real single-node Kafka (KRaft) for the tests, run by scripts/services.sh.

Load it from a test module (``pytest_plugins = ["services"]``) or from tests/conftest.py; either way its
fixtures are session-wide, so one Redis and one Kafka serve the whole run.

Fixtures (session scope):

- ``redis_url``: ``redis://127.0.0.1:PORT/0`` of a Redis started on a free port under a temporary dir,
  or ``$IMGATE_TEST_REDIS_URL`` when that is set (then nothing is started).
- ``kafka_bootstrap``: ``127.0.0.1:PORT`` of a Kafka broker started on free ports, or
  ``$IMGATE_TEST_KAFKA`` when that is set.
- ``mariadb_addrs``: ``["127.0.0.1:P1", "127.0.0.1:P2"]``, a Galera pair (two mariadbd and garbd) started
  on free ports, or ``$IMGATE_TEST_MARIADB`` (comma-separated) when that is set. User ``test`` without
  password may create databases; each test makes its own (``create_database``).
- ``redis_process`` / ``kafka_process`` / ``galera_process``: the :class:`RedisProcess` / :class:`KafkaProcess` behind those,
  for failure tests that stop a service and bring it back on the same ports and data dir. They skip the
  test when the service is external (the env var is set): an external service can't be stopped.

Failure-test helpers, acting on the session's Kafka (or Redis)::

    with kafka_down():          # stopped inside the block, running again after it, even on failure
        assert push(...).status == 503
    ...                         # Kafka is back, same bootstrap, same data

    stop_kafka(); ...; start_kafka()          # the same, by hand
    kafka_process.stop(hard=True)             # SIGKILL instead of a clean shutdown

A test may also run a private service: ``with KafkaProcess(tmp_path) as k: ... k.bootstrap``.
Every process started here is stopped at the end of the session (and at interpreter exit, as a backstop).

PYTEST_DONT_REWRITE (no asserts here; test modules may import it before pytest loads it as a plugin)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services.sh"

REDIS_ENV = "IMGATE_TEST_REDIS_URL"
KAFKA_ENV = "IMGATE_TEST_KAFKA"
MARIADB_ENV = "IMGATE_TEST_MARIADB"

_installed: set[str] = set()
_live: set["_ServiceProcess"] = set()  # started and not yet stopped: stopped at exit as a backstop
_session: dict[str, "_ServiceProcess"] = {}  # the processes behind the session fixtures


class ServiceError(RuntimeError):
    """scripts/services.sh failed; the message carries its output (with the service's last log lines)."""


def run_script(*args: str, timeout: float = 180.0) -> str:
    """Run ``scripts/services.sh ARGS...``; return its stdout, raise ServiceError with all output on failure."""
    try:
        cp = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ServiceError(f"scripts/services.sh {' '.join(args)}: no answer within {timeout:.0f}s\n"
                           f"{e.stdout or ''}{e.stderr or ''}") from None
    if cp.returncode != 0:
        raise ServiceError(f"scripts/services.sh {' '.join(args)} exited {cp.returncode}\n"
                           f"{cp.stdout}{cp.stderr}".rstrip())
    return cp.stdout


def ensure_installed(what: str) -> None:
    """``services.sh install-redis`` / ``install-kafka`` once per session (a no-op when already there)."""
    if what == "galera":
        what = "mariadb"
    if what not in _installed:
        run_script(f"install-{what}", timeout=900)
        _installed.add(what)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pidfile: Path, pattern: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if pattern in cmdline else None


class _ServiceProcess:
    name = ""
    pattern = ""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory).resolve()

    @property
    def pidfile(self) -> Path:
        return self.dir / self.name / f"{self.name}.pid"

    @property
    def pid(self) -> int | None:
        return _pid_alive(self.pidfile, self.pattern)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _start_args(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        """Start (or start again: same ports, same data dir); returns self once the service is ready."""
        ensure_installed(self.name)
        _live.add(self)
        run_script(f"start-{self.name}", *self._start_args())
        return self

    def stop(self, hard: bool = False) -> None:
        """Clean stop (TERM, KILL after a timeout); ``hard=True``: SIGKILL at once, like a crash."""
        if hard:
            pid = self.pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.pidfile.unlink(missing_ok=True)
        run_script("stop", str(self.dir), self.name)
        _live.discard(self)

    @contextlib.contextmanager
    def down(self, hard: bool = False):
        """Stopped inside the block, started again (same ports and data) after it, even if it raised."""
        self.stop(hard=hard)
        try:
            yield self
        finally:
            self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RedisProcess(_ServiceProcess):
    """A redis-server on 127.0.0.1:port, data (append-only file) under DIR/redis."""

    name = "redis"
    pattern = "redis-server"

    def __init__(self, directory: str | os.PathLike, port: int | None = None):
        super().__init__(directory)
        self.port = port or free_port()

    def _start_args(self) -> list[str]:
        return [str(self.port), str(self.dir)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return f"RedisProcess({self.url}, dir={self.dir}, running={self.running})"


class KafkaProcess(_ServiceProcess):
    """A single-node KRaft Kafka (broker + controller) on 127.0.0.1, data and logs under DIR/kafka."""

    name = "kafka"
    pattern = "kafka.Kafka"

    def __init__(self, directory: str | os.PathLike, port: int | None = None,
                 controller_port: int | None = None):
        super().__init__(directory)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()

    def _start_args(self) -> list[str]:
        return [str(self.port), str(self.controller_port), str(self.dir)]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "kafka" / "logs" / "server.log"

    def __repr__(self) -> str:
        return f"KafkaProcess({self.bootstrap}, dir={self.dir}, running={self.running})"


class GaleraProcess(_ServiceProcess):
    """Two mariadbd (n1, n2) and garbd on 127.0.0.1, data and logs under DIR/galera (scripts/mariadb.sh).
    ``kill("n1")`` is a crash (SIGKILL); ``start()`` again brings back whatever is down (the killed node
    rejoins and catches up)."""

    name = "galera"
    pattern = "mariadbd"

    def __init__(self, directory: str | os.PathLike, ports: tuple[int, int] | None = None):
        super().__init__(directory)
        self.ports = ports or (free_port(), free_port())
        while self.ports[0] == self.ports[1]:
            self.ports = (self.ports[0], free_port())

    def _start_args(self) -> list[str]:
        return [str(self.ports[0]), str(self.ports[1]), str(self.dir)]

    def _pidfile(self, member: str) -> Path:
        return self.dir / "galera" / (f"{member}/{member}.pid" if member != "garbd" else "garbd.pid")

    def member_pid(self, member: str) -> int | None:
        """The pid of ``n1``, ``n2`` or ``garbd``, None when it is not running."""
        return _pid_alive(self._pidfile(member), "garbd" if member == "garbd" else "mariadbd")

    @property
    def pid(self) -> int | None:  # "running" means all three members run
        pids = [self.member_pid(m) for m in ("n1", "n2", "garbd")]
        return pids[0] if all(pids) else None

    @property
    def addrs(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def kill(self, member: str) -> None:
        """SIGKILL one member, like a crash; returns once it is gone."""
        pid = self.member_pid(member)
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, hard: bool = False) -> None:
        if hard:
            for member in ("garbd", "n2", "n1"):
                self.kill(member)
        run_script("stop-mariadb", str(self.dir), "galera")
        _live.discard(self)

    def __repr__(self) -> str:
        return f"GaleraProcess({self.addrs}, dir={self.dir}, running={self.running})"


def create_database(addrs: list[str], name: str) -> None:
    """CREATE DATABASE ``name`` (dropped first) as user test, on the first server that does it."""
    import asyncio

    import asyncmy

    async def go():
        last = None
        for addr in addrs:
            host, _, port = addr.rpartition(":")
            conn = None
            try:
                # bounded both ways: a server that stops answering costs a minute, never the whole run
                conn = await asyncmy.connect(host=host, port=int(port), user="test", autocommit=True,
                                             connect_timeout=10, read_timeout=60)
                async with conn.cursor() as cur:
                    await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                    # IF NOT EXISTS: a statement that timed out on the server before may still land
                    await cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
                return
            except Exception as e:  # noqa: BLE001 - try the next server
                last = e
            finally:
                if conn is not None:
                    conn.close()
        raise RuntimeError(f"no MariaDB server created database {name} at {addrs}: {last}")

    asyncio.run(go())


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(Exception):
            proc.stop()


def _session_process(kind: str) -> _ServiceProcess:
    try:
        return _session[kind]
    except KeyError:
        raise RuntimeError(f"no session {kind} was started here (is {KAFKA_ENV if kind == 'kafka' else REDIS_ENV}"
                           " set, or did the test not request the fixture?)") from None


def stop_kafka(hard: bool = False) -> None:
    """Stop the session's Kafka (the one behind ``kafka_bootstrap``)."""
    _session_process("kafka").stop(hard=hard)


def start_kafka() -> None:
    """Bring the session's Kafka back on the same ports and data dir."""
    _session_process("kafka").start()


def kafka_down(hard: bool = False):
    """Context manager: the session's Kafka is stopped inside the block and running again after it."""
    return _session_process("kafka").down(hard=hard)


def galera() -> "GaleraProcess":
    """The session's Galera pair (the one behind ``mariadb_addrs``)."""
    return _session_process("galera")


def stop_redis(hard: bool = False) -> None:
    _session_process("redis").stop(hard=hard)


def start_redis() -> None:
    _session_process("redis").start()


def redis_down(hard: bool = False):
    return _session_process("redis").down(hard=hard)


# ------------------------------------------------------------------------------------------------ fixtures

_users: dict[str, int] = {}


def _session_service(kind: str, cls):
    # One process per kind for the whole session, even when the fixture is instantiated more than once
    # (a test module that imports the fixtures by name gets its own copies of them): the last user stops it.
    proc = _session.get(kind)
    if proc is None:
        # Not under pytest's basetemp: a concurrent pytest session on the machine prunes old basetemp
        # dirs, which would pull the data dir from under a running broker. Removed after the stop
        # (unless IMGATE_TEST_SERVICES_KEEP=1), or left with the logs when the start failed.
        proc = cls(Path(tempfile.mkdtemp(prefix=f"imgate-{kind}-")))
        proc.start()
        _session[kind] = proc
        _users[kind] = 0
    elif not proc.running:  # left stopped by a test
        proc.start()
    _users[kind] += 1
    try:
        yield proc
    finally:
        _users[kind] -= 1
        if _users[kind] == 0:
            del _session[kind], _users[kind]
            proc.stop()
            if not os.environ.get("IMGATE_TEST_SERVICES_KEEP"):
                shutil.rmtree(proc.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_process():
    if os.environ.get(REDIS_ENV):
        pytest.skip(f"{REDIS_ENV} is set: the external Redis can't be stopped and started by the tests")
    yield from _session_service("redis", RedisProcess)


@pytest.fixture(scope="session")
def kafka_process():
    if os.environ.get(KAFKA_ENV):
        pytest.skip(f"{KAFKA_ENV} is set: the external Kafka can't be stopped and started by the tests")
    yield from _session_service("kafka", KafkaProcess)


@pytest.fixture(scope="session")
def galera_process():
    if os.environ.get(MARIADB_ENV):
        pytest.skip(f"{MARIADB_ENV} is set: the external MariaDB can't be stopped and started by the tests")
    pytest.importorskip("asyncmy")
    yield from _session_service("galera", GaleraProcess)


@pytest.fixture(scope="session")
def mariadb_addrs(request) -> list[str]:
    external = os.environ.get(MARIADB_ENV)
    if external:
        return [a.strip() for a in external.split(",") if a.strip()]
    return request.getfixturevalue("galera_process").addrs


@pytest.fixture(scope="session")
def redis_url(request) -> str:
    external = os.environ.get(REDIS_ENV)
    if external:
        return external
    return request.getfixturevalue("redis_process").url


@pytest.fixture(scope="session")
def kafka_bootstrap(request) -> str:
    external = os.environ.get(KAFKA_ENV)
    if external:
        return external
    return request.getfixturevalue("kafka_process").bootstrap
