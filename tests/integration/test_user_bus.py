"""A Python task run as another user (``<exec user>``) joins the bus on a pair of its own.

The shared bus pair is group ``zsvc``'s (0660): a task whose user is not in it could not
join, timed out on its handshake and never became ready. The daemon binds it a pair that
only that uid (and root) may reach (``BusDevice.bind_for_user``).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, TaskDef, python_for_user
from tests.integration.test_single_daemon import run_as, users  # noqa: F401 - a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, setuid)")


def test_a_python_task_of_another_user_joins_the_bus_on_its_own_pair(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    workdir: Path,
    users: Callable[[str], int],  # noqa: F811 - the fixture imported above
) -> None:
    uid, other = users("bus"), users("nob")
    python = python_for_user(uid, pwd.getpwuid(uid).pw_gid)
    os.chmod(workdir, 0o711)
    daemon = daemons()
    name = pwd.getpwuid(uid).pw_name
    context = make_context([TaskDef("py", exec_attrs={"user": name})])
    started = daemon.cli("start", "--context", str(context), "USERBUS")
    assert started.code == 0, started.stderr + daemon.log()
    task = daemon.call("status", transaction="USERBUS")["tasks"][0]
    assert task["state"] == "active"
    with open(f"/proc/{task['pid']}/status") as status:
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status.read()
    for side in ("pub", "sub"):
        info = os.stat(daemon.runtime / f"bus-{side}.{uid}")
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (uid, 0o600)
    # Another user cannot reach that pair: libzmq's connect is silent, so ask the kernel.
    gid = pwd.getpwuid(other).pw_gid
    probe = run_as(
        other,
        [
            python_for_user(other, gid),
            "-c",
            "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
            str(daemon.runtime / f"bus-pub.{uid}"),
        ],
        {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(python).parent)},
        Path("/"),
        30.0,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr
    assert daemon.cli("stop", "USERBUS").code == 0
