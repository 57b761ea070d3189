"""The daemon's in-memory transaction table: transactions, their tasks, and their views.

Records are plain mutable objects owned by :class:`zsvc.daemon.manager.Manager`;
each converts to and from its :mod:`zsvc.daemon.table` row, and to the
stable JSON of ``zsvc status --json`` (:meth:`TaskRecord.view`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zsvc.config.model import Context, TaskSpec, Trigger
from zsvc.daemon import lifecycle
from zsvc.daemon.access import ROOT, Principal
from zsvc.daemon.engine import RestartState
from zsvc.daemon.table import TaskRow, TransactionRow
from zsvc.runners.base import ExitInfo, TaskHandle
from zsvc.states import (
    DOWN,
    HAS_PROCESS,
    LastAction,
    Result,
    State,
    SubState,
    TransactionState,
    TriggerEvent,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TaskRecord:
    """One task of one transaction: its configuration, its state and its process."""

    transaction: str
    spec: TaskSpec
    state: State = State.INACTIVE
    sub_state: SubState = SubState.DEAD
    result: Result = Result.SUCCESS
    pid: int | None = None
    status_text: str = ""
    last_action: LastAction | None = None
    last_exit: str = ""
    restarts: int = 0
    starts: int = 0
    since: float = field(default_factory=time.time)
    runner_data: dict[str, Any] = field(default_factory=dict)
    handle: TaskHandle | None = None
    stop_requested: bool = False
    ready: asyncio.Future[ExitInfo | None] | None = None
    """Resolved with None when the current run becomes ready, or with how it ended before."""
    restart_state: RestartState = field(default_factory=RestartState)
    """The restart policy's memory (starts in the limit window, backoff); not persisted."""
    restart_timer: asyncio.TimerHandle | None = None
    """The pending automatic restart, while the task is ``activating/auto-restart``."""
    committed: TaskRow | None = None
    """The last row the table accepted: what a refused write rolls the record back to."""
    early_updates: int = 0
    """``updated`` messages of the current run seen before it was ready; not persisted.

    Under systemd a task's READY=1 reaches the daemon through systemd and D-Bus,
    often after the task's first bus message: these wait, so that on_start
    always fires before on_update, whichever runner is used.
    """

    def cancel_restart(self) -> bool:
        """Drop a pending automatic restart; True when there was one."""
        if self.restart_timer is None:
            return False
        self.restart_timer.cancel()
        self.restart_timer = None
        return True

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def is_up(self) -> bool:
        return self.state in HAS_PROCESS

    def begin_run(self, loop: asyncio.AbstractEventLoop) -> TaskRow:
        """Reset what belongs to one run and count it; the row to restore if it cannot start."""
        self.stop_requested = False
        self.early_updates = 0
        self.ready = loop.create_future()
        self.status_text = ""
        self.pid = None
        if self.starts:
            self.restarts += 1
        self.starts += 1
        return self.to_row()

    def change_state(
        self,
        state: State,
        sub_state: SubState,
        result: Result | None = None,
        action: LastAction | None = None,
        *,
        note: str | None = None,
    ) -> bool:
        """Make one move of :data:`lifecycle.TRANSITIONS`; refuse (and say so) any other.

        The one place a task's state changes, in supervisor's manner: a move the
        table does not know is a bug, so it is not applied, it is logged at ERROR
        with its stack, and False is returned (raised instead under
        ``ZSVC_STRICT_STATES=1``, as in the tests). *result* and *action* None keep
        the fields. ``status_text`` belongs to a run or to the note of the move that
        took the task down: a move into a down state clears it, and *note*, when
        given, replaces it (the restart policy's or the start limit's words).
        """
        move = lifecycle.Move(state, sub_state, result, action)
        source = (self.state, self.sub_state)
        if not lifecycle.is_legal(source, move):
            self._refuse(source, move)
            return False
        if (state, sub_state) != source:
            self.since = time.time()
        self.state, self.sub_state = state, sub_state
        if result is not None:
            self.result = result
        if action is not None:
            self.last_action = action
        if note is not None:
            self.status_text = note
        elif state in DOWN:
            self.status_text = ""
        return True

    def _refuse(self, source: lifecycle.Pair, move: lifecycle.Move) -> None:
        text = (
            f"{self.transaction}/{self.id}: illegal state change"
            f" {source[0]}/{source[1]} -> {move.state}/{move.sub_state}"
            f" (result {move.result or 'unchanged'}, last_action {move.action or 'unchanged'}):"
            " a bug in zsvc; the task keeps its state"
        )
        if os.environ.get(lifecycle.STRICT_ENV) == "1":
            raise lifecycle.IllegalTransition(text)
        log.error("%s", text, stack_info=True)

    def end_run(self, info: ExitInfo) -> lifecycle.RunEnd:
        """Record how the run ended (:func:`lifecycle.classify_end`); returns the verdict.

        Sets ``last_exit``; a failed run's last ``STATUS=`` text (often its last
        words: why it failed) moves there, since ``status_text`` is cleared with
        the run. A stop request counts only while a run exists: without one (an
        automatic start refused, a restart lost) there is nothing a stop could
        have ended, and the flag may be a past run's.
        """
        had_run = (self.state, self.sub_state) in lifecycle.RUN_PAIRS
        end = lifecycle.classify_end(self.stop_requested and had_run, info)
        words = self.status_text if had_run and end.state is State.FAILED else ""
        self.last_exit = info.describe() + (f" [status: {words}]" if words else "")
        self.change_state(*end.move)
        return end

    def to_row(self) -> TaskRow:
        return TaskRow(
            transaction_id=self.transaction,
            task_id=self.id,
            state=self.state,
            sub_state=self.sub_state,
            result=self.result,
            pid=self.pid,
            status_text=self.status_text,
            last_action=self.last_action or "",
            last_exit=self.last_exit,
            restarts=self.restarts,
            since=self.since,
            runner_data=self.runner_data,
        )

    def load_row(self, row: TaskRow) -> None:
        self.state = State(row.state)
        self.sub_state = SubState(row.sub_state)
        self.result = Result(row.result)
        self.pid = row.pid
        self.status_text = row.status_text
        self.last_action = LastAction(row.last_action) if row.last_action else None
        self.last_exit = row.last_exit
        self.restarts = row.restarts
        self.starts = row.restarts + (1 if row.last_action else 0)
        self.since = row.since
        self.runner_data = dict(row.runner_data)
        self.committed = row

    def view(self) -> dict[str, Any]:
        """The task in ``zsvc status --json`` (a documented, stable shape)."""
        return {
            "id": self.id,
            "service_name": self.spec.service_name,
            "instance": self.spec.instance,
            "pid": self.pid,
            "state": str(self.state),
            "sub_state": str(self.sub_state),
            "result": str(self.result),
            "status_text": self.status_text,
            "last_action": str(self.last_action) if self.last_action else None,
            "last_exit": self.last_exit,
            "restarts": self.restarts,
            "since": self.since,
        }


@dataclass(eq=False)
class TransactionRecord:
    """A transaction: its context, its tasks in context order, and a lock that orders commands."""

    id: str
    context: Context
    context_text: str
    created: float = field(default_factory=time.time)
    stopping: bool = False
    epoch: int = 0
    """Bumped by every stop: an ordered start in progress checks it before each wave."""
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    broken: str = ""
    """Why its stored context no longer loads (empty when it does): see
    :func:`zsvc.daemon.restore.load_records`."""
    owner: Principal = ROOT
    """Who made it (:mod:`zsvc.daemon.access`): they, root and grants may control it."""

    @functools.cached_property
    def triggers(self) -> dict[str, Mapping[TriggerEvent, Trigger]]:
        """The trigger table (task id → its triggers): fixed by the context, built once."""
        return {spec.id: spec.triggers for spec in self.context.tasks}

    @classmethod
    def new(
        cls, transaction: str, context: Context, context_text: str, owner: Principal = ROOT
    ) -> TransactionRecord:
        record = cls(id=transaction, context=context, context_text=context_text, owner=owner)
        for spec in context.tasks:
            task = TaskRecord(transaction=transaction, spec=spec)
            if not spec.starts_with_transaction:
                task.sub_state = SubState.WAITING
            record.tasks[spec.id] = task
        return record

    @property
    def state(self) -> TransactionState:
        """Derived from the tasks, never stored separately, so it cannot disagree with them."""
        if self.broken:
            return TransactionState.BROKEN
        if self.stopping:
            return TransactionState.STOPPING
        states = [task.state for task in self.tasks.values()]
        if any(t.state is State.ACTIVATING and t.sub_state is not SubState.AUTO_RESTART
               for t in self.tasks.values()):  # fmt: skip
            return TransactionState.STARTING
        if State.DEACTIVATING in states:
            return TransactionState.STOPPING
        if any(task.sub_state is SubState.AUTO_RESTART for task in self.tasks.values()):
            return TransactionState.DEGRADED  # a task failed and waits to be restarted
        failed = State.FAILED in states
        active = State.ACTIVE in states
        if failed:
            return TransactionState.DEGRADED if active else TransactionState.FAILED
        return TransactionState.RUNNING if active else TransactionState.STOPPED

    def to_row(self) -> TransactionRow:
        return TransactionRow(
            id=self.id,
            context_path=str(self.context.path),
            context_text=self.context_text,
            stopping=self.stopping,
            created=self.created,
            owner=self.owner.to_json(),
        )

    def view(self) -> dict[str, Any]:
        """The transaction in ``zsvc status --json`` (``broken`` only when it is)."""
        view = {
            "transaction": self.id,
            "state": str(self.state),
            "context_id": self.context.context_id,
            "context": str(self.context.path),
            "log_name": self.context.log_name,
            "created": self.created,
            "owner": self.owner.name,
            "tasks": [task.view() for task in self.tasks.values()],
        }
        if self.broken:
            view["broken"] = self.broken
        return view
