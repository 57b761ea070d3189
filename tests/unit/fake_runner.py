"""A runner without processes, for unit tests of the daemon's manager.

:class:`FakeRunner` implements the :class:`~zsvc.runners.base.Runner` contract
the way jupyter_client's tests implement a custom kernel provisioner: it
starts nothing, records every call, and emits the runner's events
(:class:`~zsvc.runners.base.RunnerEvents`) only when the test says so. A test
therefore decides, event by event, what a task "does", and checks what the
manager made of it, in milliseconds.

Typical use (everything runs inside one ``asyncio.run``)::

    runner = FakeRunner()
    manager = Manager(runner, table, published.append, runtime, state)
    await runner.open(manager)                   # as the daemon does
    starting = asyncio.create_task(manager.start(..., block=True, ...))
    await runner.started("a")                    # the manager launched task a
    runner.ready(("T", "a"))                     # READY=1
    await asyncio.wait_for(starting, 2)

What the fake does by itself, and how to change it:

- ``start(spec)`` records the spec (:attr:`FakeRunner.starts`) and returns a
  :class:`FakeHandle` with a fresh fake pid (never a real process of this
  test). It emits nothing: call :meth:`FakeRunner.ready` and friends. With
  :attr:`FakeRunner.auto_ready` a started task is ready at once (soon after
  ``start`` returns), like a command task that does not notify.
  :meth:`FakeRunner.fail_start` makes the next start of a task raise
  :class:`~zsvc.runners.base.LaunchError` instead.
- ``handle.stop()`` records the stop and ends the run by emitting ``on_exit``
  with the outcome set by :meth:`FakeRunner.on_stop` for that task (by
  default a clean stop: SIGTERM, result ``success``). The outcome
  :data:`HOLD` leaves the run stopping until the test calls
  :meth:`FakeRunner.exit`; ``stop()`` then returns with that end.
- ``handle.kill()`` records the kill and ends the run (SIGKILL, ``signal``).
- ``adopt(spec, description)`` records the call and answers from
  :attr:`FakeRunner.live`, the fake pids that are "still running": a handle
  for a live pid, None for any other.
- ``forget(transaction)`` and ``close()`` are recorded.

Every call is also appended, in order, to :attr:`FakeRunner.calls` as a tuple
(``("start", key)``, ``("stop", key, timeout)``, ``("kill", key)``,
``("signal", key, signum)``, ``("adopt", key, pid)``, ``("forget",
transaction)``, ``("open",)``, ``("close",)``), so that a test can check the
order of launches and stops across tasks. :meth:`FakeRunner.wait_for` waits
(bounded) until the calls satisfy a condition, for work the manager does in
the background (triggers, the restart policy).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zsvc.runners.base import (
    ExitInfo,
    LaunchError,
    LaunchSpec,
    Runner,
    RunnerEvents,
    TaskHandle,
    TaskKey,
)
from zsvc.states import Result

WAIT = 2.0
"""Seconds any wait of the fake gives up after: nothing here takes more than milliseconds."""

HOLD = None
"""A stop outcome: the run stays stopping until the test calls :meth:`FakeRunner.exit`."""

STOPPED = ExitInfo(Result.SUCCESS, signal=signal.SIGTERM)
"""How a run ends when it is stopped and obeys (the default stop outcome)."""
STOP_TIMED_OUT = ExitInfo(Result.TIMEOUT, signal=signal.SIGKILL)
"""How a run ends when it ignored SIGTERM and was killed after its stop timeout."""
KILLED = ExitInfo(Result.SIGNAL, signal=signal.SIGKILL)
"""How a run ends when :meth:`FakeHandle.kill` is called."""
CRASHED = ExitInfo(Result.EXIT_CODE, exit_code=1)
"""A run that ended on its own with status 1."""
EXITED = ExitInfo(Result.SUCCESS, exit_code=0)
"""A run that ended on its own with status 0."""

_pids = itertools.count(4_000_000)  # above pid_max's default: never a real process


def fake_pid() -> int:
    """A pid no real process has (above the kernel's default pid_max)."""
    return next(_pids)


@dataclass(eq=False)
class FakeHandle(TaskHandle):
    """One fake run. It ends (``on_exit``, once) when the test or a stop says so."""

    runner: FakeRunner | None = None
    done: asyncio.Future[ExitInfo] | None = None
    signals: list[int] = field(default_factory=list)

    async def wait(self) -> ExitInfo:
        assert self.done is not None
        return await asyncio.shield(self.done)

    def send_signal(self, signum: int) -> None:
        assert self.runner is not None
        self.signals.append(signum)
        self.runner._record("signal", self.key, signum)

    async def stop(self, timeout: float | None = None) -> ExitInfo:
        assert self.runner is not None
        runner = self.runner
        runner._record("stop", self.key, timeout)
        outcome = runner.stop_outcomes.get(self.key[1], runner.stop_outcome)
        if self.exit_info is None and outcome is not HOLD:
            runner._end(self, outcome)
        return await self.wait()

    def kill(self) -> None:
        assert self.runner is not None
        self.runner._record("kill", self.key)
        self.runner._end(self, KILLED)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "fake": True}


class FakeRunner(Runner):
    """Records every call; emits runner events only when told (see the module's text)."""

    name = "fake"

    def __init__(self, auto_ready: bool = False) -> None:
        self.events: RunnerEvents | None = None
        self.auto_ready = auto_ready
        """Report each started run ready right after ``start`` returns."""
        self.calls: list[tuple[Any, ...]] = []
        """Every call in order: ``("start", key)``, ``("stop", key, timeout)``, …"""
        self.starts: list[LaunchSpec] = []
        """The spec of every successful or failed ``start``, in order."""
        self.adopts: list[tuple[LaunchSpec, dict[str, Any]]] = []
        self.forgotten: list[str] = []
        self.handles: dict[TaskKey, FakeHandle] = {}
        """The latest handle of each task (run), by key."""
        self.live: dict[int, Mapping[str, Any]] = {}
        """Fake pids alive for :meth:`adopt` (pid → anything, say the description)."""
        self.stop_outcome: ExitInfo | None = STOPPED
        """How a stopped run ends, unless :attr:`stop_outcomes` names its task."""
        self.stop_outcomes: dict[str, ExitInfo | None] = {}
        """Per task id: how its runs end when stopped (:data:`HOLD`: when told)."""
        self._failures: dict[str, list[ExitInfo]] = {}
        self._changed = asyncio.Event()
        self.closed = False

    # --- the contract ----------------------------------------------------------------

    async def open(self, events: RunnerEvents) -> None:
        self._record("open")
        self.events = events

    async def start(self, spec: LaunchSpec) -> FakeHandle:
        self.starts.append(spec)
        self._record("start", spec.key)
        failures = self._failures.get(spec.task_id)
        if failures:
            info = failures.pop(0)
            raise LaunchError(f"fake launch of {spec.task_id} failed", info)
        loop = asyncio.get_running_loop()
        handle = FakeHandle(spec, fake_pid(), runner=self, done=loop.create_future())
        self.handles[spec.key] = handle
        if self.auto_ready:
            loop.call_soon(self._ready_if_running, handle)
        return handle

    async def adopt(self, spec: LaunchSpec, description: Mapping[str, Any]) -> FakeHandle | None:
        self.adopts.append((spec, dict(description)))
        pid = description.get("pid")
        self._record("adopt", spec.key, pid)
        if not isinstance(pid, int) or pid not in self.live:
            return None
        handle = FakeHandle(spec, pid, runner=self, done=asyncio.get_running_loop().create_future())
        self.handles[spec.key] = handle
        return handle

    async def forget(self, transaction: str) -> None:
        self.forgotten.append(transaction)
        self._record("forget", transaction)

    async def close(self) -> None:
        self.closed = True
        self._record("close")

    # --- what the test tells the fake -------------------------------------------------

    def fail_start(self, task_id: str, info: ExitInfo | None = None) -> None:
        """Make the next start of *task_id* raise LaunchError with *info* (exec failed)."""
        info = info or ExitInfo(Result.RESOURCES, detail="exec failed")
        self._failures.setdefault(task_id, []).append(info)

    def on_stop(self, task_id: str, outcome: ExitInfo | None) -> None:
        """How runs of *task_id* end when stopped; :data:`HOLD`: only when told (exit)."""
        self.stop_outcomes[task_id] = outcome

    def ready(self, key: TaskKey) -> None:
        """The run is ready (READY=1)."""
        self._emitter().on_ready(key)

    def status(self, key: TaskKey, text: str) -> None:
        """The run says ``STATUS=text``."""
        self._emitter().on_status(key, text)

    def stopping(self, key: TaskKey) -> None:
        """The run says ``STOPPING=1``."""
        self._emitter().on_stopping(key)

    def main_pid(self, key: TaskKey, pid: int, description: dict[str, Any] | None = None) -> None:
        """The run's main process changed (``MAINPID=``); the handle's pid follows."""
        handle = self.handles.get(key)
        if handle is not None:
            handle.pid = pid
        self._emitter().on_main_pid(key, pid, {"pid": pid, **(description or {})})

    def exit(self, key: TaskKey, info: ExitInfo) -> None:
        """The current run of *key* ended with *info* (once per run: a second call is an error)."""
        handle = self.handles[key]
        if handle.exit_info is not None:
            raise AssertionError(f"{key}: this run already ended ({handle.exit_info})")
        self._end(handle, info)

    # --- what the test waits for --------------------------------------------------------

    async def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until *condition()* holds, re-checked at each recorded call; bounded."""

        async def waiting() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(waiting(), timeout)

    async def started(self, task_id: str, count: int = 1, timeout: float = WAIT) -> FakeHandle:
        """Wait until *task_id* was started *count* times (all told); its latest handle."""
        await self.wait_for(lambda: self.start_count(task_id) >= count, timeout)
        spec = [spec for spec in self.starts if spec.task_id == task_id][-1]
        return self.handles[spec.key]

    async def stopped(self, task_id: str, count: int = 1, timeout: float = WAIT) -> None:
        """Wait until *task_id* was asked to stop *count* times (all told)."""
        await self.wait_for(lambda: self.stop_count(task_id) >= count, timeout)

    def start_count(self, task_id: str) -> int:
        return sum(1 for spec in self.starts if spec.task_id == task_id)

    def stop_count(self, task_id: str) -> int:
        return sum(1 for call in self.calls if call[0] == "stop" and call[1][1] == task_id)

    def order(self, kind: str, transaction: str | None = None) -> list[str]:
        """The task ids of every call of *kind* (``start``, ``stop``, …), in call order
        (of *transaction*'s tasks only, when given)."""
        return [
            call[1][1]
            for call in self.calls
            if call[0] == kind and transaction in (None, call[1][0])
        ]

    # --- inside ---------------------------------------------------------------------------

    def _emitter(self) -> RunnerEvents:
        assert self.events is not None, "open() the runner first (the daemon does)"
        return self.events

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        self._changed.set()

    def _ready_if_running(self, handle: FakeHandle) -> None:
        if handle.exit_info is None and self.handles.get(handle.key) is handle:
            self.ready(handle.key)

    def _end(self, handle: FakeHandle, info: ExitInfo) -> None:
        if handle.exit_info is not None:
            return  # on_exit is reported once per run
        handle.exit_info = info
        assert handle.done is not None
        handle.done.set_result(info)
        self._emitter().on_exit(handle.key, info)
        self._changed.set()
