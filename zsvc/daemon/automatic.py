"""Starts nobody typed: the triggers and the restart policy, bounded by the start limit.

The pure :mod:`zsvc.daemon.engine` decides (which trigger fires, whether a
run that ended is restarted, after which delay, whether the start limit is
hit); this module carries its verdicts out for the manager: a triggered
stop or start, a restart timer, the ``failed/start-limit-hit`` end. It acts
through the manager's own commands and its one way to launch, record and
report, which it is given, so that every change still takes the
transaction's lock and is committed before it is told.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

from zsvc.config.model import TaskSpec
from zsvc.daemon import engine, launch, lifecycle
from zsvc.daemon.model import TaskRecord, TransactionRecord
from zsvc.errors import OperationFailed
from zsvc.jobs import Jobs
from zsvc.runners.base import ExitInfo
from zsvc.states import LastAction, Result, SubState, TaskAction

log = logging.getLogger(__name__)


class AutomaticStarts:
    """Carries out what the triggers and the restart policy ask, for one manager."""

    def __init__(
        self,
        transactions: Mapping[str, TransactionRecord],
        jobs: Jobs,
        clock: Callable[[], float],
        *,
        stop: Callable[[str, list[str]], Awaitable[object]],
        launch_run: Callable[[TransactionRecord, TaskRecord], Awaitable[None]],
        ended: Callable[[TaskRecord, ExitInfo], None],
        save: Callable[[TaskRecord], None],
        report: Callable[[TaskRecord, LastAction, ExitInfo], None],
        preflight: Callable[[TransactionRecord, TaskSpec], None] | None = None,
    ):
        self.transactions = transactions
        self.jobs = jobs
        self.clock = clock
        self._stop = stop
        self._launch = launch_run
        self._ended = ended
        self._save = save
        self._report = report
        # As the transaction's owner would run it (Launcher.preflight): the manager's.
        self._preflight = preflight or (lambda record, spec: launch.preflight(spec))

    def fire(self, task: TaskRecord, action: LastAction) -> None:
        """Run the triggers an event fires: once per event, never while the transaction stops."""
        record = self.transactions.get(task.transaction)
        if record is None:
            return
        event = engine.TaskEvent(record.id, task.id, action)
        for triggered in engine.fire(event, record.triggers, record.stopping):
            log.info("%s: %s", record.id, triggered.describe())
            self.jobs.spawn(self._carry_out(record, triggered), triggered.describe())

    def after_end(self, task: TaskRecord, action: LastAction, info: ExitInfo) -> None:
        """A run ended (already recorded and reported): its triggers, then its policy."""
        stopped = action is LastAction.STOPPED
        decision = engine.on_exit(
            task.restart_state,
            task.spec.restart,
            info.result,
            stop_requested=stopped,
            now=self.clock(),
            rand=random.random(),
        )
        task.restart_state = decision.state  # the crash streak counts every run's end
        self.fire(task, action)
        if not stopped:
            self._apply_restart_policy(task, info, decision)

    async def _carry_out(
        self, record: TransactionRecord, triggered: engine.TriggeredAction
    ) -> None:
        target = record.tasks.get(triggered.target)
        if target is None or record.stopping:
            return
        if triggered.action in (TaskAction.STOP, TaskAction.RESTART) and target.is_up:
            await self._stop(record.id, [target.id])
        if triggered.action in (TaskAction.START, TaskAction.RESTART):
            await self.start(record, target, triggered.describe())

    async def start(self, record: TransactionRecord, task: TaskRecord, cause: str) -> None:
        """A start nobody typed (a trigger or the restart policy): bounded by the start limit."""
        async with record.lock:
            if self.transactions.get(record.id) is not record:
                return  # forgotten (or replaced) while this waited
            if record.stopping or (task.is_up and task.sub_state is not SubState.AUTO_RESTART):
                return
            task.restart_timer = None
            now = self.clock()
            limit = engine.limit_reached(task.restart_state, now, task.spec.restart)
            allowed, task.restart_state = engine.note_start(
                task.restart_state, now, automatic=True, policy=task.spec.restart
            )
            if not allowed:
                self._start_limit_hit(task, cause, limit)
                return
            try:
                self._preflight(record, task.spec)
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
            note = f"restarting in {decision.delay:.2f} s: {info.describe()}"
            task.change_state(*lifecycle.AUTO_RESTART_PENDING, note=note)
            self._save(task)
            loop = asyncio.get_running_loop()
            task.restart_timer = loop.call_later(
                decision.delay,
                lambda: self.jobs.spawn(self.start(record, task, "restart policy"), "auto-restart"),
            )

    def _start_limit_hit(self, task: TaskRecord, cause: str, limit: str) -> None:
        """End a task ``failed/start-limit-hit``: *limit* says which limit, *cause* who asked."""
        task.cancel_restart()
        note = f"start limit hit: {limit} ({cause}); 'zsvc start' resets it"
        task.change_state(*lifecycle.START_LIMIT_HIT, note=note)
        self._save(task)
        log.warning("%s/%s: %s", task.transaction, task.id, task.status_text)
        # Reported once on the bus; its triggers do not fire for it: an on_fail that
        # restarts the task would only hit the limit again, forever.
        self._report(task, LastAction.FAILED, ExitInfo(Result.START_LIMIT_HIT, detail=cause))
