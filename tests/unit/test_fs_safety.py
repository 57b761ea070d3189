"""The daemon's files under attack (issue 19, findings 4, 7, 12 and half of 19).

Modes are explicit whatever the umask, a directory somebody else owns or may
write to is refused, files are never opened through a symlink, and a socket
file is removed only by whoever bound it, never stolen from a live process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from zsvc.daemon import fs
from zsvc.daemon.bus import BindError, BusDevice
from zsvc.daemon.control import ControlServer
from zsvc.daemon.logs import cap_logs
from zsvc.daemon.table import Table
from zsvc.paths import (
    Modes,
    RuntimeLayout,
    StateLayout,
    dir_problem,
    plan_modes,
    plan_runtime_modes,
)

USER = Modes(dir=0o700, file=0o600, group=None)
OTHER_UID = 65534
"""nobody: the owner of a squatter's directory (tests run as root, so chown works)."""


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def stat_of(kind: int, perm: int, uid: int) -> os.stat_result:
    """An lstat() result with only what dir_problem looks at."""
    return os.stat_result((kind | perm, 1, 1, 1, uid, 0, 0, 0, 0, 0))


@pytest.fixture
def umask_0022() -> Iterator[None]:
    """A shell's umask, as when ``zsvc daemon --detach`` is typed in one."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


# --- pure: the plan and the verification ------------------------------------------------


def test_root_shares_with_group_zsvc_and_a_user_keeps_to_themself() -> None:
    assert plan_modes(0, 997) == Modes(dir=0o750, file=0o640, group=997)
    assert plan_modes(0, None) == Modes(dir=0o750, file=0o640, group=None)
    assert plan_modes(1000, None) == Modes(dir=0o700, file=0o600, group=None)


def test_roots_runtime_dir_may_be_searched_by_all_for_the_notify_socket_not_listed() -> None:
    """Tasks of other users reach ``notify`` (issue 14); nobody lists or writes the dir."""
    assert plan_runtime_modes(0, 997) == Modes(dir=0o751, file=0o640, group=997)
    assert plan_runtime_modes(1000, None) == plan_modes(1000, None)


@pytest.mark.parametrize(
    ("info", "private", "problem"),
    [
        (stat_of(stat.S_IFDIR, 0o700, 1000), True, None),
        (stat_of(stat.S_IFDIR, 0o750, 1000), False, None),
        (stat_of(stat.S_IFDIR, 0o755, 1000), False, None),
        (stat_of(stat.S_IFLNK, 0o777, 1000), False, "symbolic link"),
        (stat_of(stat.S_IFREG, 0o600, 1000), False, "not a directory"),
        (stat_of(stat.S_IFDIR, 0o700, 1001), True, "belongs to uid 1001, not to you (uid 1000)"),
        (stat_of(stat.S_IFDIR, 0o777, 1000), False, "may write to it (mode 0777)"),
        (stat_of(stat.S_IFDIR, 0o770, 1000), False, "may write to it (mode 0770)"),
        (stat_of(stat.S_IFDIR, 0o750, 1000), True, "may enter it (mode 0750, not 0700)"),
    ],
)
def test_a_directory_of_somebody_else_or_open_to_them_is_refused(
    info: os.stat_result, private: bool, problem: str | None
) -> None:
    found = dir_problem(info, 1000, private=private)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_the_lock_lives_with_the_table() -> None:
    state = StateLayout(Path("/var/lib/zsvc"))
    assert state.lock.parent == state.database.parent


# --- directories and files --------------------------------------------------------------


def test_directories_get_their_planned_mode_whatever_the_umask(
    tmp_path: Path, umask_0022: None
) -> None:
    made = tmp_path / "state"
    fs.prepare_dir(made, USER)
    assert mode(made) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    fs.prepare_dir(loose, Modes(dir=0o750, file=0o640, group=os.getgid()))
    assert mode(loose) == 0o750, "an existing directory of ours is given its mode too"


@needs_root
def test_a_squatted_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    squatted = tmp_path / "zsvc-1000"
    squatted.mkdir()
    os.chown(squatted, OTHER_UID, OTHER_UID)
    squatted.chmod(0o777)
    with pytest.raises(fs.UnsafePath) as refused:
        fs.prepare_dir(squatted, USER, private=True, advice="remove it")
    message = str(refused.value)
    assert f"refusing to use {squatted}" in message
    assert f"belongs to uid {OTHER_UID}" in message
    assert message.endswith("remove it")
    assert mode(squatted) == 0o777, "a refused directory is left as found"


def test_a_symlinked_directory_and_one_open_to_all_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(fs.UnsafePath, match="symbolic link"):
        fs.prepare_dir(tmp_path / "link", USER)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    with pytest.raises(fs.UnsafePath, match="may write to it"):
        fs.prepare_dir(open_to_all, USER)
    in_tmp = tmp_path / "fallback"
    in_tmp.mkdir()
    in_tmp.chmod(0o755)
    with pytest.raises(fs.UnsafePath, match="not 0700"):
        fs.prepare_dir(in_tmp, USER, private=True)


def test_a_file_is_never_opened_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (tmp_path / "daemon.lock").symlink_to(victim)
    with pytest.raises(fs.UnsafePath, match="symbolic link"):
        fs.open_file(tmp_path / "daemon.lock", USER)
    assert victim.read_text() == "precious\n"
    assert mode(victim) == 0o644
    os.link(victim, tmp_path / "hard.lock")
    with pytest.raises(fs.UnsafePath, match="2 names"):
        fs.open_file(tmp_path / "hard.lock", USER)
    assert mode(victim) == 0o644


def test_files_get_their_planned_mode_whatever_the_umask(tmp_path: Path, umask_0022: None) -> None:
    os.close(fs.open_file(tmp_path / "new", USER))
    assert mode(tmp_path / "new") == 0o600
    (tmp_path / "old").write_text("x")
    assert mode(tmp_path / "old") == 0o644
    os.close(fs.open_file(tmp_path / "old", USER))
    assert mode(tmp_path / "old") == 0o600


def test_the_table_is_private_whatever_the_umask(tmp_path: Path, umask_0022: None) -> None:
    path = tmp_path / "zsvc.sqlite3"
    table = Table(path, mode=0o640)
    try:
        table.db.execute("CREATE TABLE t (x)")
        for name in ("zsvc.sqlite3", "zsvc.sqlite3-wal", "zsvc.sqlite3-shm"):
            assert mode(tmp_path / name) == 0o640, name
    finally:
        table.close()
    path.chmod(0o644)  # left by an older zsvc
    Table(path).close()
    assert mode(path) == 0o600


def test_a_rotated_log_has_the_live_logs_mode(tmp_path: Path, umask_0022: None) -> None:
    log = tmp_path / "task.log"
    log.write_bytes(b"line\n" * 1000)
    log.chmod(0o640)
    stale = tmp_path / "task.log.1"
    stale.write_bytes(b"old\n")
    stale.chmod(0o644)
    assert cap_logs([log], max_bytes=100).rotated == [log]
    assert mode(stale) == 0o640
    stale.unlink()
    log.write_bytes(b"line\n" * 1000)
    cap_logs([log], max_bytes=100)
    assert mode(stale) == 0o640, "a new backup too"


def test_a_rotation_never_writes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log = tmp_path / "task.log"
    log.write_bytes(b"line\n" * 1000)
    (tmp_path / "task.log.1").symlink_to(victim)
    assert cap_logs([log], max_bytes=100).rotated == []
    assert victim.read_text() == "precious\n"


# --- socket files -----------------------------------------------------------------------


def listening(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    return server


def test_a_live_socket_is_refused_a_stale_one_removed_a_file_kept(tmp_path: Path) -> None:
    live = listening(tmp_path / "live")
    try:
        with pytest.raises(fs.SocketBusy, match="in use"):
            fs.claim_socket_path(tmp_path / "live")
    finally:
        live.close()
    assert (tmp_path / "live").exists()
    fs.claim_socket_path(tmp_path / "live")  # nobody listens any more: stale
    assert not (tmp_path / "live").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(fs.SocketBusy, match="not a socket"):
        fs.claim_socket_path(tmp_path / "file")
    fs.claim_socket_path(tmp_path / "missing")


def test_only_the_socket_file_bound_is_removed(tmp_path: Path) -> None:
    """Even when the newer file gets the old one's inode number (often, at once)."""
    path = tmp_path / "control"
    listening(path).close()
    mine = fs.SocketFile(path)
    path.unlink()
    newer = listening(path)  # another daemon's, at the same path
    try:
        assert not mine.remove()
        assert path.exists()
        assert fs.SocketFile(path).remove()
        assert not path.exists()
    finally:
        newer.close()


def test_the_bus_refuses_an_ipc_endpoint_a_live_process_holds(tmp_path: Path) -> None:
    """libzmq unlinks the path before binding: a second daemon silently took the first's."""
    held = listening(tmp_path / "bus-pub")
    context = zmq.Context()
    device = BusDevice(context)
    try:
        with pytest.raises(BindError, match="in use by another process"):
            device.bind(f"ipc://{tmp_path}/bus-pub", f"ipc://{tmp_path}/bus-sub")
        assert (tmp_path / "bus-pub").exists()
        held.close()  # now stale: taken over
        device.bind(f"ipc://{tmp_path}/bus-pub", f"ipc://{tmp_path}/bus-sub")
    finally:
        held.close()
        asyncio.run(device.close())
        context.term()


def test_the_bus_removes_only_its_own_socket_files(tmp_path: Path) -> None:
    context = zmq.Context()
    device = BusDevice(context)
    try:
        device.bind(f"ipc://{tmp_path}/bus-pub", f"ipc://{tmp_path}/bus-sub")
    finally:
        asyncio.run(device.close())
        context.term()
    (tmp_path / "bus-pub").unlink()  # the runtime directory was emptied under us,
    newer = listening(tmp_path / "bus-pub")  # and a newer daemon bound there
    try:
        device.remove_socket_files()
        assert (tmp_path / "bus-pub").exists(), "the newer daemon's socket was removed"
        assert not (tmp_path / "bus-sub").exists(), "our own socket file stayed"
    finally:
        newer.close()


def test_the_control_socket_of_a_newer_daemon_survives_the_old_ones_close(
    tmp_path: Path,
) -> None:
    async def handler(name: str, args: dict[str, object]) -> object:
        return None

    async def main() -> None:
        context = zmq.asyncio.Context()
        server = ControlServer(context, RuntimeLayout(tmp_path))
        server.claim()
        server.start(handler)
        (tmp_path / "control").unlink()
        newer = listening(tmp_path / "control")
        try:
            await server.close()
            assert (tmp_path / "control").exists()
            second = ControlServer(context, RuntimeLayout(tmp_path))
            try:
                with pytest.raises(fs.SocketBusy):
                    second.claim()
            finally:
                second.socket.close()
        finally:
            newer.close()
            context.term()

    asyncio.run(main())


def test_a_socket_file_is_born_private_whatever_the_umask(tmp_path) -> None:
    """libzmq's bind() makes an ``ipc://`` file with the umask's mode, in the calling
    thread; the daemon chmods it after. Under umask 0 it was born 0777 (any user could
    connect until the chmod); bound inside ``born_private`` it is born 0600."""
    context = zmq.Context()
    old = os.umask(0)
    try:
        for name, guard in (("open", contextlib.nullcontext()), ("private", fs.born_private())):
            sock = context.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            with guard:
                sock.bind(f"ipc://{tmp_path}/{name}")
            mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
            assert mode == (0o777 if name == "open" else 0o600), (name, oct(mode))
            sock.close()
        assert os.umask(0) == 0, "the umask is given back"
    finally:
        os.umask(old)
        context.term()
