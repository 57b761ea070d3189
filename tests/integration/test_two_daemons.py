"""Two daemons on one machine (separate runtime and state dirs) never touch each other's tasks,
even when their transaction and task ids are the same (issue 19, finding 8).

Unit and cgroup names are machine-global; transaction ids are only unique in one daemon's
table. Before names carried the daemon's instance (a hash of its state dir), a daemon that
restarted and found its own run gone killed what it found in the cgroup of that name: the
other daemon's task, started meanwhile under the same name.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, TaskDef, pid_alive, wait_until
from zsvc.naming import instance_id, instance_slice
from zsvc.runners.cgroup import cgroup_of, find_hierarchy

pytestmark = pytest.mark.integration

CGROUPS = find_hierarchy() if os.environ.get("ZSVC_CGROUPS", "1") != "0" else None
needs_cgroup2 = pytest.mark.skipif(
    CGROUPS is None,
    reason="no writable cgroup2 hierarchy (or ZSVC_CGROUPS=0): the daemons name no cgroups",
)

TX, TASK = "SAME", "t0"


def _pair(daemons: Callable[..., Daemon], workdir: Path) -> tuple[Daemon, Daemon]:
    """Two daemons, each in its own directory (runtime and state dirs apart)."""
    for name in ("a", "b"):
        (workdir / name).mkdir()
    return daemons(root=workdir / "a"), daemons(root=workdir / "b")


def _start(daemon: Daemon, context: Path) -> int:
    """Start transaction SAME on *daemon*; the pid of its task t0, once active."""
    started = daemon.cli("start", "--context", str(context), TX)
    assert started.code == 0, started.stderr
    return _active_pid(daemon)


def _task(daemon: Daemon) -> dict:
    return daemon.call("status", transaction=TX)["tasks"][0]


def _active_pid(daemon: Daemon) -> int:
    task = wait_until(
        lambda: (t := _task(daemon))["state"] == "active" and t["pid"] and t,
        what="t0 active",
        log=daemon.log,
    )
    return int(task["pid"])


def _restart(daemons: Callable[..., Daemon], daemon: Daemon) -> Daemon:
    """The same daemon (same directories) started again after a SIGKILL."""
    return daemons(root=daemon.root)


def _assert_in_own_cgroup(daemon: Daemon, pid: int) -> None:
    group = cgroup_of(pid) or ""
    assert f"/{instance_slice(instance_id(daemon.state))}/" in group, group


@needs_cgroup2
def test_a_restarted_daemon_does_not_kill_the_others_task_of_the_same_name(
    daemons, make_context, workdir: Path
) -> None:
    """A's run of SAME/t0 dies while A is down; B starts SAME/t0 meanwhile; A restarts,
    finds its run gone and kills what its run left behind: nothing of B's."""
    first, second = _pair(daemons, workdir)
    gone = _start(first, make_context([TaskDef(TASK)]))
    first.kill9()
    os.kill(gone, signal.SIGKILL)  # A's task ends while A is down
    wait_until(lambda: not pid_alive(gone), timeout=10.0, what=f"{gone} gone")
    survivor = _start(second, make_context([TaskDef(TASK)]))  # its own bus ports
    _assert_in_own_cgroup(second, survivor)

    restarted = _restart(daemons, first)
    task = wait_until(
        lambda: (t := _task(restarted))["state"] != "active" and t,
        what="A's run found gone",
        log=restarted.log,
    )
    assert task["pid"] != survivor
    assert pid_alive(survivor), f"B's task {survivor} was killed:\n{restarted.log()}"
    assert _task(second)["pid"] == survivor and _task(second)["state"] == "active"


def test_both_tasks_survive_a_restart_and_each_daemon_shows_its_own(
    daemons, make_context, workdir: Path
) -> None:
    """SAME/t0 on both; each daemon SIGKILLed and started again in turn: both tasks run
    on with the same pids, each daemon adopts and shows only its own."""
    first, second = _pair(daemons, workdir)
    mine = _start(first, make_context([TaskDef(TASK)]))
    theirs = _start(second, make_context([TaskDef(TASK)]))  # its own bus ports
    assert mine != theirs
    if CGROUPS is not None:
        _assert_in_own_cgroup(first, mine)
        _assert_in_own_cgroup(second, theirs)

    first.kill9()
    first = _restart(daemons, first)
    assert _active_pid(first) == mine
    second.kill9()
    second = _restart(daemons, second)
    assert _active_pid(second) == theirs
    assert pid_alive(mine) and pid_alive(theirs)
    for daemon, own in ((first, mine), (second, theirs)):
        records = daemon.call("status")["transactions"]
        assert [r["transaction"] for r in records] == [TX]
        assert [t["pid"] for t in records[0]["tasks"]] == [own]

    stopped = first.cli("stop", TX)
    assert stopped.code == 0, stopped.stderr
    wait_until(lambda: not pid_alive(mine), timeout=10.0, what=f"{mine} stopped")
    assert pid_alive(theirs) and _task(second)["state"] == "active"
