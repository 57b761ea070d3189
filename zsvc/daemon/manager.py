"""The transaction manager: starts, stops and watches the tasks of every transaction.

It is the only writer of the transaction table, and it does two things:
it carries out commands (start, stop, restart, status, forget), and it
reacts to what the runner reports (:class:`~zsvc.runners.base.RunnerEvents`)
and to the bus traffic it acts on (:meth:`Manager.on_bus_message`). What a
run is made of is decided by :mod:`zsvc.daemon.launch`, what goes out on
the bus by :mod:`zsvc.daemon.reports`, what happens after a daemon restart
by :mod:`zsvc.daemon.restore`, and what the triggers and the restart policy
ask for by the pure :mod:`zsvc.daemon.engine`.

Each change follows one order: change the record in memory, commit it to
SQLite, then tell anyone (the control reply, the bus). Commands on one
transaction take its lock, so they run in arrival order; commands on
different transactions run concurrently. Nothing is ever refused for being
busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from zsvc import protocol
from zsvc.commands import RawJSON
from zsvc.config.model import Context
from zsvc.daemon import engine, lifecycle, restore, selection
from zsvc.daemon.access import ROOT, Principal, may_report
from zsvc.daemon.automatic import AutomaticStarts
from zsvc.daemon.launch import Launcher
from zsvc.daemon.model import TaskRecord, TransactionRecord
from zsvc.daemon.reports import Reporter
from zsvc.daemon.table import Table
from zsvc.errors import (
    BadRequest,
    OperationFailed,
    StorageError,
    UnknownTransaction,
)
from zsvc.jobs import Jobs
from zsvc.paths import RuntimeLayout, StateLayout
from zsvc.runners.base import ExitInfo, LaunchError, Runner, TaskHandle, TaskKey
from zsvc.states import (
    SIGNALLABLE,
    LastAction,
    Result,
    State,
    SubState,
    new_transaction_id,
)
from zsvc.throttle import ThrottledLog

log = logging.getLogger(__name__)


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
        launcher: Launcher | None = None,
    ):
        self.runner = runner
        self.table = table
        self.runtime = runtime
        self.state = state
        self.transactions: dict[str, TransactionRecord] = {}
        self.launcher = launcher or Launcher.for_daemon(runtime, state)
        self.reports = Reporter(publish, self.transactions, listened)
        self.jobs = Jobs("manager")
        self._views: dict[str, bytes] = {}
        """Encoded ``status`` views, dropped whenever the transaction's stored state changes."""
        self._clock: Callable[[], float] = time.monotonic
        self._refused_reports = ThrottledLog(log)
        self.automatic = AutomaticStarts(
            self.transactions,
            self.jobs,
            lambda: self._clock(),
            stop=lambda transaction, ids: self.stop(transaction, ids, None, automatic=True),
            launch_run=self._launch,
            ended=self._ended,
            save=self._save,
            report=self.reports.task_event,
            preflight=lambda record, spec: self.launcher.preflight(record.id, spec, record.owner),
        )

    # --- persistence ------------------------------------------------------------

    def _save_transaction(self, record: TransactionRecord) -> None:
        self._views.pop(record.id, None)
        self.table.save_transaction(record.to_row())

    def _set_stopping(self, record: TransactionRecord, stopping: bool) -> None:
        """Stored before it is true in memory: a refused write leaves both as they were."""
        self._views.pop(record.id, None)
        self.table.save_transaction(dataclasses.replace(record.to_row(), stopping=stopping))
        record.stopping = stopping

    def _save(self, task: TaskRecord) -> None:
        """Commit the task's record; a refused change is undone in memory, then raised.

        An event that already happened (an exit) is not undone: the record
        keeps it in memory and the next successful write of this task stores it.
        """
        self._views.pop(task.transaction, None)
        row = task.to_row()
        try:
            self.table.save_task(row)
        except StorageError:
            if not task.is_up:
                log.exception("could not persist %s/%s", task.transaction, task.id)
                return
            if task.committed is not None:
                task.load_row(task.committed)
            raise
        task.committed = row

    @contextlib.asynccontextmanager
    async def _locked(self, target: str | TransactionRecord) -> AsyncIterator[TransactionRecord]:
        """The transaction's lock, held; refused when it was forgotten while this waited.

        Commands on one transaction queue on its lock: one queued behind a
        ``forget`` (or behind a start that replaced the record with a new
        context) must find the transaction unknown, not act on a record the
        table no longer has.
        """
        record = self._get(target) if isinstance(target, str) else target
        async with record.lock:
            if self.transactions.get(record.id) is not record:
                raise UnknownTransaction(f"unknown transaction {record.id!r} (forgotten meanwhile)")
            yield record

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
        owner: Principal = ROOT,
    ) -> dict[str, Any]:
        """Create a transaction from *context* (*owner*'s), or start a known one again.

        Tasks start in waves along their ``after`` edges, each wave once the
        previous one is ready. When a task fails to become ready, the start
        stops what it started, in reverse order, and fails naming the task
        (``keep_going`` leaves the rest running instead).
        """
        if context is None:
            if not transaction:
                raise BadRequest("start: give a transaction id or a context file")
            record = self._get(transaction)
            if record.broken:
                raise OperationFailed(
                    f"transaction {transaction} cannot be started: {record.broken}; stop it,"
                    " then start it again with a corrected context"
                    f" (zsvc start -c FILE {transaction})"
                )
        else:
            if transaction not in self.transactions:
                check = functools.partial(self.launcher.preflight, transaction or "")
                selection.check_new(context, services, functools.partial(check, owner=owner))
            record = self._create(transaction, context, context_text or "", owner)
        async with self._locked(record):
            chosen = selection.choose(record, services, default=selection.entry_tasks(record))
            self._set_stopping(record, False)
            for task in chosen:
                if not task.is_up:
                    self.launcher.preflight(record.id, task.spec, record.owner)
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
            self.jobs.spawn(run, f"start {record.id}")
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
            async with self._locked(record):
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
            elif future.result() is not None:
                failures[task.id] = task.last_exit
        return failures

    async def stop(
        self,
        transaction: str,
        services: list[str],
        timeout: float | None,
        quiet: bool = False,
        automatic: bool = False,
    ) -> dict:
        """Stop tasks in reverse ``after`` order; *quiet* also silences their triggers.

        A stop by hand aborts a start of the transaction in progress; an
        *automatic* one (a trigger's) does not: it is part of that start.
        """
        async with self._locked(transaction) as record:
            whole = not services
            chosen = selection.choose(record, services, default=list(record.tasks.values()))
            silent = whole or quiet
            if silent:
                self._set_stopping(record, True)
            if not automatic:
                record.epoch += 1
            try:
                for wave in engine.stop_order(record.context.tasks, [t.id for t in chosen]):
                    await asyncio.gather(
                        *(self._stop_task(record.tasks[task_id], timeout) for task_id in wave)
                    )
            finally:
                if silent:
                    self._set_stopping(record, False)
                self.reports.record_changed(record.id)
        return record.view()

    async def restart(self, transaction: str, services: list[str], timeout: float | None) -> dict:
        chosen_ids = selection.to_restart(self._get(transaction), services)
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

    def live_logs(self) -> list[Path]:
        """The logs being written now (the daemon caps them)."""
        return selection.live_logs(self.transactions.values(), self.state)

    def log_paths(self, transaction: str, services: list[str]) -> list[dict[str, str]]:
        return selection.log_entries(self._get(transaction), services, self.state)

    async def forget(self, transaction: str) -> dict[str, Any]:
        async with self._locked(transaction) as record:
            if any(task.is_up for task in record.tasks.values()):
                raise OperationFailed(
                    f"transaction {transaction} still has running tasks: stop it first"
                )
            await self.runner.forget(transaction)
            self.table.delete_transaction(transaction)
            del self.transactions[transaction]
            self._views.pop(transaction, None)
            self.reports.forget(transaction)
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
            if any(task.is_up for task in record.tasks.values())
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

    def _create(
        self, transaction: str | None, context: Context, text: str, owner: Principal
    ) -> TransactionRecord:
        if transaction is None:
            transaction = new_transaction_id()
        selection.check_id(transaction)
        existing = self.transactions.get(transaction)
        if existing is not None:
            if not selection.may_replace(existing, text):
                return existing
            self.table.delete_transaction(transaction)
            del self.transactions[transaction]
            self._views.pop(transaction, None)
        record = TransactionRecord.new(transaction, context, text, owner)
        self._save_transaction(record)
        for task in record.tasks.values():
            self.table.save_task(task.to_row())
        self.transactions[transaction] = record
        return record

    # --- launching and stopping -----------------------------------------------------

    async def _launch(self, record: TransactionRecord, task: TaskRecord) -> None:
        invocation = uuid.uuid4().hex
        crashing = task.restart_state.crashes > 0
        before = task.to_row()
        task.begin_run(asyncio.get_running_loop())
        task.runner_data = {"invocation": invocation}
        task.change_state(*lifecycle.STARTING)
        try:
            self._save(task)  # with the invocation id, before the process exists
        except StorageError:
            task.load_row(before)  # nothing was started: the record says so again
            raise
        try:  # the launch reads the environment files: a LaunchError when one went wrong
            spec = self.launcher.task(
                record.id, record.context, task.spec, invocation, crashing, owner=record.owner
            )
            handle = await self.runner.start(spec)
        except LaunchError as exc:
            log.error("%s/%s: %s", record.id, task.id, exc)
            self._ended(task, exc.info)
            return
        self._attach(task, handle)
        self.reports.record_changed(record.id)

    def _attach(self, task: TaskRecord, handle: TaskHandle) -> None:
        """The run has a handle (launched or re-adopted): remember how to find it again."""
        task.handle = handle
        task.pid = handle.pid
        task.runner_data = {**task.runner_data, **handle.describe()}
        self._save(task)
        self.runner.run_saved(handle)

    async def _stop_task(self, task: TaskRecord, timeout: float | None) -> None:
        if task.cancel_restart() or task.sub_state is SubState.AUTO_RESTART:
            task.change_state(*lifecycle.STOPPED_BEFORE_RESTART)
            self._save(task)
            return
        if task.handle is None:
            if task.sub_state not in SIGNALLABLE:
                return
            # Up according to the table but without a process handle: nothing to signal.
            self._ended(task, ExitInfo(Result.LOST, detail="no process to stop"))
            return
        task.change_state(*lifecycle.STOPPING)
        self._save(task)
        task.stop_requested = True
        await task.handle.stop(timeout)

    # --- runner events -------------------------------------------------------------

    def _task(self, key: TaskKey) -> TaskRecord | None:
        record = self.transactions.get(key[0])
        return record.tasks.get(key[1]) if record else None

    def on_ready(self, key: TaskKey) -> None:
        task = self._task(key)
        if task is None or task.sub_state is not SubState.START:
            return
        task.change_state(*lifecycle.READY)
        self._save(task)
        if task.ready is not None and not task.ready.done():
            task.ready.set_result(None)
        self.reports.task_event(task, LastAction.STARTED)
        self.automatic.fire(task, LastAction.STARTED)
        early, task.early_updates = task.early_updates, 0
        for _ in range(early):
            self._updated(task)

    def on_status(self, key: TaskKey, text: str) -> None:
        task = self._task(key)
        if task is not None and task.sub_state in SIGNALLABLE and text != task.status_text:
            task.status_text = text
            self._save(task)
            self.reports.record_changed(task.transaction)

    def on_stopping(self, key: TaskKey) -> None:
        task = self._task(key)
        if task is not None and task.sub_state is SubState.RUNNING:
            task.change_state(*lifecycle.STOPPING)
            self._save(task)

    def on_main_pid(self, key: TaskKey, pid: int, description: dict[str, Any]) -> None:
        task = self._task(key)
        if task is not None and task.handle is not None:
            task.pid = pid
            task.runner_data = {**task.runner_data, **description}
            self._save(task)

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None:
        task = self._task(key)
        if task is not None:
            self._ended(task, info)

    def _ended(self, task: TaskRecord, info: ExitInfo) -> None:
        """Record how a run ended, then report it, fire its triggers and apply its policy."""
        task.handle = None
        pid, task.pid = task.pid, None
        end = task.end_run(info)
        action = end.action
        self._save(task)
        if task.ready is not None and not task.ready.done():
            task.ready.set_result(info)
        log.info("%s/%s %s", task.transaction, task.id, info.describe())
        self.reports.task_event(task, action, info, pid)
        self.automatic.after_end(task, action, info)

    # --- the bus ---------------------------------------------------------------------

    def on_bus_message(self, message: protocol.Message) -> None:
        """Act on the bus traffic the daemon observes (see :mod:`zsvc.daemon.bus`)."""
        if message.topic == protocol.Topic.CONTROL and message.action == LastAction.UPDATED:
            task = self._task((message.transaction, message.service_id))
            if task is None or not task.is_up:
                return
            owner = self.transactions[task.transaction].owner
            processes = task.handle.processes if task.handle is not None else tuple
            if not may_report(message.sender, owner, processes):
                why = f"{task.transaction}/{task.id}: only the task, its owner or root may speak"
                self._refused_reports.warning("%s; 'updated' from %s ignored", why, message.sender)
                return
            if task.state is State.ACTIVATING:
                task.early_updates += 1  # handled once the run is ready (on_ready)
                return
            self._updated(task)
        elif message.topic == protocol.Topic.STATE and message.action == "request":
            self.reports.reply_state(message)

    def _updated(self, task: TaskRecord) -> None:
        """The task published an update while up: record it, and fire its on_update."""
        if task.last_action is not LastAction.UPDATED:
            task.change_state(*lifecycle.updated((task.state, task.sub_state)))
            self._save(task)
        self.automatic.fire(task, LastAction.UPDATED)

    # --- restart of the daemon ---------------------------------------------------------

    async def restore(self, load: Callable[[str, str], Context]) -> list[str]:
        """Rebuild the table from SQLite and re-adopt live runs; returns what was lost."""
        lost: list[str] = []
        for record in restore.load_records(self.table, load):
            self.transactions[record.id] = record
            runs = await restore.find_runs(record, self.runner, self.launcher)
            for found in runs:
                if found.handle is None:
                    lost.append(f"{record.id}/{found.task.id}: {found.lost}")
                    self._lost(found.task, found.detail)
                else:
                    self._adopted(found.task, found.handle)
            if record.stopping:
                self.jobs.spawn(self.stop(record.id, [], None), f"finish stopping {record.id}")
        return lost

    def _lost(self, task: TaskRecord, detail: str) -> None:
        """A run the table says is up ended while no daemon watched it."""
        task.stop_requested = task.state is State.DEACTIVATING  # it was being stopped
        self._ended(task, ExitInfo(Result.LOST, detail=detail))

    def _adopted(self, task: TaskRecord, handle: TaskHandle) -> None:
        """A run of the last daemon, alive: watched again, and stopped if it was stopping."""
        if task.sub_state is SubState.START:
            # Its READY=1, if any, went to the dead daemon; the process is alive.
            task.change_state(*lifecycle.READY)
        task.stop_requested = task.state is State.DEACTIVATING
        self._attach(task, handle)
        log.info("%s/%s: re-adopted pid %d", task.transaction, task.id, handle.pid)
        if task.stop_requested:
            self.jobs.spawn(handle.stop(), f"finish stopping {task.transaction}/{task.id}")
