"""The daemon's files: directories, private files and socket files, made safely.

Three rules, each closing a hole found under attack (issue 19):

* Modes are explicit (:func:`zsvc.paths.plan_modes`), never the umask's: a
  directory or file the daemon makes or opens gets its planned mode.
* A directory is verified before use (:func:`zsvc.paths.dir_problem`): one
  that another user owns or may write to is refused with what to do, never
  repaired, since their files may already be in it. Files in it are opened
  with ``O_NOFOLLOW`` and checked on their descriptor, so a planted symlink
  cannot make the daemon truncate or chmod somebody else's file.
* A socket file is removed only by whoever bound it, and only while it is
  still the same file (held since the bind: :class:`SocketFile`): a daemon never
  removes a newer daemon's socket by path. Binding over a socket file that
  something still answers on is refused rather than stolen (libzmq unlinks
  an ``ipc://`` path before binding it, live or not).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from zsvc.paths import Modes, dir_problem, plan_modes, plan_runtime_modes

CONTROL_GROUP = "zsvc"
"""Members of this group may control a daemon run by root (DESIGN §2)."""


@contextlib.contextmanager
def born_private() -> Iterator[None]:
    """Files made inside are born 0600 whatever the umask (``umask 0177``, given back
    after): a socket file is made by bind() with the umask's mode and chmod-ed to its
    planned mode only after, and under a daemon started with umask 0 other users could
    connect in between, since root's runtime directory may be searched (notify)."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


class UnsafePath(Exception):
    """A directory or file the daemon must not use; the message says why and what to do."""


class SocketBusy(Exception):
    """A socket file that something still answers on: binding it would steal it."""


def control_gid() -> int | None:
    """The gid of group ``zsvc`` when we are root and it exists (None otherwise)."""
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(CONTROL_GROUP).gr_gid
    except KeyError:
        return None


def daemon_modes() -> Modes:
    """The modes this process's daemon gives its files."""
    return plan_modes(os.geteuid(), control_gid())


def runtime_modes() -> Modes:
    """The modes this process's daemon gives its runtime directory (the notify socket's
    directory: :data:`zsvc.paths.RUNTIME_TRAVERSE`)."""
    return plan_runtime_modes(os.geteuid(), control_gid())


def prepare_dir(path: Path, modes: Modes, *, private: bool = False, advice: str = "") -> None:
    """Make *path* (its parents as needed) or verify it, then give it the planned mode.

    The last component is never followed: a symlink is refused. *private*
    (a fallback in /tmp) also refuses a directory that was open to others.
    Raises :class:`UnsafePath` whose message ends with *advice*.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, modes.dir)
    info = os.lstat(path)
    problem = dir_problem(info, os.geteuid(), private=private)
    if problem is not None:
        raise UnsafePath(f"refusing to use {path}: {problem}; {advice}".rstrip("; "))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise UnsafePath(f"refusing to use {path}: it was replaced while checked")
        _set_mode(fd, info, modes.dir, modes.group)
    finally:
        os.close(fd)


def open_file(path: Path, modes: Modes, flags: int = os.O_RDWR) -> int:
    """Open (or create) the regular file *path* without following a symlink; returns the fd.

    The file gets the planned mode and group. One that is not a regular file
    of ours, or has other names (a hard link to somebody's file), is refused
    with :class:`UnsafePath`.
    """
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, modes.file)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"refusing to open {path}: it is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "it is not a regular file"
        elif info.st_uid != os.geteuid():
            problem = f"it belongs to uid {info.st_uid}"
        elif info.st_nlink != 1:
            problem = f"it has {info.st_nlink} names (hard links)"
        if problem is not None:
            raise UnsafePath(f"refusing to open {path}: {problem}; remove it")
        _set_mode(fd, info, modes.file, modes.group)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _set_mode(fd: int, info: os.stat_result, mode: int, group: int | None) -> None:
    """Give the open *fd* its planned mode and group (only what differs).

    Done on the descriptor that was checked, not the path, which another
    process could have swapped since."""
    if group is not None and info.st_gid != group:
        os.fchown(fd, -1, group)
    if stat.S_IMODE(info.st_mode) != mode or (group is not None and info.st_gid != group):
        os.fchmod(fd, mode)  # after fchown, which may clear setgid bits
    return None


# --- socket files ------------------------------------------------------------------


def claim_socket_path(path: Path) -> None:
    """Make way for binding a unix socket at *path*, or refuse with :class:`SocketBusy`.

    Something answering on it (another daemon) keeps it; a socket nothing
    answers on is left over from a dead process and is removed; anything
    else (a regular file, a directory) is not ours to delete.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketBusy(f"{path} exists and is not a socket; remove it if it is not needed")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        pass  # stale: nobody listens
    except OSError as exc:
        raise SocketBusy(f"{path} cannot be probed ({exc.strerror}); remove it if stale") from None
    else:
        raise SocketBusy(
            f"{path} is in use by another process (another zsvc daemon?); stop it first"
        )
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class SocketFile:
    """A socket file as this process bound it, held so that only it is ever removed.

    The file is held open (``O_PATH``): its inode cannot be freed, so no newer
    file at the same path can have its (device, inode), which an inode noted
    at bind alone cannot promise (a freed inode number is often reused at
    once, the next socket bound there included).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        info = os.fstat(self._fd)
        self.identity = (info.st_dev, info.st_ino)

    def is_there(self) -> bool:
        """Whether the path still names this file."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == self.identity

    def remove(self) -> bool:
        """Unlink the path if it still names this file, and let go of it; True if removed.

        A newer daemon may have bound the same path since (its runtime directory
        was removed and made anew under us): its socket is not ours to remove.
        """
        try:
            if self._fd is None or not self.is_there():
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
                return True
            return False
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
