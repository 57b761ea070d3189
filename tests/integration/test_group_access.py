"""Members of group ``zsvc`` use a root daemon as fully as ``status`` (issue 19, finding 15).

A throwaway user in group ``zsvc`` (the group made for the test when the
machine has none, and removed only then) runs ``zsvc send``, ``zsvc
monitor`` and ``zsvc logs`` against a root daemon: the bus sockets share the
control socket's mode and group, the logs are readable by the group, and a
log it may not read is a one-line message, not a traceback.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Daemon, TaskDef, python_for_user
from tests.integration.test_bus_trust import as_user
from tests.users import throwaway_user
from zsvc.daemon.fs import CONTROL_GROUP

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user, runs as it"),
]


@contextlib.contextmanager
def control_group() -> Iterator[grp.struct_group]:
    """Group ``zsvc``: the machine's, or one made here and removed at the end."""
    try:
        yield grp.getgrnam(CONTROL_GROUP)
        return
    except KeyError:
        pass
    subprocess.run(["groupadd", "--system", CONTROL_GROUP], check=True, timeout=30)
    try:
        yield grp.getgrnam(CONTROL_GROUP)
    finally:
        subprocess.run(["groupdel", CONTROL_GROUP], capture_output=True, timeout=30)


def zsvc_as(user: pwd.struct_passwd, daemon: Daemon, *args: str) -> subprocess.CompletedProcess:
    """``zsvc ARGS`` as *user* with its groups (``zsvc`` among them)."""
    python = python_for_user(user.pw_uid, user.pw_gid)
    argv = as_user(user, [python, "-m", "zsvc", *args], groups=True)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "HOME": "/",
        "ZSVC_RUNTIME_DIR": str(daemon.runtime),
        "ZSVC_STATE_DIR": str(daemon.state),
    }
    return subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)


def test_group_members_may_send_monitor_and_read_logs(
    daemons: Callable[..., Daemon], make_context: Callable[..., Path], workdir: Path
) -> None:
    workdir.chmod(0o711)  # the daemon's directories decide, not the test's temp dir
    marker = f"hello-{uuid.uuid4().hex}"
    path = make_context([TaskDef("t1", command=f"sh -c 'echo {marker}; exec sleep 600'")])
    with control_group() as group, throwaway_user(groups=[group.gr_name]) as member:
        daemon = daemons()
        started = daemon.cli("start", "--context", str(path), "GRP1")
        assert started.code == 0, started.stderr
        for name in ("control", "bus-pub", "bus-sub"):
            info = (daemon.runtime / name).stat()
            assert (info.st_mode & 0o777, info.st_gid) == (0o660, group.gr_gid), name

        state = zsvc_as(member, daemon, "send", "--service-name", "state", "--action", "request",
                        "--transaction", "GRP1")  # fmt: skip
        assert state.returncode == 0, state.stderr
        assert '"reply_context"' in state.stdout and '"t1"' in state.stdout
        sample = zsvc_as(member, daemon, "monitor", "GRP1", "--once", "--json")
        assert sample.returncode == 0, sample.stderr
        assert '"GRP1"' in sample.stdout
        logs = zsvc_as(member, daemon, "logs", "GRP1")
        assert logs.returncode == 0, logs.stderr
        assert marker in logs.stdout

        # A log the member may not read: one line that says so, no traceback.
        log_path = next(daemon.state.rglob("*.log"))
        log_path.chmod(0o600)
        refused = zsvc_as(member, daemon, "logs", "GRP1")
        assert refused.returncode == 1
        assert "Traceback" not in refused.stderr
        assert f"cannot read {log_path}" in refused.stderr
        assert "permission denied" in refused.stderr.lower()
