"""One zsvc daemon of this checkout for a benchmark: started ``--detach`` in private short
directories, measured through its CLI, its control socket and its bus, and always shut
down (``zsvc shutdown``, then SIGTERM/SIGKILL of its pid, then of every task it had).

By default the zsvc processes (daemon, CLI, task hosts) get a private bytecode cache
(``PYTHONPYCACHEPREFIX``), as an installed package would have its .pyc files; this
checkout has no ``__pycache__`` and the environment may set PYTHONDONTWRITEBYTECODE, in
which case every process would compile zsvc's sources again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from lib.procs import BenchError, Run, is_gone, kill_leftovers, remember, run, stop_process
from lib.watch import Drain
from zsvc.client import BusClient, ControlClient
from zsvc.paths import RuntimeLayout

MIB = 1024 * 1024
IPC_PATH_LIMIT = 100
"""sockaddr_un holds 108 bytes; the runtime directory's sockets stay well below."""
ZYGOTE_MARKER = "zsvc.runners.zygote"
WARM_MODULES = (
    "zmq psutil lxml.etree zsvc.task.host zsvc.daemon.main zsvc.daemon.server"
    " zsvc.runners.zygote zsvc.cli.app zsvc.cli.render zsvc.cli.fast zsvc.config.loader"
)
"""What the zsvc processes import, compiled once before anything is measured."""
WARM_CODE = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        importlib.import_module(name)\n"
    "    except ImportError:\n"
    "        pass  # a module renamed since: the warm-up is only a cache\n"
)


def zsvc_argv() -> list[str]:
    """The ``zsvc`` CLI of the running interpreter (its script, or the module)."""
    script = Path(sys.executable).parent / "zsvc"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from zsvc.cli import main; main()"]


def clean_env() -> dict[str, str]:
    """The bench's environment without what would make a manager think it is managed
    (sd_notify, watchdog) or change how zsvc runs its tasks (``ZSVC_ZYGOTE``)."""
    env = dict(os.environ)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "ZSVC_ZYGOTE"):
        env.pop(key, None)
    return env


def zsvc_env(
    runtime: Path, state: Path, pyc: Path | None, zygote: bool | None = True
) -> dict[str, str]:
    """The environment of a daemon in *runtime*/*state* and of its CLI and tasks.

    *pyc*: the private bytecode cache (None: the environment as inherited). *zygote*:
    True, the default (Python tasks forked from the zygote); False, ``ZSVC_ZYGOTE=0``
    (every task host executed); None, whatever the environment says.
    """
    env = clean_env()
    if zygote is None and "ZSVC_ZYGOTE" in os.environ:
        env["ZSVC_ZYGOTE"] = os.environ["ZSVC_ZYGOTE"]
    elif zygote is False:
        env["ZSVC_ZYGOTE"] = "0"
    env["ZSVC_RUNTIME_DIR"] = str(runtime)
    env["ZSVC_STATE_DIR"] = str(state)
    if pyc is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pyc)
    return env


def warm_up(env: dict[str, str]) -> None:
    """Fill the bytecode cache (or the page cache) once, so that no sample pays for it."""
    run([sys.executable, "-c", WARM_CODE, *WARM_MODULES.split()], 120, env=env)
    run([*zsvc_argv(), "--help"], 60, env=env)


def daemon_from_lock(layout: RuntimeLayout) -> psutil.Process | None:
    """A daemon that --detach started but never reported (its pid is in the lock file)."""
    try:
        pid = int(layout.lock.read_text().strip())
        proc = psutil.Process(pid)
        if "zsvc.daemon" in " ".join(proc.cmdline()) and proc.pid != os.getpid():
            return proc
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def zygote_of(daemon: psutil.Process) -> psutil.Process | None:
    """The daemon's zygote: its oldest child running ``zsvc.runners.zygote``.

    The task hosts the zygote forks carry the same command line and, re-parented,
    are the daemon's children too (and may end while they are looked at).
    """
    zygotes = []
    for child in daemon.children():
        with contextlib.suppress(psutil.Error):
            if ZYGOTE_MARKER in " ".join(child.cmdline()):
                zygotes.append((child.create_time(), child))
    return min(zygotes, key=lambda found: found[0])[1] if zygotes else None


def drain_queued(bus: BusClient) -> int:
    """Drop what the bus subscriber has queued (earlier starts and stops); how many."""
    dropped = 0
    while bus.sub.poll(0):
        bus.sub.recv_multipart()
        dropped += 1
    return dropped


@dataclass
class Kill:
    """One SIGKILL of a task: seconds until its ``failed`` and its replacement's ``started``."""

    failed: float | None
    started: float | None
    new_pid: int | None


def kill_task(
    bus: BusClient, pid: int, transaction: str, task_id: str, until: str, timeout: float
) -> Kill:
    """SIGKILL *pid*, task *task_id*, and read the bus until *until* (``failed``, or
    ``started`` with another pid: the replacement is READY) within *timeout* s.

    *bus* subscribes to ``control``; what it had queued is dropped first.
    """
    drain_queued(bus)
    start = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    deadline = start + timeout
    failed = None
    while True:
        message = bus.receive(max(0.001, deadline - time.perf_counter()))
        now = time.perf_counter()
        if message is None:
            if now >= deadline:
                seen = "" if until == "failed" else f" ('failed' seen: {failed is not None})"
                raise BenchError(f"no '{until}' for {task_id} within {timeout:g} s{seen}")
            continue
        if message.service_id != task_id or message.transaction != transaction:
            continue
        if message.action == "failed" and failed is None:
            failed = now - start
            if until == "failed":
                return Kill(failed, None, None)
        new_pid = message.status.get("pid") if message.action == "started" else None
        if until == "started" and new_pid and new_pid != pid:
            return Kill(failed, now - start, int(new_pid))


class ZsvcDaemon:
    """A daemon of this checkout in ``<home>/r`` (runtime) and ``<home>/s`` (state)."""

    def __init__(
        self,
        home: Path,
        pyc: Path | None = None,
        zygote: bool | None = True,
        client_timeout: float = 10.0,
    ):
        self.home = home
        self.runtime = home / "r"
        self.state = home / "s"
        self.layout = RuntimeLayout(self.runtime)
        if len(str(self.layout.bus_sub)) >= IPC_PATH_LIMIT:
            raise BenchError(f"runtime dir {self.runtime} is too long for ipc sockets")
        self.env = zsvc_env(self.runtime, self.state, pyc, zygote)
        self.zsvc = zsvc_argv()
        self.client_timeout = client_timeout
        self.proc: psutil.Process | None = None
        self.info: dict[str, Any] = {}
        self.client: ControlClient | None = None
        self.tasks_seen: dict[int, psutil.Process] = {}
        self.shutdown_s: float | None = None
        """From ``zsvc shutdown`` until the daemon exited, when it did within 30 s."""

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> Run:
        """``python -m zsvc.daemon --detach`` (returns at READY=1), then ``zsvc ping``."""
        argv = [sys.executable, "-m", "zsvc.daemon", "--detach"]
        argv += ["--runtime-dir", str(self.runtime), "--state-dir", str(self.state)]
        detached = run(argv, 60, env=self.env)
        self.info = json.loads(self.cli("ping", timeout=30).stdout)
        self.proc = psutil.Process(int(self.info["pid"]))
        self.client = ControlClient(self.runtime, timeout=self.client_timeout)
        return detached

    def shutdown(self) -> list[int]:
        """Stop the daemon and its tasks, bounded; kill by pid whatever outlives that.

        Safe to call again. Returns the pids of the task processes it had to kill.
        """
        if self.client is not None:
            self.client.close()
            self.client = None
        daemon = self.proc or daemon_from_lock(self.layout)
        if daemon is not None and not is_gone(daemon):
            start = time.perf_counter()
            graceful = functools.partial(self.cli, "shutdown", timeout=30, ok=None)
            if stop_process(daemon, graceful, self.tasks_seen) and self.proc is not None:
                self.shutdown_s = time.perf_counter() - start
        return kill_leftovers(self.tasks_seen)

    # --- talking to it ----------------------------------------------------------------------

    def cli(self, *args: str, timeout: float, ok: Any = (0,), cwd: Path | None = None) -> Run:
        """``zsvc ARGS`` as a CLI process of its own, timed (see :func:`lib.procs.run`)."""
        return run([*self.zsvc, *args], timeout, env=self.env, ok=ok, cwd=cwd)

    def call(self, command: str, wait: float = 10.0, **args: Any) -> Any:
        """One control request on the bench's own connection."""
        if self.client is None:
            raise BenchError("the daemon is not running")
        return self.client.call(command, wait=wait, **args)

    def bus(self, topics: list[str], handshake: float = 5.0) -> BusClient:
        """A bus subscriber to *topics*, its subscription confirmed (handshake)."""
        bus = BusClient(self.layout.bus_pub_endpoint, self.layout.bus_sub_endpoint, topics)
        try:
            bus.handshake(handshake)
        except BaseException:
            bus.close()
            raise
        return bus

    def watch_monitor(self) -> Drain:
        """One ``monitor`` subscriber draining its samples in a thread (what makes the
        daemon sample, as ``zsvc monitor`` does)."""
        bus = self.bus(["monitor"], handshake=10.0)
        return Drain(lambda timeout: bus.receive(timeout) is not None, bus.close)

    def remember(self, record: dict[str, Any]) -> list[psutil.Process]:
        """Keep a handle on every task of a ``status`` record that has a pid; those handles."""
        return remember(self.tasks_seen, [task.get("pid") for task in record["tasks"]])

    # --- measuring it -----------------------------------------------------------------------

    @property
    def running(self) -> psutil.Process:
        if self.proc is None:
            raise BenchError("the daemon is not running")
        return self.proc

    def zygote(self) -> psutil.Process | None:
        return zygote_of(self.running)

    def cpu(self) -> float:
        times = self.running.cpu_times()
        return times.user + times.system

    def reaped_cpu(self) -> float:
        """CPU of the processes the daemon reaped (every task: it is their subreaper)."""
        times = self.running.cpu_times()
        return times.children_user + times.children_system

    def rss(self) -> float:
        return self.running.memory_info().rss / MIB

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.running.pid}/fd"))
