"""The local runner: the daemon's own embedded supervisor, systemd's semantics without systemd.

Each task is a child process in its own process group. Readiness and
status arrive on one sd_notify datagram socket (the sender's pid, from
SO_PASSCRED, says which task spoke), so a program that works under systemd
works here unchanged. The exit of a task is noticed the moment it happens
through a pidfd in the event loop (no polling), and classified the way
systemd classifies a ``Type=notify`` service's end.

Task output is appended straight to its log file (O_APPEND), not piped
through the daemon: a task must keep running, and keep logging, while the
daemon is restarted. The daemon caps the file's size (:mod:`zsvc.daemon.logs`).

**Leaving no process behind** (systemd's ``KillMode=control-group``). Stop is
SIGTERM to the task, the stop timeout, then SIGKILL to everything it started;
when the main process ends by itself, whatever it left is SIGKILLed too. How
"everything" is found depends on the machine:

* *With a writable cgroup2 hierarchy* (root; :mod:`zsvc.runners.cgroup`), each
  run gets its own cgroup ``zsvc.slice/<unit>``, joined by the task's first
  process before any task code runs: a zygote task joins first thing after
  the fork; an executed task is started through ``/bin/sh -c`` that writes
  its own pid to ``cgroup.procs`` and then execs the real program (same pid;
  no ``preexec_fn``, the daemon has threads). No descendant can leave it,
  whether it double-forks, calls setsid or changes its process group.
  SIGTERM goes to every process in the group, SIGKILL through
  ``cgroup.kill``; the task's end is reported once ``cgroup.events`` says
  ``populated 0`` (bounded by :data:`KILL_WAIT`), and the group is removed.
  The group's path is part of :meth:`LocalTask.describe`, so a task re-adopted
  after a daemon restart is still killed as a whole.
* *Without one* (not root, a read-only or cgroup1-only machine, or
  ``ZSVC_CGROUPS=0``), the task's process group is signalled, the descendants
  seen at stop time are SIGKILLed, and the daemon is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``): an orphan re-parented to it whose environment
  carries the invocation id (:data:`~zsvc.runners.base.INVOCATION_ENV`) of a
  run that has ended is SIGKILLed, when that run ends or later when any child
  of the daemon dies. Limits: an orphan that was forked without exec from a
  zygote task has the zygote's environment and cannot be told from another;
  one that cleared its environment cannot either; and an orphan of a task
  re-adopted after a daemon restart is re-parented to init, not to the new
  daemon, so only its process group and the descendants still attached to
  the main process are found.

With the shell wrapper, an executable that cannot be found or run is
refused before the start (exit status 203, as before); one that disappears
in between makes the shell exit with 127 (126: not executable), and a
file without a ``#!`` line is run by the shell instead of failing
(ENOEXEC). A task that cannot join its cgroup exits with 219 (EXIT_CGROUP).

**The open-files limit** (``task_fd_limit``). The daemon lifts its own soft
``RLIMIT_NOFILE`` to the hard limit (:func:`zsvc.daemon.server.raise_fd_limit`);
its tasks get back the soft limit it was started with, as systemd gives
its services 1024 whatever its own limit: a program that uses select()
breaks on an fd of 1024 or more. The zygote sets that limit on itself
before it imports anything, so every task it forks has it; an executed task
(a command, or a Python task without the zygote) sets it in the shell wrapper
above (``ulimit -S -n``, then ``exec``; exit status 205, systemd's
EXIT_LIMITS, if that fails), which is then used with or without a cgroup.
Why not ``preexec_fn``, nor a ``prlimit`` afterwards: see :func:`wrap_exec`.

**Watchdog** (``LaunchSpec.watchdog_sec``): the task gets ``WATCHDOG_USEC``
(and, when forked by the zygote, ``WATCHDOG_PID``; an executed task's pid is
not known before it runs, and a missing ``WATCHDOG_PID`` means "the main
process"). From READY=1 on, a task that sends no WATCHDOG=1 for that long
(or sends WATCHDOG=trigger) gets SIGABRT, systemd's ``WatchdogSignal``; if
it survives the stop timeout, the normal stop follows. Its result is
``watchdog``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from zsvc.notify import Notification, NotifyProtocolError, NotifyServer
from zsvc.paths import RuntimeLayout
from zsvc.procs import (
    children_of,
    descendants,
    environ_of,
    invocation_in,
    invocation_of,
    process_start_time,
)
from zsvc.runners.base import (
    INVOCATION_ENV,
    ExitInfo,
    LaunchError,
    LaunchSpec,
    Runner,
    RunnerEvents,
    TaskHandle,
    TaskKey,
)
from zsvc.runners.cgroup import Cgroup, CgroupTree, cgroup_of, find_hierarchy
from zsvc.runners.exitcodes import EXIT_CGROUP, EXIT_CHDIR, EXIT_EXEC, EXIT_LIMITS, KILL_WAIT
from zsvc.states import Result

log = logging.getLogger(__name__)

CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
"""Signals systemd counts as a clean end (systemd.service(5), SuccessExitStatus=)."""
WATCHDOG_SIGNAL = signal.SIGABRT
"""systemd's default ``WatchdogSignal=``."""
SHELL = "/bin/sh"
JOIN_CGROUP = (
    'echo $$ > "$1/cgroup.procs"'
    f' || {{ echo "zsvc: cannot join the cgroup $1" >&2; exit {EXIT_CGROUP}; }}\n'
    "shift\n"
)
"""``sh -c`` step: join the cgroup given as $1 (and drop it from the arguments)."""
SET_FD_LIMIT = (
    'ulimit -S -n "$1"'
    f' || {{ echo "zsvc: cannot set the open-files limit to $1" >&2; exit {EXIT_LIMITS}; }}\n'
    "shift\n"
)
"""``sh -c`` step: set the soft open-files limit given as $1 (and drop it from the arguments)."""
EXEC = 'exec "$@"'
"""``sh -c`` last step: become the task (the same pid)."""
FINISHED_LIMIT = 1024
"""How many ended runs' invocation ids are kept to recognise their orphans (no cgroup)."""
ORPHAN_LOOKS = 10
ORPHAN_LOOK_DELAY = 0.02
"""A child whose environment cannot be read yet (inside execve) is looked at again after
this many seconds, ORPHAN_LOOKS times in all (0.2 s: an exec takes a few milliseconds)."""


@dataclass(eq=False)
class LocalTask(TaskHandle):
    """A task process supervised by the local runner."""

    runner: LocalRunner | None = None
    pgid: int = 0
    adopted: bool = False
    start_time: float | None = None
    ready: bool = False
    reason: Result | None = None  # set when zsvc itself ends the process (timeout, …)
    stop_requested: bool = False
    pidfd: int = -1
    last_ping: float | None = None
    descendants: set[int] = field(default_factory=set)
    cgroup: Cgroup | None = None
    """The task's own cgroup, when the runner has a writable cgroup2 hierarchy."""
    invocation: str | None = None
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the task has fully ended: the main process and whatever it left behind."""
    _main_gone: asyncio.Event = field(default_factory=asyncio.Event)
    _start_timer: asyncio.TimerHandle | None = None
    _watchdog_timer: asyncio.TimerHandle | None = None
    _watchdog_since: float = 0.0
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    async def wait(self) -> ExitInfo:
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    def send_signal(self, signum: int) -> None:
        if self.exit_info is None and not self._main_gone.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def stop(self, timeout: float | None = None) -> ExitInfo:
        if self.exit_info is not None:
            return self.exit_info
        self.stop_requested = True
        self._cancel_timers()
        if not self._main_gone.is_set():
            self._remember_descendants()
            self._signal_all(signal.SIGTERM)
            limit = self.spec.stop_timeout if timeout is None else timeout
            try:
                await asyncio.wait_for(self._main_gone.wait(), limit)
            except TimeoutError:
                log.warning("%s/%s did not stop within %g s: SIGKILL", *self.key, limit)
                if self.reason is None:  # the first reason stays (watchdog, start timeout)
                    self.reason = Result.TIMEOUT
                self.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._main_gone.wait(), KILL_WAIT)
            if not self._main_gone.is_set():  # not even SIGKILL ended it (uninterruptible sleep)
                reason = self.reason or Result.TIMEOUT
                self._finish(ExitInfo(reason, detail="did not die after SIGKILL"))
        # What the main process left behind is killed now; bounded by KILL_WAIT.
        await self._exited.wait()
        return self.exit_info  # type: ignore[return-value]

    def kill(self) -> None:
        self._remember_descendants()
        self._signal_group(signal.SIGKILL)
        # cgroup.kill costs far more than a look at cgroup.events: after a crash the
        # group is usually empty already, and a crash loop would pay it every run.
        if self.cgroup is not None and self.cgroup.populated():
            self.cgroup.kill()
        self._kill_descendants()
        if self.cgroup is None and self.runner is not None and self.invocation:
            self.runner._kill_orphans({self.invocation})

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "pgid": self.pgid,
            "start_time": self.start_time,
            "cgroup": str(self.cgroup.path) if self.cgroup is not None else None,
        }

    def processes(self) -> list[int]:
        """The task's cgroup is its exact process set (a setsid grandchild included)."""
        if self.cgroup is None:
            return super().processes()
        members = self.cgroup.procs()
        return [self.pid, *sorted(pid for pid in members if pid != self.pid)]

    # --- internals --------------------------------------------------------

    def _kill_descendants(self) -> None:
        """SIGKILL the descendants remembered so far (those that left the process group)."""
        for pid in self.descendants:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def _signal_all(self, signum: int) -> None:
        """*signum* to the process group and, with a cgroup, to every process of the task."""
        self._signal_group(signum)
        if self.cgroup is not None:
            self.cgroup.signal(signum)

    def _remember_descendants(self) -> None:
        """Record every descendant now, so that one that left the process group is killed too."""
        if not self._main_gone.is_set():
            self.descendants.update(descendants(self.pid))

    def _cancel_start_timer(self) -> None:
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_start_timer()
        if self._watchdog_timer is not None:
            self._watchdog_timer.cancel()
            self._watchdog_timer = None

    def _spawn(self, coroutine: Any) -> None:
        job = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    def _start_timed_out(self) -> None:
        self._start_timer = None
        if self.ready or self.exit_info is not None:
            return
        log.warning("%s/%s sent no READY=1 within %g s", *self.key, self.spec.start_timeout)
        self.reason = Result.TIMEOUT
        self._spawn(self.stop())

    def _extend_start_timeout(self, usec: int) -> None:
        if self._start_timer is not None and not self.ready:
            self._start_timer.cancel()
            loop = asyncio.get_running_loop()
            self._start_timer = loop.call_later(usec / 1e6, self._start_timed_out)

    # --- watchdog ---------------------------------------------------------

    def _arm_watchdog(self) -> None:
        """Start the watchdog (at READY=1): a full period from now, then from each ping."""
        period = self.spec.watchdog_sec
        if not period or period <= 0 or self.stop_requested or self._main_gone.is_set():
            return
        loop = asyncio.get_running_loop()
        self._watchdog_since = loop.time()
        if self._watchdog_timer is None:
            self._watchdog_timer = loop.call_later(period, self._watchdog_check)

    def _watchdog_check(self) -> None:
        """The timer fired: re-arm it for the last ping's deadline, or act on the timeout.

        One timer per task, moved only when it fires: a ping costs no timer operation.
        """
        self._watchdog_timer = None
        period = self.spec.watchdog_sec
        if not period or self.stop_requested or self._main_gone.is_set() or self.reason is not None:
            return
        loop = asyncio.get_running_loop()
        due = max(self._watchdog_since, self.last_ping or 0.0) + period
        if loop.time() < due:
            self._watchdog_timer = loop.call_at(due, self._watchdog_check)
            return
        log.warning("%s/%s sent no WATCHDOG=1 for %g s: watchdog timeout", *self.key, period)
        self._watchdog_abort()

    def _watchdog_abort(self) -> None:
        if self.exit_info is not None or self._main_gone.is_set():
            return
        if self.reason is None:
            self.reason = Result.WATCHDOG
        self._cancel_timers()
        self._spawn(self._abort())

    async def _abort(self) -> None:
        """``WatchdogSignal=SIGABRT`` to the main process, the normal stop if it survives."""
        self.send_signal(WATCHDOG_SIGNAL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._main_gone.wait(), self.spec.stop_timeout)
        if not self._main_gone.is_set():
            log.warning("%s/%s survived %s: stopping it", *self.key, WATCHDOG_SIGNAL.name)
            await self.stop()

    # --- the end ----------------------------------------------------------

    def _on_pidfd(self) -> None:
        """The pidfd became readable: the process has ended."""
        info = self._collect()
        if info is not None:
            self._main_ended(info)

    def _collect(self) -> ExitInfo | None:
        if self.adopted:
            # Not our child: the status went to whoever is its parent now. Asked to
            # stop, it stopped; otherwise nobody can say how it ended.
            unknown = "adopted after a daemon restart; its exit status cannot be collected"
            if self.reason is not None:
                return ExitInfo(self.reason, detail=unknown)
            return ExitInfo(Result.SUCCESS if self.stop_requested else Result.LOST, detail=unknown)
        try:
            status = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return ExitInfo(Result.LOST, detail="the exit status was collected elsewhere")
        if status is None:
            return None
        return self._classify(status.si_code, status.si_status)

    def _classify(self, code: int, status: int) -> ExitInfo:
        """systemd's verdict on a Type=notify service's end (systemd.service(5))."""
        if code == os.CLD_EXITED:
            if self.reason is not None:
                return ExitInfo(self.reason, exit_code=status)
            if status != 0:
                return ExitInfo(Result.EXIT_CODE, exit_code=status)
            if self.spec.notify and not self.ready and not self.stop_requested:
                return ExitInfo(Result.PROTOCOL, exit_code=0, detail="exited before READY=1")
            return ExitInfo(Result.SUCCESS, exit_code=0)
        if self.reason is not None:
            return ExitInfo(self.reason, signal=status)
        if code == os.CLD_DUMPED:
            return ExitInfo(Result.CORE_DUMP, signal=status)
        if status in CLEAN_SIGNALS and (self.stop_requested or status != signal.SIGPIPE):
            return ExitInfo(Result.SUCCESS, signal=status)
        return ExitInfo(Result.SIGNAL, signal=status)

    def _main_ended(self, info: ExitInfo) -> None:
        """The main process is gone: kill what it left (KillMode=control-group), then finish."""
        if self.exit_info is not None or self._main_gone.is_set():
            return
        self._main_gone.set()
        self._cancel_timers()
        self._close_pidfd()
        if self.cgroup is not None and not self.cgroup.populated():
            # Nothing left in the group (the usual end): only the cheap part of kill(),
            # for a process that left the group, and no second look at the group.
            self._signal_group(signal.SIGKILL)
            self._kill_descendants()
            self._finish(info, group_empty=True)
            return
        self.kill()
        if self.cgroup is not None and self.cgroup.populated():
            self._spawn(self._drain(info))
        else:
            self._finish(info)

    async def _drain(self, info: ExitInfo) -> None:
        """Wait (bounded) until the task's cgroup is empty, then report the end."""
        try:
            assert self.cgroup is not None
            if not await self.cgroup.wait_empty(KILL_WAIT):
                log.warning(
                    "%s/%s: processes %s in %s did not die after SIGKILL",
                    *self.key,
                    self.cgroup.procs(),
                    self.cgroup.path,
                )
        finally:
            self._finish(info)

    def _finish(self, info: ExitInfo, group_empty: bool = False) -> None:
        if self.exit_info is not None:
            return
        self.exit_info = info
        self._cancel_timers()
        self._close_pidfd()
        self._main_gone.set()
        if self.cgroup is not None and (group_empty or not self.cgroup.populated()):
            self.cgroup.remove()
        self._exited.set()
        if self.runner is not None:
            self.runner._task_finished(self, info)

    def _close_pidfd(self) -> None:
        if self.pidfd >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1


PR_SET_CHILD_SUBREAPER = 36
UNCLAIMED_LIMIT = 1024
UNCLAIMED_SECONDS = 10.0


def become_subreaper() -> bool:
    """Make orphaned descendants of our tasks our children (prctl(2)); False if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def executable_error(program: str, env: Mapping[str, str], cwd: str) -> OSError | None:
    """What exec would say about *program* (ENOENT, EACCES), None when it looks runnable.

    The same lookup as ``subprocess.Popen`` (execvpe with *env*'s PATH, after the
    change to *cwd*): with the cgroup wrapper, the shell, not Popen, executes the
    program, so a missing one is refused here, before the start.
    """
    if "/" in program:
        candidates = [os.path.join(cwd, program)]
    else:
        candidates = [os.path.join(cwd, folder, program) for folder in os.get_exec_path(env)]
    code = errno.ENOENT
    for path in candidates if program else []:
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return None
            code = errno.EACCES
        elif os.path.isdir(path) and "/" in program:
            code = errno.EACCES
    return OSError(code, os.strerror(code), program)


def wrap_exec(argv: list[str], cgroup: str | None, fd_limit: int | None) -> list[str]:
    """*argv* as executed by a task's first process: through ``sh -c`` when that process
    must first join *cgroup* or set its soft open-files limit to *fd_limit*, else as is.

    The shell ends in ``exec``, so the task keeps its pid (what the runner watches).
    Ways to give an executed task its soft ``RLIMIT_NOFILE``, measured on 2
    noisy cores (Python 3.11; ``/bin/true`` spawned the way :meth:`LocalRunner._spawn`
    does from a daemon-like parent: the daemon's modules imported, a zmq I/O
    thread running, its own limit raised; methods in random order, medians
    of 400 rounds). "Blocks" is how long the daemon's event loop waits in
    ``Popen()``, "to exit" the time until ``/bin/true`` ended, i.e. what it
    costs before the task's own code runs:

    ============================  =================  =======  ==========================
    how                           blocks             to exit
    ============================  =================  =======  ==========================
    plain exec (no limit set)     0.13 ms            0.62 ms  the tasks' limit is wrong
    ``preexec_fn=setrlimit``      2.7 ms (14.3 ms)   3.1 ms   daemon RSS 36 (236) MiB
    ``sh -c 'ulimit …; exec'``    0.13 ms            1.20 ms  chosen
    ``sh -c 'exec'``              0.13 ms            1.19 ms  (what a cgroup costs)
    ``prlimit --nofile=N:``       0.13 ms            1.46 ms  util-linux, not everywhere
    Popen, then ``prlimit(pid)``  0.14 ms            0.62 ms  racy: too late
    ============================  =================  =======  ==========================

    ``preexec_fn`` makes ``subprocess`` fork() instead of vfork(): the daemon's
    page tables are copied while its event loop waits, a cost that grows with
    the daemon's size; and Python code between fork and exec is unsafe in a
    process with threads (the daemon's libzmq threads). A ``prlimit()`` on the
    child after Popen returned is cheap but too late: the task may already
    have run under the raised limit. The shell costs one exec of ``/bin/sh``
    (dash: ~0.6 ms, in the child; the daemon does not wait for it). With a
    cgroup the shell runs anyway and ``ulimit``, a builtin, adds nothing
    measurable; without one, it is used only when there is a limit to set
    (the daemon raised its own). An executed Python task host takes ~59 ms
    to start either way (+0.8 ms through the shell, within the noise).
    """
    if cgroup is None and fd_limit is None:
        return argv
    program, args = "", []
    if cgroup is not None:
        program += JOIN_CGROUP
        args.append(cgroup)
    if fd_limit is not None:
        program += SET_FD_LIMIT
        args.append(str(fd_limit))
    return [SHELL, "-c", program + EXEC, "sh", *args, *argv]


class Zygote:
    """The daemon's end of the fork server (:mod:`zsvc.runners.zygote`).

    With *fd_limit*, the zygote sets its soft open-files limit to it first
    thing, so every task it forks has that limit (see :func:`wrap_exec`).
    """

    def __init__(self, fd_limit: int | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        argv = [sys.executable, "-m", "zsvc.runners.zygote", str(theirs.fileno())]
        if fd_limit is not None:
            argv.append(str(fd_limit))
        self.proc = subprocess.Popen(
            argv,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock.setblocking(False)
        self.lock = asyncio.Lock()
        self.broken = False

    async def spawn(
        self,
        env: dict[str, str],
        cwd: str,
        log_path: str,
        marker: str | None,
        cgroup: str | None = None,
    ) -> int:
        """Fork a task host; OSError when the zygote refused, ConnectionError when it is gone."""
        request = json.dumps(
            {"env": env, "cwd": cwd, "log": log_path, "marker": marker, "cgroup": cgroup}
        ).encode()
        loop = asyncio.get_running_loop()
        async with self.lock:
            try:
                await loop.sock_sendall(self.sock, request)
                packet = await loop.sock_recv(self.sock, 65536)
            except OSError as exc:
                self.broken = True
                raise ConnectionError(f"the zygote is gone: {exc}") from exc
        if not packet:
            self.broken = True
            raise ConnectionError("the zygote is gone")
        reply = json.loads(packet)
        if "error" in reply:
            raise OSError(reply["error"])
        return int(reply["pid"])

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class LocalRunner(Runner):
    """Supervises tasks as the daemon's own children.

    Python tasks are forked from a warm zygote when possible (set
    ``ZSVC_ZYGOTE=0`` to execute every task instead); command tasks are
    always executed. Each task gets its own cgroup when a cgroup2 hierarchy
    is writable (set ``ZSVC_CGROUPS=0`` to do without).

    *task_fd_limit* is the soft open-files limit every task gets: the one the
    daemon was started with, when it raised its own (None: tasks inherit the
    runner's process's limit).
    """

    name = "local"

    def __init__(
        self,
        layout: RuntimeLayout,
        use_zygote: bool | None = None,
        use_cgroups: bool | None = None,
        task_fd_limit: int | None = None,
    ):
        self.layout = layout
        self.task_fd_limit = task_fd_limit
        self.events: RunnerEvents | None = None
        self.notify_server: NotifyServer | None = None
        self.by_pid: dict[int, LocalTask] = {}
        self.by_pgid: dict[int, LocalTask] = {}
        self.by_cgroup: dict[str, LocalTask] = {}
        if use_zygote is None:
            use_zygote = os.environ.get("ZSVC_ZYGOTE", "1") != "0"
        if use_cgroups is None:
            use_cgroups = os.environ.get("ZSVC_CGROUPS", "1") != "0"
        self.use_zygote = use_zygote
        self.use_cgroups = use_cgroups
        self.zygote: Zygote | None = None
        self.cgroups: CgroupTree | None = None
        self.subreaper = False
        self._reap_again_pending = False
        self._finished: dict[str, None] = {}
        """Invocation ids of runs that ended (bounded): whose orphans to kill (no cgroup)."""
        self._unclaimed: dict[int, tuple[float, list[Notification]]] = {}
        """Notifications from pids not yet known: a forked task may say READY=1 before the
        zygote's answer naming its pid has been read. Replayed when the pid is registered;
        forgotten after UNCLAIMED_SECONDS (a late datagram from a task that already ended)."""

    async def open(self, events: RunnerEvents) -> None:
        self.events = events
        loop = asyncio.get_running_loop()
        self.notify_server = NotifyServer(self.layout.notify)
        loop.add_reader(self.notify_server.fileno(), self._on_notify)
        if self.use_cgroups:
            self.cgroups = find_hierarchy()
        if self.cgroups is not None:
            log.info("each task runs in its own cgroup under %s", self.cgroups.slice)
            for stale in self.cgroups.sweep():
                log.info("removed the stale cgroup %s", stale)
        else:
            why = "no writable cgroup2 hierarchy" if self.use_cgroups else "ZSVC_CGROUPS=0"
            log.info("%s: tasks are tracked by process group and invocation id", why)
        # A subreaper collects the zygote's tasks and, without cgroups, finds orphans.
        if (self.use_zygote or self.cgroups is None) and become_subreaper():
            self.subreaper = True
            loop.add_signal_handler(signal.SIGCHLD, self._reap_strays)
            if self.use_zygote:
                self.zygote = Zygote(self.task_fd_limit)
        elif self.use_zygote:
            log.warning("cannot become a child subreaper: Python tasks will be executed")

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self.notify_server is not None:
            loop.remove_reader(self.notify_server.fileno())
            self.notify_server.close()
            self.notify_server = None
        if self.subreaper:
            loop.remove_signal_handler(signal.SIGCHLD)
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None

    def _reap_later(self) -> None:
        self._reap_again_pending = False
        self._reap_strays()

    def _reap_strays(self) -> None:
        """Reap children that are no task: orphans re-parented to us, a dead zygote.

        Tasks are reaped by their own pidfd handler (with their exit status);
        only other children are collected here, by pid, so no status is stolen.
        Without cgroups, a live orphan of a run that ended is killed too.
        """
        if self.zygote is not None and self.zygote.lock.locked():
            # A fork is in flight: its task may already be our child while we do not know
            # its pid yet. Reaping it here would lose its exit status; come back shortly,
            # once however many SIGCHLDs arrive meanwhile (a crash loop sends plenty).
            if not self._reap_again_pending:
                self._reap_again_pending = True
                asyncio.get_running_loop().call_later(0.05, self._reap_later)
            return
        zygote = self.zygote.proc.pid if self.zygote is not None else None
        for pid in children_of("self"):
            if pid in self.by_pid or pid == zygote:
                continue
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if self.zygote is not None and self.zygote.proc.poll() is not None:
            code = self.zygote.proc.returncode
            log.warning("the zygote exited (%s): Python tasks will be executed", code)
            self.zygote.broken = True
        if self.cgroups is None:
            self._kill_orphans(self._finished)

    def _kill_orphans(self, invocations: Collection[str], looks: int = ORPHAN_LOOKS) -> None:
        """SIGKILL (with their descendants) children of ours that are no task and whose
        environment names one of *invocations*: orphans of those runs (fallback without
        cgroups; only a subreaper has them as children).

        A child inside execve(2) shows an empty environment for a moment: it is
        looked at again, *looks* times in all, rather than let go for good.
        """
        if not self.subreaper or not invocations:
            return
        zygote = self.zygote.proc.pid if self.zygote is not None else None
        unsettled = False
        for pid in children_of("self"):
            if pid in self.by_pid or pid == zygote:
                continue
            environ = environ_of(pid)
            if environ == b"":
                unsettled = True
                continue
            if environ is not None and invocation_in(environ) in invocations:
                log.info("killing process %d, left behind by an ended task", pid)
                for victim in (pid, *descendants(pid)):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(victim, signal.SIGKILL)
        if unsettled and looks > 1:
            asyncio.get_running_loop().call_later(
                ORPHAN_LOOK_DELAY, self._kill_orphans, invocations, looks - 1
            )

    # --- starting -----------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> LocalTask:
        env = dict(spec.env)
        env["NOTIFY_SOCKET"] = str(self.layout.notify)
        env.pop("WATCHDOG_PID", None)
        env.pop("WATCHDOG_USEC", None)
        if spec.watchdog_sec is not None and spec.watchdog_sec > 0:
            env["WATCHDOG_USEC"] = str(max(1, round(spec.watchdog_sec * 1_000_000)))
        invocation = env.get(INVOCATION_ENV)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        cgroup = self._make_cgroup(spec, invocation)
        try:
            pid = await self._spawn(spec, env, invocation, cgroup)
        except BaseException:
            if cgroup is not None:
                cgroup.kill()
                cgroup.remove()
            raise
        return self._started(spec, pid, cgroup=cgroup, invocation=invocation)

    def _make_cgroup(self, spec: LaunchSpec, invocation: str | None) -> Cgroup | None:
        if self.cgroups is None:
            return None
        suffix = (invocation or os.urandom(8).hex())[:12]
        try:
            return self.cgroups.create(spec.unit, f"{spec.unit}-{suffix}")
        except OSError as exc:
            log.warning(
                "%s/%s: cannot make its cgroup (%s): its processes are tracked without one",
                *spec.key,
                exc,
            )
            return None

    async def _spawn(
        self, spec: LaunchSpec, env: dict[str, str], invocation: str | None, cgroup: Cgroup | None
    ) -> int:
        """Start the task's first process (already in *cgroup*); its pid."""
        where = str(cgroup.path) if cgroup is not None else None
        if spec.host_entry and self.zygote is not None and not self.zygote.broken:
            marker = None
            if invocation:
                marker_path = self.layout.spawned(invocation)
                marker_path.parent.mkdir(exist_ok=True)
                marker = str(marker_path)
            try:
                return await self.zygote.spawn(env, spec.cwd, str(spec.log_path), marker, where)
            except ConnectionError as exc:
                log.warning("%s: executing tasks instead", exc)
            except OSError as exc:
                raise LaunchError(
                    f"cannot start the task host: {exc}",
                    ExitInfo(Result.RESOURCES, detail=str(exc)),
                ) from exc
        argv: list[str] = list(spec.argv)
        if where is not None or self.task_fd_limit is not None:
            # The shell wrapper, not Popen, executes the program: refuse a missing one now.
            error = executable_error(argv[0] if argv else "", env, spec.cwd)
            if error is not None:
                raise _exec_failure(argv[0] if argv else "", error)
            argv = wrap_exec(argv, where, self.task_fd_limit)
        try:
            log_fd = os.open(
                spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
        except OSError as exc:
            raise LaunchError(
                f"cannot open the log {spec.log_path}: {exc.strerror}",
                ExitInfo(Result.RESOURCES, detail=str(exc)),
            ) from exc
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                process_group=0,
                close_fds=True,
            )
        except OSError as exc:
            if exc.filename == spec.cwd and not os.path.isdir(spec.cwd):
                raise LaunchError(
                    f"cannot change to {spec.cwd}: {exc.strerror}",
                    ExitInfo(Result.EXIT_CODE, exit_code=EXIT_CHDIR, detail=str(exc)),
                ) from exc
            raise _exec_failure(spec.argv[0] if spec.argv else "", exc) from exc
        finally:
            os.close(log_fd)
        # The exit status is collected with waitid (to see core dumps). Marking the
        # Popen object as finished keeps subprocess's own reaper from stealing it.
        proc.returncode = 0
        return proc.pid

    def _started(
        self,
        spec: LaunchSpec,
        pid: int,
        cgroup: Cgroup | None = None,
        invocation: str | None = None,
    ) -> LocalTask:
        if invocation is None:
            invocation = spec.env.get(INVOCATION_ENV)
        spec = dataclasses.replace(spec, env={})  # the environment is not needed any more
        task = LocalTask(
            spec=spec, pid=pid, runner=self, pgid=pid, cgroup=cgroup, invocation=invocation
        )
        task.start_time = process_start_time(pid)
        self._watch(task)
        loop = asyncio.get_running_loop()
        if spec.notify:
            task._start_timer = loop.call_later(spec.start_timeout, task._start_timed_out)
        else:
            task.ready = True
            task._arm_watchdog()
            loop.call_soon(self._report_ready, task)
        for note in self._unclaimed.pop(pid, (0.0, []))[1]:
            self._apply(task, note)
        return task

    # --- adoption -------------------------------------------------------------

    async def adopt(self, spec: LaunchSpec, description: Mapping[str, Any]) -> LocalTask | None:
        pid = description.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return None
        invocation = description.get("invocation")
        invocation = invocation if isinstance(invocation, str) and invocation else None
        recorded = description.get("start_time")
        actual = process_start_time(pid)
        if actual is None or recorded is None or abs(actual - float(recorded)) > 0.05:
            # Gone, or the pid now belongs to another process. What it left runs on.
            await self._kill_remains(description.get("cgroup"), invocation)
            return None
        cgroup = None
        if self.cgroups is not None:
            saved = description.get("cgroup")
            if isinstance(saved, str) and saved:
                cgroup = self.cgroups.at(saved)
            else:  # found by its marker or environment: its description was never saved
                cgroup = self.cgroups.of_pid(pid)
        task = LocalTask(
            spec=spec,
            pid=pid,
            runner=self,
            pgid=int(description.get("pgid") or pid),
            adopted=True,
            start_time=actual,
            ready=True,
            cgroup=cgroup,
            invocation=invocation,
        )
        self._watch(task)
        task._arm_watchdog()
        return task

    async def _kill_remains(self, path: object, invocation: str | None) -> None:
        """KillMode=control-group for a task whose main process ended while the daemon was
        down: kill what is left in its cgroup, unless it holds another run's processes."""
        if self.cgroups is None or not isinstance(path, str) or not path:
            return
        cgroup = self.cgroups.at(path)
        if cgroup is None:
            return
        pids = cgroup.procs()
        others = {invocation_of(pid) for pid in pids} - {None, invocation}
        if others:
            log.warning("%s holds processes of another run: left alone", cgroup.path)
            return
        if pids:
            log.warning("killing %s, left in %s by a task that ended", pids, cgroup.path)
            cgroup.kill()
            await cgroup.wait_empty(KILL_WAIT)
        cgroup.remove()

    # --- bookkeeping ------------------------------------------------------------

    def _watch(self, task: LocalTask) -> None:
        try:
            task.pidfd = os.pidfd_open(task.pid)
        except ProcessLookupError:
            # Already gone (adopted) or already a zombie (our child): collect it now.
            asyncio.get_running_loop().call_soon(task._on_pidfd)
        else:
            asyncio.get_running_loop().add_reader(task.pidfd, task._on_pidfd)
        self.by_pid[task.pid] = task
        self.by_pgid[task.pgid] = task
        if task.cgroup is not None and (relative := task.cgroup.relative):
            self.by_cgroup[relative] = task

    def _report_ready(self, task: LocalTask) -> None:
        if task.exit_info is None and self.events is not None:
            self.events.on_ready(task.key)

    def _task_finished(self, task: LocalTask, info: ExitInfo) -> None:
        if self.by_pid.get(task.pid) is task:
            del self.by_pid[task.pid]
        if self.by_pgid.get(task.pgid) is task:
            del self.by_pgid[task.pgid]
        relative = task.cgroup.relative if task.cgroup is not None else None
        if relative and self.by_cgroup.get(relative) is task:
            del self.by_cgroup[relative]
        if task.invocation:
            self._finished[task.invocation] = None
            while len(self._finished) > FINISHED_LIMIT:
                del self._finished[next(iter(self._finished))]
        if self.events is not None:
            self.events.on_exit(task.key, info)

    # --- sd_notify ----------------------------------------------------------

    def _on_notify(self) -> None:
        assert self.notify_server is not None
        for item in self.notify_server.drain():
            if isinstance(item, NotifyProtocolError):
                log.warning("ignored a notification: %s", item)
                continue
            task = self._sender(item.pid)
            if task is None:
                self._hold(item)
                continue
            self._apply(task, item)

    def _switch_main(self, task: LocalTask, pid: int) -> None:
        """MAINPID=: follow another process as the task's main one (sd_notify(3)).

        The new main process is watched through its own pidfd; as a descendant of
        the task it becomes our child (we are a subreaper) when its parent exits,
        so its exit status can be collected. A process that is not the task's
        (neither a descendant nor in its cgroup) is refused.
        """
        members = descendants(task.pid)
        if task.cgroup is not None:
            members.update(task.cgroup.procs())
        if pid not in members or task.exit_info is not None or task._main_gone.is_set():
            log.warning("%s/%s: MAINPID=%d is not one of its processes: ignored", *task.key, pid)
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        task._close_pidfd()
        if self.by_pid.get(task.pid) is task:
            del self.by_pid[task.pid]
        task.pid, task.pidfd = pid, pidfd
        task.start_time = process_start_time(pid)
        self.by_pid[pid] = task
        asyncio.get_running_loop().add_reader(pidfd, task._on_pidfd)
        if self.events is not None:
            self.events.on_main_pid(task.key, pid, task.describe())

    def _hold(self, note: Notification) -> None:
        """Keep a notification from an unknown pid until that pid becomes a task (bounded)."""
        log.debug("notification from pid %d, not (yet) a task: %s", note.pid, note.fields)
        now = asyncio.get_running_loop().time()
        while self._unclaimed:
            oldest = next(iter(self._unclaimed))
            held_since = self._unclaimed[oldest][0]
            if now - held_since < UNCLAIMED_SECONDS and len(self._unclaimed) < UNCLAIMED_LIMIT:
                break
            del self._unclaimed[oldest]
        self._unclaimed.setdefault(note.pid, (now, []))[1].append(note)

    def _sender(self, pid: int) -> LocalTask | None:
        """The task a notification comes from: its main pid, or another of its processes.

        Accepting every process of the task (its process group, and its cgroup
        when it has one) is systemd's ``NotifyAccess=all`` scoped to the task,
        so a shell wrapper's child may notify too.
        """
        task = self.by_pid.get(pid)
        if task is not None:
            return task
        try:
            task = self.by_pgid.get(os.getpgid(pid))
        except ProcessLookupError:
            return None
        if task is None and self.by_cgroup and (relative := cgroup_of(pid)):
            task = self.by_cgroup.get(relative)
        return task

    def _apply(self, task: LocalTask, note: Notification) -> None:
        if task.exit_info is not None or self.events is None:
            return
        key: TaskKey = task.key
        if note.main_pid is not None and note.main_pid != task.pid:
            self._switch_main(task, note.main_pid)
        if note.status is not None:
            self.events.on_status(key, note.status)
        elif note.errno is not None:
            self.events.on_status(key, f"errno {note.errno}: {os.strerror(note.errno)}")
        if note.watchdog_ping:
            task.last_ping = asyncio.get_running_loop().time()
        if note.watchdog_trigger:
            log.warning("%s/%s asked for WATCHDOG=trigger", *key)
            task._watchdog_abort()
        if note.extend_timeout_usec is not None:
            task._extend_start_timeout(note.extend_timeout_usec)
        if note.ready and not task.ready:
            task.ready = True
            task._cancel_start_timer()
            task._arm_watchdog()
            self.events.on_ready(key)
        if note.stopping:
            self.events.on_stopping(key)


def _exec_failure(program: str, exc: OSError) -> LaunchError:
    """systemd's verdict on a program that cannot be executed: status 203 (EXIT_EXEC)."""
    return LaunchError(
        f"cannot execute {program}: {exc.strerror}",
        ExitInfo(Result.EXIT_CODE, exit_code=EXIT_EXEC, detail=str(exc)),
    )
