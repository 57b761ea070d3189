"""The manager's answers to holes found under attack (issue 19): atomic changes, queued commands.

Driven with the fake runner of :mod:`tests.unit.fake_runner`, as the rest of
the manager's unit tests (:mod:`tests.unit.test_manager`).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import TaskDef
from tests.unit.fake_runner import HOLD
from tests.unit.test_manager import TX, Rig, key, scenario, up
from zsvc.errors import StorageError, UnknownTransaction
from zsvc.runners.base import ExitInfo
from zsvc.states import Result


def refuse_transaction_writes(rig: Rig) -> None:
    """Make SQLite refuse every change of a transaction row (as a full disk would)."""
    rig.table.db.execute(
        "CREATE TEMP TRIGGER refuse_tx BEFORE UPDATE ON main.transactions"
        " BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END"
    )


def allow_transaction_writes(rig: Rig) -> None:
    rig.table.db.execute("DROP TRIGGER temp.refuse_tx")


@scenario()
async def test_a_start_queued_behind_forget_finds_the_transaction_unknown(rig: Rig) -> None:
    """Finding 1: slow stop, then forget, then start (no context), all queued on the lock."""
    await up(rig, [TaskDef("a"), TaskDef("b")])
    rig.fake.on_stop("a", HOLD)
    stopping = rig.stopping()
    await rig.fake.stopped("a")  # the stop holds the lock while 'a' does not end
    forgetting = asyncio.create_task(rig.manager.forget(TX))
    starting = rig.starting(None)  # 'zsvc start TX': queued behind the forget
    await asyncio.sleep(0)
    rig.fake.exit(key("a"), ExitInfo(Result.SUCCESS))
    await asyncio.wait_for(stopping, 5)
    assert (await asyncio.wait_for(forgetting, 5))["forgotten"]
    with pytest.raises(UnknownTransaction):
        await asyncio.wait_for(starting, 5)
    assert rig.fake.start_count("a") == 1 and rig.fake.start_count("b") == 1  # no new launch
    assert TX not in rig.manager.transactions
    assert rig.stored_transactions() == []  # the row was not written again


@scenario()
async def test_a_stop_the_table_refuses_leaves_memory_as_the_table(rig: Rig) -> None:
    """Finding 5: a refused stop must not leave ``stopping`` set in memory."""
    await up(rig, [TaskDef("a", attrs={"restart": "always", "restart_sec": "0"})])
    refuse_transaction_writes(rig)
    with pytest.raises(StorageError):
        await rig.manager.stop(TX, [], None)
    assert rig.manager.transactions[TX].stopping is False
    assert rig.status()["state"] == "running"
    allow_transaction_writes(rig)
    assert rig.stored_transactions() == [(TX, False)]
    # The restart policy is still on: a task killed later is restarted.
    rig.fake.exit(key("a"), ExitInfo(Result.SIGNAL, signal=9))
    await rig.fake.started("a", count=2)


@scenario()
async def test_a_refused_task_change_is_undone_in_memory(rig: Rig) -> None:
    """A stop whose ``deactivating`` cannot be recorded leaves the task as the table has it."""
    await up(rig, [TaskDef("a")])
    rig.table.db.execute(
        "CREATE TEMP TRIGGER refuse_task BEFORE UPDATE ON main.tasks"
        " BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END"
    )
    with pytest.raises(StorageError):
        await rig.manager.stop(TX, ["a"], None)
    task = rig.manager.transactions[TX].tasks["a"]
    assert (task.state, task.sub_state, task.stop_requested) == ("active", "running", False)
    assert rig.stored()["a"].state == "active"
    assert rig.fake.stop_count("a") == 0  # nothing was signalled
