"""zsvc.daemon.table: the SQLite transaction table, its durability and its errors."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import zsvc
from zsvc.daemon.table import SCHEMA_VERSION, Table, TaskRow, TransactionRow
from zsvc.errors import ErrorCode, StorageError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "zsvc.db"


@pytest.fixture
def table(db_path: Path) -> Iterator[Table]:
    table = Table(db_path)
    yield table
    table.close()


def transaction(id: str = "T1", created: float = 100.0, **changes: object) -> TransactionRow:
    row = TransactionRow(
        id=id,
        context_path="/etc/zsvc/Context-Echo.xml",
        context_text="<Context>ü</Context>",
        stopping=False,
        created=created,
    )
    return dataclasses.replace(row, **changes)


def task(task_id: str = "ts_1", transaction_id: str = "T1", **changes: object) -> TaskRow:
    row = TaskRow(
        transaction_id=transaction_id,
        task_id=task_id,
        state="active",
        sub_state="running",
        result="success",
        pid=4242,
        status_text="serving",
        last_action="started",
        last_exit="",
        restarts=2,
        since=123.5,
        runner_data={"cgroup": "/sys/fs/cgroup/x", "nested": {"n": [1, 2]}},
    )
    return dataclasses.replace(row, **changes)


# --------------------------------------------------------------------------- round trips


def test_transaction_round_trip(table: Table) -> None:
    """A saved transaction reads back equal, in creation order."""
    rows = [transaction("T2", created=200.0, stopping=True), transaction("T1", created=100.0)]
    for row in rows:
        table.save_transaction(row)
    assert list(table.transactions()) == sorted(rows, key=lambda row: row.created)


def test_task_round_trip(table: Table) -> None:
    """Saved tasks read back equal, runner_data (a JSON dict) and a missing pid included."""
    table.save_transaction(transaction())
    rows = [task("ts_1"), task("ts_2", pid=None, runner_data={}, last_action="")]
    for row in rows:
        table.save_task(row)
    assert sorted(table.tasks("T1"), key=lambda row: row.task_id) == rows
    assert list(table.tasks("other")) == []


def test_transaction_upsert_updates_but_keeps_created(table: Table) -> None:
    """Saving a known transaction updates it in place; its creation time is kept."""
    table.save_transaction(transaction())
    table.save_transaction(transaction(created=999.0, stopping=True, context_text="<Context/>"))
    assert list(table.transactions()) == [
        transaction(created=100.0, stopping=True, context_text="<Context/>")
    ]


def test_task_upsert_updates(table: Table) -> None:
    """Saving a known task replaces every field; there is still one row."""
    table.save_transaction(transaction())
    table.save_task(task())
    changed = task(
        state="failed",
        sub_state="failed",
        result="exit-code",
        pid=None,
        status_text="",
        last_action="failed",
        last_exit="status=3",
        restarts=3,
        since=200.0,
        runner_data={"x": 1},
    )
    table.save_task(changed)
    assert list(table.tasks("T1")) == [changed]


def test_delete_cascades_to_tasks(table: Table) -> None:
    """Deleting a transaction deletes its tasks and nothing else."""
    for name in ("T1", "T2"):
        table.save_transaction(transaction(name))
        table.save_task(task("ts_1", transaction_id=name))
        table.save_task(task("ts_2", transaction_id=name))
    table.delete_transaction("T1")
    assert [row.id for row in table.transactions()] == ["T2"]
    assert list(table.tasks("T1")) == []
    assert len(list(table.tasks("T2"))) == 2
    count = table.db.execute("SELECT COUNT(*) FROM tasks WHERE transaction_id = 'T1'").fetchone()
    assert count == (0,)


def test_delete_of_unknown_transaction_is_harmless(table: Table) -> None:
    """Deleting a transaction that does not exist changes nothing and raises nothing."""
    table.save_transaction(transaction())
    table.delete_transaction("nope")
    assert len(list(table.transactions())) == 1


def test_task_of_unknown_transaction_is_refused(table: Table) -> None:
    """Foreign keys are enforced: a task needs its transaction."""
    with pytest.raises(StorageError, match="cannot write the transaction table"):
        table.save_task(task(transaction_id="ghost"))


# --------------------------------------------------------------------------- durability


def test_committed_before_save_returns(db_path: Path, table: Table) -> None:
    """A save is committed when it returns: another connection sees it at once, and the
    writer holds no open transaction (nothing waits for a later commit)."""
    table.save_transaction(transaction())
    table.save_task(task())
    assert not table.db.in_transaction

    other = sqlite3.connect(db_path)
    try:
        assert other.execute("SELECT id FROM transactions").fetchall() == [("T1",)]
        assert other.execute("SELECT task_id, state FROM tasks").fetchall() == [("ts_1", "active")]
    finally:
        other.close()

    second = Table(db_path)
    try:
        assert list(second.transactions()) == [transaction()]
        table.save_task(task(state="deactivating"))
        assert [row.state for row in second.tasks("T1")] == ["deactivating"]
    finally:
        second.close()


def test_committed_change_survives_sigkill(db_path: Path) -> None:
    """A change saved by a process that is then SIGKILLed is in the table afterwards."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from zsvc.daemon.table import Table, TransactionRow
        table = Table(Path({str(db_path)!r}))
        table.save_transaction(TransactionRow("T1", "p", "text", False, 1.0))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(zsvc.__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=30)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    reopened = Table(db_path)
    try:
        assert list(reopened.transactions()) == [TransactionRow("T1", "p", "text", False, 1.0)]
    finally:
        reopened.close()


@pytest.mark.parametrize(("durable", "level"), [(False, 1), (True, 2)])
def test_journal_and_sync_modes(db_path: Path, durable: bool, level: int) -> None:
    """WAL journal; synchronous NORMAL by default, FULL with durable=True; schema versioned."""
    table = Table(db_path, durable=durable)
    try:
        assert table.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert table.db.execute("PRAGMA synchronous").fetchone() == (level,)
        assert table.db.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert table.db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        table.close()


def test_creates_the_state_directory(tmp_path: Path) -> None:
    """Missing parent directories are created."""
    path = tmp_path / "a" / "b" / "zsvc.db"
    Table(path).close()
    assert path.is_file()


# --------------------------------------------------------------------------- errors


def _open_error(path: Path) -> StorageError:
    with pytest.raises(StorageError) as info:
        Table(path)
    error = info.value
    assert error.code == ErrorCode.STORAGE
    assert str(path) in error.message
    return error


def test_database_path_is_a_directory(tmp_path: Path) -> None:
    """A path that cannot be opened as a file gives StorageError naming the path.

    (Tests run as root, where a 0o500 directory does not stop writes, so an
    unopenable path stands in for a read-only state directory.)
    """
    path = tmp_path / "zsvc.db"
    path.mkdir()
    error = _open_error(path)
    assert error.message.startswith(f"cannot open the transaction table {path}:")
    assert isinstance(error.__cause__, sqlite3.Error)


def test_state_directory_under_a_regular_file(tmp_path: Path) -> None:
    """A state directory that cannot be created gives StorageError, not OSError."""
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "state" / "zsvc.db"
    error = _open_error(path)
    assert error.message.startswith(f"cannot open the transaction table {path}:")
    assert isinstance(error.__cause__, OSError)


def test_file_is_not_sqlite(tmp_path: Path) -> None:
    """A database file full of garbage gives StorageError saying it is not a database."""
    path = tmp_path / "zsvc.db"
    garbage = b"this is not a database\n" * 200
    path.write_bytes(garbage)
    error = _open_error(path)
    assert "not a database" in error.message
    assert path.read_bytes() == garbage


def test_newer_schema_is_refused(db_path: Path) -> None:
    """A table written by a newer zsvc is refused rather than misread."""
    Table(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    error = _open_error(db_path)
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in error.message


def test_write_after_close_is_a_storage_error(db_path: Path) -> None:
    """A failed write raises StorageError (the caller then acknowledges nothing)."""
    table = Table(db_path)
    table.close()
    with pytest.raises(StorageError, match="cannot write the transaction table"):
        table.save_transaction(transaction())


# --------------------------------------------------------------------------- owners (issue 15)

ALICE = {"uid": 1001, "gid": 1001, "name": "alice", "key": None}

VERSION_1 = """
CREATE TABLE transactions (id TEXT PRIMARY KEY, context_path TEXT NOT NULL,
    context_text TEXT NOT NULL, stopping INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE tasks (transaction_id TEXT NOT NULL REFERENCES transactions(id) ON DELETE CASCADE,
    task_id TEXT NOT NULL, state TEXT NOT NULL, sub_state TEXT NOT NULL, result TEXT NOT NULL,
    pid INTEGER, status_text TEXT NOT NULL DEFAULT '', last_action TEXT NOT NULL DEFAULT '',
    last_exit TEXT NOT NULL DEFAULT '', restarts INTEGER NOT NULL DEFAULT 0,
    since REAL NOT NULL, runner_data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (transaction_id, task_id));
INSERT INTO transactions VALUES ('OLD', '/etc/zsvc/c.xml', '<Context/>', 0, 5.0);
INSERT INTO tasks VALUES ('OLD', 'ts_1', 'active', 'running', 'success', 77, '', '', '', 0,
    6.0, '{}');
PRAGMA user_version=1;
"""
"""A table as zsvc wrote it before owners (schema version 1), with one running task."""


def test_an_owner_round_trips_and_an_update_keeps_it(table: Table) -> None:
    table.save_transaction(transaction(owner=ALICE))
    table.save_transaction(transaction(stopping=True))  # an upsert never changes the owner
    [row] = table.transactions()
    assert (row.owner, row.stopping) == (ALICE, True)


def test_a_version_1_table_is_migrated_and_its_transactions_are_roots(db_path: Path) -> None:
    """An upgrade keeps every row; what was made before owners is root's (it ran as root)."""
    db_path.parent.mkdir(parents=True)
    old = sqlite3.connect(db_path)
    old.executescript(VERSION_1)
    old.close()
    table = Table(db_path)
    try:
        [row] = table.transactions()
        assert (row.id, row.owner) == ("OLD", {"uid": 0, "gid": 0, "name": "root", "key": None})
        assert [task.pid for task in table.tasks("OLD")] == [77]
        assert table.db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (2,)
        table.save_transaction(transaction("NEW", owner=ALICE))
        assert [row.owner["name"] for row in table.transactions()] == ["root", "alice"]
    finally:
        table.close()
    Table(db_path).close()  # opening a migrated table again changes nothing
