"""The transaction table's persistence: SQLite in the state directory.

Durability policy: WAL journal, ``synchronous=NORMAL``, one transaction per
change, committed *before* the change is acknowledged to anyone (a control
reply or a bus message). A committed change survives a crash of the daemon
(SIGKILL included); it may be lost only if the whole machine loses power
before the WAL is checkpointed, which ``--durable`` (``synchronous=FULL``)
rules out at the cost of an fsync per change.

The table holds facts, not objects: rows of plain values. The daemon's
:mod:`zsvc.daemon.manager` owns the in-memory model and calls :meth:`save_task`
and friends whenever it changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsvc.errors import StorageError

SCHEMA_VERSION = 2
"""1: the first table; 2: ``transactions.owner`` (issue 15), rows of 1 are root's."""
ROOT_OWNER = {"uid": 0, "gid": 0, "name": "root", "key": None}
"""The owner of a row made before owners existed (the daemon ran every task as root then)."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    id TEXT PRIMARY KEY,
    context_path TEXT NOT NULL,
    context_text TEXT NOT NULL,
    stopping INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tasks (
    transaction_id TEXT NOT NULL REFERENCES transactions(id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    sub_state TEXT NOT NULL,
    result TEXT NOT NULL,
    pid INTEGER,
    status_text TEXT NOT NULL DEFAULT '',
    last_action TEXT NOT NULL DEFAULT '',
    last_exit TEXT NOT NULL DEFAULT '',
    restarts INTEGER NOT NULL DEFAULT 0,
    since REAL NOT NULL,
    runner_data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (transaction_id, task_id)
);
"""


def _restrict(path: Path, mode: int, group: int | None, create: bool = True) -> None:
    """Give the table's file *mode* (and *group*) before SQLite opens it, whatever the umask.

    The table holds every stored context, command lines and their arguments
    included: a database made under umask 0022 was readable by every user.
    SQLite gives its WAL and shared-memory files the database's mode. The
    file is opened without following a symlink, and changed through that fd.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, mode)
    except IsADirectoryError:
        return  # not a database: SQLite refuses it with its own words
    try:
        if group is not None and os.fstat(fd).st_gid != group:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a table of schema *version* (an older zsvc's) to :data:`SCHEMA_VERSION`.

    Version 1 had no owners: its transactions were made by members of group zsvc and
    run as root, so root owns them (only root, or a grant, may then stop them).
    """
    if version == 1:
        db.execute("ALTER TABLE transactions ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        db.execute("UPDATE transactions SET owner = ?", (json.dumps(ROOT_OWNER),))


@dataclass(frozen=True)
class TransactionRow:
    id: str
    context_path: str
    context_text: str
    stopping: bool
    created: float
    owner: dict[str, Any] = field(default_factory=lambda: dict(ROOT_OWNER))
    """The owner's principal as JSON (:meth:`zsvc.daemon.access.Principal.to_json`)."""


@dataclass(frozen=True)
class TaskRow:
    transaction_id: str
    task_id: str
    state: str
    sub_state: str
    result: str
    pid: int | None
    status_text: str
    last_action: str
    last_exit: str
    restarts: int
    since: float
    runner_data: dict[str, Any]


class Table:
    """Read and write the transaction table; every write is its own committed transaction."""

    def __init__(
        self, path: Path, durable: bool = False, mode: int = 0o600, group: int | None = None
    ):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _restrict(path, mode, group)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            for suffix in ("-wal", "-shm"):  # made by SQLite with the database's mode,
                with contextlib.suppress(FileNotFoundError):  # or left by an older zsvc
                    _restrict(path.with_name(path.name + suffix), mode, group, create=False)
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.execute("PRAGMA cache_size=-512")  # KiB: the table is small
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{path}: schema version {version} is newer than this zsvc ({SCHEMA_VERSION})"
                )
            with self.db:  # the migration and its version at once, or neither
                self.db.execute("BEGIN IMMEDIATE")
                _migrate(self.db, version)
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the transaction table {path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write the transaction table {self.path}: {exc}") from exc

    def save_transaction(self, row: TransactionRow) -> None:
        self._write(
            "INSERT INTO transactions (id, context_path, context_text, stopping, created, owner)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
            " context_path=excluded.context_path, context_text=excluded.context_text,"
            " stopping=excluded.stopping",
            (
                row.id,
                row.context_path,
                row.context_text,
                int(row.stopping),
                row.created,
                json.dumps(row.owner),
            ),
        )

    def save_task(self, row: TaskRow) -> None:
        self._write(
            "INSERT INTO tasks (transaction_id, task_id, state, sub_state, result, pid,"
            " status_text, last_action, last_exit, restarts, since, runner_data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(transaction_id, task_id) DO UPDATE SET state=excluded.state,"
            " sub_state=excluded.sub_state, result=excluded.result, pid=excluded.pid,"
            " status_text=excluded.status_text, last_action=excluded.last_action,"
            " last_exit=excluded.last_exit, restarts=excluded.restarts, since=excluded.since,"
            " runner_data=excluded.runner_data",
            (
                row.transaction_id,
                row.task_id,
                row.state,
                row.sub_state,
                row.result,
                row.pid,
                row.status_text,
                row.last_action,
                row.last_exit,
                row.restarts,
                row.since,
                json.dumps(row.runner_data),
            ),
        )

    def delete_transaction(self, transaction_id: str) -> None:
        self._write("DELETE FROM transactions WHERE id = ?", (transaction_id,))

    def transactions(self) -> Iterator[TransactionRow]:
        for values in self.db.execute(
            "SELECT id, context_path, context_text, stopping, created, owner FROM transactions"
            " ORDER BY created"
        ):
            owner = json.loads(values[5]) if values[5] else dict(ROOT_OWNER)
            yield TransactionRow(values[0], values[1], values[2], bool(values[3]), values[4], owner)

    def tasks(self, transaction_id: str) -> Iterator[TaskRow]:
        for values in self.db.execute(
            "SELECT transaction_id, task_id, state, sub_state, result, pid, status_text,"
            " last_action, last_exit, restarts, since, runner_data FROM tasks"
            " WHERE transaction_id = ?",
            (transaction_id,),
        ):
            yield TaskRow(*values[:11], runner_data=json.loads(values[11] or "{}"))
