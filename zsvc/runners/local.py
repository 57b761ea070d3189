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

The runner is split by concern:

* this module starts tasks, reads their notifications and keeps the books
  (which pid, process group or cgroup is which task);
* :mod:`zsvc.runners.localtask`: one task's stop, watchdog and end;
* :mod:`zsvc.runners.localexec`: the pure rules (the command line a task's
  first process executes, systemd's verdict on its end), unit-tested
  without processes;
* :mod:`zsvc.runners.zygote_client` (and its server, :mod:`zsvc.runners.zygote`):
  Python tasks forked from a warm process;
* :mod:`zsvc.runners.subreaper`: the daemon's children that are no task;
* :mod:`zsvc.runners.cgroup`: one cgroup per run.

**Leaving no process behind** (systemd's ``KillMode=control-group``). Stop is
SIGTERM to the task, the stop timeout, then SIGKILL to everything it started;
when the main process ends by itself, whatever it left is SIGKILLed too. How
"everything" is found depends on the machine:

* *With a writable cgroup2 hierarchy* (root; :mod:`zsvc.runners.cgroup`), each
  run gets its own cgroup ``zsvc.slice/zsvc-<instance>.slice/<unit>``, joined
  by the task's first process before any task code runs (the instance: this
  daemon's, :mod:`zsvc.naming`): a zygote task joins first thing after
  the fork; an executed task is started through ``/bin/sh -c`` that writes
  its own pid to ``cgroup.procs`` and then execs the real program (same pid;
  no ``preexec_fn``, the daemon has threads). No descendant can leave it,
  whether it double-forks, calls setsid or changes its process group.
  SIGTERM goes to every process in the group, SIGKILL through
  ``cgroup.kill``; the task's end is reported once ``cgroup.events`` says
  ``populated 0`` (bounded by :data:`~zsvc.runners.exitcodes.KILL_WAIT`), and
  the group is removed. The group's path is part of
  :meth:`~zsvc.runners.localtask.LocalTask.describe`, so a task re-adopted
  after a daemon restart is still killed as a whole.
* *Without one* (not root, a read-only or cgroup1-only machine, or
  ``ZSVC_CGROUPS=0``), the task's process group is signalled, the descendants
  seen at stop time are SIGKILLed, and the daemon is a child subreaper that
  kills the orphans of ended runs (:mod:`zsvc.runners.subreaper`, with its
  limits).

**The open-files limit** (``task_fd_limit``). The daemon lifts its own soft
``RLIMIT_NOFILE`` to the hard limit (:func:`zsvc.daemon.server.raise_fd_limit`);
its tasks get back the soft limit it was started with, as systemd gives
its services 1024 whatever its own limit: a program that uses select()
breaks on an fd of 1024 or more. The zygote sets that limit on itself
before it imports anything, so every task it forks has it; an executed task
(a command, or a Python task without the zygote) sets it in the shell wrapper
above (``ulimit -S -n``, then ``exec``; exit status 205, systemd's
EXIT_LIMITS, if that fails), which is then used with or without a cgroup.
Why not ``preexec_fn``, nor a ``prlimit`` afterwards: see
:func:`~zsvc.runners.localexec.wrap_exec`.

**Watchdog** (``LaunchSpec.watchdog_sec``): the task gets ``WATCHDOG_USEC``
(and, when forked by the zygote, ``WATCHDOG_PID``; an executed task's pid is
not known before it runs, and a missing ``WATCHDOG_PID`` means "the main
process"); what happens when it stays silent is in :mod:`zsvc.runners.localtask`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
from collections.abc import Collection, Mapping
from typing import Any

from zsvc.hostwire import INVOCATION_ENV
from zsvc.jobs import Jobs
from zsvc.naming import instance_id
from zsvc.notify import PUBLIC_SOCKET_MODE, Notification, NotifyServer
from zsvc.paths import RuntimeLayout
from zsvc.procs import invocation_of, process_start_time
from zsvc.runners.base import (
    ExitInfo,
    LaunchError,
    LaunchSpec,
    Runner,
    RunnerEvents,
    TaskHandle,
    TaskKey,
)
from zsvc.runners.cgroup import Cgroup, CgroupTree, cgroup_of, find_hierarchy
from zsvc.runners.exitcodes import KILL_WAIT
from zsvc.runners.forking import group_of
from zsvc.runners.localexec import (
    chdir_failure,
    exec_failure,
    executable_error,
    launch_environment,
    wrapped,
)
from zsvc.runners.localsettings import cgroup_limits, prepare, refused
from zsvc.runners.localtask import LocalTask
from zsvc.runners.notifyflow import NotifyReader, StatusFlow
from zsvc.runners.procsettings import NOTHING, Resolved
from zsvc.runners.subreaper import Subreaper
from zsvc.runners.zygote_client import Zygote
from zsvc.states import Result

log = logging.getLogger(__name__)

UNCLAIMED_LIMIT = 1024
"""How many notifications from pids not (yet) known are held at most."""
UNCLAIMED_SECONDS = 10.0
"""How long a notification from a pid not (yet) known is held."""
UNCLAIMED_PER_PID = 64
"""How many notifications of one pid not (yet) known are held at most (the first ones)."""


class LocalRunner(Runner):
    """Supervises tasks as the daemon's own children.

    Python tasks are forked from a warm zygote when possible (set
    ``ZSVC_ZYGOTE=0`` to execute every task instead); command tasks are
    always executed. Each task gets its own cgroup when a cgroup2 hierarchy
    is writable (set ``ZSVC_CGROUPS=0`` to do without).

    *task_fd_limit* is the soft open-files limit every task gets: the one the
    daemon was started with, when it raised its own (None: tasks inherit the
    runner's process's limit).

    *instance* (:func:`zsvc.naming.instance_id` of the daemon's state dir) is the
    cgroup directory of this daemon's tasks, the only one it sweeps; None, outside a
    daemon: the instance of the runtime dir, so each test's runner has its own.
    """

    name = "local"

    def __init__(
        self,
        layout: RuntimeLayout,
        use_zygote: bool | None = None,
        use_cgroups: bool | None = None,
        task_fd_limit: int | None = None,
        instance: str | None = None,
    ):
        self.layout = layout
        self.instance = instance_id(layout.root) if instance is None else instance
        self.task_fd_limit = task_fd_limit
        self.events: RunnerEvents | None = None
        self.notify_server: NotifyServer | None = None
        self.flow = StatusFlow(self._deliver_status)
        """Status lines paced per task, and each task's budget of datagrams (coalesce.py)."""
        self.reader = NotifyReader(self.flow, self._sender, self._apply, self._hold)
        self.by_pid: dict[int, LocalTask] = {}
        self.by_pgid: dict[int, LocalTask] = {}
        self.by_cgroup: dict[str, LocalTask] = {}
        if use_zygote is None:
            use_zygote = os.environ.get("ZSVC_ZYGOTE", "1") != "0"
        if use_cgroups is None:
            use_cgroups = os.environ.get("ZSVC_CGROUPS", "1") != "0"
        self.use_zygote = use_zygote
        self.use_cgroups = use_cgroups
        self.cgroups: CgroupTree | None = None
        self.subreaper = Subreaper(self.by_pid)
        self.jobs = Jobs("local runner")
        """The tasks' background work: a timed-out stop, a watchdog abort, a cgroup drain."""
        self._unclaimed: dict[int, tuple[float, list[Notification]]] = {}
        """Notifications from pids not yet known: a forked task may say READY=1 before the
        zygote's answer naming its pid has been read. Replayed when the pid is registered;
        forgotten after UNCLAIMED_SECONDS (a late datagram from a task that already ended)."""

    @property
    def zygote(self) -> Zygote | None:
        """The fork server, when there is one; the subreaper holds it, as it reaps it."""
        return self.subreaper.zygote

    async def open(self, events: RunnerEvents) -> None:
        self.events = events
        # Anyone may send (tasks of other users); credentials say who spoke: zsvc/notify.py
        self.notify_server = NotifyServer(self.layout.notify, PUBLIC_SOCKET_MODE)
        self.layout.make_spawned_dir()
        self.reader.start(self.notify_server)
        if self.use_cgroups:
            self.cgroups = find_hierarchy(instance=self.instance)
        if self.cgroups is not None:
            log.info("each task runs in its own cgroup under %s", self.cgroups.slice)
            for stale in self.cgroups.sweep():
                log.info("removed the stale cgroup %s", stale)
        else:
            why = self._no_cgroups()
            log.info("%s: tasks are tracked by process group and invocation id", why)
        # A subreaper collects the zygote's tasks and, without cgroups, finds orphans.
        hunt_orphans = self.cgroups is None
        if (self.use_zygote or hunt_orphans) and self.subreaper.start(hunt_orphans):
            if self.use_zygote:
                self.subreaper.zygote = Zygote(self.task_fd_limit)
        elif self.use_zygote:
            log.warning("cannot become a child subreaper: Python tasks will be executed")

    def _no_cgroups(self) -> str | None:
        """Why tasks get no cgroup of their own; None when they do."""
        if self.cgroups is not None:
            return None
        return "no writable cgroup2 hierarchy" if self.use_cgroups else "ZSVC_CGROUPS=0"

    async def close(self) -> None:
        if self.notify_server is not None:
            self.reader.stop()
            self.notify_server.close()
            self.notify_server = None
        self.flow.close()
        self.subreaper.stop()
        if self.cgroups is not None and self.instance:  # its directory, once no task is left
            with contextlib.suppress(OSError):
                self.cgroups.slice.rmdir()
        if self.subreaper.zygote is not None:
            self.subreaper.zygote.close()
            self.subreaper.zygote = None
        await self.jobs.cancel_all()

    # --- what the tasks ask of their runner (localtask.TaskOwner) ------------------------

    def kill_orphans(self, invocations: Collection[str]) -> None:
        self.subreaper.kill_orphans(invocations)

    def task_finished(self, task: LocalTask, info: ExitInfo) -> None:
        if self.by_pid.get(task.pid) is task:
            del self.by_pid[task.pid]
        if self.by_pgid.get(task.pgid) is task:
            del self.by_pgid[task.pgid]
        relative = task.cgroup.relative if task.cgroup is not None else None
        if relative and self.by_cgroup.get(relative) is task:
            del self.by_cgroup[relative]
        if task.invocation:
            self.subreaper.run_ended(task.invocation)
        self.flow.end(task.key)  # its last status line first: a failed start quotes it
        if self.events is not None:
            self.events.on_exit(task.key, info)

    # --- starting -----------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> LocalTask:
        env = launch_environment(spec.env, self.layout.notify, spec.watchdog_sec)
        invocation = env.get(INVOCATION_ENV)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        settings = prepare(spec.task_id, spec.process, self.cgroups, self._no_cgroups())
        cgroup = self._make_cgroup(spec, invocation)
        try:
            pid = await self._spawn(spec, env, invocation, cgroup, settings)
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
        limits = cgroup_limits(spec.process)
        try:
            return self.cgroups.create(spec.unit, f"{spec.unit}-{suffix}", limits)
        except OSError as exc:
            if limits:  # never silently ignored: no group, no limits, no start
                raise refused(
                    f"task {spec.task_id!r}: cannot set {', '.join(limits)} in its cgroup"
                    f" under {self.cgroups.slice}: {exc}"
                ) from exc
            log.warning(
                "%s/%s: cannot make its cgroup (%s): its processes are tracked without one",
                *spec.key,
                exc,
            )
            return None

    async def _spawn(
        self,
        spec: LaunchSpec,
        env: dict[str, str],
        invocation: str | None,
        cgroup: Cgroup | None,
        settings: Resolved = NOTHING,
    ) -> int:
        """Start the task's first process (already in *cgroup*); its pid."""
        where = str(cgroup.path) if cgroup is not None else None
        zygote = self.zygote
        if spec.host_entry and zygote is not None and not zygote.broken:
            marker = None
            if invocation:
                marker_path = self.layout.spawned(invocation)
                marker_path.parent.mkdir(mode=0o700, exist_ok=True)
                marker = str(marker_path)
            try:
                wire = None if settings.empty else settings.to_wire()
                return await zygote.spawn(env, spec.cwd, str(spec.log_path), marker, where, wire)
            except ConnectionError as exc:
                log.warning("%s: executing tasks instead", exc)
            except OSError as exc:
                raise LaunchError(
                    f"cannot start the task host: {exc}",
                    ExitInfo(Result.RESOURCES, detail=str(exc)),
                ) from exc
        return self._execute(spec, env, where, settings)

    def _execute(
        self, spec: LaunchSpec, env: dict[str, str], cgroup: str | None, settings: Resolved
    ) -> int:
        """Execute the task's program (through the shell wrapper when it must first join
        *cgroup*, set its open-files limit or carry out *settings*); its pid."""
        argv: list[str] = list(spec.argv)
        if cgroup is not None or self.task_fd_limit is not None or not settings.empty:
            # The shell wrapper, not Popen, executes the program: refuse a missing one now.
            error = executable_error(argv[0] if argv else "", env, spec.cwd)
            if error is not None:
                raise exec_failure(argv[0] if argv else "", error)
            argv, env = wrapped(argv, env, cgroup, self.task_fd_limit, settings, spec.cwd)
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
                raise chdir_failure(spec.cwd, exc) from exc
            raise exec_failure(spec.argv[0] if spec.argv else "", exc) from exc
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
        if task.begin():  # ready at exec: told once start() has returned the handle
            asyncio.get_running_loop().call_soon(self.task_ready, task)
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
        task.arm_watchdog()
        return task

    def find_unsaved_run(self, invocation: str) -> dict[str, Any] | None:
        """The zygote's marker first: a forked task's environment is the zygote's, so its
        invocation id cannot be searched for; then the environments, as every runner."""
        if not invocation:
            return None
        marker = self.layout.spawned(invocation)
        with contextlib.suppress(OSError, ValueError):
            pid = int(marker.read_text())
            marker.unlink()
            return {"pid": pid, "pgid": pid, "start_time": process_start_time(pid)}
        return super().find_unsaved_run(invocation)

    def run_saved(self, handle: TaskHandle) -> None:
        """The run's pid is in the table now: the zygote's marker for it may go."""
        if isinstance(handle, LocalTask) and handle.invocation:
            with contextlib.suppress(FileNotFoundError):
                self.layout.spawned(handle.invocation).unlink()

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
        task.watch_pidfd()
        self.by_pid[task.pid] = task
        self.by_pgid[task.pgid] = task
        if task.cgroup is not None and (relative := task.cgroup.relative):
            self.by_cgroup[relative] = task

    def task_ready(self, task: LocalTask) -> None:
        if task.exit_info is None and self.events is not None:
            self.flow.flush(task.key)
            self.events.on_ready(task.key)

    # --- sd_notify ----------------------------------------------------------

    def _deliver_status(self, key: TaskKey, text: str) -> None:
        if self.events is not None:
            self.events.on_status(key, text)

    def main_found(self, task: LocalTask, pid: int) -> bool:
        """A forking task's main process: followed, its own process group (a daemon calls
        setsid) in the books, which a stop signals; then the task is ready."""
        if not self._switch_main(task, pid, known=True):
            return False
        if pgid := group_of(pid):  # a daemon's own group (setsid), not the starter's
            if self.by_pgid.get(task.pgid) is task:
                del self.by_pgid[task.pgid]
            task.pgid, self.by_pgid[pgid] = pgid, task
        if not task.stop_requested and task.became_ready():
            self.task_ready(task)
        return True

    def _switch_main(self, task: LocalTask, pid: int, known: bool = False) -> bool:
        """MAINPID=: the task follows another main process; the books follow it too."""
        old = task.pid
        if not task.follow_main(pid, known):
            return False
        if self.by_pid.get(old) is task:
            del self.by_pid[old]
        self.by_pid[pid] = task
        if self.events is not None:
            self.flow.flush(task.key)
            self.events.on_main_pid(task.key, pid, task.describe())
        return True

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
        held = self._unclaimed.setdefault(note.pid, (now, []))[1]
        if len(held) < UNCLAIMED_PER_PID:
            held.append(note)

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
            self.flow.status(key, note.status)
        elif note.errno is not None:
            self.flow.status(key, f"errno {note.errno}: {os.strerror(note.errno)}")
        if note.watchdog_ping:
            task.pinged()
        if note.watchdog_trigger:
            log.warning("%s/%s asked for WATCHDOG=trigger", *key)
            task.watchdog_abort()
        if note.extend_timeout_usec is not None:
            task.extend_start_timeout(note.extend_timeout_usec)
        if note.ready and task.became_ready():
            self.flow.flush(key)
            self.events.on_ready(key)
        if note.stopping:
            self.flow.flush(key)
            self.events.on_stopping(key)
