"""Which tasks a command is about: pure rules over a transaction's records.

``zsvc start``, ``stop``, ``restart`` and ``logs`` each take an optional
list of task ids (``--service``); without one, each has its own default
(the entry tasks, every task, what runs now). The rules live here, apart
from the manager's I/O, so that each is tested on records alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from zsvc.config.model import Context, TaskSpec
from zsvc.daemon.launch import chosen_specs, log_name, preflight
from zsvc.daemon.model import TaskRecord, TransactionRecord
from zsvc.errors import BadRequest, ErrorCode, UnknownTask, ZsvcError
from zsvc.paths import StateLayout
from zsvc.states import is_valid_id


def entry_tasks(record: TransactionRecord) -> list[TaskRecord]:
    """The tasks a start of the whole transaction starts (no entry trigger of their own)."""
    return [task for task in record.tasks.values() if task.spec.starts_with_transaction]


def choose(
    record: TransactionRecord, services: Iterable[str], default: list[TaskRecord]
) -> list[TaskRecord]:
    """The named tasks, in the order named and once each; *default* when none is named."""
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


def to_restart(record: TransactionRecord, services: list[str]) -> list[str]:
    """What ``zsvc restart`` stops and starts again.

    Without names, the whole transaction as 'stop' then 'start' would: what
    runs now, and its entry tasks, a failed one included (``systemctl
    restart`` starts a failed unit).
    """
    if services:
        return [task.id for task in choose(record, services, default=[])]
    entry = {task.id for task in entry_tasks(record)}
    return [task.id for task in record.tasks.values() if task.is_up or task.id in entry]


def check_new(
    context: Context, services: list[str], check: Callable[[TaskSpec], None] = preflight
) -> None:
    """A new transaction is only created when what it starts can run (*check*: as its
    owner would run it, :meth:`~zsvc.daemon.launch.Launcher.preflight`)."""
    unknown = sorted(set(services) - set(context.task_ids))
    if unknown:
        raise UnknownTask(
            f"{context.path} has no task {', '.join(map(repr, unknown))};"
            f" its tasks: {', '.join(context.task_ids)}"
        )
    for spec in chosen_specs(context, services):
        check(spec)


def check_id(transaction: str) -> None:
    if not is_valid_id(transaction):
        raise BadRequest(f"invalid transaction id {transaction!r}: use 1 to 64 of [A-Za-z0-9_-]")


def may_replace(existing: TransactionRecord, text: str) -> bool:
    """Whether a start with context *text* replaces *existing* (False: it is the same).

    A transaction running with another context is refused: its tasks would
    not match the table. When nothing runs, the new context replaces the old
    one (a corrected file).
    """
    if existing.context_text == text:
        return False
    if any(task.is_up for task in existing.tasks.values()):
        raise ZsvcError(
            f"transaction {existing.id} is running with another context"
            f" ({existing.context.path}); stop it first",
            code=ErrorCode.EXISTS,
        )
    return True


def log_entries(
    record: TransactionRecord, services: list[str], state: StateLayout
) -> list[dict[str, str]]:
    """Each chosen task's log; Thread tasks share their host's, listed once as ``@threads``."""
    chosen = choose(record, services, default=list(record.tasks.values()))
    entries: dict[str, dict[str, str]] = {}
    for task in chosen:
        name = log_name(task.spec)
        entries.setdefault(name, {"task": name, "path": str(state.task_log(record.id, name))})
    return list(entries.values())


def live_logs(records: Iterable[TransactionRecord], state: StateLayout) -> list[Path]:
    """The logs being written now: each up task's (Thread tasks share their host's, once)."""
    logs = (
        state.task_log(record.id, log_name(task.spec))
        for record in records
        for task in record.tasks.values()
        if task.is_up
    )
    return list(dict.fromkeys(logs))
