"""Tasks get the open-files limit the daemon was started with, not the one it raised.

The daemon lifts its own soft ``RLIMIT_NOFILE`` to the hard limit (it holds
fds for hundreds of tasks); a task must not inherit that, as a program using
select() breaks on an fd of 1024 or more (systemd gives its services a soft
1024 whatever its own limit). Each way the local runner starts a first
process is checked on real processes: a command task (through the cgroup
wrapper as root, or plain), a Python task forked by the zygote, and one
executed with ``ZSVC_ZYGOTE=0``. The reload (re-exec) case is in
``test_reload.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import (
    LOW_FD_LIMIT,
    Daemon,
    TaskDef,
    fd_limit,
    soft_fd_limit,
    zygote_of,
)

pytestmark = pytest.mark.integration

TASKS = [TaskDef("py"), TaskDef("cmd", command="sleep 3600", location=None)]
"""A Python task (the Sleeper host) and a command task."""


def assert_tasks_get_the_original_limit(daemon: Daemon, transaction: str, hard: int) -> None:
    """Every task of *transaction* runs with the low soft limit; the daemon's is raised."""
    daemon_soft, daemon_hard = fd_limit(daemon.pid())
    assert daemon_hard == hard
    assert daemon_soft > LOW_FD_LIMIT, "the daemon raised its own limit"
    tasks = daemon.call("status", transaction=transaction)["tasks"]
    assert {t["id"]: t["state"] for t in tasks} == {"py": "active", "cmd": "active"}
    for task in tasks:
        assert fd_limit(task["pid"]) == (LOW_FD_LIMIT, hard), task["id"]


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="zygote"),
        pytest.param({"ZSVC_ZYGOTE": "0"}, id="exec"),
        pytest.param({"ZSVC_ZYGOTE": "0", "ZSVC_CGROUPS": "0"}, id="exec-no-cgroup"),
    ],
)
def test_tasks_get_the_daemons_original_soft_limit(
    env: dict[str, str],
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with soft_fd_limit() as hard:
        daemon = daemons()
    context = make_context(TASKS)
    assert daemon.cli("start", "--context", str(context), "LIMITS").code == 0
    assert_tasks_get_the_original_limit(daemon, "LIMITS", hard)

    zygote = zygote_of(daemon.pid())
    python_task = next(
        t["pid"] for t in daemon.call("status", transaction="LIMITS")["tasks"] if t["id"] == "py"
    )
    cmdline = psutil.Process(python_task).cmdline()
    if env.get("ZSVC_ZYGOTE") == "0":
        assert zygote is None
        assert cmdline[-2:] == ["-m", "zsvc.task"], "the task host was executed"
    else:
        assert zygote is not None
        assert fd_limit(zygote.pid) == (LOW_FD_LIMIT, hard)
        assert "zsvc.runners.zygote" in cmdline, "the task was forked by the zygote"
    assert daemon.cli("stop", "LIMITS").code == 0


def test_a_daemon_that_raised_nothing_changes_nothing(
    daemons: Callable[..., Daemon], make_context: Callable[..., Path]
) -> None:
    """Started with soft = hard, the daemon has no limit to give back: tasks inherit its own."""
    soft, hard = fd_limit(psutil.Process().pid)
    if soft != hard:
        pytest.skip("this test process's soft open-files limit is below its hard one")
    daemon = daemons()
    context = make_context(TASKS)
    assert daemon.cli("start", "--context", str(context), "SAME").code == 0
    assert fd_limit(daemon.pid()) == (soft, hard)
    for task in daemon.call("status", transaction="SAME")["tasks"]:
        assert fd_limit(task["pid"]) == (soft, hard), task["id"]
    assert daemon.cli("stop", "SAME").code == 0
