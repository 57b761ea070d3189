"""A member of group ``zsvc`` runs tasks as themselves on a root daemon, never as root
(issue 15, zsvc/daemon/identity.py), on the local runner.

A throwaway user in group ``zsvc`` starts contexts through the root daemon's control
socket, as it would with ``zsvc start``; the kernel says who they are (SO_PEERCRED), and
every task of theirs, command, Python or Thread, runs with their uid. A ``user="root"``
of theirs is refused with the way to get it granted; a grant in the daemon's ``[access]``
settings allows the identity it names. Root's own transactions still run as root.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import (
    REPO,
    Daemon,
    TaskDef,
    free_port,
    python_for_user,
    render_context,
    wait_until,
)
from tests.integration.test_group_access import control_group, zsvc_as
from tests.integration.test_single_daemon import run_as, users  # noqa: F401 - a fixture
from tests.integration.test_threads import threaded
from tests.users import throwaway_user

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user, runs as it"),
]


@pytest.fixture
def member(workdir: Path) -> Iterator[pwd.struct_passwd]:
    """A throwaway member of group ``zsvc`` who may enter the test's directory."""
    workdir.chmod(0o711)  # the daemon's directories decide, not the test's temp dir
    with control_group() as group, throwaway_user(groups=[group.gr_name]) as user:
        yield user


def _daemon(daemons: Callable[..., Daemon], member: pwd.struct_passwd, **kwargs: Any) -> Daemon:
    """A root daemon under an interpreter the member may run: the Python of its tasks
    (zygote, thread host) is the daemon's own, and this test's may live under /root."""
    python = python_for_user(member.pw_uid, member.pw_gid)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "executable", python)
        return daemons(**kwargs)


def _out_dir(workdir: Path) -> Path:
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    out.chmod(0o1777)  # anyone's task may leave its report here
    return out


def _uids(daemon: Daemon, transaction: str) -> dict[str, int]:
    """Each running task's real uid, from its process (the kernel's word, not zsvc's)."""
    done = daemon.cli("status", transaction, "--json")
    assert done.code == 0, done.stderr
    views = json.loads(done.stdout)
    view = views[0] if isinstance(views, list) else views
    return {task["id"]: psutil.Process(task["pid"]).uids().real for task in view["tasks"]}


def test_a_members_tasks_run_as_the_member_never_root(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    workdir: Path,
    member: pwd.struct_passwd,
) -> None:
    out = _out_dir(workdir)
    command = TaskDef("cmd", command=f"sh -c 'id -u > {out}/cmd.uid; exec sleep 600'")
    path = threaded(make_context, [command, TaskDef("py"), TaskDef("th")], "th")
    daemon = _daemon(daemons, member)
    started = zsvc_as(member, daemon, "start", "--context", str(path), "MINE")
    logs = "".join(p.read_text(errors="replace") for p in daemon.state.rglob("*.log"))
    assert started.returncode == 0, started.stderr + daemon.log()[-3000:] + logs[-3000:]
    report = out / "cmd.uid"
    wait_until(lambda: report.exists() and report.read_text().strip(), what="the task's id -u")
    assert report.read_text().strip() == str(member.pw_uid)
    assert _uids(daemon, "MINE") == {"cmd": member.pw_uid, "py": member.pw_uid, "th": member.pw_uid}

    stopped = zsvc_as(member, daemon, "stop", "MINE")  # their own: they may
    assert stopped.returncode == 0, stopped.stderr

    mine = daemon.cli("start", "--context", str(path), "ROOTS")  # root's: as written
    assert mine.code == 0, mine.stderr
    assert set(_uids(daemon, "ROOTS").values()) == {0}


def test_another_identity_is_refused_unless_granted(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    workdir: Path,
    member: pwd.struct_passwd,
) -> None:
    out = _out_dir(workdir)
    as_root = make_context(
        [TaskDef("web", command=f"sh -c 'id -u > {out}/web.uid'", exec_attrs={"user": "root"})]
    )
    nobody = pwd.getpwnam("nobody")
    as_nobody = make_context([TaskDef("web", command="sleep 600", exec_attrs={"user": "nobody"})])
    settings = workdir / "zsvc.conf"
    settings.write_text(f"[access]\nrun_as.nobody = user:{member.pw_name}\n")
    daemon = _daemon(daemons, member, args=["--config", str(settings)])

    refused = zsvc_as(member, daemon, "start", "--context", str(as_root), "GREEDY")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (
        f"task web: user 'root' is not yours to run as: transaction GREEDY belongs to"
        f" {member.pw_name}; a grant run_as.root = user:{member.pw_name} in /etc/zsvc/zsvc.conf"
        " [access] allows it (<exec user>)"
    ) in refused.stderr
    assert not (out / "web.uid").exists()
    uid = member.pw_uid
    assert f"refused: {member.pw_name} (uid {uid}) asked to start transaction GREEDY" in (
        daemon.log()
    )
    assert daemon.cli("status", "GREEDY").code == 4  # never created

    granted = zsvc_as(member, daemon, "start", "--context", str(as_nobody), "GRANTED")
    assert granted.returncode == 0, granted.stderr + daemon.log()[-3000:]
    assert _uids(daemon, "GRANTED") == {"web": nobody.pw_uid}


def test_a_working_directory_the_member_may_not_reach_is_not_entered_for_them(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    workdir: Path,
    member: pwd.struct_passwd,
) -> None:
    """The daemon enters it as root; the task must enter it again as the member (as systemd
    does), or it would sit below a 0700 directory and read what is there."""
    out = _out_dir(workdir)
    reachable = workdir / "locked" / "open"  # open inside, but behind root's 0700
    reachable.mkdir(parents=True)
    (reachable / "secret.txt").write_text("root's\n")
    (workdir / "locked").chmod(0o700)
    peek = f"sh -c 'cat secret.txt > {out}/leak; exec sleep 600'"
    where = {"working_directory": str(reachable)}
    # type notify: a start that fails before the program runs fails `zsvc start`
    notify = TaskDef("cmd", command=peek, exec_attrs=where, command_type="notify")
    python = make_context([TaskDef("py", exec_attrs=where)])
    daemon = _daemon(daemons, member)
    for path, transaction in ((make_context([notify]), "PEEK"), (python, "PEEKPY")):
        refused = zsvc_as(member, daemon, "start", "--context", str(path), transaction)
        assert refused.returncode == 1, transaction + refused.stdout + daemon.log()[-2000:]
        assert "status 200" in refused.stderr, refused.stderr  # systemd's EXIT_CHDIR
    assert not (out / "leak").exists()
    # root's own transaction enters it as before
    command = make_context([TaskDef("cmd", command=peek, exec_attrs=where)])
    assert daemon.cli("start", "--context", str(command), "ROOTPEEK").code == 0
    wait_until(lambda: (out / "leak").exists(), what="root's task reading its directory")


def test_a_members_loader_variables_never_reach_roots_wrappers(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    workdir: Path,
    member: pwd.struct_passwd,
) -> None:
    """The local runner's wrapper (``sh``, ``setpriv``) runs as root before the task is the
    member: ``LD_*`` of theirs there would be their code (``LD_PRELOAD``) or files
    (``LD_DEBUG_OUTPUT``) as root. The task itself still gets them."""
    out = _out_dir(workdir)
    env = {"LD_DEBUG": "files", "LD_DEBUG_OUTPUT": f"{out}/loader"}
    show = f"sh -c 'echo \"$LD_DEBUG_OUTPUT\" > {out}/seen; exec sleep 600'"
    path = make_context([TaskDef("cmd", command=show, environment=env)])
    daemon = _daemon(daemons, member)
    started = zsvc_as(member, daemon, "start", "--context", str(path), "LOADER")
    assert started.returncode == 0, started.stderr
    seen = out / "seen"
    wait_until(lambda: seen.exists() and seen.stat().st_size > 0, what="the task's environment")
    assert seen.read_text().strip() == f"{out}/loader"
    written = {p.name: p.stat().st_uid for p in out.glob("loader.*")}
    assert written, "the task's own processes honour LD_DEBUG_OUTPUT"
    assert set(written.values()) == {member.pw_uid}, written


def test_a_users_own_daemon_runs_its_users_tasks_as_written(
    users: Callable[[str], int],  # noqa: F811 - the fixture imported above
) -> None:
    """Not root's daemon: its user owns every transaction, whose tasks run as written
    (rewritten with a user= of their own, the local runner would need root for groups)."""
    uid = users("own")
    python = python_for_user(uid, uid)
    home = Path(tempfile.mkdtemp(prefix="zt-own-", dir="/tmp"))
    try:
        os.chown(home, uid, uid)
        context = home / "Context-own.xml"
        context.write_text(
            render_context([TaskDef("cmd", command="sleep 600")], free_port(), free_port())
        )
        env = {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(home),
               "PATH": "/usr/bin:/bin", "ZSVC_RUNTIME_DIR": str(home / "run"),
               "ZSVC_STATE_DIR": str(home / "state")}  # fmt: skip

        def zsvc(*args: str) -> subprocess.CompletedProcess[str]:
            return run_as(uid, [python, "-m", "zsvc", *args], env, home, 60)

        detached = zsvc("daemon", "--detach", "--runner", "local")
        assert detached.returncode == 0, detached.stderr
        try:
            started = zsvc("start", "--context", str(context), "OWN")
            assert started.returncode == 0, started.stderr + started.stdout
        finally:
            zsvc("shutdown", "--wait")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_members_pid_file_is_never_quoted_back(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    workdir: Path,
    member: pwd.struct_passwd,
) -> None:
    """The local runner reads a forking task's PID file as root: a member naming a file only
    root may read learns nothing of what is in it from the failed start."""
    secret = workdir / "secret"
    secret.write_text("TOPSECRET-7f3a\n")
    secret.chmod(0o600)
    forking = TaskDef("fork", command="sh -c 'sleep 600 & exit 0'", command_type="forking",
                      pid_file=str(secret), start_timeout=1.5)  # fmt: skip
    daemon = _daemon(daemons, member)
    refused = zsvc_as(member, daemon, "start", "--context", str(make_context([forking])), "PF")
    assert refused.returncode == 1, refused.stdout
    assert f"the PID file {secret}: it holds no process id" in refused.stderr, refused.stderr
    assert "TOPSECRET" not in refused.stderr + refused.stdout + daemon.log()
    status = zsvc_as(member, daemon, "status", "PF", "--json")
    assert "TOPSECRET" not in status.stdout
