"""Issue 19, finding 14: a task flooding ``STATUS=`` no longer holds the daemon.

A real daemon and a real task that sends tens of thousands of status lines as
fast as the daemon takes them. What is asserted is behaviour, not timing: the
daemon keeps answering other clients during the flood (each call bounded by a
generous timeout), the status shown at the end is the last line sent, and the
task's row was written to SQLite a few times, not once per line (counted by
a trigger the test adds to the daemon's own table).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import Daemon, TaskDef, wait_until

LINES = 50_000
"""Status lines the task sends: before the fix, one committed write each."""

FLOOD = """\
import os, signal, socket, sys
go, done = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.connect(os.environ["NOTIFY_SOCKET"])
sock.send(b"READY=1")
with open(go) as fifo:  # the test opens it once it counts the table's writes
    fifo.read()
for number in range(int(sys.argv[3])):
    sock.send(b"STATUS=line %d" % number)
sock.send(b"STATUS=the last line")
open(done, "w").close()
signal.pause()  # until the end of the test: a status line belongs to a running task
"""

COUNT_WRITES = """
CREATE TABLE IF NOT EXISTS test_flood_writes (n INTEGER);
CREATE TRIGGER IF NOT EXISTS test_flood_updates AFTER UPDATE ON tasks
BEGIN INSERT INTO test_flood_writes VALUES (1); END;
"""

PING_TIMEOUT = 10.0
"""Generous: before the fix a ping waited up to 1.26 s behind a 29k/s flood."""


def _writes(state: Path) -> int:
    with sqlite3.connect(state / "zsvc.sqlite3", timeout=10.0) as db:
        return int(db.execute("SELECT count(*) FROM test_flood_writes").fetchone()[0])


def _writer(fifo: Path) -> int | None:
    """The FIFO opened for writing once its reader (the task) waits on it; else None."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        return None


def test_a_status_flood_is_coalesced_and_the_daemon_keeps_answering(
    daemon: Daemon, make_context: Callable[..., Path], workdir: Path
) -> None:
    program, go, done = workdir / "flood.py", workdir / "go", workdir / "done"
    program.write_text(FLOOD)
    os.mkfifo(go)
    command = f"python3 {program} {go} {done} {LINES}"
    context = make_context([TaskDef("flood", command=command, notify=True, location=None)])
    daemon.call(
        "start", transaction="FLOOD", context_path=str(context), context_text=context.read_text()
    )
    with sqlite3.connect(daemon.state / "zsvc.sqlite3", timeout=10.0) as db:
        db.executescript(COUNT_WRITES)

    fifo = wait_until(lambda: _writer(go), 20.0, "the task waiting to flood", daemon.log)
    os.close(fifo)  # the task reads the end of the FIFO: its flood begins
    pings = 0
    with daemon.client(timeout=PING_TIMEOUT) as client:
        deadline = time.monotonic() + 120.0
        while not done.exists() and time.monotonic() < deadline:
            assert client.call("ping")["pid"] == daemon.pid()
            pings += 1
    assert done.exists(), f"the task did not finish its flood:\n{daemon.log()[-4000:]}"

    def last_line() -> bool:
        task = daemon.call("status", transaction="FLOOD")["tasks"][0]
        return task["status_text"] == "the last line"

    wait_until(last_line, 20.0, "the last status line shown", daemon.log)
    writes = _writes(daemon.state)
    print(f"{LINES} status lines: {writes} writes of the task's row, {pings} pings answered")
    assert pings >= 1
    assert writes < LINES // 10, f"{writes} writes for {LINES} status lines"
    assert "beyond its budget" in daemon.log()
