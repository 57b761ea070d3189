"""One daemon per state directory, and the daemon's files safe from other users.

Issue 19: a second daemon with another runtime directory but the same state
directory started and adopted the same tasks (finding 7), also when started
with ``zsvc daemon --detach`` after the runtime directory was removed, and the
old daemon's shutdown then removed the new one's sockets by path; another
user could squat a user's fallback runtime directory in /tmp (finding 4); a
daemon started under umask 0022 left its table and logs readable by all
(finding 12).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import (
    READY_TIMEOUT,
    REPO,
    STOP_TIMEOUT,
    Daemon,
    python_for_user,
)
from tests.users import add_user, remove_user
from zsvc.daemon.fs import daemon_modes, runtime_modes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs daemons as root")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def alongside(workdir: Path, name: str) -> Daemon:
    """A daemon object in its own subdirectory of *workdir* (dirs adjusted by the test)."""
    root = workdir / name
    root.mkdir()
    return Daemon(root)


def wait_exit(daemon: Daemon) -> int:
    """The exit status of a daemon expected to refuse to start (bounded)."""
    try:
        return daemon.wait(READY_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon started instead of refusing:\n{daemon.log()}")


def detach(runtime: Path, state: Path, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """``zsvc daemon --detach`` on *runtime* and *state* (under *umask*, if given)."""
    env = dict(os.environ, ZSVC_RUNTIME_DIR=str(runtime), ZSVC_STATE_DIR=str(state))
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "zsvc.daemon", "--detach"],
        env=env,
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT + 30,
        cwd=REPO,
        umask=umask,
    )


def test_a_second_daemon_on_the_same_state_is_refused_whatever_its_runtime_dir(
    daemons: Callable[..., Daemon], workdir: Path
) -> None:
    first = daemons()
    second = alongside(workdir, "second")
    second.state = first.state
    try:
        second.start(expect_ready=False)
        assert wait_exit(second) == 1
    finally:
        second.terminate()
    assert (
        f"another zsvc daemon (pid {first.pid()}) already runs on the state directory"
        f" {first.state} (its sockets are in {first.runtime})"
    ) in second.log()
    assert f"'zsvc --runtime-dir {first.runtime} shutdown'" in second.log()
    first.call("ping")
    assert not (second.runtime / "control").exists()


def test_detach_after_the_runtime_dir_was_removed_is_refused(
    daemons: Callable[..., Daemon],
) -> None:
    """Following the CLI's hint ('zsvc daemon --detach') once made a second daemon."""
    first = daemons()
    shutil.rmtree(first.runtime)
    done = detach(first.runtime, first.state)
    assert done.returncode == 1, done
    assert f"another zsvc daemon (pid {first.pid()}) already runs on the state" in done.stderr


def test_the_old_daemons_shutdown_leaves_the_new_ones_sockets(
    daemons: Callable[..., Daemon], workdir: Path
) -> None:
    first = daemons()
    shutil.rmtree(first.runtime)  # its sockets and its runtime lock are gone with it
    newer = alongside(workdir, "newer")
    newer.runtime = first.runtime  # the same sockets' paths, a table of its own
    try:
        newer.start()
        sockets = [first.runtime / name for name in ("control", "bus-pub", "bus-sub")]
        assert all(path.exists() for path in sockets)
        assert first.terminate() == 0
        assert [path for path in sockets if not path.exists()] == []
        newer.call("ping")
        newer.bus()  # its bus still reachable
    finally:
        newer.terminate()
    assert [path for path in sockets if path.exists()] == [], "its own are removed"


# --- modes under umask 0022 -------------------------------------------------------------


@pytest.fixture
def detached(workdir: Path) -> Iterator[Callable[[], int]]:
    """Start ``zsvc daemon --detach`` under umask 0022 in *workdir*; stopped at teardown."""
    pids: list[int] = []

    def start() -> int:
        done = detach(workdir / "run", workdir / "state", umask=0o022)
        assert done.returncode == 0, done
        found = re.search(r"zsvc daemon (\d+) ready", done.stdout)
        assert found, done.stdout
        pids.append(int(found.group(1)))
        return pids[-1]

    yield start
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except psutil.TimeoutExpired:
                process.kill()


def test_a_daemon_started_under_umask_0022_keeps_its_files_to_itself(
    detached: Callable[[], int], workdir: Path
) -> None:
    detached()
    modes = daemon_modes()
    state, runtime = workdir / "state", workdir / "run"
    wanted = {
        state: modes.dir,
        # Set-group-ID when shared with group zsvc: the task logs under it get the group.
        state / "logs": modes.dir | (stat.S_ISGID if modes.group is not None else 0),
        state / "zsvc.sqlite3": modes.file,
        state / "daemon.lock": modes.file,
        state / "daemon.log": modes.file,
        runtime: runtime_modes().dir,  # root's: o+x, for the notify socket of other users
        runtime / "daemon.lock": modes.file,
        runtime / "control": 0o660,
        runtime / "bus-pub": 0o660,
        runtime / "bus-sub": 0o660,
    }
    wanted.update({path: modes.file for path in state.glob("zsvc.sqlite3-*")})
    found = {path: mode(path) for path in wanted}
    assert found == wanted, {str(path): oct(value) for path, value in found.items()}
    if modes.group is not None:
        assert {path.stat().st_gid for path in wanted} == {modes.group}


# --- a squatted fallback runtime directory ---------------------------------------------


@pytest.fixture
def users() -> Iterator[Callable[[str], int]]:
    """Throwaway users by role; removed (with any process of theirs) at teardown."""
    made: list[str] = []

    def make(role: str) -> int:
        user = add_user(f"zt{os.getpid() % 100_000}{role}", system=True)
        made.append(user.pw_name)
        return user.pw_uid

    try:
        yield make
    finally:
        for name in made:
            remove_user(name)


def run_as(
    uid: int, argv: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run *argv* as *uid* alone (no supplementary group), bounded by *timeout*."""
    return subprocess.run(
        argv,
        user=uid,
        group=uid,
        extra_groups=[],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _python_for(uid: int) -> str:
    return python_for_user(uid, uid)


def test_a_squatted_fallback_runtime_dir_is_refused(users: Callable[[str], int]) -> None:
    """Another user made /tmp/zsvc-<uid> first, 0777, its lock a symlink to our file: the
    daemon refuses the directory (its lock no longer truncates our file), and the CLI
    sends nothing to a control socket the squatter put there."""
    victim, squatter = users("v"), users("s")
    python = _python_for(victim)
    fallback = Path(f"/tmp/zsvc-{victim}")
    shutil.rmtree(fallback, ignore_errors=True)  # a throwaway uid's: nobody's
    home = Path(tempfile.mkdtemp(prefix="zt-victim-", dir="/tmp"))
    try:
        os.chown(home, victim, victim)
        precious = home / "precious"
        precious.write_text("precious\n")
        os.chown(precious, victim, victim)
        fallback.mkdir()
        os.chown(fallback, squatter, squatter)
        fallback.chmod(0o777)
        (fallback / "daemon.lock").symlink_to(precious)
        os.lchown(fallback / "daemon.lock", squatter, squatter)
        env = {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(home)}
        env.update(ZSVC_STATE_DIR=str(home / "state"), PATH="/usr/bin:/bin", LC_ALL="C.UTF-8")
        try:
            daemon = [python, "-m", "zsvc.daemon", "--runner", "local"]
            done = run_as(victim, daemon, env, home, READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("the daemon started in a directory another user owns")
        assert done.returncode == 1, done
        assert (
            f"refusing to use {fallback}: it belongs to uid {squatter}, not to you (uid {victim})"
        ) in done.stderr
        assert f"rm -rf {fallback}" in done.stderr
        assert precious.read_text() == "precious\n"
        assert not (fallback / "control").exists()
        # The squatter's own "daemon" there gets none of the victim's commands either.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fake:
            fake.bind(str(fallback / "control"))
            fake.listen()
            ping = run_as(victim, [python, "-m", "zsvc", "ping"], env, home, 60)
        assert ping.returncode == 3, ping
        assert f"refusing to use {fallback}" in ping.stderr
    finally:
        shutil.rmtree(fallback, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


# --- the detached daemon's own log ------------------------------------------------------


def test_the_detached_daemons_log_is_capped_like_a_tasks(
    detached: Callable[[], int], workdir: Path
) -> None:
    """Issue 19, finding 13: daemon.log grew without bound (29 MB from one flood)."""
    from zsvc.daemon.server import LOG_CAP_BYTES

    detached()
    log = workdir / "state" / "daemon.log"
    backup = log.with_name("daemon.log.1")
    with log.open("ab") as writer:  # as the daemon's own output would, past the cap
        line = b"x" * 1023 + b"\n"
        for _ in range((LOG_CAP_BYTES >> 10) + 1024):
            writer.write(line)
    deadline = time.monotonic() + 30.0
    while not (backup.exists() and log.stat().st_size < LOG_CAP_BYTES):
        assert time.monotonic() < deadline, f"daemon.log not rotated: {log.stat().st_size} B"
        time.sleep(0.05)
    assert backup.stat().st_size <= LOG_CAP_BYTES
    assert stat.S_IMODE(backup.stat().st_mode) == stat.S_IMODE(log.stat().st_mode)
