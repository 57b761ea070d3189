"""Thread tasks behind the runner contract: one host process per transaction, a thread per task.

The seed's ``serviceType="Thread"`` runs a task as a thread of a shared
process instead of a process of its own. :class:`ThreadRunner` makes that
look, to the daemon, exactly like any other runner: a Thread task is started,
is ready, shows a status, is stopped and ends through the same
:class:`~zsvc.runners.base.TaskHandle` and
:class:`~zsvc.runners.base.RunnerEvents` as a process, so the manager never
asks which kind of task it holds.

It wraps the process runner: a launch spec without ``thread_host`` passes
straight through; a Thread task's spec carries the launch of its
transaction's *thread host* (:mod:`zsvc.task.threads`), which this runner
starts through the process runner when the first Thread task of the
transaction starts and stops when the last one is down. The host's own
events (key ``(transaction, THREAD_HOST_ID)``) never reach the daemon; the
threads' events come from the host's reports on the bus
(:meth:`ThreadRunner.on_bus_message`), and orders go to the host on the bus.

A thread cannot be killed: a stop that times out ends the run as
``timeout`` while the thread runs on until its host stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zsvc import protocol
from zsvc.hostwire import ENDS, ORDER_KEY, ORDER_START, ORDER_STOP, REPORT_ACTION, Event
from zsvc.hostwire import THREAD_HOST_ID as THREAD_HOST_ID
from zsvc.jobs import Jobs
from zsvc.runners.base import (
    ExitInfo,
    LaunchError,
    LaunchSpec,
    NotAdoptable,
    Runner,
    RunnerEvents,
    TaskHandle,
    TaskKey,
)
from zsvc.states import Result

log = logging.getLogger(__name__)

HOST_LINGER = 1.0
"""Seconds an idle thread host waits before it is stopped, when its last thread ended on its
own: a thread restarted by its restart policy meanwhile runs in the same host."""


@dataclass(eq=False)
class ThreadHost:
    """The one process that runs a transaction's Thread tasks. At most one at a time."""

    transaction: str
    invocation: str
    launched: asyncio.Future[ExitInfo | None]
    """Resolved once the process exists (None), or with why it could not be launched."""
    ended: asyncio.Future[ExitInfo]
    """Resolved with how the host process ended."""
    handle: TaskHandle | None = None
    ready: bool = False
    """The host joined the bus (READY=1) and takes orders."""
    stopping: bool = False
    status_text: str = ""
    """The host's own last STATUS= (why it could not start, say)."""
    runs: list[ThreadTask] = field(default_factory=list)
    """The current runs in this host, ordered or waiting for the host's READY=1."""

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"invocation": self.invocation}
        if self.handle is not None:
            described.update(self.handle.describe())
        return described


@dataclass(eq=False)
class ThreadTask(TaskHandle):
    """One run of a Thread task in its transaction's thread host."""

    runner: ThreadRunner | None = None
    host: ThreadHost | None = None
    run: str = ""
    """A fresh id per run: orders and reports carry it, so a late report of an earlier run
    is never taken for the current one."""
    ordered: bool = False
    """The host was ordered to start the thread (it was ready); before, the run waits."""
    done: asyncio.Future[ExitInfo] | None = None
    start_timer: asyncio.TimerHandle | None = None
    shared = True

    async def wait(self) -> ExitInfo:
        assert self.done is not None
        return await asyncio.shield(self.done)

    def send_signal(self, signum: int) -> None:
        raise NotImplementedError("a Thread task shares its host process: it cannot be signalled")

    async def stop(self, timeout: float | None = None) -> ExitInfo:
        assert self.runner is not None
        return await self.runner.stop_thread(self, timeout)

    def kill(self) -> None:
        assert self.runner is not None
        self.runner.abandon(self, ExitInfo(Result.SIGNAL, detail="its thread was abandoned"))

    def describe(self) -> dict[str, Any]:
        assert self.host is not None
        return {"pid": self.pid, "thread_run": self.run, "host": self.host.describe()}

    def processes(self) -> list[int]:
        """The host's processes: shared by every Thread task of the transaction."""
        if self.host is None or self.host.handle is None:
            return []
        return self.host.handle.processes()


class _HostEvents:
    """The process runner's events: the thread hosts' go to the thread runner, others on."""

    def __init__(self, threads: ThreadRunner, daemon: RunnerEvents):
        self.threads = threads
        self.daemon = daemon

    def on_ready(self, key: TaskKey) -> None:
        if key[1] == THREAD_HOST_ID:
            self.threads.host_ready(key[0])
        else:
            self.daemon.on_ready(key)

    def on_status(self, key: TaskKey, text: str) -> None:
        if key[1] == THREAD_HOST_ID:
            self.threads.host_status(key[0], text)
        else:
            self.daemon.on_status(key, text)

    def on_stopping(self, key: TaskKey) -> None:
        if key[1] != THREAD_HOST_ID:
            self.daemon.on_stopping(key)

    def on_main_pid(self, key: TaskKey, pid: int, description: dict[str, Any]) -> None:
        if key[1] != THREAD_HOST_ID:
            self.daemon.on_main_pid(key, pid, description)

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None:
        if key[1] == THREAD_HOST_ID:
            self.threads.host_exited(key[0], info)
        else:
            self.daemon.on_exit(key, info)


class ThreadRunner(Runner):
    """Runs Thread tasks in thread hosts; passes every other task to *processes*."""

    def __init__(self, processes: Runner, publish: Callable[[protocol.Message], None]):
        self.processes = processes
        self.name = processes.name
        self.log_source = processes.log_source
        self.publish = publish
        self._events: RunnerEvents | None = None
        self._hosts: dict[str, ThreadHost] = {}
        self._runs: dict[TaskKey, ThreadTask] = {}
        self.jobs = Jobs("thread runner")

    @property
    def events(self) -> RunnerEvents:
        assert self._events is not None, "open() first"
        return self._events

    # --- the contract --------------------------------------------------------------------

    async def open(self, events: RunnerEvents) -> None:
        self._events = events
        await self.processes.open(_HostEvents(self, events))

    async def start(self, spec: LaunchSpec) -> TaskHandle:
        if spec.thread_host is None:
            return await self.processes.start(spec)
        if spec.watchdog_sec is not None:
            log.warning("%s/%s: watchdog_sec is ignored for a Thread task", *spec.key)
        host = await self._host_for(spec.transaction, spec.thread_host)
        failure = await asyncio.shield(host.launched)
        if failure is not None or host.handle is None:
            info = failure or ExitInfo(Result.RESOURCES)
            raise LaunchError(
                "its thread host could not be started",
                ExitInfo(info.result, info.exit_code, info.signal, _host_failure(host, info)),
            )
        loop = asyncio.get_running_loop()
        task = ThreadTask(spec, host.handle.pid, runner=self, host=host, run=uuid.uuid4().hex)
        task.done = loop.create_future()
        self._runs[spec.key] = task
        host.runs.append(task)
        if host.ready:
            self._order_start(task)
        return task

    async def adopt(self, spec: LaunchSpec, description: Mapping[str, Any]) -> TaskHandle | None:
        """A Thread task is never taken over: its host of the last daemon is stopped.

        The daemon cannot know what happened to each thread while it was down
        (the reports went nowhere), so it says so instead of guessing.
        """
        if spec.thread_host is None:
            return await self.processes.adopt(spec, description)
        host = self._hosts.get(spec.transaction)
        if host is None:
            host = await self._adopt_host(spec, description)
        was = f"pid {host.pid}" if host is not None and host.pid else "its thread host"
        raise NotAdoptable(
            f"a Thread task is not re-adopted after a daemon restart ({was} is stopped)"
        )

    def find_unsaved_run(self, invocation: str) -> dict[str, Any] | None:
        return self.processes.find_unsaved_run(invocation)

    def run_saved(self, handle: TaskHandle) -> None:
        """A Thread task's run is saved with its host's description: the host's run is."""
        if isinstance(handle, ThreadTask):
            if handle.host is not None and handle.host.handle is not None:
                self.processes.run_saved(handle.host.handle)
        else:
            self.processes.run_saved(handle)

    async def forget(self, transaction: str) -> None:
        host = self._hosts.get(transaction)
        if host is not None:
            await self._stop_host(host, None)
        await self.processes.forget(transaction)

    async def close(self) -> None:
        for host in list(self._hosts.values()):
            with contextlib.suppress(Exception):
                await self._stop_host(host, None)
        await self.jobs.cancel_all()
        await self.processes.close()

    # --- the host process ----------------------------------------------------------------

    async def _host_for(self, transaction: str, launch: LaunchSpec) -> ThreadHost:
        """The transaction's live host, or a new one (after the old one's end, if stopping)."""
        host = self._hosts.get(transaction)
        if host is not None and host.stopping:
            await asyncio.shield(host.ended)  # bounded by that host's stop
            host = self._hosts.get(transaction)
        if host is not None:
            return host
        loop = asyncio.get_running_loop()
        host = ThreadHost(
            transaction, launch.invocation, loop.create_future(), loop.create_future()
        )
        self._hosts[transaction] = host
        try:
            host.handle = await self.processes.start(launch)
        except LaunchError as exc:
            log.error("%s: thread host: %s", transaction, exc)
            host.launched.set_result(exc.info)
            self._host_gone(host, exc.info)
            return host
        log.info("%s: thread host started (pid %d)", transaction, host.handle.pid)
        host.launched.set_result(None)
        return host

    async def _adopt_host(
        self, spec: LaunchSpec, description: Mapping[str, Any]
    ) -> ThreadHost | None:
        described = description.get("host")
        described = dict(described) if isinstance(described, dict) else dict(description)
        if not described.get("pid"):
            return None
        assert spec.thread_host is not None
        handle = await self.processes.adopt(spec.thread_host, described)
        if handle is None:
            return None
        loop = asyncio.get_running_loop()
        invocation = str(described.get("invocation", ""))
        host = ThreadHost(spec.transaction, invocation, loop.create_future(), loop.create_future())
        host.handle, host.stopping = handle, True
        host.launched.set_result(None)
        self._hosts[spec.transaction] = host
        log.info(
            "%s: stopping the thread host (pid %d) of the last daemon", spec.transaction, handle.pid
        )
        self.jobs.spawn(handle.stop(), f"stop the old thread host of {spec.transaction}")
        return host

    def host_ready(self, transaction: str) -> None:
        host = self._hosts.get(transaction)
        if host is None or host.ready:
            return
        host.ready = True
        for task in list(host.runs):
            if not task.ordered:
                self._order_start(task)

    def host_status(self, transaction: str, text: str) -> None:
        host = self._hosts.get(transaction)
        if host is not None:
            host.status_text = text

    def host_exited(self, transaction: str, info: ExitInfo) -> None:
        host = self._hosts.get(transaction)
        if host is not None:
            self._host_gone(host, info)

    def _host_gone(self, host: ThreadHost, info: ExitInfo) -> None:
        """The host process ended (or could not start): so did every thread in it."""
        if self._hosts.get(host.transaction) is host:
            del self._hosts[host.transaction]
        if not host.ended.done():
            host.ended.set_result(info)
        log.info("%s: thread host (pid %s) %s", host.transaction, host.pid, info.describe())
        how = _host_failure(host, info)
        for task in list(host.runs):
            self._end(task, ExitInfo(info.result, info.exit_code, info.signal, detail=how))

    async def _stop_host(self, host: ThreadHost, timeout: float | None) -> None:
        host.stopping = True
        await asyncio.shield(host.launched)  # a host being launched is stopped once it exists
        if host.handle is not None:
            await host.handle.stop(timeout)
            await asyncio.shield(host.ended)  # its end is reported by the process runner

    async def _retire_when_idle(self, host: ThreadHost) -> None:
        await asyncio.sleep(HOST_LINGER)
        if host.runs or host.stopping or self._hosts.get(host.transaction) is not host:
            return
        log.info("%s: no Thread task is up: stopping the thread host", host.transaction)
        await self._stop_host(host, None)

    # --- threads: orders out, reports in -------------------------------------------------

    def _order_start(self, task: ThreadTask) -> None:
        assert task.host is not None
        task.ordered = True
        self._order(task, ORDER_START)
        self.events.on_status(task.key, f"thread in pid {task.host.pid}")
        task.start_timer = asyncio.get_running_loop().call_later(
            task.spec.start_timeout, self._start_timed_out, task
        )

    def _order(self, task: ThreadTask, action: str) -> None:
        transaction, task_id = task.key
        self.publish(
            protocol.make_message(
                protocol.Topic.PROCESS,
                action,
                transaction=transaction,
                service_id=task_id,
                service_name=task.spec.service_name,
                content={ORDER_KEY: {"run": task.run}},
            )
        )

    def _start_timed_out(self, task: ThreadTask) -> None:
        task.start_timer = None
        if task.exit_info is not None:
            return
        limit = task.spec.start_timeout
        log.warning("%s/%s: its thread sent no 'started' within %g s", *task.key, limit)
        self._order(task, ORDER_STOP)
        self._end(
            task,
            ExitInfo(
                Result.TIMEOUT,
                detail=f"its thread was not started within {limit:g} s"
                f" (it cannot be killed: it runs on in pid {task.pid} until it ends)",
            ),
        )

    def on_bus_message(self, message: protocol.Message) -> bool:
        """A thread host's report on one of its threads; True when the message was one."""
        if message.topic != protocol.Topic.CONTROL or message.action != REPORT_ACTION:
            return False
        task = self._runs.get((message.transaction, message.service_id))
        status = message.status
        if task is None or status.get("run") != task.run:
            return True  # not a current run: a late report of an earlier one
        if message.sender is None or message.sender[1] != task.pid:
            return True  # not from its host (the kernel says who published): not believed
        event = status.get("event")
        if event == Event.STARTED:
            _cancel(task)
            self.events.on_ready(task.key)
        elif event == Event.STATUS and isinstance(text := status.get("text"), str):
            self.events.on_status(task.key, text)
        elif event in ENDS:
            reason = str(status.get("reason") or "")
            if event == Event.FAILED and reason:
                self.events.on_status(task.key, reason)  # as a task process says it
            self._end(task, _thread_exit(str(event), status))
        return True

    async def stop_thread(self, task: ThreadTask, timeout: float | None) -> ExitInfo:
        """Set the thread's stop flag (an order) and wait for its end, up to the stop timeout."""
        host = task.host
        assert host is not None and task.done is not None
        if task.exit_info is None and not task.ordered:  # its host is not ready: no thread yet
            self._end(task, ExitInfo(Result.SUCCESS, detail="stopped before its thread started"))
        elif task.exit_info is None:
            self._order(task, ORDER_STOP)
            limit = task.spec.stop_timeout if timeout is None else timeout
            try:
                await asyncio.wait_for(asyncio.shield(task.done), limit)
            except TimeoutError:
                log.warning("%s/%s: its thread did not stop within %g s", *task.key, limit)
                detail = (
                    f"its thread did not stop within {limit:g} s (a thread cannot be"
                    f" killed: it runs on in pid {host.pid} until its host stops)"
                )
                self._end(task, ExitInfo(Result.TIMEOUT, detail=detail))
        if not host.runs and self._hosts.get(host.transaction) is host:
            await self._stop_host(host, timeout)  # the last Thread task is down
        return await asyncio.shield(task.done)

    def abandon(self, task: ThreadTask, info: ExitInfo) -> None:
        """End a run now without waiting for its thread (which runs on until its host ends)."""
        self._order(task, ORDER_STOP)
        self._end(task, info)

    def _end(self, task: ThreadTask, info: ExitInfo) -> None:
        """The run is over: reported once, and the host retired when it was the last."""
        if task.exit_info is not None:
            return
        task.exit_info = info
        _cancel(task)
        assert task.done is not None and task.host is not None
        task.done.set_result(info)
        if self._runs.get(task.key) is task:
            del self._runs[task.key]
        host = task.host
        with contextlib.suppress(ValueError):
            host.runs.remove(task)
        self.events.on_exit(task.key, info)
        if not host.runs and not host.stopping and self._hosts.get(host.transaction) is host:
            self.jobs.spawn(self._retire_when_idle(host), f"retire {host.transaction}'s host")


def _cancel(task: ThreadTask) -> None:
    if task.start_timer is not None:
        task.start_timer.cancel()
        task.start_timer = None


def _host_failure(host: ThreadHost, info: ExitInfo) -> str:
    """How a thread's run ended when its host did: the host's pid, STATUS= and detail."""
    how = f"its thread host (pid {host.pid}) ended" if host.pid else "its thread host failed"
    if host.status_text:
        how += f": {host.status_text}"
    if info.detail:
        how += f"; {info.detail}"
    return how


def _thread_exit(event: str, status: Mapping[str, Any]) -> ExitInfo:
    """How a thread's run ended, from its host's report (``docs/states.md``, Thread tasks)."""
    if event != Event.FAILED:
        return ExitInfo(Result.SUCCESS, detail=str(status.get("reason") or "its thread ended"))
    code = status.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        return ExitInfo(Result.EXIT_CODE, exit_code=code, detail="its thread called sys.exit()")
    return ExitInfo(Result.EXIT_CODE, detail="its thread failed")
