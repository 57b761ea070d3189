"""After a daemon restart: the table read back, and every run that was up found again.

A daemon may stop (an upgrade, a crash, SIGKILL) while its tasks run on.
The next one rebuilds its records from SQLite and asks the runner to
re-adopt each run the table says is up, by what the last daemon persisted
(pid, start time, cgroup or unit) or, for a run whose pid never reached the
table, by its invocation id (a marker file the local runner writes at spawn,
or the process environment). What is found is adopted; what is not is
recorded as ``lost`` by the manager, which owns every state change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from zsvc.config.model import BusEndpoints, Context, TaskSpec
from zsvc.daemon.access import Principal
from zsvc.daemon.launch import Launcher
from zsvc.daemon.model import TaskRecord, TransactionRecord
from zsvc.daemon.table import Table, TaskRow
from zsvc.errors import ZsvcError
from zsvc.runners.base import NotAdoptable, Runner, TaskHandle
from zsvc.states import SIGNALLABLE, ServiceType

log = logging.getLogger(__name__)


@dataclass
class Found:
    """What became of one run that the table says is up."""

    task: TaskRecord
    handle: TaskHandle | None
    """The re-adopted run, or None when it is gone."""
    lost: str = ""
    """What became of it, for the daemon's log (when *handle* is None)."""
    detail: str = ""
    """How its run ended, for its ``last_exit`` (when *handle* is None)."""


def load_records(table: Table, load: Callable[[str, str], Context]) -> Iterator[TransactionRecord]:
    """Every stored transaction, with its tasks' last rows.

    One whose stored context no longer loads (a corrupted row, or stricter
    validation in a newer zsvc) is not dropped: its tasks may still run, and
    a daemon that forgot them could neither show nor stop them. It comes back
    *broken*, on a stand-in context made from the table's rows alone.
    """
    for row in list(table.transactions()):
        rows = list(table.tasks(row.id))
        broken = ""
        try:
            context = load(row.context_text, row.context_path)
        except ZsvcError as exc:
            broken = f"its stored context no longer loads: {exc}"
            log.error("transaction %s: %s; its tasks can be stopped, not started", row.id, broken)
            context = stand_in_context(row.context_path, rows)
        record = TransactionRecord.new(
            row.id, context, row.context_text, Principal.from_json(row.owner)
        )
        record.created = row.created
        record.stopping = row.stopping  # an interrupted stop: no trigger fires meanwhile
        record.broken = broken
        for task_row in rows:
            task = record.tasks.get(task_row.task_id)
            if task is not None:
                task.load_row(task_row)
        yield record


def stand_in_context(path: str, rows: list[TaskRow]) -> Context:
    """What the table alone says of a context: its tasks, enough to find and stop them.

    A run of a Thread task is recognised by its host in the runner data; any
    other becomes a command task with no command (it can be adopted and
    stopped, never started). No endpoints are bound for it, no trigger fires.
    """
    tasks = tuple(
        TaskSpec(
            id=row.task_id,
            instance=row.task_id,
            service_name=row.task_id,
            service_type=ServiceType.THREAD if "host" in row.runner_data else ServiceType.PROCESS,
            command=None if "host" in row.runner_data else (),
        )
        for row in rows
    )
    return Context(Path(path), context_id="", log_name="", endpoints=BusEndpoints(), tasks=tasks)


async def find_runs(record: TransactionRecord, runner: Runner, launcher: Launcher) -> list[Found]:
    """Ask the runner for each run of *record* that the table says is up."""
    found = []
    for task in record.tasks.values():
        if task.is_up:
            found.append(await _find_run(record, task, runner, launcher))
    return found


async def _find_run(
    record: TransactionRecord,
    task: TaskRecord,
    runner: Runner,
    launcher: Launcher,
) -> Found:
    if task.sub_state not in SIGNALLABLE:  # up, but without a run: a restart was due
        return Found(task, None, "its restart was due", "ended while the daemon was down")
    description = dict(task.runner_data)
    invocation = str(description.get("invocation", ""))
    if task.pid is None:
        unsaved = runner.find_unsaved_run(invocation)
        if unsaved is not None:
            description.update(unsaved)
    launch = launcher.task(
        record.id,
        record.context,
        task.spec,
        invocation,
        crashing=False,
        read_files=False,
        owner=record.owner,
    )
    try:
        handle = await runner.adopt(launch, description) if description.get("pid") else None
    except NotAdoptable as exc:
        return Found(task, None, str(exc), str(exc))
    if handle is None:
        was = f"process {task.pid}" if task.pid else "its process"
        lost = f"{was} ended while the daemon was not running"
        return Found(task, None, lost, "ended while the daemon was down")
    return Found(task, handle)
