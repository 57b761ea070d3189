"""One task of the systemd runner: a transient unit, followed through systemd's signals.

:class:`SystemdTask` is the :class:`~zsvc.runners.base.TaskHandle` of the
systemd runner (:mod:`zsvc.runners.systemd`, which starts units, listens on
the bus and hands each unit's signals to its task). The task turns those
signals into the daemon's events, in order:

* **state comes from signals, never from polling**: each ``PropertiesChanged``
  of the unit (Service and Unit interfaces) is folded into a
  :class:`~zsvc.runners.transient.UnitView`; with
  ``CollectMode=inactive-or-failed`` a failed unit is gone the moment it fails,
  so the exit status is taken from the Service signal that precedes the
  Unit's ``failed``;
* **events are held until start()/adopt() returned** (:meth:`SystemdTask._release`),
  so the daemon has the handle before it hears that the task is ready or gone
  (the local runner has the same order);
* **stop** is systemd's ``StopUnit`` (the unit's ``KillSignal``, ``TimeoutStopUSec``,
  ``FinalKillSignal`` to the cgroup: the task's ``kill_signal`` and
  ``final_kill_signal``, set on the unit by :mod:`~zsvc.runners.transient`), with a
  bounded wait for systemd's report of the end;
* **a forking task** (``Type=forking``) has no MainPID while its starter runs: its pid
  is then the starter's (systemd's ControlPID), and the daemonised process, read by
  systemd from ``PIDFile=`` or guessed from the cgroup, is reported with
  ``on_main_pid`` when it comes after start() returned. It is ready when the unit is
  active (the starter exited 0 and a main process is known);
* **honest ends** (:mod:`zsvc.runners.ends`, as the local runner): a start timeout
  says "no READY=1 within N s"; a simple/exec task is ready only once it has run
  ``start_secs``, and an end before that is a failed start that says so; a main
  process that exits leaving processes that systemd then has to kill (the unit goes
  through ``stop-sigterm`` though nobody asked it to stop) says how many it left.

The daemon's own events for a task go to the journal with the task's fields
(:mod:`zsvc.journal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from zsvc import journal
from zsvc.jobs import Jobs
from zsvc.runners import ends, transient
from zsvc.runners.base import ExitInfo, RunnerEvents, TaskHandle
from zsvc.runners.cgroup import cgroup_of, members_of
from zsvc.runners.exitcodes import KILL_WAIT
from zsvc.runners.notifyflow import StatusFlow
from zsvc.runners.sdbus import NO_SUCH_UNIT, SystemdError, variant
from zsvc.states import Result, StartType, State

log = logging.getLogger(__name__)

READY_AT_EXEC = frozenset({StartType.SIMPLE, StartType.EXEC})
"""Start types that are ready once the program runs (a forking starter that ran is not)."""
KILLING_THE_REST = frozenset({"stop-sigterm", "stop-sigkill"})
"""Sub-states of a unit whose processes systemd is killing (KillMode=control-group)."""


class UnitOwner(Protocol):
    """What a task needs of its runner (:class:`~zsvc.runners.systemd.SystemdRunner`)."""

    events: RunnerEvents | None
    flow: StatusFlow
    """Where status lines go, paced per task, and are flushed before the task's other events."""
    jobs: Jobs
    """Where the task's background work runs (a resync after a doubtful UnitRemoved)."""

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        """A method call on systemd's manager; :class:`SystemdError` when it fails."""

    def bus_send(self, member: str, signature: str, body: list[Any]) -> None:
        """A method call on systemd's manager whose answer nobody waits for."""

    async def resync(self, task: SystemdTask) -> None:
        """Read the unit's state anew (after a daemon-reload or a reconnection)."""

    def slice_maybe_idle(self, transaction: str) -> None:
        """A task of *transaction* ended: its slice may be stopped if none is left."""


@dataclass(eq=False)
class SystemdTask(TaskHandle):
    """A task running as a transient unit."""

    runner: UnitOwner | None = None
    unit: str = ""
    path: str = ""
    service_name: str = ""
    view: transient.UnitView = field(default_factory=transient.UnitView)
    ready: bool = False
    stop_requested: bool = False
    removed: asyncio.Event = field(default_factory=asyncio.Event)
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    _pid_known: asyncio.Event = field(default_factory=asyncio.Event)
    _start_job_seen: bool = False
    _returned: bool = False
    """The daemon has read ``pid``: a later MainPID is news for it (``on_main_pid``)."""
    _held: list[Callable[[], None]] | None = field(default_factory=list)
    """Events waiting until the daemon has this handle (None once released)."""
    _born: float = field(default_factory=time.monotonic)
    """When the unit was asked for: how long a run lasted before start_secs."""
    _start_secs_timer: asyncio.TimerHandle | None = None
    _ran_start_secs: bool = False
    _group: str | None = None
    """The unit's cgroup, noted when its main process became known (leftovers counted)."""
    _leftovers: int | None = None
    """Processes left by a main process that exited by itself (-1: some, count unknown)."""

    async def wait(self) -> ExitInfo:
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    def send_signal(self, signum: int) -> None:
        if self.exit_info is None and self.runner is not None:
            self.runner.bus_send("KillUnit", "ssi", [self.unit, "main", int(signum)])

    def kill(self) -> None:
        if self.exit_info is None and self.runner is not None:
            self.runner.bus_send("KillUnit", "ssi", [self.unit, "all", int(signal.SIGKILL)])

    async def stop(self, timeout: float | None = None) -> ExitInfo:
        """StopUnit: systemd sends the unit's KillSignal, waits TimeoutStopUSec, then its
        FinalKillSignal to the cgroup (never a signal of the runner's own choosing)."""
        if self.exit_info is not None:
            return self.exit_info
        assert self.runner is not None
        self.stop_requested = True
        limit = self.spec.stop_timeout if timeout is None else timeout
        try:
            if timeout is not None and timeout != self.spec.stop_timeout:
                prop = [["TimeoutStopUSec", variant("t", transient.usec(timeout))]]
                await self.runner.call("SetUnitProperties", "sba(sv)", [self.unit, True, prop])
            await self.runner.call("StopUnit", "ss", [self.unit, "replace"])
        except SystemdError as exc:
            if exc.name != NO_SUCH_UNIT:
                log.warning("%s/%s: StopUnit: %s", *self.key, exc)
            elif self.exit_info is None:  # gone, and its end not (yet) seen
                self._finish(self._verdict() if self.view.ended else vanished())
        if await self._wait_exit(limit + KILL_WAIT):
            return self.exit_info  # type: ignore[return-value]
        log.warning("%s/%s: systemd reported no end after %g s: SIGKILL", *self.key, limit)
        self.kill()
        if not await self._wait_exit(KILL_WAIT):
            self._finish(ExitInfo(Result.TIMEOUT, detail="systemd reported no end of the unit"))
        return self.exit_info  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "unit": self.unit, "invocation_id": self.view.invocation}

    def processes(self) -> list[int]:
        """The unit's cgroup is its exact process set (what systemd would kill), so the
        monitor samples a daemonised grandchild too; the main pid's tree without it."""
        group = cgroup_of(self.pid) if self.pid else None
        members = members_of(group) if group else []
        if not members:
            return super().processes()
        return [self.pid, *sorted(pid for pid in members if pid != self.pid)]

    # --- internals ------------------------------------------------------------------

    async def _wait_exit(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), seconds)
        return self.exit_info is not None

    def _emit(self, action: Callable[[], None]) -> None:
        if self._held is not None:
            self._held.append(action)
        else:
            action()

    def _release(self) -> None:
        """The daemon has the handle now: tell it what happened meanwhile, in order."""
        held, self._held = self._held or [], None
        for action in held:
            action()

    def on_properties(self, interface: str, properties: Mapping[str, Any]) -> None:
        """One PropertiesChanged (or GetAll) of the unit."""
        if self.exit_info is not None:
            return
        changed = self.view.update(interface, properties)
        if "control_pid" in changed and self._starter_only:
            self.pid = self.view.control_pid  # the starter, until the daemon is known
            self._pid_known.set()
        if "main_pid" in changed and self.view.main_pid:
            self._group = cgroup_of(self.view.main_pid)
            news = self._returned and self.view.main_pid != self.pid  # or MAINPID= from the task
            self.pid = self.view.main_pid
            self._pid_known.set()
            if news:
                self._emit(
                    self._report(lambda e: e.on_main_pid(self.key, self.pid, self.describe()))
                )
        if "status_text" in changed and not self.view.ended:
            self._emit(self._status(self.view.status_text))
        if "sub_state" in changed and self.view.sub_state in KILLING_THE_REST:
            self._note_leftovers()
        if "active_state" in changed:
            state = self.view.active_state
            if state == State.ACTIVE and not self.ready:
                self._became_ready()
            elif state == State.DEACTIVATING and self.ready and not self.stop_requested:
                self._emit(self._report(lambda e: e.on_stopping(self.key)))
        if self.view.ended:
            ran = self.spec.start_type in READY_AT_EXEC and self.view.exec_succeeded
            if ran and not self.ready:
                # Type=exec: it ran, and ended within one systemd loop turn, so "active"
                # was never signalled. The local runner calls such a task ready at exec.
                self._became_ready()
            self._finish(self._verdict())

    @property
    def _starter_only(self) -> bool:
        """A forking task's starter runs and no main process is known yet."""
        forking = self.spec.start_type is StartType.FORKING
        return forking and bool(self.view.control_pid) and not self.view.main_pid and not self.pid

    def _verdict(self) -> ExitInfo:
        """How the run ended, as systemd said it, in zsvc's words (a stop by the task's
        own kill signal is clean: :func:`~zsvc.runners.transient.run_verdict`), with why
        a start failed (:mod:`zsvc.runners.ends`)."""
        info = transient.run_verdict(self.view.exit(), self.spec, self.stop_requested)
        if self._leftovers is not None:
            count = self._leftovers if self._leftovers > 0 else None
            info = ends.with_reason(info, ends.leftover_detail(count, self._forking))
        if self.ready or self.stop_requested:
            return info
        if self.spec.start_type in READY_AT_EXEC and self.spec.start_secs > 0:
            ran = time.monotonic() - self._born
            return ends.before_start_secs(info, ran, self.spec.start_secs)
        if info.result is Result.TIMEOUT and not info.detail:
            limit = self.spec.start_timeout
            return ends.with_reason(info, ends.start_timeout_detail(self.spec, limit))
        return info

    def _note_leftovers(self) -> None:
        """systemd kills the unit's processes though no stop was asked for, the main one
        gone: it left some (systemd goes straight to dead when the group is empty)."""
        if self.stop_requested or self.view.main_pid or self._leftovers is not None:
            return
        if not self.ready and self.spec.start_type not in READY_AT_EXEC:
            return  # a forking starter's failure or timeout: no main process ever ran
        members = members_of(self._group) if self._group else []
        self._leftovers = len(members) or -1  # dying already, maybe: some, at least
        detail = ends.leftover_detail(len(members) or None, self._forking)
        log.warning("%s/%s: %s (%s)", *self.key, detail, self.unit)

    @property
    def _forking(self) -> bool:
        return self.spec.start_type is StartType.FORKING

    def _held_for_start_secs(self) -> bool:
        """A simple/exec task with start_secs is ready only once it has run that long:
        the first "ready" arms a timer (True: not ready yet)."""
        if self.spec.start_type not in READY_AT_EXEC or self.spec.start_secs <= 0:
            return False
        if self._ran_start_secs:
            return False
        if self._start_secs_timer is None:
            delay = self.spec.start_secs - (time.monotonic() - self._born)
            loop = asyncio.get_running_loop()
            self._start_secs_timer = loop.call_later(max(0.0, delay), self._start_secs_passed)
        return True

    def _start_secs_passed(self) -> None:
        self._ran_start_secs = True
        if self.exit_info is None and not self.view.ended and not self.stop_requested:
            self._became_ready()

    def _became_ready(self) -> None:
        if self.ready or self._held_for_start_secs():
            return
        self.ready = True
        self._emit(self._report(lambda e: e.on_ready(self.key)))
        self._journal("ready", journal.INFO)

    def on_job_removed(self, result: str) -> None:
        """A job of the unit ended. The first one is the start job: ``done`` means ready
        (READY=1, or exec), even when the unit's "active" was not signalled on its own."""
        first, self._start_job_seen = not self._start_job_seen, True
        if not first or self.exit_info is not None:
            return
        if result == "done" and not self.ready:
            self._became_ready()
        elif result != "done" and not self.view.seen_running:
            self._finish(ExitInfo(Result.RESOURCES, detail=f"systemd's start job ended: {result}"))

    def on_removed(self) -> None:
        """systemd unloaded the unit (UnitRemoved).

        Ignored before this run was seen running: it is then the previous run's
        unit, whose removal was still on its way when this run registered.
        """
        if not self.view.seen_running:
            return
        if self.exit_info is None and not self.view.ended and self.runner is not None:
            # A daemon-reload sends UnitRemoved (then UnitNew) for live units too:
            # ask systemd before believing it.
            self.runner.jobs.spawn(self.runner.resync(self), f"resync {self.unit}")
            return
        if self.exit_info is None:
            self._finish(self._verdict())
        self.removed.set()

    def _status(self, text: str) -> Callable[[], None]:
        """A status line, paced by the runner's flow (at most every 100 ms, the latest
        winning): a task's STATUS= flood reaches us as one PropertiesChanged per line."""

        def action() -> None:
            if self.runner is not None:
                self.runner.flow.status(self.key, text)

        return action

    def _report(
        self, call: Callable[[RunnerEvents], None], end: bool = False
    ) -> Callable[[], None]:
        """An event for the daemon, after the task's pending status line (never reordered
        with it); at the *end* of the run, the flow forgets the task."""

        def action() -> None:
            if self.runner is not None:
                (self.runner.flow.end if end else self.runner.flow.flush)(self.key)
            if self.runner is not None and self.runner.events is not None:
                call(self.runner.events)

        return action

    def _finish(self, info: ExitInfo) -> None:
        if self.exit_info is not None:
            return
        self.exit_info = info
        if self._start_secs_timer is not None:
            self._start_secs_timer.cancel()
        self._pid_known.set()
        self._exited.set()
        self._journal(info.describe(), journal.INFO if info.clean else journal.WARNING)
        self._emit(self._report(lambda e: e.on_exit(self.key, info), end=True))
        if self.runner is not None:
            self.runner.slice_maybe_idle(self.spec.transaction)

    def _journal(self, what: str, priority: int) -> None:
        fields = transient.log_fields(self.spec, self.service_name)
        journal.send(f"{self.spec.task_id} ({self.unit}): {what}", priority, **fields)


def vanished() -> ExitInfo:
    """The end of a unit that went away unseen: its exit status is lost."""
    return ExitInfo(Result.LOST, detail="the unit vanished before its end was seen")
