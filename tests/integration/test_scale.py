"""Scale, as correctness: many clients at once, and one big transaction, leave nothing behind.

Issue 8 part 2. The timed version, with 500 tasks, is ``bench/scale.py``;
these are the parts that must hold on every run, sized for CI on 2 cores:

* 20 ``zsvc`` CLI processes at a time start and stop 50 transactions: every
  command is answered with exit 0 (none refused as busy: commands on one
  transaction queue, others run concurrently), and afterwards the daemon's
  view, its SQLite table and the processes agree that everything stopped;
* one transaction of a few hundred command tasks starts, a ``monitor``
  subscriber receives a sample covering all of them, and it stops with no
  process, no cgroup and no daemon fd left, its bus ports released;
* two causes of failures at 500 tasks, checked directly because running 500
  Python tasks is too slow for CI: a daemon started under a soft open-files
  limit of 1024 raises it (each Python task costs the daemon 3 fds), and a
  task's sd_notify to a full queue waits without burning CPU.

Nothing is timed. Every wait is for an answer, a message or a condition, with
a deadline. The daemon's fds are counted with no client connected, before
and after, so only what the work itself left open differs.
"""

from __future__ import annotations

import contextlib
import resource
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import (
    CliResult,
    Daemon,
    TaskDef,
    wait_message,
    wait_until,
)
from zsvc.naming import instance_id
from zsvc.notify import sd_notify
from zsvc.runners.cgroup import task_groups

pytestmark = pytest.mark.integration

CLIENTS = 20
TRANSACTIONS = 50
BIG = 300
"""Tasks in the big transaction: plain ``sleep`` processes, cheap enough for CI."""
CLI_TIMEOUT = 120.0
"""Per CLI process: generous, because up to 20 of them share 2 cores with their tasks."""


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def running(procs: list[psutil.Process]) -> list[int]:
    """Pids of *procs* still alive (psutil checks the start time too: a reused pid is not)."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def table_rows(state_dir: Path) -> dict[tuple[str, str], tuple[str, str, int | None]]:
    """(transaction, task) → (state, sub_state, pid) as the daemon's SQLite table holds them."""
    uri = f"file:{state_dir / 'zsvc.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10.0) as db:
        rows = db.execute("SELECT transaction_id, task_id, state, sub_state, pid FROM tasks")
        return {(tx, task): (state, sub, pid) for tx, task, state, sub, pid in rows}


def assert_table_agrees(daemon: Daemon, view: dict[str, Any]) -> None:
    """The daemon's answer and what it committed say the same, task by task."""
    answered = {
        (record["transaction"], task["id"]): (task["state"], task["sub_state"], task["pid"])
        for record in view["transactions"]
        for task in record["tasks"]
    }
    assert table_rows(daemon.state) == answered


def baseline_fds(daemon: Daemon) -> int:
    """The daemon's fd count at rest (fixture start-up done, no client connected)."""
    pid = daemon.pid()
    first = open_fds(pid)
    # Settled means: the same count twice in a row, within a bound.
    return wait_until(lambda: open_fds(pid) == first and first, 5.0, "daemon fds settle")


def port_free(port: int) -> bool:
    """Whether a listener could bind *port* on loopback (nobody is listening on it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def context_ports(path: Path) -> list[int]:
    text = path.read_text()
    return [int(part.split("<", 1)[0]) for part in text.split("tcp://127.0.0.1:")[1:]]


def test_twenty_cli_clients_start_and_stop_fifty_transactions(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    context = make_context(
        [TaskDef(name, command="sleep 600", location=None) for name in ("a", "b")]
    )
    fds = baseline_fds(daemon)
    token = secrets.token_hex(4)  # unit names are per machine: unique among test runs
    ids = [f"SCALE{token}{number:02d}" for number in range(TRANSACTIONS)]
    seen: list[psutil.Process] = []
    lock = threading.Lock()

    def start_check_stop(tx: str) -> list[tuple[str, CliResult]]:
        answers = [(f"start {tx}", daemon.cli("start", "--context", str(context), tx))]
        with daemon.client(timeout=CLI_TIMEOUT) as client:  # while others start and stop
            record = client.call("status", transaction=tx)
        assert [t["state"] for t in record["tasks"]] == ["active", "active"], record
        with lock:
            seen.extend(psutil.Process(task["pid"]) for task in record["tasks"])
        answers.append((f"stop {tx}", daemon.cli("stop", tx, timeout=CLI_TIMEOUT)))
        return answers

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [answer for batch in pool.map(start_check_stop, ids) for answer in batch]
    failed = [(what, r.code, r.stderr.strip()[-300:]) for what, r in answers if r.code != 0]
    assert not failed, failed
    assert not [what for what, r in answers if "busy" in (r.stdout + r.stderr).lower()]

    status = daemon.cli("status", "--json")
    assert status.code == 0, status.stderr
    view = status.json()
    assert sorted(record["transaction"] for record in view["transactions"]) == ids
    for record in view["transactions"]:
        assert record["state"] == "stopped", record
        for task in record["tasks"]:
            assert (task["state"], task["pid"], task["last_action"]) == (
                "inactive",
                None,
                "stopped",
            ), task
    assert_table_agrees(daemon, view)
    assert len({proc.pid for proc in seen}) == 2 * TRANSACTIONS
    assert not running(seen)
    wait_until(
        lambda: not task_groups(ids, instance_id(daemon.state)),
        10.0,
        "every task cgroup removed",
        daemon.log,
    )

    def forget(tx: str) -> CliResult:
        return daemon.cli("forget", tx, timeout=CLI_TIMEOUT)

    with ThreadPoolExecutor(CLIENTS) as pool:
        forgotten = list(pool.map(forget, ids))
    assert [r.code for r in forgotten] == [0] * TRANSACTIONS, [r.stderr for r in forgotten]
    assert daemon.call("status") == {"transactions": []}
    assert table_rows(daemon.state) == {}
    pid = daemon.pid()
    wait_until(lambda: open_fds(pid) <= fds, 10.0, f"daemon fds back to {fds}", daemon.log)
    assert all(port_free(port) for port in context_ports(context))


def test_hundreds_of_tasks_start_are_sampled_and_stop_without_leaks(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    context = make_context(
        [TaskDef(f"t{n:03d}", command="sleep 600", location=None) for n in range(BIG)]
    )
    fds = baseline_fds(daemon)
    tx = f"BIG{secrets.token_hex(4)}"  # unit names are per machine: unique among test runs
    with daemon.client(timeout=CLI_TIMEOUT) as client:
        client.call(
            "start",
            wait=CLI_TIMEOUT,
            transaction=tx,
            context_path=str(context),
            context_text=context.read_text(),
            services=[],
            block=True,
            timeout=None,
            keep_going=False,
        )
        record = client.call("status", transaction=tx)
    assert [t["state"] for t in record["tasks"]] == ["active"] * BIG
    procs = [psutil.Process(task["pid"]) for task in record["tasks"]]
    groups = task_groups([tx], instance_id(daemon.state))
    if groups:  # root: one cgroup per task, holding exactly its process
        assert sorted(pid for members in groups.values() for pid in members) == sorted(
            proc.pid for proc in procs
        )

    bus = daemon.bus("monitor")  # subscribing is what makes the daemon sample

    def covers_all(message: Any) -> bool:
        if message.action != "sample" or message.transaction != tx:
            return False
        tasks = message.content["tasks"]
        return len(tasks) == BIG and all(task["usage"] for task in tasks)

    sample = wait_message(bus, covers_all, timeout=60.0)
    pids = {task["usage"]["pid"] for task in sample.content["tasks"]}
    assert pids == {proc.pid for proc in procs}
    daemon.close_buses()

    with daemon.client(timeout=CLI_TIMEOUT) as client:
        stopped = client.call("stop", wait=CLI_TIMEOUT, transaction=tx, services=[], timeout=None)
        assert {(t["state"], t["pid"]) for t in stopped["tasks"]} == {("inactive", None)}
        assert_table_agrees(daemon, {"transactions": [stopped]})
        assert not running(procs)
        wait_until(
            lambda: not task_groups([tx], instance_id(daemon.state)),
            10.0,
            "task cgroups removed",
            daemon.log,
        )
        client.call("forget", transaction=tx)
    pid = daemon.pid()
    wait_until(lambda: open_fds(pid) <= fds, 10.0, f"daemon fds back to {fds}", daemon.log)
    # The context's bus ports were released with its last transaction (they used to stay
    # bound, two fds per context ever started, until the daemon exited).
    assert all(port_free(port) for port in context_ports(context))


def open_files_limit(pid: int) -> tuple[str, str]:
    """(soft, hard) "Max open files" of *pid*, as /proc shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError(f"no open-files limit in /proc/{pid}/limits")


def test_the_daemon_lifts_a_low_open_files_limit(daemons: Callable[..., Daemon]) -> None:
    """Debian's default soft limit (1024) would end the daemon at about 330 Python tasks.

    Each task costs the daemon fds (pidfd, two bus connections), and libzmq
    aborts the process on EMFILE; running that many hosts is too slow for CI,
    so this checks the cause: a daemon started under the low limit raises it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-files limit is {hard}: nothing to lift")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the daemon inherits it
    try:
        daemon = daemons()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    daemon_soft, daemon_hard = open_files_limit(daemon.pid())
    assert daemon_soft != "1024"
    if daemon_hard != "unlimited":
        assert daemon_soft == daemon_hard


def test_a_notification_to_a_full_queue_waits_without_spinning(tmp_path: Path) -> None:
    """sd_notify with a timeout sleeps while the manager's queue is full.

    On an unconnected datagram socket poll() says "writable" at once and
    sendto() fails with EAGAIN, so the wait was a busy loop: 500 tasks told
    to stop together spun both cores and starved the daemon (a 12 s stop).
    CPU time, not wall time, is compared: a spinning sender burns its thread's
    CPU for the whole timeout, a sleeping one almost none.
    """
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))  # never reads: its queue fills up
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
            filler.connect(str(path))
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(100_000):
                    filler.send(b"STATUS=filling")
        began = time.thread_time()
        with pytest.raises(TimeoutError):
            sd_notify("STOPPING=1", environ={"NOTIFY_SOCKET": str(path)}, timeout=1.0)
        assert time.thread_time() - began < 0.05
