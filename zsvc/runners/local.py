"""The local runner: the daemon's own embedded supervisor, systemd's semantics without systemd.

Each task is a child process in its own process group. Readiness and
status arrive on one sd_notify datagram socket (the sender's pid, from
SO_PASSCRED, says which task spoke), so a program that works under systemd
works here unchanged. The exit of a task is noticed the moment it happens
through a pidfd in the event loop (no polling), and classified the way
systemd classifies a ``Type=notify`` service's end. Stop is SIGTERM to the
process group, the stop timeout, then SIGKILL to the group and to every
descendant seen.

Task output is appended straight to its log file (O_APPEND), not piped
through the daemon: a task must keep running, and keep logging, while the
daemon is restarted. The daemon caps the file's size (:mod:`zsvc.daemon.logs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zsvc.notify import Notification, NotifyProtocolError, NotifyServer
from zsvc.paths import RuntimeLayout
from zsvc.procs import children_of, descendants, process_start_time
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
from zsvc.states import Result

log = logging.getLogger(__name__)

EXIT_EXEC = 203  # systemd's exit status for "the program could not be executed"
CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
"""Signals systemd counts as a clean end (systemd.service(5), SuccessExitStatus=)."""
KILL_WAIT = 5.0
"""How long to wait for SIGKILL to take effect before giving up on a process."""


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
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    _start_timer: asyncio.TimerHandle | None = None

    async def wait(self) -> ExitInfo:
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    def send_signal(self, signum: int) -> None:
        if self.exit_info is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def stop(self, timeout: float | None = None) -> ExitInfo:
        if self.exit_info is not None:
            return self.exit_info
        self.stop_requested = True
        self._cancel_start_timer()
        self._remember_descendants()
        self._signal_group(signal.SIGTERM)
        limit = self.spec.stop_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self._exited.wait(), limit)
        except TimeoutError:
            log.warning("%s/%s did not stop within %g s: SIGKILL", *self.key, limit)
            self.reason = Result.TIMEOUT
            self.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), KILL_WAIT)
        if self.exit_info is None:  # not even SIGKILL ended it (uninterruptible sleep)
            self._finish(ExitInfo(Result.TIMEOUT, detail="did not die after SIGKILL"))
        return self.exit_info  # type: ignore[return-value]

    def kill(self) -> None:
        self._remember_descendants()
        self._signal_group(signal.SIGKILL)
        for pid in self.descendants:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "pgid": self.pgid, "start_time": self.start_time}

    # --- internals --------------------------------------------------------

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def _remember_descendants(self) -> None:
        """Record every descendant now, so that one that left the process group is killed too."""
        self.descendants.update(descendants(self.pid))

    def _cancel_start_timer(self) -> None:
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None

    def _start_timed_out(self) -> None:
        self._start_timer = None
        if self.ready or self.exit_info is not None:
            return
        log.warning("%s/%s sent no READY=1 within %g s", *self.key, self.spec.start_timeout)
        self.reason = Result.TIMEOUT
        asyncio.get_running_loop().create_task(self.stop())

    def _extend_start_timeout(self, usec: int) -> None:
        if self._start_timer is not None and not self.ready:
            self._start_timer.cancel()
            loop = asyncio.get_running_loop()
            self._start_timer = loop.call_later(usec / 1e6, self._start_timed_out)

    def _on_pidfd(self) -> None:
        """The pidfd became readable: the process has ended."""
        info = self._collect()
        if info is not None:
            self._finish(info)

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

    def _finish(self, info: ExitInfo) -> None:
        if self.exit_info is not None:
            return
        self.exit_info = info
        self._cancel_start_timer()
        self._close_pidfd()
        # KillMode=control-group: whatever the task left behind goes with it.
        self._signal_group(signal.SIGKILL)
        for pid in self.descendants:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
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


class Zygote:
    """The daemon's end of the fork server (:mod:`zsvc.runners.zygote`)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zsvc.runners.zygote", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock.setblocking(False)
        self.lock = asyncio.Lock()
        self.broken = False

    async def spawn(self, env: dict[str, str], cwd: str, log_path: str, marker: str | None) -> int:
        """Fork a task host; OSError when the zygote refused, ConnectionError when it is gone."""
        request = json.dumps({"env": env, "cwd": cwd, "log": log_path, "marker": marker}).encode()
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
    always executed.
    """

    name = "local"

    def __init__(self, layout: RuntimeLayout, use_zygote: bool | None = None):
        self.layout = layout
        self.events: RunnerEvents | None = None
        self.notify_server: NotifyServer | None = None
        self.by_pid: dict[int, LocalTask] = {}
        self.by_pgid: dict[int, LocalTask] = {}
        if use_zygote is None:
            use_zygote = os.environ.get("ZSVC_ZYGOTE", "1") != "0"
        self.use_zygote = use_zygote
        self.zygote: Zygote | None = None
        self._unclaimed: dict[int, tuple[float, list[Notification]]] = {}
        """Notifications from pids not yet known: a forked task may say READY=1 before the
        zygote's answer naming its pid has been read. Replayed when the pid is registered;
        forgotten after UNCLAIMED_SECONDS (a late datagram from a task that already ended)."""

    async def open(self, events: RunnerEvents) -> None:
        self.events = events
        loop = asyncio.get_running_loop()
        self.notify_server = NotifyServer(self.layout.notify)
        loop.add_reader(self.notify_server.fileno(), self._on_notify)
        if self.use_zygote and become_subreaper():
            loop.add_signal_handler(signal.SIGCHLD, self._reap_strays)
            self.zygote = Zygote()
        elif self.use_zygote:
            log.warning("cannot become a child subreaper: Python tasks will be executed")

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self.notify_server is not None:
            loop.remove_reader(self.notify_server.fileno())
            self.notify_server.close()
            self.notify_server = None
        if self.zygote is not None:
            loop.remove_signal_handler(signal.SIGCHLD)
            self.zygote.close()
            self.zygote = None

    def _reap_strays(self) -> None:
        """Reap children that are no task: orphans re-parented to us, a dead zygote.

        Tasks are reaped by their own pidfd handler (with their exit status);
        only other children are collected here, by pid, so no status is stolen.
        """
        if self.zygote is not None and self.zygote.lock.locked():
            # A fork is in flight: its task may already be our child while we do not know
            # its pid yet. Reaping it here would lose its exit status; come back shortly.
            asyncio.get_running_loop().call_later(0.05, self._reap_strays)
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

    async def start(self, spec: LaunchSpec) -> LocalTask:
        env = dict(spec.env)
        env["NOTIFY_SOCKET"] = str(self.layout.notify)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        if spec.host_entry and self.zygote is not None and not self.zygote.broken:
            invocation = env.get(INVOCATION_ENV)
            marker = None
            if invocation:
                marker_path = self.layout.spawned(invocation)
                marker_path.parent.mkdir(exist_ok=True)
                marker = str(marker_path)
            try:
                pid = await self.zygote.spawn(env, spec.cwd, str(spec.log_path), marker)
            except ConnectionError as exc:
                log.warning("%s: executing tasks instead", exc)
            except OSError as exc:
                raise LaunchError(
                    f"cannot start the task host: {exc}",
                    ExitInfo(Result.RESOURCES, detail=str(exc)),
                ) from exc
            else:
                return self._started(spec, pid)
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
                spec.argv,
                env=env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                process_group=0,
                close_fds=True,
            )
        except OSError as exc:
            raise LaunchError(
                f"cannot execute {spec.argv[0]}: {exc.strerror}",
                ExitInfo(Result.EXIT_CODE, exit_code=EXIT_EXEC, detail=str(exc)),
            ) from exc
        finally:
            os.close(log_fd)
        # The exit status is collected with waitid (to see core dumps). Marking the
        # Popen object as finished keeps subprocess's own reaper from stealing it.
        proc.returncode = 0
        return self._started(spec, proc.pid)

    def _started(self, spec: LaunchSpec, pid: int) -> LocalTask:
        spec = dataclasses.replace(spec, env={})  # the environment is not needed any more
        task = LocalTask(spec=spec, pid=pid, runner=self, pgid=pid)
        task.start_time = process_start_time(pid)
        self._watch(task)
        loop = asyncio.get_running_loop()
        if spec.notify:
            task._start_timer = loop.call_later(spec.start_timeout, task._start_timed_out)
        else:
            task.ready = True
            loop.call_soon(self._report_ready, task)
        for note in self._unclaimed.pop(pid, (0.0, []))[1]:
            self._apply(task, note)
        return task

    async def adopt(self, spec: LaunchSpec, description: Mapping[str, Any]) -> LocalTask | None:
        pid = description.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return None
        recorded = description.get("start_time")
        actual = process_start_time(pid)
        if actual is None or recorded is None or abs(actual - float(recorded)) > 0.05:
            return None  # gone, or the pid now belongs to another process
        task = LocalTask(
            spec=spec,
            pid=pid,
            runner=self,
            pgid=int(description.get("pgid") or pid),
            adopted=True,
            start_time=actual,
            ready=True,
        )
        self._watch(task)
        return task

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

    def _report_ready(self, task: LocalTask) -> None:
        if task.exit_info is None and self.events is not None:
            self.events.on_ready(task.key)

    def _task_finished(self, task: LocalTask, info: ExitInfo) -> None:
        if self.by_pid.get(task.pid) is task:
            del self.by_pid[task.pid]
        if self.by_pgid.get(task.pgid) is task:
            del self.by_pgid[task.pgid]
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
        so its exit status can be collected. An unrelated pid is refused.
        """
        if pid not in descendants(task.pid) or task.exit_info is not None:
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
        """The task a notification comes from: its main pid, or a process in its group.

        Accepting the whole process group is systemd's ``NotifyAccess=all``
        scoped to the task, so a shell wrapper's child may notify too.
        """
        task = self.by_pid.get(pid)
        if task is not None:
            return task
        try:
            return self.by_pgid.get(os.getpgid(pid))
        except ProcessLookupError:
            return None

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
            task.reason = Result.WATCHDOG
            asyncio.get_running_loop().create_task(task.stop())
        if note.extend_timeout_usec is not None:
            task._extend_start_timeout(note.extend_timeout_usec)
        if note.ready and not task.ready:
            task.ready = True
            task._cancel_start_timer()
            self.events.on_ready(key)
        if note.stopping:
            self.events.on_stopping(key)
