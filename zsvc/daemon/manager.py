"""The transaction manager: starts, stops and watches the tasks of every transaction.

It is the only writer of the transaction table. Each change follows one
order: change the record in memory, commit it to SQLite, then tell anyone
(the control reply, the bus). Runner events arrive through the
:class:`~zsvc.runners.base.RunnerEvents` methods; bus traffic the daemon
acts on through :meth:`Manager.on_bus_message`.

Commands on one transaction take its lock, so they run in arrival order;
commands on different transactions run concurrently. Nothing is ever
refused for being busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from zsvc import protocol
from zsvc.commands import RawJSON
from zsvc.config.model import Context, TaskSpec
from zsvc.daemon import engine
from zsvc.daemon.model import (
    THREAD_HOST_ID,
    TaskRecord,
    ThreadHost,
    ThreadRun,
    TransactionRecord,
)
from zsvc.daemon.table import Table
from zsvc.errors import (
    BadRequest,
    ErrorCode,
    OperationFailed,
    StorageError,
    UnknownTask,
    UnknownTransaction,
    ZsvcError,
)
from zsvc.naming import unit_name
from zsvc.paths import RuntimeLayout, StateLayout
from zsvc.procs import find_invocation, process_start_time
from zsvc.runners.base import (
    INVOCATION_ENV,
    ExitInfo,
    LaunchError,
    LaunchSpec,
    Runner,
    TaskKey,
)
from zsvc.states import (
    HAS_PROCESS,
    LastAction,
    Result,
    State,
    SubState,
    TaskAction,
    is_valid_id,
    new_transaction_id,
)
from zsvc.task import threads
from zsvc.task.host import HostSpec

log = logging.getLogger(__name__)


HOST_STOP_MARGIN = 5.0
"""A thread host's stop timeout beyond its longest task's: time to tear down and report."""

CONTEXT_INFO_INTERVAL = 0.1
"""Seconds between two ``context_info`` publications of one transaction, at least."""

SUPERVISOR_ENV = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
"""What systemd gave the daemon about itself; a task must not inherit it."""


class Manager:
    """Owns the transaction records; translates commands and events into runner calls."""

    def __init__(
        self,
        runner: Runner,
        table: Table,
        publish: Callable[[protocol.Message], None],
        runtime: RuntimeLayout,
        state: StateLayout,
        listened: Callable[[bytes], int] | None = None,
    ):
        self.runner = runner
        self.table = table
        self.publish = publish
        self.listened = listened or (lambda topic: 1)
        """How many bus subscriptions would receive a topic (the device counts them)."""
        self.runtime = runtime
        self.state = state
        self.transactions: dict[str, TransactionRecord] = {}
        self._info_pending: set[str] = set()
        self._info_sent: dict[str, float] = {}
        """When each transaction's record was last published (loop time)."""
        self._views: dict[str, bytes] = {}
        """Encoded ``status`` views, dropped whenever the transaction's stored state changes."""
        self._jobs: set[asyncio.Task[Any]] = set()
        self._clock: Callable[[], float] = time.monotonic
        self._inherited_env = {k: v for k, v in os.environ.items() if k not in SUPERVISOR_ENV}
        """The daemon's environment as every task inherits it (read once, not per launch)."""

    # --- persistence ------------------------------------------------------------

    def _save_transaction(self, record: TransactionRecord) -> None:
        self._views.pop(record.id, None)
        self.table.save_transaction(record.to_row())

    def _save(self, task: TaskRecord) -> None:
        self._views.pop(task.transaction, None)
        try:
            self.table.save_task(task.to_row())
        except StorageError:
            if task.is_up:
                raise
            # An event (an exit) is not lost by a failed write: the record keeps it in
            # memory and the next successful write of this task stores it.
            log.exception("could not persist %s/%s", task.transaction, task.id)

    # --- commands ---------------------------------------------------------------

    async def start(
        self,
        transaction: str | None,
        context: Context | None,
        context_text: str | None,
        services: list[str],
        block: bool,
        timeout: float | None,
        keep_going: bool = False,
    ) -> dict[str, Any]:
        """Create a transaction from *context*, or start a known one again.

        Tasks start in waves along their ``after`` edges, each wave once the
        previous one is ready. When a task fails to become ready, the start
        stops what it started, in reverse order, and fails naming the task
        (``keep_going`` leaves the rest running instead).
        """
        if context is None:
            if not transaction:
                raise BadRequest("start: give a transaction id or a context file")
            record = self._get(transaction)
        else:
            if transaction not in self.transactions:
                # A new transaction is only created when what it starts can run.
                unknown = sorted(set(services) - set(context.task_ids))
                if unknown:
                    raise UnknownTask(
                        f"{context.path} has no task {', '.join(map(repr, unknown))};"
                        f" its tasks: {', '.join(context.task_ids)}"
                    )
                for spec in _chosen_specs(context, services):
                    _preflight(spec)
            record = self._create(transaction, context, context_text or "")
        async with record.lock:
            chosen = self._choose(record, services, default=self._entry_tasks(record))
            record.stopping = False
            self._save_transaction(record)
            for task in chosen:
                if not task.is_up:
                    _preflight(task.spec)
            now = self._clock()
            for task in chosen:  # a start by hand resets the start limit, as reset-failed does
                _, task.restart_state = engine.note_start(
                    task.restart_state, now, automatic=False, policy=task.spec.restart
                )
            epoch = record.epoch
        run = self._start_in_order(record, [task.id for task in chosen], epoch, keep_going, timeout)
        if block:
            await run
        else:
            self._spawn(run, f"start {record.id}")
        return record.view()

    async def _start_in_order(
        self,
        record: TransactionRecord,
        chosen: list[str],
        epoch: int,
        keep_going: bool,
        timeout: float | None,
    ) -> None:
        deadline = None if timeout is None else self._clock() + timeout
        launched: list[TaskRecord] = []
        problems: list[str] = []
        blocked: set[str] = set()
        for wave in engine.start_waves(record.context.tasks, chosen):
            async with record.lock:
                if record.epoch != epoch:
                    raise OperationFailed(f"transaction {record.id} was stopped while it started")
                batch = [record.tasks[task_id] for task_id in wave if task_id not in blocked]
                for task in batch:
                    if not task.is_up or task.sub_state is SubState.AUTO_RESTART:
                        task.cancel_restart()
                        await self._launch(record, task)
                        launched.append(task)
            failures = await self._wait_wave(batch, deadline)
            for task_id, reason in failures.items():
                problems.append(f"task {task_id} {reason}")
                blocked |= engine.blocked_by(task_id, record.context.tasks, chosen)
            if failures and not keep_going:
                break
        if not problems:
            return
        if blocked:
            problems.append(f"not started (after a failed task): {', '.join(sorted(blocked))}")
        if not keep_going:
            undone = [task.id for task in launched if task.is_up]
            if undone:
                await self.stop(record.id, undone, None, quiet=True)
                problems.append(f"stopped again: {', '.join(undone)}")
        raise OperationFailed(
            f"transaction {record.id} did not start: " + "; ".join(problems),
            details={"transaction": record.view()},
        )

    async def _wait_wave(self, batch: list[TaskRecord], deadline: float | None) -> dict[str, str]:
        """Wait for a wave to be ready; returns what went wrong, by task id."""
        waiting = {task.id: task.ready for task in batch if task.ready is not None}
        if not waiting:
            return {}
        remaining = None if deadline is None else max(0.0, deadline - self._clock())
        _, pending = await asyncio.wait(waiting.values(), timeout=remaining)
        failures = {}
        for task in batch:
            future = waiting.get(task.id)
            if future is None:
                continue
            if future in pending:
                failures[task.id] = "is not ready within the --timeout"
            elif (info := future.result()) is not None:
                failures[task.id] = f"{info.describe()}{_status_suffix(task)}"
        return failures

    async def stop(
        self,
        transaction: str,
        services: list[str],
        timeout: float | None,
        quiet: bool = False,
    ) -> dict:
        """Stop tasks in reverse ``after`` order; *quiet* also silences their triggers."""
        record = self._get(transaction)
        async with record.lock:
            whole = not services
            chosen = self._choose(record, services, default=list(record.tasks.values()))
            record.epoch += 1
            silent = whole or quiet
            if silent:
                record.stopping = True
                self._save_transaction(record)
            try:
                for wave in engine.stop_order(record.context.tasks, [t.id for t in chosen]):
                    await asyncio.gather(
                        *(self._stop_task(record.tasks[task_id], timeout) for task_id in wave)
                    )
                if record.thread_host is not None and not record.threads_up:
                    await self._stop_host(record, timeout)
            finally:
                if silent:
                    record.stopping = False
                    self._save_transaction(record)
                self._context_info(record)
        return record.view()

    async def restart(self, transaction: str, services: list[str], timeout: float | None) -> dict:
        record = self._get(transaction)
        if services:
            chosen_ids = [task.id for task in self._choose(record, services, default=[])]
        else:
            # The whole transaction, as 'stop' then 'start' would: what runs now, and its
            # entry tasks, a failed one included (systemctl restart starts a failed unit).
            entry = {t.id for t in self._entry_tasks(record)}
            chosen_ids = [t.id for t in record.tasks.values() if t.is_up or t.id in entry]
        await self.stop(transaction, chosen_ids, timeout)
        return await self.start(transaction, None, None, chosen_ids, True, timeout)

    def status(self, transaction: str | None) -> RawJSON:
        """The status view, encoded once per change: status is the hot read path."""
        if transaction:
            return RawJSON(self._encoded_view(self._get(transaction)))
        views = b",".join(self._encoded_view(record) for record in self.transactions.values())
        return RawJSON(b'{"transactions":[' + views + b"]}")

    def _encoded_view(self, record: TransactionRecord) -> bytes:
        view = self._views.get(record.id)
        if view is None:
            view = json.dumps(record.view(), separators=(",", ":")).encode()
            self._views[record.id] = view
        return view

    def log_paths(self, transaction: str, services: list[str]) -> list[dict[str, str]]:
        """Each chosen task's log; Thread tasks share their host's, listed once as ``@threads``."""
        record = self._get(transaction)
        chosen = self._choose(record, services, default=list(record.tasks.values()))
        entries: dict[str, dict[str, str]] = {}
        for task in chosen:
            name = THREAD_HOST_ID if task.is_thread else task.id
            entries.setdefault(
                name, {"task": name, "path": str(self.state.task_log(record.id, name))}
            )
        return list(entries.values())

    async def forget(self, transaction: str) -> dict[str, Any]:
        record = self._get(transaction)
        async with record.lock:
            if any(task.is_up for task in record.tasks.values()):
                raise OperationFailed(
                    f"transaction {transaction} still has running tasks: stop it first"
                )
            if record.thread_host is not None:  # idle, and about to be stopped anyway
                await self._stop_host(record, None)
            self.table.delete_transaction(transaction)
            del self.transactions[transaction]
            self._views.pop(transaction, None)
            self._info_sent.pop(transaction, None)
        return {"transaction": transaction, "forgotten": True}

    async def stop_all(self) -> None:
        """Stop every task of every transaction (daemon shutdown).

        A transaction whose stop fails (its state cannot be written: a full or
        read-only state dir) keeps running and is logged, naming why: the
        daemon still exits, and its successor re-adopts what the table says runs.
        """
        records = [
            record
            for record in list(self.transactions.values())
            if any(task.is_up for task in record.tasks.values()) or record.thread_host is not None
        ]
        results = await asyncio.gather(
            *(self.stop(record.id, [], None) for record in records), return_exceptions=True
        )
        for record, result in zip(records, results, strict=True):
            if isinstance(result, Exception):
                log.error("shutdown: transaction %s was not stopped: %s", record.id, result)

    # --- command helpers ----------------------------------------------------------

    def _get(self, transaction: str) -> TransactionRecord:
        record = self.transactions.get(transaction)
        if record is None:
            raise UnknownTransaction(f"unknown transaction {transaction!r}")
        return record

    def _create(self, transaction: str | None, context: Context, text: str) -> TransactionRecord:
        if transaction is None:
            transaction = new_transaction_id()
        elif not is_valid_id(transaction):
            raise BadRequest(
                f"invalid transaction id {transaction!r}: use 1 to 64 of [A-Za-z0-9_-]"
            )
        existing = self.transactions.get(transaction)
        if existing is not None:
            if existing.context_text == text:
                return existing
            if any(task.is_up for task in existing.tasks.values()):
                raise ZsvcError(
                    f"transaction {transaction} is running with another context"
                    f" ({existing.context.path}); stop it first",
                    code=ErrorCode.EXISTS,
                )
            # Nothing runs: the new context replaces the old one (a corrected file).
            self.table.delete_transaction(transaction)
            del self.transactions[transaction]
            self._views.pop(transaction, None)
        record = TransactionRecord.new(transaction, context, text)
        self._save_transaction(record)
        for task in record.tasks.values():
            self.table.save_task(task.to_row())
        self.transactions[transaction] = record
        return record

    @staticmethod
    def _entry_tasks(record: TransactionRecord) -> list[TaskRecord]:
        return [task for task in record.tasks.values() if task.spec.starts_with_transaction]

    @staticmethod
    def _choose(
        record: TransactionRecord, services: Iterable[str], default: list[TaskRecord]
    ) -> list[TaskRecord]:
        services = list(services)
        if not services:
            return default
        unknown = [name for name in services if name not in record.tasks]
        if unknown:
            raise UnknownTask(
                f"transaction {record.id} has no task {', '.join(map(repr, unknown))};"
                f" its tasks: {', '.join(record.tasks)}"
            )
        return [record.tasks[name] for name in dict.fromkeys(services)]

    # --- launching and stopping -----------------------------------------------------

    def _launch_spec(self, record: TransactionRecord, task: TaskRecord) -> LaunchSpec:
        spec = task.spec
        invocation = uuid.uuid4().hex
        task.runner_data = {"invocation": invocation}
        env = dict(self._inherited_env)
        env.update(
            ZSVC_TRANSACTION=record.id,
            ZSVC_TASK_ID=spec.id,
            ZSVC_SERVICE_NAME=spec.service_name,
            PYTHONUNBUFFERED="1",
        )
        env[INVOCATION_ENV] = invocation
        context_dir = str(record.context.path.parent)
        if spec.is_command:
            argv = tuple(spec.command or ())
            cwd = context_dir
            notify = spec.notify
        else:
            location = str(spec.location or context_dir)
            # A task in a crash streak is likely to fail in setup() again: its host joins
            # the bus only once setup() returned, so a crash loop costs no bus connections.
            host = self._host_spec(record, spec, join_after_setup=task.restart_state.crashes > 0)
            env["ZSVC_TASK"] = host.to_json()
            # -P: the working directory (the task location) must not shadow the stdlib.
            argv = (sys.executable, "-P", "-m", "zsvc.task")
            cwd = location if os.path.isdir(location) else context_dir
            notify = True
        return LaunchSpec(
            transaction=record.id,
            task_id=spec.id,
            unit=unit_name(record.id, spec.id),
            argv=argv,
            env=env,
            cwd=cwd,
            notify=notify,
            start_timeout=spec.start_timeout,
            stop_timeout=spec.stop_timeout,
            log_path=self.state.task_log(record.id, spec.id),
            description=spec.description,
            host_entry=not spec.is_command,
            watchdog_sec=spec.watchdog_sec,
        )

    def _host_spec(
        self, record: TransactionRecord, spec: TaskSpec, join_after_setup: bool = False
    ) -> HostSpec:
        return HostSpec(
            transaction=record.id,
            task_id=spec.id,
            service_name=spec.service_name,
            instance=spec.instance,
            location=str(spec.location or record.context.path.parent),
            bus_pub=self.runtime.bus_pub_endpoint,
            bus_sub=self.runtime.bus_sub_endpoint,
            topic=spec.topic,
            device_action=spec.device_action,
            configuration=dict(spec.configuration),
            handshake_timeout=spec.start_timeout,
            join_after_setup=join_after_setup,
        )

    async def _launch(self, record: TransactionRecord, task: TaskRecord) -> None:
        if task.is_thread:
            await self._launch_thread(record, task)
            return
        launch = self._launch_spec(record, task)
        before = task.begin_run(asyncio.get_running_loop())
        task.set_state(State.ACTIVATING, SubState.START, Result.SUCCESS)
        try:
            self._save(task)  # with the invocation id, before the process exists
        except StorageError:
            task.load_row(before)  # nothing was started: the record says so again
            raise
        try:
            handle = await self.runner.start(launch)
        except LaunchError as exc:
            log.error("%s/%s: %s", record.id, task.id, exc)
            self._ended(task, exc.info)
            return
        task.handle = handle
        task.pid = handle.pid
        task.runner_data = {**task.runner_data, **handle.describe()}
        self._save(task)
        with contextlib.suppress(FileNotFoundError):
            self.runtime.spawned(task.runner_data["invocation"]).unlink()
        self._context_info(record)

    async def _stop_task(self, task: TaskRecord, timeout: float | None) -> None:
        if task.cancel_restart() or task.sub_state is SubState.AUTO_RESTART:
            task.set_state(State.INACTIVE, SubState.DEAD)
            task.last_action = LastAction.STOPPED
            self._save(task)
            return
        if task.is_thread:
            await self._stop_thread(task, timeout)
            return
        if task.handle is None:
            if task.sub_state is SubState.WAITING or not task.is_up:
                return
            # Up according to the table but without a process handle: nothing to signal.
            self._ended(task, ExitInfo(Result.LOST, detail="no process to stop"))
            return
        task.stop_requested = True
        task.set_state(State.DEACTIVATING, SubState.STOP_SIGTERM)
        self._save(task)
        await task.handle.stop(timeout)

    # --- Thread tasks: one thread host per transaction (zsvc.task.threads) ---------------

    async def _launch_thread(self, record: TransactionRecord, task: TaskRecord) -> None:
        """Start a Thread task: an order to the transaction's thread host, launched if needed."""
        loop = asyncio.get_running_loop()
        host = record.thread_host
        if host is not None and host.stopping:
            # One host process per transaction at a time: wait for the old one to end
            # (bounded by its stop).
            await asyncio.shield(host.ended)
            host = record.thread_host
        new_host = host is None
        if host is None:
            host = ThreadHost(record.id, uuid.uuid4().hex, loop.create_future())
        if task.spec.watchdog_sec is not None:
            log.warning("%s/%s: watchdog_sec is ignored for a Thread task", record.id, task.id)
        before = task.begin_run(loop)
        run = uuid.uuid4().hex
        task.runner_data = {"thread_run": run, "host": host.describe()}
        task.set_state(State.ACTIVATING, SubState.START, Result.SUCCESS)
        try:
            self._save(task)  # with the host's invocation id, before the host exists
        except StorageError:
            task.load_row(before)
            raise
        task.thread = ThreadRun(run, host, loop.create_future())
        if new_host:
            host.waiting.append(task.id)
            await self._start_host(record, host)
        elif host.ready and host.handle is not None:
            self._order_start(host, task)
        else:
            host.waiting.append(task.id)
        self._context_info(record)

    def _host_launch_spec(self, record: TransactionRecord, host: ThreadHost) -> LaunchSpec:
        specs = [task.spec for task in record.tasks.values() if task.is_thread]
        env = dict(self._inherited_env)
        env.update(
            ZSVC_TRANSACTION=record.id,
            ZSVC_TASK_ID=THREAD_HOST_ID,
            ZSVC_SERVICE_NAME=THREAD_HOST_ID,
            PYTHONUNBUFFERED="1",
        )
        env[INVOCATION_ENV] = host.invocation
        start_timeout = max(spec.start_timeout for spec in specs)
        stop_timeout = max(spec.stop_timeout for spec in specs)
        group = threads.ThreadGroupSpec(
            transaction=record.id,
            bus_pub=self.runtime.bus_pub_endpoint,
            bus_sub=self.runtime.bus_sub_endpoint,
            tasks=tuple(self._host_spec(record, spec) for spec in specs),
            handshake_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        env["ZSVC_TASK"] = group.to_json()
        return LaunchSpec(
            transaction=record.id,
            task_id=THREAD_HOST_ID,
            unit=unit_name(record.id, THREAD_HOST_ID),
            argv=(sys.executable, "-P", "-m", "zsvc.task"),
            env=env,
            cwd=str(record.context.path.parent),
            notify=True,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout + HOST_STOP_MARGIN,
            log_path=self.state.task_log(record.id, THREAD_HOST_ID),
            description=f"zsvc thread host of transaction {record.id}",
            host_entry=True,
        )

    async def _start_host(self, record: TransactionRecord, host: ThreadHost) -> None:
        record.thread_host = host
        try:
            handle = await self.runner.start(self._host_launch_spec(record, host))
        except LaunchError as exc:
            log.error("%s: thread host: %s", record.id, exc)
            self._host_ended(record, host, exc.info)
            return
        host.handle = handle
        host.pid = handle.pid
        with contextlib.suppress(FileNotFoundError):
            self.runtime.spawned(host.invocation).unlink()
        log.info("%s: thread host started (pid %d)", record.id, handle.pid)
        described = host.describe()
        for task_id in host.waiting:
            task = record.tasks[task_id]
            task.runner_data = {**task.runner_data, "host": described}
            self._save(task)
        if host.ready:  # its READY=1 came while the runner was still starting it
            self._order_waiting(record, host)

    def _host_ready(self, transaction: str) -> None:
        record = self.transactions.get(transaction)
        host = record.thread_host if record is not None else None
        if record is None or host is None or host.ready:
            return
        host.ready = True
        if host.handle is not None:
            self._order_waiting(record, host)

    def _order_waiting(self, record: TransactionRecord, host: ThreadHost) -> None:
        waiting, host.waiting = host.waiting, []
        for task_id in waiting:
            task = record.tasks[task_id]
            if task.thread is not None and task.thread.host is host:
                self._order_start(host, task)
        self._context_info(record)

    def _order_start(self, host: ThreadHost, task: TaskRecord) -> None:
        thread_run = task.thread
        assert thread_run is not None
        task.pid = host.pid
        task.status_text = _thread_status(host)
        self._save(task)
        self._publish_order(task, threads.ORDER_START, thread_run.run)
        thread_run.start_timer = asyncio.get_running_loop().call_later(
            task.spec.start_timeout, self._thread_start_timed_out, task, thread_run
        )

    def _publish_order(self, task: TaskRecord, action: str, run: str) -> None:
        self.publish(
            protocol.make_message(
                protocol.Topic.PROCESS,
                action,
                transaction=task.transaction,
                service_id=task.id,
                service_name=task.spec.service_name,
                content={threads.ORDER_KEY: {"run": run}},
            )
        )

    def _thread_start_timed_out(self, task: TaskRecord, thread_run: ThreadRun) -> None:
        thread_run.start_timer = None
        if task.thread is not thread_run or task.state is not State.ACTIVATING:
            return
        limit = task.spec.start_timeout
        log.warning(
            "%s/%s: its thread sent no 'started' within %g s", task.transaction, task.id, limit
        )
        self._publish_order(task, threads.ORDER_STOP, thread_run.run)
        pid = thread_run.host.pid
        self._ended(
            task,
            ExitInfo(
                Result.TIMEOUT,
                detail=f"its thread was not started within {limit:g} s"
                f" (it cannot be killed: it runs on in pid {pid} until it ends)",
            ),
        )

    def _on_thread_report(self, message: protocol.Message) -> None:
        """A thread host reports on one of its threads (``control``, action ``thread``)."""
        key = (message.transaction, message.service_id)
        task = self._task(key)
        status = message.status
        if task is None or task.thread is None or status.get("run") != task.thread.run:
            return  # not a current run: a late report of an earlier one
        event = status.get("event")
        if event == threads.Event.STARTED:
            task.thread.cancel_timer()
            self.on_ready(key)
        elif event == threads.Event.STATUS and isinstance(text := status.get("text"), str):
            self.on_status(key, text)
        elif event in threads.ENDS:
            reason = str(status.get("reason") or "")
            if event == threads.Event.FAILED and reason:
                task.status_text = reason  # as a task process's host says it with STATUS=
            self._ended(task, _thread_exit(event, status))

    async def _stop_thread(self, task: TaskRecord, timeout: float | None) -> None:
        """Set the thread's stop flag (an order) and wait for its end, up to the stop timeout."""
        thread_run = task.thread
        if thread_run is None:
            if task.sub_state is SubState.WAITING or not task.is_up:
                return
            self._ended(task, ExitInfo(Result.LOST, detail="no thread to stop"))
            return
        task.stop_requested = True
        host = thread_run.host
        if task.id in host.waiting:  # its host is not ready: no thread exists yet
            host.waiting.remove(task.id)
            self._ended(task, ExitInfo(Result.SUCCESS, detail="stopped before its thread started"))
            return
        task.set_state(State.DEACTIVATING, SubState.STOP_SIGTERM)
        self._save(task)
        self._publish_order(task, threads.ORDER_STOP, thread_run.run)
        limit = task.spec.stop_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(asyncio.shield(thread_run.done), limit)
        except TimeoutError:
            if task.thread is thread_run:
                log.warning("%s/%s: its thread did not stop within %g s", *key_of(task), limit)
                self._ended(
                    task,
                    ExitInfo(
                        Result.TIMEOUT,
                        detail=f"its thread did not stop within {limit:g} s (a thread cannot be"
                        f" killed: it runs on in pid {host.pid} until its host stops)",
                    ),
                )

    def _thread_run_ended(self, task: TaskRecord, thread_run: ThreadRun, info: ExitInfo) -> None:
        task.thread = None
        if task.status_text == _thread_status(thread_run.host):
            task.status_text = ""  # no longer true; last_exit tells how it ended
        thread_run.cancel_timer()
        if not thread_run.done.done():
            thread_run.done.set_result(info)
        with contextlib.suppress(ValueError):
            thread_run.host.waiting.remove(task.id)

    def _retire_host_when_idle(self, transaction: str) -> None:
        record = self.transactions.get(transaction)
        if record is None or record.thread_host is None or record.thread_host.stopping:
            return
        if not record.threads_up:
            self._spawn(self._retire_host(record), f"retire the thread host of {transaction}")

    async def _retire_host(self, record: TransactionRecord) -> None:
        """The last Thread task has ended: stop the host (unless a start came meanwhile)."""
        async with record.lock:
            host = record.thread_host
            if host is None or host.stopping or record.threads_up:
                return
            log.info("%s: no Thread task is up: stopping the thread host", record.id)
            await self._stop_host(record, None)

    async def _stop_host(self, record: TransactionRecord, timeout: float | None) -> None:
        host = record.thread_host
        if host is None:
            return
        host.stopping = True
        if host.handle is not None:
            await host.handle.stop(timeout)
        if not host.ended.done():  # never launched, or its end not reported: wait for it
            await asyncio.shield(host.ended)

    def _host_ended(self, record: TransactionRecord, host: ThreadHost, info: ExitInfo) -> None:
        """The host process ended (or could not start): so did every thread task in it."""
        if record.thread_host is host:
            record.thread_host = None
        if not host.ended.done():
            host.ended.set_result(info)
        log.info("%s: thread host (pid %s) %s", record.id, host.pid, info.describe())
        how = f"its thread host (pid {host.pid}) ended" if host.pid else "its thread host failed"
        if host.status_text:
            how += f": {host.status_text}"
        if info.detail:
            how += f"; {info.detail}"
        members = [
            task
            for task in record.tasks.values()
            if task.thread is not None and task.thread.host is host
        ]
        for task in members:
            self._ended(task, ExitInfo(info.result, info.exit_code, info.signal, detail=how))

    async def _readopt_threads(
        self, record: TransactionRecord, tasks: list[TaskRecord]
    ) -> list[str]:
        """Thread tasks are not re-adopted: their host is stopped, their runs recorded as lost.

        The daemon cannot know what happened to each thread while it was down (the
        reports went nowhere), so it says so instead of guessing.
        """
        described = next(
            (t.runner_data["host"] for t in tasks if isinstance(t.runner_data.get("host"), dict)),
            {},
        )
        description = dict(described)
        if not description.get("pid"):
            found = self._find_unsaved_run(description.get("invocation"))
            if found is not None:
                description.update(found)
        loop = asyncio.get_running_loop()
        host = ThreadHost(record.id, str(description.get("invocation", "")), loop.create_future())
        handle = None
        if description.get("pid"):
            handle = await self.runner.adopt(self._host_launch_spec(record, host), description)
        if handle is not None:
            host.handle, host.pid, host.stopping = handle, handle.pid, True
            record.thread_host = host
            log.info(
                "%s: stopping the thread host (pid %d) of the last daemon", record.id, host.pid
            )
            self._spawn(handle.stop(), f"stop the old thread host of {record.id}")
        notes = []
        for task in tasks:
            was = f"pid {host.pid}" if host.pid else "its thread host"
            task.stop_requested = task.state is State.DEACTIVATING
            detail = f"a Thread task is not re-adopted after a daemon restart ({was} is stopped)"
            self._ended(task, ExitInfo(Result.LOST, detail=detail))
            notes.append(f"{record.id}/{task.id}: {detail}")
        return notes

    # --- runner events -------------------------------------------------------------

    def _task(self, key: TaskKey) -> TaskRecord | None:
        record = self.transactions.get(key[0])
        return record.tasks.get(key[1]) if record else None

    def on_ready(self, key: TaskKey) -> None:
        if key[1] == THREAD_HOST_ID:
            self._host_ready(key[0])
            return
        task = self._task(key)
        if task is None or task.state is not State.ACTIVATING:
            return
        task.set_state(State.ACTIVE, SubState.RUNNING, Result.SUCCESS)
        task.last_action = LastAction.STARTED
        self._save(task)
        if task.ready is not None and not task.ready.done():
            task.ready.set_result(None)
        self._report(task, LastAction.STARTED)
        self._fire(task, LastAction.STARTED)
        early, task.early_updates = task.early_updates, 0
        for _ in range(early):
            self._updated(task)

    def on_status(self, key: TaskKey, text: str) -> None:
        if key[1] == THREAD_HOST_ID:
            record = self.transactions.get(key[0])
            if record is not None and record.thread_host is not None:
                record.thread_host.status_text = text
            return
        task = self._task(key)
        if task is not None and text != task.status_text:
            task.status_text = text
            self._save(task)
            self._context_info(self.transactions[key[0]])

    def on_stopping(self, key: TaskKey) -> None:
        task = self._task(key)
        if task is not None and task.state is State.ACTIVE:
            task.set_state(State.DEACTIVATING, SubState.STOP_SIGTERM)
            self._save(task)

    def on_main_pid(self, key: TaskKey, pid: int, description: dict[str, Any]) -> None:
        task = self._task(key)
        if task is not None and task.handle is not None:
            task.pid = pid
            task.runner_data = {**task.runner_data, **description}
            self._save(task)

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None:
        if key[1] == THREAD_HOST_ID:
            record = self.transactions.get(key[0])
            if record is not None and record.thread_host is not None:
                self._host_ended(record, record.thread_host, info)
            return
        task = self._task(key)
        if task is not None:
            self._ended(task, info)

    def _ended(self, task: TaskRecord, info: ExitInfo) -> None:
        """Record how a run ended, then report it."""
        task.handle = None
        thread_run = task.thread
        if thread_run is not None:
            self._thread_run_ended(task, thread_run, info)
        pid, task.pid = task.pid, None
        task.last_exit = info.describe()
        if task.stop_requested:
            action = LastAction.STOPPED
            if info.clean:
                task.set_state(State.INACTIVE, SubState.DEAD, Result.SUCCESS)
            else:
                task.set_state(State.FAILED, SubState.FAILED, info.result)
        elif info.clean:
            action = LastAction.EXITED
            task.set_state(State.INACTIVE, SubState.EXITED, Result.SUCCESS)
        else:
            action = LastAction.FAILED
            task.set_state(State.FAILED, SubState.FAILED, info.result)
        task.last_action = action
        self._save(task)
        if task.ready is not None and not task.ready.done():
            task.ready.set_result(info)
        log.info("%s/%s %s", task.transaction, task.id, info.describe())
        self._report(task, action, info, pid)
        decision = engine.on_exit(
            task.restart_state,
            task.spec.restart,
            info.result,
            stop_requested=task.stop_requested,
            now=self._clock(),
            rand=random.random(),
        )
        task.restart_state = decision.state  # the crash streak counts every run's end
        self._fire(task, action)
        if not task.stop_requested:
            self._apply_restart_policy(task, info, decision)
        if task.is_thread:
            # After the triggers: a trigger that starts another Thread task keeps the host.
            self._retire_host_when_idle(task.transaction)

    # --- triggers and the restart policy (decided by zsvc.daemon.engine) ----------------

    def _fire(self, task: TaskRecord, action: LastAction) -> None:
        """Run the triggers an event fires: once per event, never while the transaction stops."""
        record = self.transactions.get(task.transaction)
        if record is None:
            return
        event = engine.TaskEvent(record.id, task.id, action)
        for triggered in engine.fire(event, record.triggers, record.stopping):
            log.info("%s: %s", record.id, triggered.describe())
            self._spawn(self._carry_out(record, triggered), triggered.describe())

    async def _carry_out(
        self, record: TransactionRecord, triggered: engine.TriggeredAction
    ) -> None:
        target = record.tasks.get(triggered.target)
        if target is None or record.stopping:
            return
        if triggered.action in (TaskAction.STOP, TaskAction.RESTART) and target.is_up:
            await self.stop(record.id, [target.id], None)
        if triggered.action in (TaskAction.START, TaskAction.RESTART):
            await self._start_automatically(record, target, f"{triggered.describe()}")

    async def _start_automatically(
        self, record: TransactionRecord, task: TaskRecord, cause: str
    ) -> None:
        """A start nobody typed (a trigger or the restart policy): bounded by the start limit."""
        async with record.lock:
            if record.stopping or (task.is_up and task.sub_state is not SubState.AUTO_RESTART):
                return
            task.restart_timer = None
            now = self._clock()
            limit = engine.limit_reached(task.restart_state, now, task.spec.restart)
            allowed, task.restart_state = engine.note_start(
                task.restart_state, now, automatic=True, policy=task.spec.restart
            )
            if not allowed:
                self._start_limit_hit(task, cause, limit)
                return
            try:
                _preflight(task.spec)
            except OperationFailed as exc:
                self._ended(task, ExitInfo(Result.RESOURCES, detail=exc.message))
                return
            await self._launch(record, task)

    def _apply_restart_policy(
        self, task: TaskRecord, info: ExitInfo, decision: engine.RestartDecision
    ) -> None:
        """Carry out the policy's verdict on a run that ended on its own."""
        record = self.transactions.get(task.transaction)
        if record is None or record.stopping or task.is_up:
            return  # stopping, or a trigger already started it again
        if decision.verdict is engine.Verdict.LIMIT:
            self._start_limit_hit(task, f"restart={task.spec.restart.mode}", decision.limit)
        elif decision.verdict is engine.Verdict.RESTART:
            task.set_state(State.ACTIVATING, SubState.AUTO_RESTART)
            task.status_text = f"restarting in {decision.delay:.2f} s: {info.describe()}"
            self._save(task)
            loop = asyncio.get_running_loop()
            task.restart_timer = loop.call_later(
                decision.delay,
                lambda: self._spawn(
                    self._start_automatically(record, task, "restart policy"), "auto-restart"
                ),
            )

    def _start_limit_hit(self, task: TaskRecord, cause: str, limit: str) -> None:
        """End a task ``failed/start-limit-hit``: *limit* says which limit, *cause* who asked."""
        task.cancel_restart()
        task.set_state(State.FAILED, SubState.FAILED, Result.START_LIMIT_HIT)
        task.status_text = f"start limit hit: {limit} ({cause}); 'zsvc start' resets it"
        task.last_action = LastAction.FAILED
        self._save(task)
        log.warning("%s/%s: %s", task.transaction, task.id, task.status_text)
        # Reported once on the bus; its triggers do not fire for it: an on_fail that
        # restarts the task would only hit the limit again, forever.
        self._report(task, LastAction.FAILED, ExitInfo(Result.START_LIMIT_HIT, detail=cause))
        if task.is_thread:
            self._retire_host_when_idle(task.transaction)

    def _spawn(self, coroutine: Any, name: str) -> None:
        """Run *coroutine* in the background, keeping a reference and logging its failure."""
        job = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._jobs.add(job)
        job.add_done_callback(self._job_done)

    def _job_done(self, job: asyncio.Task[Any]) -> None:
        self._jobs.discard(job)
        if job.cancelled():
            return
        exc = job.exception()
        if isinstance(exc, ZsvcError):
            log.warning("%s: %s", job.get_name(), exc.message)
        elif exc is not None:
            log.error("%s failed", job.get_name(), exc_info=exc)

    # --- the bus ---------------------------------------------------------------------

    def _report(
        self,
        task: TaskRecord,
        action: LastAction,
        info: ExitInfo | None = None,
        pid: int | None = None,
    ) -> None:
        """Publish the seed's control message for a task event (``pid``: the run it is about)."""
        status: dict[str, Any] = {"state": str(task.state), "sub_state": str(task.sub_state)}
        if info is not None:
            status["reason"] = info.describe()
        self.publish(
            protocol.control_message(
                action,
                transaction=task.transaction,
                service_id=task.id,
                service_name=task.spec.service_name,
                result="success" if task.result is Result.SUCCESS else "failure",
                device_action=task.spec.device_action,
                pid=pid or task.pid,
                status=status,
            )
        )
        self._context_info(self.transactions[task.transaction])

    def _context_info(self, record: TransactionRecord) -> None:
        """Publish the transaction's record soon: at most every CONTEXT_INFO_INTERVAL seconds.

        The record is the whole transaction, so a burst of changes (a crash loop
        of a hundred tasks) would otherwise encode it at every loop turn; the
        latest state still goes out, at most CONTEXT_INFO_INTERVAL late.
        """
        if record.id in self._info_pending:
            return
        self._info_pending.add(record.id)
        loop = asyncio.get_running_loop()
        due = self._info_sent.get(record.id, -CONTEXT_INFO_INTERVAL) + CONTEXT_INFO_INTERVAL
        loop.call_later(max(0.0, due - loop.time()), self._publish_context_info, record.id)

    def _publish_context_info(self, transaction: str) -> None:
        self._info_pending.discard(transaction)
        self._info_sent[transaction] = asyncio.get_running_loop().time()
        record = self.transactions.get(transaction)
        if record is None or not self.listened(protocol.Topic.CONTROL.encode()):
            return  # the whole record, encoded for nobody: skip it (a crash loop costs less)
        self.publish(
            protocol.make_message(
                protocol.Topic.CONTROL,
                "update",
                transaction=transaction,
                service_id=record.context.context_id,
                service_name="context",
                content={
                    "status": {
                        "device_action": "context_info",
                        "result": "success",
                        "data": record.view(),
                    }
                },
            )
        )

    def on_bus_message(self, message: protocol.Message) -> None:
        """Act on the bus traffic the daemon observes (see :mod:`zsvc.daemon.bus`)."""
        if message.topic == protocol.Topic.CONTROL and message.action == threads.REPORT_ACTION:
            self._on_thread_report(message)
        elif message.topic == protocol.Topic.CONTROL and message.action == LastAction.UPDATED:
            task = self._task((message.transaction, message.service_id))
            if task is None or not task.is_up:
                return
            if task.state is State.ACTIVATING:
                task.early_updates += 1  # handled once the run is ready (on_ready)
                return
            self._updated(task)
        elif message.topic == protocol.Topic.STATE and message.action == "request":
            self._reply_context(message)

    def _updated(self, task: TaskRecord) -> None:
        """The task published an update while up: record it, and fire its on_update."""
        if task.last_action is not LastAction.UPDATED:
            task.last_action = LastAction.UPDATED
            self._save(task)
        self._fire(task, LastAction.UPDATED)

    def _reply_context(self, request: protocol.Message) -> None:
        record = self.transactions.get(request.transaction)
        content: dict[str, Any]
        if record is None:
            content = {"error": f"unknown transaction {request.transaction!r}"}
        else:
            content = record.view()
        header = dict(request.header, action="reply_context")
        self.publish(protocol.Message(protocol.Topic.STATE, header, content))

    # --- restart of the daemon ---------------------------------------------------------

    async def restore(self, load: Callable[[str, str], Context]) -> list[str]:
        """Rebuild the table from SQLite and re-adopt live processes; returns what was lost."""
        lost: list[str] = []
        for row in list(self.table.transactions()):
            try:
                context = load(row.context_text, row.context_path)
            except ZsvcError as exc:
                log.error("transaction %s: its stored context no longer loads: %s", row.id, exc)
                continue
            record = TransactionRecord.new(row.id, context, row.context_text)
            record.created = row.created
            record.stopping = row.stopping  # an interrupted stop: no trigger fires meanwhile
            self.transactions[row.id] = record
            for task_row in self.table.tasks(row.id):
                task = record.tasks.get(task_row.task_id)
                if task is not None:
                    task.load_row(task_row)
            thread_tasks = []
            for task in record.tasks.values():
                if task.state in HAS_PROCESS and task.is_thread:
                    thread_tasks.append(task)
                elif task.state in HAS_PROCESS:
                    note = await self._readopt(record, task)
                    if note:
                        lost.append(note)
            if thread_tasks:
                lost.extend(await self._readopt_threads(record, thread_tasks))
            if row.stopping:
                asyncio.get_running_loop().create_task(self.stop(row.id, [], None))
        return lost

    async def _readopt(self, record: TransactionRecord, task: TaskRecord) -> str | None:
        launch = self._launch_spec_for_adoption(record, task)
        description = dict(task.runner_data)
        if task.pid is None:
            found = self._find_unsaved_run(description.get("invocation"))
            if found is not None:
                description.update(found)
        handle = await self.runner.adopt(launch, description) if description.get("pid") else None
        if handle is None:
            was = f"process {task.pid}" if task.pid else "its process"
            note = f"{record.id}/{task.id}: {was} ended while the daemon was not running"
            task.stop_requested = task.state is State.DEACTIVATING  # it was being stopped
            self._ended(task, ExitInfo(Result.LOST, detail="ended while the daemon was down"))
            return note
        task.handle = handle
        task.pid = handle.pid
        task.runner_data = {**task.runner_data, **handle.describe()}
        if task.state is State.ACTIVATING:
            # Its READY=1, if any, went to the dead daemon; the process is alive.
            task.set_state(State.ACTIVE, SubState.RUNNING)
            task.last_action = LastAction.STARTED
        task.stop_requested = task.state is State.DEACTIVATING
        self._save(task)
        log.info("%s/%s: re-adopted pid %d", record.id, task.id, handle.pid)
        if task.stop_requested:
            asyncio.get_running_loop().create_task(handle.stop())
        return None

    def _find_unsaved_run(self, invocation: object) -> dict[str, Any] | None:
        """A run started just before a crash, whose pid never reached the table."""
        if not isinstance(invocation, str) or not invocation:
            return None
        marker = self.runtime.spawned(invocation)
        with contextlib.suppress(OSError, ValueError):
            pid = int(marker.read_text())
            marker.unlink()
            return {"pid": pid, "pgid": pid, "start_time": process_start_time(pid)}
        return find_invocation(invocation)

    def _launch_spec_for_adoption(self, record: TransactionRecord, task: TaskRecord) -> LaunchSpec:
        saved = dict(task.runner_data)
        launch = self._launch_spec(record, task)
        task.runner_data = saved
        return launch


def _chosen_specs(context: Context, services: list[str]) -> list[TaskSpec]:
    if services:
        return [spec for spec in context.tasks if spec.id in services]
    return [spec for spec in context.tasks if spec.starts_with_transaction]


def _preflight(spec: TaskSpec) -> None:
    """Refuse to start what cannot possibly run, before anything is started."""
    if spec.is_command:
        return
    location = spec.location
    module = location.joinpath(spec.instance, f"Service{spec.instance}.py") if location else None
    if module is None or not module.is_file():
        raise OperationFailed(
            f"task {spec.id}: task module {module} does not exist"
            f" (instance {spec.instance!r} is looked up as"
            f" <location>/{spec.instance}/Service{spec.instance}.py)"
        )


def _thread_status(host: ThreadHost) -> str:
    """A Thread task's status line until it sets its own (``zsvc status`` shows it)."""
    return f"thread in pid {host.pid}"


def key_of(task: TaskRecord) -> TaskKey:
    return (task.transaction, task.id)


def _thread_exit(event: str, status: Any) -> ExitInfo:
    """How a thread's run ended, from its host's report (``docs/states.md``, Thread tasks)."""
    if event != threads.Event.FAILED:
        return ExitInfo(Result.SUCCESS, detail=str(status.get("reason") or "its thread ended"))
    code = status.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        return ExitInfo(Result.EXIT_CODE, exit_code=code, detail="its thread called sys.exit()")
    return ExitInfo(Result.EXIT_CODE, detail="its thread failed")


def _status_suffix(task: TaskRecord) -> str:
    return f" [status: {task.status_text}]" if task.status_text else ""
