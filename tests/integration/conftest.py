"""Fixtures for tests against a real daemon, real task processes and real sockets.

Each test gets its own daemon with a private runtime and state directory
(short paths under /tmp: unix socket paths are limited to 107 bytes) and
contexts on free TCP ports. A daemon is started the way a supervisor
starts it: with NOTIFY_SOCKET set, and the fixture waits for its READY=1.
Every wait has a deadline; teardown always stops the daemon and every task.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import psutil
import pytest

from zsvc import protocol
from zsvc.client import BusClient, ControlClient
from zsvc.notify import NotifyServer

REPO = Path(__file__).resolve().parents[2]
TEST_SERVICES = REPO / "tests" / "tasks"
REPO_SERVICES = REPO / "Services"
IGNORES_SIGTERM = "python3 -c '{}'".format(
    "import os, signal, socket, time;"
    " signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto("
    'b"READY=1", os.environ["NOTIFY_SOCKET"]);'
    " time.sleep(600)"
)
"""A command task that only SIGKILL ends; use it with notify=True: it says READY=1 only
once SIGTERM is ignored, so a stop can never catch it still starting."""
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A free TCP port on loopback, never one this test process handed out before.

    Two binds to port 0 in a row return the same port about once in 13,000
    pairs here; a context whose sub and pub endpoints then coincide is
    (rightly) refused, and two contexts sharing a port fail to bind. CI once
    failed on that, so every port is handed out once per process.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with _HANDED_OUT_LOCK:
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


@dataclass
class TaskDef:
    """One TaskService for :func:`render_context`."""

    id: str
    instance: str = "Sleeper"
    service_name: str = ""
    entry: str = "on_start"
    config: dict[str, Any] = field(default_factory=dict)
    location: Path | None = TEST_SERVICES
    command: str | None = None
    notify: bool = False
    start_timeout: float = 20.0
    stop_timeout: float = 5.0
    triggers: dict[str, tuple[str, str]] = field(default_factory=dict)
    attrs: dict[str, str] = field(default_factory=dict)
    """More attributes of <TaskService> (restart=, after=, watchdog_sec=, kill_signal=, …)."""
    command_type: str | None = None
    """<command type=…> (simple, exec, notify, forking); given, it replaces notify=."""
    pid_file: str | None = None
    """<command pid_file=…> (with command_type="forking")."""
    exec_attrs: dict[str, str] = field(default_factory=dict)
    """Attributes of <exec> (user=, working_directory=, umask=, memory_max=, …)."""
    environment: dict[str, str] = field(default_factory=dict)
    """<environment name=…> elements of <exec>."""
    environment_files: list[str] = field(default_factory=list)
    """<environment_file> elements of <exec>; a leading "-" (systemd's) makes one optional."""
    extra_xml: str = ""
    """Raw XML inserted into <Task>, for what the fields above do not say."""

    def exec_xml(self) -> str:
        """The <exec> element, or "" when the task has no execution settings."""
        if not (self.exec_attrs or self.environment or self.environment_files):
            return ""
        attrs = "".join(
            f' {k}="{escape(v, {chr(34): "&quot;"})}"' for k, v in self.exec_attrs.items()
        )
        env = "".join(
            f'<environment name="{name}">{escape(value)}</environment>'
            for name, value in self.environment.items()
        )
        for path in self.environment_files:
            optional = ' optional="true"' if path.startswith("-") else ""
            env += (
                f"<environment_file{optional}>{escape(path.removeprefix('-'))}</environment_file>"
            )
        return f"<exec{attrs}>{env}</exec>"

    def command_xml(self) -> str:
        """The <command> element, or "" for a Python task."""
        if self.command is None:
            return ""
        kind = (
            f'type="{self.command_type}"'
            if self.command_type is not None
            else f'notify="{"true" if self.notify else "false"}"'
        )
        pid_file = f' pid_file="{escape(self.pid_file)}"' if self.pid_file is not None else ""
        return f"<command {kind}{pid_file}>{escape(self.command)}</command>"


def render_context(
    tasks: list[TaskDef], sub_port: int, pub_port: int, context_id: str = "ctx"
) -> str:
    """A context file in the seed's format."""
    services = []
    for task in tasks:
        config = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in task.config.items())
        if task.location is not None:
            config += f"<location>{escape(str(task.location))}</location>"
        command = task.command_xml() + task.exec_xml() + task.extra_xml
        triggers = "".join(
            f"<{name}><action>{action}</action><call>{call}</call></{name}>"
            for name, (action, call) in task.triggers.items()
        )
        extra = "".join(f' {name}="{escape(value)}"' for name, value in task.attrs.items())
        services.append(
            f"""
  <TaskService id="{task.id}" instance="{task.instance}" serviceType="Process" topic="process"
               start_timeout="{task.start_timeout}" stop_timeout="{task.stop_timeout}"{extra}>
    <Task>
      <description>test task {task.id}</description>{command}
      <message>
        <header>
          <action>start</action><service_name>{task.service_name or task.id}</service_name>
        </header>
        <content><configuration>{config}</configuration></content>
      </message>
      <state type="{task.entry}">{triggers}</state>
    </Task>
  </TaskService>"""
        )
    return f"""<?xml version="1.0"?>
<Context>
  <FrontEndEndpoint>tcp://127.0.0.1:{sub_port}</FrontEndEndpoint>
  <BackendEndpoint>tcp://127.0.0.1:{pub_port}</BackendEndpoint>
  <ContextID>{context_id}</ContextID>
  <TaskLogName>tests</TaskLogName>{"".join(services)}
</Context>
"""


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Daemon:
    """A real ``python -m zsvc.daemon`` in private directories."""

    def __init__(self, root: Path):
        self.root = root
        self.runtime = root / "run"
        self.state = root / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "daemon.log"
        self.buses: list[BusClient] = []

    # --- life cycle ------------------------------------------------------------

    def start(self, *contexts: Path, expect_ready: bool = True, args: Sequence[str] = ()) -> Daemon:
        """Start ``zsvc daemon CONTEXT… ARGS…`` and (by default) wait for its READY=1."""
        with NotifyServer(self.root / "supervisor.sock") as server:
            env = dict(os.environ, NOTIFY_SOCKET=server.path, ZSVC_RUNTIME_DIR=str(self.runtime))
            env["ZSVC_STATE_DIR"] = str(self.state)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "zsvc.daemon", *map(str, contexts), *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if expect_ready:
                self._await_ready(server)
        return self

    def _await_ready(self, server: NotifyServer) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.proc is not None
        while time.monotonic() < deadline:
            readable, _, _ = select.select([server.fileno()], [], [], 0.2)
            if readable and any(not isinstance(n, Exception) and n.ready for n in server.drain()):
                return
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        pytest.fail(f"daemon not ready within {READY_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close_buses(self) -> None:
        while self.buses:
            self.buses.pop().close()

    def terminate(self) -> int | None:
        """SIGTERM and a bounded wait; SIGKILL (and the tasks) if that fails."""
        self.close_buses()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            return None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)

    # --- talking to it -----------------------------------------------------------

    def client(self, timeout: float = 30.0) -> ControlClient:
        return ControlClient(self.runtime, timeout=timeout)

    def call(self, command: str, **args: Any) -> Any:
        with self.client() as client:
            return client.call(command, **args)

    def cli(self, *args: str, timeout: float = 60.0) -> CliResult:
        env = dict(os.environ, ZSVC_RUNTIME_DIR=str(self.runtime), ZSVC_STATE_DIR=str(self.state))
        done = subprocess.run(
            [sys.executable, "-m", "zsvc", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    def bus(self, *topics: str) -> BusClient:
        """A bus client on this daemon, closed at teardown (a test that fails early cannot
        leave a ZMQ context whose term() would wait forever for its open sockets)."""
        bus = BusClient(
            f"ipc://{self.runtime / 'bus-pub'}", f"ipc://{self.runtime / 'bus-sub'}", topics=topics
        )
        self.buses.append(bus)
        bus.handshake(10.0)
        return bus

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def wait_message(
    bus: BusClient, match: Callable[[protocol.Message], bool], timeout: float = 20.0
) -> protocol.Message:
    """The first message on *bus* that *match* accepts, within *timeout* seconds."""
    deadline = time.monotonic() + timeout
    seen = []
    while (remaining := deadline - time.monotonic()) > 0:
        message = bus.receive(remaining)
        if message is None:
            break
        if match(message):
            return message
        seen.append((message.topic, message.action, message.service_id))
    pytest.fail(f"no matching message within {timeout} s; saw {seen[-20:]}")


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "",
    log: Callable[[], str] | None = None,
) -> Any:
    """Poll a condition with a deadline (for facts no event announces, e.g. a pid vanishing).

    *log* (a daemon's ``log``) is shown when the condition is not met.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    shown = f"\n--- daemon log ---\n{log()[-4000:]}" if log is not None else ""
    pytest.fail(f"condition not met within {timeout} s: {what or predicate}{shown}")


LOW_FD_LIMIT = 1024
"""Debian's default soft open-files limit (a shell's, a systemd service's)."""


@contextlib.contextmanager
def soft_fd_limit(soft: int = LOW_FD_LIMIT) -> Iterator[int]:
    """Run the body under the soft open-files limit *soft*, so a daemon started in it
    inherits that limit; yields the hard limit. Skips the test when the hard limit
    leaves the daemon nothing to raise."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= soft:
        pytest.skip(f"the hard open-files limit is {hard}: nothing to raise above {soft}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def fd_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) open-files limit of process *pid* (RLIM_INFINITY is -1)."""
    soft, hard = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
    return soft, hard


def zygote_of(daemon_pid: int) -> psutil.Process | None:
    """The daemon's zygote (:mod:`zsvc.runners.zygote`), if it runs one."""
    for child in psutil.Process(daemon_pid).children():
        with contextlib.suppress(psutil.Error):
            if "zsvc.runners.zygote" in child.cmdline():
                return child
    return None


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="zt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemons(workdir: Path) -> Iterator[Callable[..., Daemon]]:
    """A factory of daemons in *workdir*; all are stopped (tasks included) at teardown."""
    started: list[Daemon] = []

    def make(
        *contexts: Path,
        root: Path | None = None,
        expect_ready: bool = True,
        args: Sequence[str] = (),
    ) -> Daemon:
        daemon = Daemon(root or workdir)
        started.append(daemon)
        return daemon.start(*contexts, expect_ready=expect_ready, args=args)

    yield make
    for daemon in started:
        daemon.terminate()
    _kill_leftovers(workdir)


def _kill_leftovers(workdir: Path) -> None:
    """No test leaves a task behind: kill any process whose environment names this test's dirs."""
    needle = str(workdir).encode()
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid == os.getpid():
                continue
            with open(f"/proc/{proc.pid}/environ", "rb") as handle:
                if needle in handle.read():
                    proc.kill()


@pytest.fixture
def daemon(daemons: Callable[..., Daemon]) -> Daemon:
    return daemons()


@pytest.fixture
def make_context(workdir: Path) -> Callable[..., Path]:
    """Write a context file of :class:`TaskDef` on free ports; returns its path."""
    counter = iter(range(1000))

    def make(tasks: list[TaskDef], name: str | None = None) -> Path:
        path = workdir / f"Context-{name or next(counter)}.xml"
        path.write_text(render_context(tasks, free_port(), free_port()))
        return path

    return make


def python_for_user(uid: int, gid: int) -> str:
    """An interpreter with zsvc and its dependencies that another user *uid* may run (this
    one may be under /root, and a package build runs the suite from a 0700 directory), or
    skip the test: it then proves nothing about another user."""
    candidates = [sys.executable, str(REPO / ".venv-floor" / "bin" / "python"), "/usr/bin/python3"]
    env = {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"}
    for python in dict.fromkeys(candidates):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            probe = subprocess.run(
                [python, "-c", "import zmq, zsvc.cli.app, zsvc.daemon.main"],
                user=uid,
                group=gid,
                extra_groups=[],
                env=env,
                cwd="/",
                capture_output=True,
                timeout=60,
            )
            if probe.returncode == 0:
                return python
    pytest.skip("no interpreter with zsvc's dependencies that another user may run")
