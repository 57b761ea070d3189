"""No task leaves a process behind: not on stop, not when its main process ends by itself,
not after a daemon restart — whatever its children did to get away (double fork, setsid).

With a writable cgroup2 hierarchy (root), every process of a task is in the task's own
cgroup; without one, the daemon finds orphans by the invocation id in their environment
(only those that executed a program carry it), so some tests need cgroup2 and say so.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, TaskDef, pid_alive, wait_message, wait_until
from zsvc.naming import instance_id, instance_slice, unit_name
from zsvc.runners.cgroup import cgroup_of, find_hierarchy

CGROUPS = find_hierarchy() if os.environ.get("ZSVC_CGROUPS", "1") != "0" else None
"""The runner's cgroups; ZSVC_CGROUPS=0 runs these tests (and their daemons) without."""
needs_cgroup2 = pytest.mark.skipif(
    CGROUPS is None,
    reason="no writable cgroup2 hierarchy (or ZSVC_CGROUPS=0): without root, an orphan that"
    " never executed a program (or outlived its daemon) cannot be told from any other process",
)

DOUBLE_FORK = textwrap.dedent(
    """
    import os, signal, sys, time
    pidfile, ending = sys.argv[1], sys.argv[2]
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the intermediate: a new session, one child, and away
        os.close(read_end)
        os.setsid()
        if os.fork() == 0:  # the grandchild: ignores SIGTERM, so only SIGKILL ends it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open(pidfile + ".tmp", "w") as handle:
                handle.write(str(os.getpid()))
            os.replace(pidfile + ".tmp", pidfile)
            os.close(write_end)
            os.execvp("sleep", ["sleep", "3600"])
        os._exit(0)
    os.close(write_end)
    os.read(read_end, 1)  # EOF: the grandchild wrote its pid
    os.wait()
    if ending == "exit":
        sys.exit(0)
    os.execvp("sleep", ["sleep", "3600"])
    """
)
"""A command task whose grandchild leaves its session and its parent, and writes its pid to
a file before the main process goes on (to exit with "exit", or to sleep)."""


def _orphaner(workdir: Path, ending: str) -> tuple[str, Path]:
    script = workdir / "double_fork.py"
    script.write_text(DOUBLE_FORK)
    pidfile = workdir / f"grandchild-{ending}.pid"
    return f"{sys.executable} {script} {pidfile} {ending}", pidfile


def _pid_in(pidfile: Path) -> int:
    return int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), what=str(pidfile)))


def _assert_gone(pid: int) -> None:
    """With cgroups the end is reported once the task's cgroup is empty: gone at once.
    Without, the orphan got SIGKILL when the task ended; give the kernel a moment."""
    if CGROUPS is not None:
        assert not pid_alive(pid), f"{pid} survived its task"
    else:
        wait_until(lambda: not pid_alive(pid), timeout=5.0, what=f"{pid} gone")


def _cgroup_path(daemon: Daemon, transaction: str, task: str) -> Path | None:
    """Where *daemon*'s local runner puts the task's group: its instance's directory."""
    if CGROUPS is None:
        return None
    instance = instance_id(daemon.state)
    return CGROUPS.top / instance_slice(instance) / unit_name(transaction, task, instance)


def test_stop_leaves_nothing_behind(daemon, make_context, workdir: Path) -> None:
    command, pidfile = _orphaner(workdir, "stop")
    context = make_context([TaskDef("escapee", command=command, location=None)])
    assert daemon.cli("start", "--context", str(context), "ORPH").code == 0
    grandchild = _pid_in(pidfile)
    group = _cgroup_path(daemon, "ORPH", "escapee")
    if group is not None:
        assert cgroup_of(grandchild) == "/" + str(group.relative_to(CGROUPS.root))
    assert pid_alive(grandchild)

    stopped = daemon.cli("stop", "ORPH", "--json")
    assert stopped.code == 0, stopped.stderr
    task = stopped.json()["tasks"][0]
    assert (task["state"], task["last_action"]) == ("inactive", "stopped")
    _assert_gone(grandchild)
    if group is not None:
        assert not group.exists()


def test_a_main_process_that_exits_takes_its_leftovers_along(
    daemon, make_context, workdir: Path
) -> None:
    """KillMode=control-group: the end of the main process is the end of the task."""
    command, pidfile = _orphaner(workdir, "exit")
    context = make_context([TaskDef("leaver", command=command, location=None)])
    bus = daemon.bus("control")
    assert daemon.cli("start", "--context", str(context), "LEAVE").code == 0
    wait_message(bus, lambda m: m.action in ("exited", "failed") and m.service_id == "leaver")
    grandchild = _pid_in(pidfile)  # written before the main process exited
    _assert_gone(grandchild)
    task = daemon.call("status", transaction="LEAVE")["tasks"][0]
    assert (task["state"], task["result"]) == ("inactive", "success")
    group = _cgroup_path(daemon, "LEAVE", "leaver")
    assert group is None or not group.exists()


@pytest.mark.parametrize(
    "execs",
    [
        pytest.param(False, marks=needs_cgroup2, id="forked"),
        pytest.param(True, id="executed"),
    ],
)
def test_a_python_task_setup_grandchild_is_stopped_too(
    daemon, make_context, workdir: Path, execs: bool
) -> None:
    """The zygote path: the task joins its cgroup before the user's module is imported."""
    pidfile = workdir / "setup-grandchild.pid"
    task = TaskDef("py", instance="Orphaner", config={"pidfile": pidfile, "execs": execs})
    context = make_context([task])
    assert daemon.cli("start", "--context", str(context), "PYORPH").code == 0
    grandchild = _pid_in(pidfile)
    assert pid_alive(grandchild)
    group = _cgroup_path(daemon, "PYORPH", "py")
    if group is not None:
        assert cgroup_of(grandchild) == "/" + str(group.relative_to(CGROUPS.root))

    stopped = daemon.cli("stop", "PYORPH", "--json")
    assert stopped.code == 0, stopped.stderr
    assert stopped.json()["tasks"][0]["state"] == "inactive"
    _assert_gone(grandchild)
    if group is not None:
        assert not group.exists()


@needs_cgroup2
def test_a_readopted_task_is_still_stopped_as_a_whole(daemons, make_context, workdir: Path) -> None:
    """After a daemon SIGKILL, the orphan is nobody's descendant any more: only the cgroup
    saved with the task finds it."""
    command, pidfile = _orphaner(workdir, "stop")
    context = make_context([TaskDef("escapee", command=command, location=None)])
    first = daemons()
    assert first.cli("start", "--context", str(context), "READOPT").code == 0
    grandchild = _pid_in(pidfile)
    first.kill9()
    assert pid_alive(grandchild)

    successor = daemons(root=workdir)
    task = successor.call("status", transaction="READOPT")["tasks"][0]
    assert task["state"] == "active"
    stopped = successor.cli("stop", "READOPT", "--json")
    assert stopped.code == 0, stopped.stderr
    _assert_gone(grandchild)
    group = _cgroup_path(successor, "READOPT", "escapee")
    assert group is not None and not group.exists()


# --- the watchdog, end to end (watchdog_sec= in the context) ---------------------------------

SILENT_NOTIFIER = (
    "python3 -c 'import os, socket, time;"
    " socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto("
    'b"READY=1", os.environ["NOTIFY_SOCKET"]); time.sleep(600)\''
)


def test_a_task_that_stops_pinging_fails_with_watchdog(daemon, make_context) -> None:
    task = TaskDef(
        "mute", command=SILENT_NOTIFIER, notify=True, location=None, attrs={"watchdog_sec": "0.5"}
    )
    context = make_context([task])
    bus = daemon.bus("control")
    started = time.monotonic()
    assert daemon.cli("start", "--context", str(context), "WD").code == 0
    wait_message(bus, lambda m: m.action == "failed" and m.service_id == "mute", timeout=10)
    assert time.monotonic() - started < 10
    status = daemon.call("status", transaction="WD")["tasks"][0]
    assert (status["state"], status["result"]) == ("failed", "watchdog")
    assert "SIGABRT" in status["last_exit"]


def test_a_python_task_pings_its_watchdog(daemon, make_context) -> None:
    """The task host pings at half the period (the zygote sets WATCHDOG_PID to the task)."""
    task = TaskDef("alive", attrs={"watchdog_sec": "0.4"})
    context = make_context([task])
    bus = daemon.bus("control")
    assert daemon.cli("start", "--context", str(context), "WDOK").code == 0
    deadline = time.monotonic() + 2.0  # five periods
    while (remaining := deadline - time.monotonic()) > 0:
        message = bus.receive(remaining)
        assert message is None or message.action != "failed", message
    status = daemon.call("status", transaction="WDOK")["tasks"][0]
    assert status["state"] == "active", status
    assert os.path.exists(f"/proc/{status['pid']}")
    assert daemon.cli("stop", "WDOK").code == 0
