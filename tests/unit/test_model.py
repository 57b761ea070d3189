"""zsvc.daemon.model: transaction state derivation, row conversion, the status JSON shape."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zsvc.config.model import BusEndpoints, Context, TaskSpec
from zsvc.daemon.model import TaskRecord, TransactionRecord
from zsvc.daemon.table import Table
from zsvc.states import LastAction, Result, State, SubState, TransactionState, TriggerEvent

TASK_VIEW_KEYS = {
    "id",
    "service_name",
    "instance",
    "pid",
    "state",
    "sub_state",
    "result",
    "status_text",
    "last_action",
    "restarts",
    "since",
    "last_exit",
}
TRANSACTION_VIEW_KEYS = {
    "transaction",
    "state",
    "tasks",
    "context_id",
    "context",
    "log_name",
    "created",
    "owner",
}


def spec(task_id: str, entry: TriggerEvent = TriggerEvent.ON_START) -> TaskSpec:
    return TaskSpec(id=task_id, instance="echo.Echo", service_name=f"svc_{task_id}", entry=entry)


def context(*task_ids: str) -> Context:
    return Context(
        path=Path("/etc/zsvc/Context-Test.xml"),
        context_id="ctx-1",
        log_name="TestLog",
        endpoints=BusEndpoints(),
        tasks=tuple(spec(task_id) for task_id in task_ids),
    )


def record_with(*task_states: State, stopping: bool = False) -> TransactionRecord:
    """A transaction whose tasks are in *task_states*, in that order."""
    ids = [f"ts_{n}" for n in range(len(task_states))]
    record = TransactionRecord.new("T1", context(*ids), "<Context/>")
    for task_id, state in zip(ids, task_states, strict=True):
        record.tasks[task_id].state = state
    record.stopping = stopping
    return record


# --------------------------------------------------------------------------- transaction state

IN, AG, A, DG, F = (
    State.INACTIVE,
    State.ACTIVATING,
    State.ACTIVE,
    State.DEACTIVATING,
    State.FAILED,
)


@pytest.mark.parametrize(
    ("task_states", "expected"),
    [
        ((), TransactionState.STOPPED),
        ((IN,), TransactionState.STOPPED),
        ((IN, IN), TransactionState.STOPPED),
        ((A,), TransactionState.RUNNING),
        ((A, IN), TransactionState.RUNNING),  # a task waiting for its trigger
        ((A, A), TransactionState.RUNNING),
        ((AG,), TransactionState.STARTING),
        ((AG, A), TransactionState.STARTING),
        ((AG, F), TransactionState.STARTING),
        ((AG, DG), TransactionState.STARTING),
        ((DG,), TransactionState.STOPPING),
        ((DG, A), TransactionState.STOPPING),
        ((DG, F), TransactionState.STOPPING),
        ((F,), TransactionState.FAILED),
        ((F, IN), TransactionState.FAILED),
        ((F, A), TransactionState.DEGRADED),
        ((F, A, IN), TransactionState.DEGRADED),
    ],
)
def test_transaction_state_from_task_states(
    task_states: tuple[State, ...], expected: TransactionState
) -> None:
    """The transaction's state is derived from its tasks' states, in any order."""
    for order in itertools.permutations(task_states):
        assert record_with(*order).state is expected


@given(st.lists(st.sampled_from(list(State)), max_size=5))
def test_stopping_flag_wins(task_states: list[State]) -> None:
    """While the whole transaction is being stopped, its state is 'stopping' whatever the tasks."""
    assert record_with(*task_states, stopping=True).state is TransactionState.STOPPING


@given(st.lists(st.sampled_from(list(State)), max_size=5), st.randoms())
def test_state_does_not_depend_on_task_order(task_states: list[State], rng: Random) -> None:
    """Only the set of task states matters, not which task is in which."""
    shuffled = list(task_states)
    rng.shuffle(shuffled)
    assert record_with(*task_states).state is record_with(*shuffled).state


def test_new_transaction_waits_for_triggered_tasks() -> None:
    """Tasks with entry on_start are inactive/dead; the others inactive/waiting; order kept."""
    ctx = Context(
        path=Path("c.xml"),
        context_id="c",
        log_name="l",
        endpoints=BusEndpoints(),
        tasks=(spec("ts_1"), spec("ts_2", TriggerEvent.ON_UPDATE), spec("ts_3")),
    )
    record = TransactionRecord.new("T1", ctx, "<Context/>")
    assert list(record.tasks) == ["ts_1", "ts_2", "ts_3"]
    assert [(t.state, t.sub_state) for t in record.tasks.values()] == [
        (State.INACTIVE, SubState.DEAD),
        (State.INACTIVE, SubState.WAITING),
        (State.INACTIVE, SubState.DEAD),
    ]
    assert all(task.transaction == "T1" for task in record.tasks.values())
    assert record.state is TransactionState.STOPPED


# --------------------------------------------------------------------------- rows


def busy_task(task_id: str = "ts_1") -> TaskRecord:
    """A task with every persisted field away from its default."""
    task = TaskRecord(transaction="T1", spec=spec(task_id))
    task.state, task.sub_state, task.result = State.FAILED, SubState.FAILED, Result.EXIT_CODE
    task.pid = 77
    task.status_text = "gave up"
    task.last_action = LastAction.FAILED
    task.last_exit = "status=3"
    task.restarts = 4
    task.since = 1234.5
    task.runner_data = {"cgroup": "/x", "n": [1]}
    return task


def _fields(task: TaskRecord) -> tuple[object, ...]:
    return (
        task.state,
        task.sub_state,
        task.result,
        task.pid,
        task.status_text,
        task.last_action,
        task.last_exit,
        task.restarts,
        task.since,
        task.runner_data,
    )


def test_task_row_round_trip() -> None:
    """load_row(to_row()) restores every persisted field, as enums."""
    task = busy_task()
    row = task.to_row()
    assert (row.transaction_id, row.task_id) == ("T1", "ts_1")
    fresh = TaskRecord(transaction="T1", spec=spec("ts_1"))
    fresh.load_row(row)
    assert _fields(fresh) == _fields(task)
    assert type(fresh.state) is State and type(fresh.sub_state) is SubState
    assert type(fresh.result) is Result and type(fresh.last_action) is LastAction
    assert fresh.runner_data is not task.runner_data
    assert fresh.starts == 5


def test_task_row_round_trip_without_last_action() -> None:
    """A task that never ran stores last_action '' and loads it back as None."""
    task = TaskRecord(transaction="T1", spec=spec("ts_1"))
    row = task.to_row()
    assert row.last_action == ""
    fresh = TaskRecord(transaction="T1", spec=spec("ts_1"))
    fresh.load_row(row)
    assert fresh.last_action is None
    assert fresh.starts == 0
    assert _fields(fresh) == _fields(task)


def test_rows_round_trip_through_sqlite(tmp_path: Path) -> None:
    """A transaction and its tasks saved to a real Table load back into equal records."""
    record = record_with(State.ACTIVE, State.INACTIVE)
    record.tasks["ts_0"] = busy_task("ts_0")
    table = Table(tmp_path / "zsvc.db")
    try:
        table.save_transaction(record.to_row())
        for task in record.tasks.values():
            table.save_task(task.to_row())
        assert list(table.transactions()) == [record.to_row()]
        for row in table.tasks("T1"):
            fresh = TaskRecord(transaction="T1", spec=spec(row.task_id))
            fresh.load_row(row)
            assert _fields(fresh) == _fields(record.tasks[row.task_id])
    finally:
        table.close()


def test_change_state_moves_since_only_on_change() -> None:
    """since changes when (state, sub_state) changes, not when only a field is set."""
    task = TaskRecord(transaction="T1", spec=spec("ts_1"), since=1.0)
    task.state, task.sub_state = State.ACTIVE, SubState.RUNNING
    assert task.change_state(State.ACTIVE, SubState.RUNNING, action=LastAction.UPDATED)
    assert task.since == 1.0 and task.last_action is LastAction.UPDATED
    assert task.change_state(State.DEACTIVATING, SubState.STOP_SIGTERM)
    assert task.since > 1.0
    assert task.result is Result.SUCCESS and task.last_action is LastAction.UPDATED


# --------------------------------------------------------------------------- views


def test_task_view_has_exactly_the_documented_keys() -> None:
    """The task view is the documented, JSON-ready shape, with plain strings."""
    view = busy_task().view()
    assert set(view) == TASK_VIEW_KEYS
    assert json.loads(json.dumps(view)) == view
    assert view["id"] == "ts_1"
    assert view["service_name"] == "svc_ts_1"
    assert view["instance"] == "echo.Echo"
    assert (view["state"], view["sub_state"], view["result"]) == ("failed", "failed", "exit-code")
    assert type(view["state"]) is str and type(view["last_action"]) is str
    assert view["last_action"] == "failed"
    assert (view["pid"], view["restarts"], view["since"]) == (77, 4, 1234.5)


def test_task_view_of_a_task_that_never_ran() -> None:
    """A fresh task shows no pid and last_action null."""
    view = TaskRecord(transaction="T1", spec=spec("ts_1")).view()
    assert set(view) == TASK_VIEW_KEYS
    assert view["pid"] is None
    assert view["last_action"] is None
    assert (view["state"], view["sub_state"], view["result"]) == ("inactive", "dead", "success")


def test_transaction_view_has_exactly_the_documented_keys() -> None:
    """The transaction view has the documented keys; tasks in context order, each a task view."""
    record = record_with(State.ACTIVE, State.FAILED)
    record.created = 42.0
    view = record.view()
    assert set(view) == TRANSACTION_VIEW_KEYS
    assert json.loads(json.dumps(view)) == view
    assert view["transaction"] == "T1"
    assert view["state"] == "degraded" and type(view["state"]) is str
    assert view["context_id"] == "ctx-1"
    assert view["context"] == "/etc/zsvc/Context-Test.xml"
    assert view["log_name"] == "TestLog"
    assert view["created"] == 42.0
    assert view["owner"] == "root"  # a record made without an owner: root's, as before owners
    assert [task["id"] for task in view["tasks"]] == ["ts_0", "ts_1"]
    assert all(set(task) == TASK_VIEW_KEYS for task in view["tasks"])


def test_transaction_row() -> None:
    """The transaction row carries the context path as text and the stopping flag."""
    record = record_with(State.ACTIVE, stopping=True)
    row = record.to_row()
    assert (row.id, row.context_path, row.context_text, row.stopping) == (
        "T1",
        "/etc/zsvc/Context-Test.xml",
        "<Context/>",
        True,
    )
    assert row.created == record.created
