"""pytest plugin: a real Redis and a real single-node Kafka (KRaft) for the tests, run by scripts/services.sh.

Load it from a test module (``pytest_plugins = ["services"]``) or from tests/conftest.py; either way its
fixtures are session-wide, so one Redis and one Kafka serve the whole run.

Fixtures (session scope):

- ``redis_url``: ``redis://127.0.0.1:PORT/0`` of a Redis started on a free port under a temporary dir,
  or ``$IMGATE_TEST_REDIS_URL`` when that is set (then nothing is started).
- ``kafka_bootstrap``: ``127.0.0.1:PORT`` of a Kafka broker started on free ports, or
  ``$IMGATE_TEST_KAFKA`` when that is set.
- ``redis_process`` / ``kafka_process``: the :class:`RedisProcess` / :class:`KafkaProcess` behind those,
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

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services.sh"

REDIS_ENV = "IMGATE_TEST_REDIS_URL"
KAFKA_ENV = "IMGATE_TEST_KAFKA"

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
    if what not in _installed:
        run_script(f"install-{what}", timeout=900)
        _installed.add(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
