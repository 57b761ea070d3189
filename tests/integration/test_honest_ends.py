"""Issue 14 under a real daemon and the local runner: readiness and ends told honestly.

* A start timeout says "no READY=1 within N s" with the task's last status line, in
  ``zsvc start``'s failure and in ``zsvc status``; a task that dies before its
  ``start_secs`` makes ``zsvc start`` fail (exit 1) saying so; a main process that
  exits leaving processes behind is shown with how many were killed (status, bus).
* A notifying task that runs as another user (``setpriv``, as uwsgi ``--uid`` or
  postgres do it) reaches the notify socket and becomes ready; a datagram from a
  process of that same user that is not the task's is still not believed.

Absence is proved by order, not by waiting: the outsider's READY=1 is sent before
the task's next status line, and the one socket is read in order, so once that line
shows, the outsider's datagram was handled, and the task is still activating.
"""

from __future__ import annotations

import concurrent.futures
import os
import pwd
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, TaskDef, pid_alive, wait_message, wait_until
from tests.integration.test_single_daemon import run_as, users  # noqa: F401 - a fixture
from zsvc.errors import ZsvcError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv, useradd)")

SYSTEM_PYTHON = "/usr/bin/python3"
"""Standard library only, runnable by any user (unlike a venv under /root)."""

SEND = (
    "import os, socket\n"
    "def send(text):\n"
    "    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:\n"
    "        s.sendto(text.encode(), os.environ['NOTIFY_SOCKET'])\n"
)
TASK = SEND + (
    "import sys, time\n"
    "def wait_for(path):\n"
    "    deadline = time.monotonic() + 60\n"
    "    while not os.path.exists(path) and time.monotonic() < deadline:\n"
    "        time.sleep(0.02)\n"
    "send('STATUS=waiting for the outsider')\n"
    "wait_for(sys.argv[1])\n"
    "send('STATUS=after the outsider')\n"
    "wait_for(sys.argv[2])\n"
    "send('READY=1')\n"
    "time.sleep(600)\n"
)
OUTSIDER = SEND + "send('READY=1\\nSTATUS=outsider')\n"


def _status(daemon: Daemon) -> dict:
    """The task's view; empty while the start has not made its transaction yet."""
    try:
        return daemon.call("status", transaction="AS_USER")["tasks"][0]
    except ZsvcError:
        return {}


@needs_root
def test_a_task_of_another_user_reports_ready_and_an_outsider_is_not_believed(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    workdir: Path,
    users: Callable[[str], int],  # noqa: F811 - the fixture imported above
) -> None:
    os.chmod(workdir, 0o711)  # the user must reach run/notify (the daemon sets run/ itself)
    uid = users("notify")
    gid = pwd.getpwuid(uid).pw_gid
    script, first, second = workdir / "task.py", workdir / "go1", workdir / "go2"
    script.write_text(TASK)
    script.chmod(0o644)
    command = shlex.join(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            SYSTEM_PYTHON,
            str(script),
            str(first),
            str(second),
        ]
    )
    context = make_context(
        [TaskDef("t1", command=command, notify=True, location=None, start_timeout=60)]
    )
    daemon = daemons()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(
            daemon.call,
            "start",
            transaction="AS_USER",
            context_path=str(context),
            context_text=context.read_text(),
        )
        wait_until(
            lambda: _status(daemon).get("status_text") == "waiting for the outsider",
            30.0,
            "the task (another user) heard on the notify socket",
            daemon.log,
        )
        env = {"NOTIFY_SOCKET": str(daemon.runtime / "notify"), "PATH": "/usr/bin:/bin"}
        sent = run_as(uid, [SYSTEM_PYTHON, "-c", OUTSIDER], env, Path("/"), 30.0)
        assert sent.returncode == 0, sent.stderr  # the user may send: the socket is reachable
        first.touch()
        wait_until(
            lambda: _status(daemon).get("status_text") == "after the outsider",
            30.0,
            "the task's line sent after the outsider's READY=1",
            daemon.log,
        )
        assert _status(daemon)["state"] == "activating", "an outsider's READY=1 was believed"
        second.touch()
        started.result(timeout=60)
    assert _status(daemon)["state"] == "active"
    output = (daemon.state / "logs" / "AS_USER" / "t1.log").read_text(errors="replace")
    assert "Permission denied" not in output


def _task_view(daemon: Daemon, transaction: str) -> dict:
    return daemon.call("status", transaction=transaction)["tasks"][0]


LOADS_FOREVER = SEND + "import time\nsend('STATUS=loading the index')\ntime.sleep(600)\n"


def test_a_start_timeout_says_no_ready_within_and_the_last_status(
    daemon: Daemon, make_context: Callable[..., Path], workdir: Path
) -> None:
    script = workdir / "loads.py"
    script.write_text(LOADS_FOREVER)
    task = TaskDef(
        "slow", command=f"python3 {script}", notify=True, location=None, start_timeout=1.0
    )
    started = daemon.cli("start", "--context", str(make_context([task])), "TIMEOUT")
    assert started.code == 1, started
    said = started.stdout + started.stderr
    assert "no READY=1 within 1 s (timeout)" in said, said
    assert "loading the index" in said, said
    last_exit = _task_view(daemon, "TIMEOUT")["last_exit"]
    assert last_exit.startswith("no READY=1 within 1 s (timeout)"), last_exit


def test_a_task_that_dies_before_start_secs_fails_zsvc_start(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    task = TaskDef(
        "quick",
        command="sh -c 'exit 3'",
        command_type="exec",
        location=None,
        attrs={"start_secs": "5"},
    )
    started = daemon.cli("start", "--context", str(make_context([task])), "EARLY")
    assert started.code == 1, started
    said = started.stdout + started.stderr
    assert "before start_secs=5 s" in said, said
    assert "before start_secs=5 s" in _task_view(daemon, "EARLY")["last_exit"]


def test_leftovers_of_an_exited_main_process_are_shown_and_published(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    bus = daemon.bus("control")
    task = TaskDef("bg", command="sh -c 'sleep 600 & exit 0'", command_type="exec", location=None)
    started = daemon.cli("start", "--context", str(make_context([task])), "LEFT")
    assert started.code == 0, started
    words = "main process exited; 1 leftover process killed — is this a forking program?"
    ended = wait_message(
        bus, lambda m: m.service_id == "bg" and "reason" in (m.content.get("status") or {})
    )
    assert words in ended.content["status"]["reason"], ended.content
    assert words in _task_view(daemon, "LEFT")["last_exit"]


def test_a_forking_daemon_is_followed_by_its_pid_file_and_stopped(
    daemon: Daemon, make_context: Callable[..., Path], workdir: Path
) -> None:
    pid_file = workdir / "bg.pid"
    task = TaskDef(
        "bg",
        command=f"sh -c 'sleep 600 & echo $! > {pid_file}; exit 0'",
        command_type="forking",
        pid_file=str(pid_file),
        location=None,
    )
    started = daemon.cli("start", "--context", str(make_context([task])), "FORKING")
    assert started.code == 0, started
    view = _task_view(daemon, "FORKING")
    main = int(pid_file.read_text())
    assert (view["state"], view["pid"]) == ("active", main), view
    assert pid_alive(main)
    stopped = daemon.cli("stop", "FORKING")
    assert stopped.code == 0, stopped
    assert not pid_alive(main)
    assert _task_view(daemon, "FORKING")["result"] == "success"
