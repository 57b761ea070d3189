"""The two stacks a real program runs on: a local daemon on this machine, zsvc.service in a box.

A test of the tier is written once against :class:`Stack` and runs on both
runners: the commands (``zsvc start/status/stop``), a shell command where the
task runs (``/proc/<pid>/…`` is read in the task's own pid namespace: a pid of
the box means nothing on the machine) and files written where the task reads
them. Ports need no translation: the box shares the machine's network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import users
from tests.integration.conftest import REPO, Daemon
from tests.system.box import SystemdBox, zsvc_log

COMMAND_TIMEOUT = 45.0
"""Bound of one zsvc command: a start waits for READY=1 within the task's start_timeout
(10 s in this tier), then perhaps a stop; beyond that zsvc hangs, a bug to show."""


class Stack:
    """What a test needs of a runner; :class:`LocalStack` and :class:`BoxStack` implement it."""

    name = ""

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """*argv* where the tasks run (root, a clean environment in the box)."""
        raise NotImplementedError

    def zsvc(
        self, *args: str, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``zsvc ARGS`` against this stack's daemon."""
        raise NotImplementedError

    def write(self, path: str, text: str) -> None:
        """Write the file at *path* as the tasks see it."""
        raise NotImplementedError

    def daemon_log(self) -> str:
        """The daemon's last words, shown when a check fails."""
        raise NotImplementedError

    # --- shared, written once ------------------------------------------------------------

    def ok(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """``zsvc ARGS`` that must succeed (within *timeout*); its output."""
        try:
            done = self.zsvc(*args, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"[{self.name}] zsvc {' '.join(args)}: no answer within {timeout:g} s\n"
                f"--- daemon ---\n{self.daemon_log()}"
            )
        assert done.returncode == 0, (
            f"[{self.name}] zsvc {' '.join(args)}: exit {done.returncode}\n"
            f"{done.stdout}\n{done.stderr}\n--- daemon ---\n{self.daemon_log()}"
        )
        return done.stdout

    def sh(self, script: str, timeout: float = 60.0) -> str:
        """A shell script that must succeed; its output."""
        done = self.run("sh", "-c", script, timeout=timeout)
        assert done.returncode == 0, f"[{self.name}] {script}: {done.returncode} {done.stderr}"
        return done.stdout

    def status(self, transaction: str) -> dict[str, Any]:
        return json.loads(self.ok("status", transaction, "--json"))

    def task(self, transaction: str, task_id: str) -> dict[str, Any]:
        return next(t for t in self.status(transaction)["tasks"] if t["id"] == task_id)

    def proc(self, pid: int, name: str) -> str:
        """``/proc/<pid>/<name>`` of a process of this stack ('' once it has gone)."""
        return self.run("cat", f"/proc/{pid}/{name}").stdout

    def alive(self, pid: int) -> bool:
        """Is *pid* a live process (not a zombie) here?"""
        status = self.proc(pid, "status")
        return bool(status) and "\nState:\tZ" not in status

    def kill(self, pid: int, signal: str) -> None:
        self.sh(f"kill -{signal} {pid}")

    def mkdir(self, path: str, owner: str | None = None) -> None:
        """A directory for a task's files (owned by *owner*, the user a task runs as)."""
        chown = f" && chown '{owner}:' '{path}'" if owner else ""
        self.sh(f"mkdir -p '{path}'{chown} && chmod 755 '{path}'")

    def add_user(self, name: str) -> tuple[int, int]:
        """A throwaway system user *name* here; its (uid, gid)."""
        self.sh(f"useradd --system --no-create-home --user-group --shell /usr/sbin/nologin {name}")
        return int(self.sh(f"id -u {name}")), int(self.sh(f"id -g {name}"))

    def remove_user(self, name: str) -> None:
        """Remove the throwaway user (and its group), its processes killed first (userdel
        refuses a user that runs something); quiet when it is already gone, an error when
        it is still there after 10 s."""
        self.sh(
            f"for i in $(seq 200); do id {name} >/dev/null 2>&1 || exit 0;"
            f" pkill -KILL -u {name}; userdel {name} 2>/dev/null && exit 0; sleep 0.05; done;"
            f" echo 'cannot remove the throwaway user {name}' >&2; exit 1"
        )


class LocalStack(Stack):
    """A real daemon of the local runner on this machine (as tests/integration start it)."""

    name = "local"

    def __init__(self, root: Path):
        self.daemon = Daemon(root)

    def start(self) -> LocalStack:
        self.daemon.start()
        return self

    def close(self) -> None:
        self.zsvc("shutdown", "--wait", timeout=60.0)
        self.daemon.terminate()

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def add_user(self, name: str) -> tuple[int, int]:
        """On this machine: :mod:`tests.users`, which removes it at the session's end at
        the latest."""
        user = users.add_user(name, system=True)
        return user.pw_uid, user.pw_gid

    def remove_user(self, name: str) -> None:
        users.remove_user(name)

    def zsvc(
        self, *args: str, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            ZSVC_RUNTIME_DIR=str(self.daemon.runtime),
            ZSVC_STATE_DIR=str(self.daemon.state),
        )
        argv = [sys.executable, "-m", "zsvc", *args]
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def write(self, path: str, text: str) -> None:
        Path(path).write_text(text)

    def daemon_log(self) -> str:
        return self.daemon.log()[-6000:]


class BoxStack(Stack):
    """zsvc.service (the systemd runner) in a booted box; the tasks are transient units."""

    name = "systemd"

    def __init__(self, box: SystemdBox):
        self.box = box

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.box.run(*argv, timeout=timeout)

    def zsvc(
        self, *args: str, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return self.box.run("zsvc", *args, timeout=timeout)

    def write(self, path: str, text: str) -> None:
        self.box.host_path(path).write_text(text)

    def daemon_log(self) -> str:
        return zsvc_log(self.box, 80)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show UNIT -p …`` as a dict."""
        argv = ["systemctl", "show", unit, "--no-pager", *(f"--property={p}" for p in props)]
        out = self.run(*argv).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
