"""One task of the local runner: its process, its stop, its watchdog, its end.

:class:`LocalTask` is the :class:`~zsvc.runners.base.TaskHandle` of the
local runner (:mod:`zsvc.runners.local`, which starts tasks, reads their
notifications and keeps the books). What it does, in systemd's terms:

* **stop** (``KillMode=control-group``): ``KillSignal=`` (SIGTERM) to the task's
  process group and, with a cgroup, to every process of the task; the stop
  timeout; then ``FinalKillSignal=`` (SIGKILL) to everything it started
  (``cgroup.kill``, the process group, the descendants seen while it ran). When
  the main process ends by itself, whatever it left is SIGKILLed too, and the
  end is reported once the cgroup is empty (bounded by :data:`~zsvc.runners.exitcodes.KILL_WAIT`).
* **start timeout**: a ``Type=notify`` task that sends no READY=1 in time is
  stopped, with result ``timeout`` (``EXTEND_TIMEOUT_USEC=`` moves the limit).
* **watchdog** (``LaunchSpec.watchdog_sec``): from READY=1 on, a task that sends
  no WATCHDOG=1 for that long (or sends WATCHDOG=trigger) gets SIGABRT,
  systemd's ``WatchdogSignal``; if it survives the stop timeout, the normal
  stop follows. Its result is ``watchdog``.
* **the end** is seen the moment it happens, through a pidfd in the event loop
  (no polling), and judged by :func:`~zsvc.runners.localexec.classify_exit`; its
  detail tells why zsvc ended or refused it (:mod:`zsvc.runners.ends`): "no READY=1
  within 3 s", an end before ``start_secs``, the leftovers of a main process that
  exited by itself ("is this a forking program?").
* **start_secs** (``simple``/``exec``): ready only once the process has run that long.
* **forking** (``Type=forking``): the first process is the starter; its exit 0 is
  not the end: the main process it left is found (:mod:`zsvc.runners.forking`:
  ``pid_file``, or the one process left), followed as for ``MAINPID=``, and then
  the task is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from zsvc.jobs import Jobs
from zsvc.procs import descendants, process_start_time
from zsvc.runners import ends
from zsvc.runners.base import ExitInfo, TaskHandle
from zsvc.runners.cgroup import Cgroup
from zsvc.runners.exitcodes import KILL_WAIT
from zsvc.runners.forking import NoMainProcess, guess_main, orphans_of, read_pid_file
from zsvc.runners.localexec import adopted_exit, classify_exit
from zsvc.states import Result, StartType

log = logging.getLogger(__name__)

WATCHDOG_SIGNAL = signal.SIGABRT
"""systemd's default ``WatchdogSignal=``."""


class TaskOwner(Protocol):
    """What a task needs of its runner (:class:`~zsvc.runners.local.LocalRunner`)."""

    jobs: Jobs
    """Where the task's background work runs (a timed-out stop, an abort, a drain)."""

    def kill_orphans(self, invocations: Collection[str]) -> None:
        """SIGKILL the orphans of these runs (without cgroups: see the subreaper)."""

    def task_finished(self, task: LocalTask, info: ExitInfo) -> None:
        """The task has fully ended: drop it from the books, tell the daemon."""

    def task_ready(self, task: LocalTask) -> None:
        """The task became ready by itself (its start_secs passed): tell the daemon."""

    def main_found(self, task: LocalTask, pid: int) -> bool:
        """A forking task's main process is *pid*: follow it (books too), then ready
        unless a stop came first; False when it could not be followed (gone already)."""


@dataclass(eq=False)
class LocalTask(TaskHandle):
    """A task process supervised by the local runner."""

    runner: TaskOwner | None = None
    pgid: int = 0
    adopted: bool = False
    start_time: float | None = None
    ready: bool = False
    reason: Result | None = None  # set when zsvc itself ends the process (timeout, …)
    reason_detail: str = ""
    """zsvc's words for *reason* ("no READY=1 within 3 s"), put first in the end's detail."""
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
    _began: float = 0.0
    """Loop time of :meth:`begin`: how long a run lasted before start_secs."""

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
            self._signal_all(self.spec.kill_signal)
            limit = self.spec.stop_timeout if timeout is None else timeout
            try:
                await asyncio.wait_for(self._main_gone.wait(), limit)
            except TimeoutError:
                final = self.spec.final_kill_signal
                log.warning("%s/%s did not stop within %g s: signal %d", *self.key, limit, final)
                if self.reason is None:  # the first reason stays (watchdog, start timeout)
                    self.reason = Result.TIMEOUT
                await self._final_kill()
            if not self._main_gone.is_set():  # not even SIGKILL ended it (uninterruptible sleep)
                reason = self.reason or Result.TIMEOUT
                self._finish(ExitInfo(reason, detail="did not die after SIGKILL"))
        # What the main process left behind is killed now; bounded by KILL_WAIT.
        await self._exited.wait()
        return self.exit_info  # type: ignore[return-value]

    async def _final_kill(self) -> None:
        """``FinalKillSignal=`` to everything the task started, and wait (bounded) for the
        main process to end. Another signal than SIGKILL (SIGQUIT for a core, say) may be
        survived: SIGKILL follows after :data:`~zsvc.runners.exitcodes.KILL_WAIT`."""
        if self.spec.final_kill_signal != signal.SIGKILL:
            self._remember_descendants()
            self._signal_all(self.spec.final_kill_signal)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._main_gone.wait(), KILL_WAIT)
            if self._main_gone.is_set():
                return
        self.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._main_gone.wait(), KILL_WAIT)

    def kill(self) -> None:
        self._remember_descendants()
        self._signal_group(signal.SIGKILL)
        # cgroup.kill costs far more than a look at cgroup.events: after a crash the
        # group is usually empty already, and a crash loop would pay it every run.
        if self.cgroup is not None and self.cgroup.populated():
            self.cgroup.kill()
        self._kill_descendants()
        if self.cgroup is None and self.runner is not None and self.invocation:
            self.runner.kill_orphans({self.invocation})

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

    # --- what the runner tells the task -----------------------------------------------

    def watch_pidfd(self) -> None:
        """Watch the main process: its end is seen the moment it happens."""
        loop = asyncio.get_running_loop()
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            # Already gone (adopted) or already a zombie (our child): collect it now.
            loop.call_soon(self._on_pidfd)
        else:
            loop.add_reader(self.pidfd, self._on_pidfd)

    def begin(self) -> bool:
        """The process runs: a task that notifies has the start timeout to say READY=1, a
        forking one for its starter to exit; one that does not is ready now
        (``Type=exec``), or once it has run ``start_secs``. True when it is ready now."""
        loop = asyncio.get_running_loop()
        self._began = loop.time()
        if self.spec.start_type not in ends.READY_AT_EXEC:
            self._start_timer = loop.call_later(self.spec.start_timeout, self._start_timed_out)
            return False
        if self.spec.start_secs > 0:
            self._start_timer = loop.call_later(self.spec.start_secs, self._ran_start_secs)
            return False
        self.ready = True
        self.arm_watchdog()
        return True

    def _ran_start_secs(self) -> None:
        """It has run start_secs (supervisord's ``startsecs``): now it is ready."""
        self._start_timer = None
        if self.stop_requested or self._main_gone.is_set() or self.exit_info is not None:
            return
        if self.became_ready() and self.runner is not None:
            self.runner.task_ready(self)

    def became_ready(self) -> bool:
        """READY=1 arrived: stop the start timer, start the watchdog. False if it was already."""
        if self.ready:
            return False
        self.ready = True
        self._cancel_start_timer()
        self.arm_watchdog()
        return True

    def pinged(self) -> None:
        """WATCHDOG=1 arrived: the watchdog's deadline counts from now."""
        self.last_ping = asyncio.get_running_loop().time()

    def follow_main(self, pid: int, known: bool = False) -> bool:
        """MAINPID=: follow *pid* as the task's main process (sd_notify(3)); False when
        refused (not one of the task's processes, or the task is ending). *known*: the
        runner found it among the task's processes itself (a forking task's main one).

        The new main process is watched through its own pidfd; as a descendant of
        the task it becomes the daemon's child (a subreaper) when its parent
        exits, so its exit status can be collected.
        """
        members = descendants(self.pid)
        if self.cgroup is not None:
            members.update(self.cgroup.procs())
        ending = self.exit_info is not None or self._main_gone.is_set()
        if (not known and pid not in members) or ending:
            log.warning("%s/%s: MAINPID=%d is not one of its processes: ignored", *self.key, pid)
            return False
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        self._close_pidfd()
        self.pid, self.pidfd = pid, pidfd
        self.start_time = process_start_time(pid)
        asyncio.get_running_loop().add_reader(pidfd, self._on_pidfd)
        return True

    def extend_start_timeout(self, usec: int) -> None:
        """EXTEND_TIMEOUT_USEC=: READY=1 may come up to *usec* from now."""
        waits_for_start = self.spec.start_type not in ends.READY_AT_EXEC
        if self._start_timer is not None and not self.ready and waits_for_start:
            self._start_timer.cancel()
            loop = asyncio.get_running_loop()
            self._start_timer = loop.call_later(usec / 1e6, self._start_timed_out)

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
        """*signum* once to each process of the task: its process group and, with a
        cgroup, the members that left the group. Once: a program that ends gracefully at
        its stop signal restores the default action on the way out, and a second copy
        would kill it (a Python ``sys.exit`` handler died of SIGUSR1 that way)."""
        self._signal_group(signum)
        if self.cgroup is not None:
            for pid in self.cgroup.procs():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getpgid(pid) != self.pgid:
                        os.kill(pid, signum)

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

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], what: str) -> None:
        """Run *coroutine* in the runner's background jobs, which hold it and log a failure."""
        assert self.runner is not None
        self.runner.jobs.spawn(coroutine, f"{what} {self.spec.transaction}/{self.spec.task_id}")

    def _start_timed_out(self) -> None:
        self._start_timer = None
        if self.ready or self.exit_info is not None:
            return
        waited = round(asyncio.get_running_loop().time() - self._began, 1)
        self.reason_detail = ends.start_timeout_detail(self.spec, waited)
        log.warning("%s/%s: %s", *self.key, self.reason_detail)
        self.reason = Result.TIMEOUT
        self._spawn(self.stop(), "stop (no READY=1)")

    # --- watchdog ---------------------------------------------------------

    def arm_watchdog(self) -> None:
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
        self.watchdog_abort()

    def watchdog_abort(self) -> None:
        """The watchdog timed out (or the task sent WATCHDOG=trigger): abort the task."""
        if self.exit_info is not None or self._main_gone.is_set():
            return
        if self.reason is None:
            self.reason = Result.WATCHDOG
        self._cancel_timers()
        self._spawn(self._abort(), "watchdog abort")

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
        if info is not None and not self._starter_exited(info):
            self._main_ended(info)

    # --- forking (Type=forking) -------------------------------------------

    def _starter_exited(self, info: ExitInfo) -> bool:
        """A forking task's starter exited 0: the main process it left is looked for
        (:meth:`_take_over`) instead of ending the run. False: the run ends as usual (a
        starter that failed is a failed start)."""
        forking = self.spec.start_type is StartType.FORKING
        if not forking or self.ready or self.stop_requested or self.reason is not None:
            return False
        if not info.clean or self.exit_info is not None:
            return False
        self._close_pidfd()
        self._cancel_start_timer()  # _find_main waits until the same deadline
        self._spawn(self._take_over(), "find the main process of")
        return True

    async def _take_over(self) -> None:
        """Follow the forking task's main process, then it is ready; or fail its start."""
        try:
            pid = await self._find_main(self._began + self.spec.start_timeout)
        except NoMainProcess as exc:
            log.warning("%s/%s: %s", *self.key, exc)
            self._main_ended(ends.forking_failure(str(exc), exc.timed_out))
            return
        if self.exit_info is not None or self._main_gone.is_set() or self.runner is None:
            return
        if not self.runner.main_found(self, pid):
            self._main_ended(ends.forking_failure(f"its main process {pid} ended at once"))
            return
        log.info("%s/%s: main process %d (type forking)", *self.key, pid)

    async def _find_main(self, deadline: float) -> int:
        """The pid of the main process: the PID file's (a process of the task), or the
        one process left."""
        if self.spec.pid_file:
            quiet = self.spec.process.user is not None  # see read_pid_file
            return await read_pid_file(self.spec.pid_file, deadline, self._members, quiet)
        return guess_main(self._members())

    def _members(self) -> set[int]:
        """The task's processes now: its cgroup, or the daemon's orphans of this run with
        their descendants (without cgroups; the daemon is their subreaper)."""
        if self.cgroup is not None:
            return set(self.cgroup.procs())
        members = orphans_of(self.invocation)
        for pid in list(members):
            members |= descendants(pid)
        return members

    def _collect(self) -> ExitInfo | None:
        if self.adopted:
            return adopted_exit(self.reason, self.stop_requested)
        try:
            status = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return ExitInfo(Result.LOST, detail="the exit status was collected elsewhere")
        if status is None:
            return None
        return classify_exit(
            status.si_code,
            status.si_status,
            reason=self.reason,
            notify=self.spec.notify,
            ready=self.ready,
            stop_requested=self.stop_requested,
            kill_signal=self.spec.kill_signal,
        )

    def _main_ended(self, info: ExitInfo) -> None:
        """The main process is gone: kill what it left (KillMode=control-group), then finish."""
        if self.exit_info is not None or self._main_gone.is_set():
            return
        self._main_gone.set()
        self._cancel_timers()
        self._close_pidfd()
        info = self._judged_early(info)
        if self.cgroup is not None and not self.cgroup.populated():
            # Nothing left in the group (the usual end): only the cheap part of kill(),
            # for a process that left the group, and no second look at the group.
            self._signal_group(signal.SIGKILL)
            self._kill_descendants()
            self._finish(info, group_empty=True)
            return
        left = self._members() if self.reason is None and not self.stop_requested else set()
        self.kill()
        if left:
            detail = ends.leftover_detail(len(left), self.spec.start_type is StartType.FORKING)
            log.warning("%s/%s: %s (pids %s)", *self.key, detail, sorted(left))
            info = ends.with_reason(info, detail)
        if self.cgroup is not None and self.cgroup.populated():
            self._spawn(self._drain(info), "drain the cgroup of")
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

    def _judged_early(self, info: ExitInfo) -> ExitInfo:
        """A simple/exec run that ended before its start_secs is a failed start."""
        early = not self.ready and self.spec.start_type in ends.READY_AT_EXEC
        if not early or self.spec.start_secs <= 0 or self.stop_requested or self.reason:
            return info
        ran = asyncio.get_running_loop().time() - self._began
        return ends.before_start_secs(info, ran, self.spec.start_secs)

    def _finish(self, info: ExitInfo, group_empty: bool = False) -> None:
        if self.exit_info is not None:
            return
        if self.reason_detail and info.result is self.reason:
            info = ends.with_reason(info, self.reason_detail)
        self.exit_info = info
        self._cancel_timers()
        self._close_pidfd()
        self._main_gone.set()
        if self.cgroup is not None and (group_empty or not self.cgroup.populated()):
            self.cgroup.remove()
        self._exited.set()
        if self.runner is not None:
            self.runner.task_finished(self, info)

    def _close_pidfd(self) -> None:
        if self.pidfd >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
