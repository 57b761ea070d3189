"""The zygote heals, on a real daemon (issue 19, finding 9).

Before: a 3 MB ``<configuration>`` passed ``zsvc validate``; at start the zygote's
socket refused the packet (EMSGSIZE), the zygote was given up for good and the
exec that replaced it failed too (E2BIG): every later Python task was executed
until the daemon restarted. Now the loader refuses such a configuration, and a
zygote that dies is replaced (after a backoff: 0.1 s for the first death).

A forked task is told from an executed one by its command line: it keeps the
zygote's (``-m zsvc.runners.zygote``), an executed one is ``-m zsvc.task``. Its
parent is the daemon either way: the zygote double-forks so that the daemon,
a child subreaper, reaps it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Daemon, TaskDef, wait_until, zygote_of
from zsvc.hostwire import MAX_CONFIGURATION_BYTES

pytestmark = pytest.mark.integration

NEW_ZYGOTE_WAIT = 20.0
"""Bound on the wait for a new zygote (it comes 0.1 s after the death, plus its start)."""


def test_a_killed_zygote_is_replaced_and_forks_the_next_python_task(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    old = wait_until(lambda: zygote_of(daemon.pid()), what="the daemon's zygote")
    os.kill(old.pid, signal.SIGKILL)
    new = wait_until(
        lambda: (found := zygote_of(daemon.pid())) is not None and found.pid != old.pid and found,
        timeout=NEW_ZYGOTE_WAIT,
        what="a new zygote",
        log=daemon.log,
    )
    assert not psutil.pid_exists(old.pid) or old.status() == psutil.STATUS_ZOMBIE

    context = make_context([TaskDef("py")])
    assert daemon.cli("start", "--context", str(context), "HEAL").code == 0
    (task,) = daemon.call("status", transaction="HEAL")["tasks"]
    assert task["state"] == "active"
    process = psutil.Process(task["pid"])
    assert "zsvc.runners.zygote" in process.cmdline(), "forked by a zygote, not executed"
    assert process.ppid() == daemon.pid(), "re-parented to the daemon by the double fork"
    assert zygote_of(daemon.pid()).pid == new.pid, "the new zygote serves"
    assert "started a new zygote" in daemon.log()
    assert daemon.cli("stop", "HEAL").code == 0


def test_a_configuration_too_large_for_a_task_is_refused_before_any_start(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    zygote = wait_until(lambda: zygote_of(daemon.pid()), what="the daemon's zygote")
    # 200 kB: under the CLI's cap on a context file (1 MiB), over a task's (the 3 MB of
    # the finding is refused by the former first; the loader's own test has it).
    context = make_context([TaskDef("big", config={"blob": "x" * 200_000})])
    checked = daemon.cli("validate", str(context))
    assert checked.code != 0
    message = (
        f"task 'big': <configuration> is 200011 bytes as JSON; at most {MAX_CONFIGURATION_BYTES}"
    )
    assert message in checked.stdout + checked.stderr
    started = daemon.cli("start", "--context", str(context), "BIG")
    assert started.code != 0
    assert message in started.stdout + started.stderr
    assert zygote_of(daemon.pid()).pid == zygote.pid, "the zygote is untouched"
