"""Issue 15 under a real systemd 252: a member of group ``zsvc`` runs tasks as themselves.

zsvc.service runs as root in the box; a throwaway user made in the box, in group ``zsvc``,
starts contexts through ``/run/zsvc/control``. Each of their tasks is a transient unit
of the system manager with ``User=`` the member (:mod:`zsvc.daemon.identity`): the
process's uid is theirs, never 0; a ``user="root"`` of theirs is refused before any unit
exists. Root's transactions still run as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import TaskDef
from tests.system.box import REPO, WORK, SystemdBox
from tests.system.conftest import Zsvc, wait_for

pytestmark = pytest.mark.system

OUT = f"{WORK}/identity-out"
"""Where the member's tasks leave their reports (mode 1777)."""


@dataclass(frozen=True)
class Member:
    """A throwaway user of the box in group ``zsvc``, and how to run zsvc as them."""

    name: str
    uid: int
    python: str | None
    """An interpreter with zsvc the member may run (None: none in reach)."""

    def zsvc(self, box: SystemdBox, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.python is not None
        argv = ["setpriv", f"--reuid={self.name}", f"--regid={self.name}", "--init-groups"]
        env = {"PYTHONPATH": str(REPO), "ZSVC_RUNTIME_DIR": "/run/zsvc"}
        return box.run(*argv, "--", self.python, "-m", "zsvc", *args, env=env, timeout=60)


def _reachable(python: str) -> bool:
    """Whether anyone may execute *python*: every directory up to its real file searchable
    by others (a venv of the test run may link into /root, 0700)."""
    real = Path(os.path.realpath(python))
    if not real.exists():  # .venv-floor before ./dev made it (the PyPI run comes first)
        return False
    return all(os.stat(part).st_mode & 0o001 for part in real.parents) and os.access(real, os.X_OK)


def _python_for(box: SystemdBox, name: str) -> str | None:
    """The first interpreter that *name* may run with zsvc importable."""
    for python in dict.fromkeys([sys.executable, f"{REPO}/.venv-floor/bin/python"]):
        if not _reachable(python):
            continue
        probe = box.run(
            "setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", "--",
            python, "-c", "import zmq, zsvc.cli.app", env={"PYTHONPATH": str(REPO)},
        )  # fmt: skip
        if probe.returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def member(zsvc_service: Zsvc) -> Iterator[Member]:
    box = zsvc_service.box
    name = f"zt{uuid.uuid4().hex[:10]}"
    setup = (
        f"useradd --no-create-home --user-group --groups zsvc --shell /usr/sbin/nologin {name}"
        f" && mkdir -p {OUT} && chmod 1777 {OUT}"
    )
    box.run("sh", "-c", setup, check=True)
    try:
        uid = int(box.run("id", "-u", name, check=True).stdout)
        made = Member(name, uid, _python_for(box, name))
        if made.python is None:
            pytest.skip(f"no interpreter with zsvc that {name} may run in the box")
        yield made
    finally:
        box.run("sh", "-c", f"pkill -KILL -u {name}; userdel {name}; rm -rf {OUT}")


def _uid_of(zsvc_service: Zsvc, transaction: str, task_id: str) -> int:
    """The real uid of a running task's process, as the box's kernel says."""
    pid = zsvc_service.task(transaction, task_id)["pid"]
    status = zsvc_service.box.run("cat", f"/proc/{pid}/status", check=True).stdout
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


def test_a_members_command_task_runs_as_the_member(zsvc_service: Zsvc, member: Member) -> None:
    box, tx = zsvc_service.box, f"ID{uuid.uuid4().hex[:8].upper()}"
    report = f"{OUT}/{tx}.uid"
    context = zsvc_service.context(
        [TaskDef("cmd", command=f"sh -c 'id -u > {report}; exec sleep 600'")]
    )
    started = member.zsvc(box, "start", "--context", context, tx)
    assert started.returncode == 0, started.stderr + zsvc_service.daemon_log()
    path = box.host_path(report)
    wait_for(lambda: path.exists() and path.stat().st_size > 0, what="the task's id -u")
    assert path.read_text().strip() == str(member.uid)
    assert _uid_of(zsvc_service, tx, "cmd") == member.uid
    view = json.loads(member.zsvc(box, "status", tx, "--json").stdout)
    assert (view[0] if isinstance(view, list) else view)["owner"] == member.name
    assert member.zsvc(box, "stop", tx).returncode == 0

    mine = f"ROOT{tx}"  # root's own: as written, root
    zsvc_service.ok("start", "--context", context, mine)
    assert _uid_of(zsvc_service, mine, "cmd") == 0
    zsvc_service.ok("stop", mine)


def test_a_members_python_and_thread_tasks_run_as_the_member(
    zsvc_service: Zsvc, member: Member
) -> None:
    box, tx = zsvc_service.box, f"PY{uuid.uuid4().hex[:8].upper()}"
    if not _reachable(sys.executable):  # a Python task's unit runs the daemon's interpreter
        pytest.skip(f"the daemon's interpreter {sys.executable} is out of {member.name}'s reach")
    context = zsvc_service.context([TaskDef("py"), TaskDef("th")])
    file = box.host_path(context)
    process = 'id="th" instance="Sleeper" serviceType="Process"'
    file.write_text(file.read_text().replace(process, process.replace("Process", "Thread")))
    started = member.zsvc(box, "start", "--context", context, tx)
    assert started.returncode == 0, started.stderr + zsvc_service.daemon_log()
    assert _uid_of(zsvc_service, tx, "py") == member.uid
    assert zsvc_service.task(tx, "th")["status_text"].startswith("thread in pid")
    assert _uid_of(zsvc_service, tx, "th") == member.uid  # its thread host's unit
    assert member.zsvc(box, "stop", tx).returncode == 0


def test_user_root_from_a_member_is_refused(zsvc_service: Zsvc, member: Member) -> None:
    box, tx = zsvc_service.box, f"RF{uuid.uuid4().hex[:8].upper()}"
    context = zsvc_service.context(
        [TaskDef("web", command=f"sh -c 'id -u > {OUT}/{tx}.uid'", exec_attrs={"user": "root"})]
    )
    refused = member.zsvc(box, "start", "--context", context, tx)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"task web: user 'root' is not yours to run as: transaction {tx} belongs to" in (
        refused.stderr
    )
    assert not box.host_path(f"{OUT}/{tx}.uid").exists()
    assert zsvc_service.zsvc("status", tx).returncode == 4  # never created
    query = ["journalctl", "ZSVC_REFUSED=1", f"ZSVC_TRANSACTION={tx}", "-o", "cat", "--no-pager"]
    said = f"refused: {member.name} (uid {member.uid}) asked to start transaction {tx}"
    wait_for(lambda: said in box.run(*query).stdout, what="the refusal in the journal")
