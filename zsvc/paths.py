"""Where zsvc keeps its sockets (runtime dir) and its state (state dir).

One module decides, so the daemon, the CLI and the tests agree. Explicit
arguments win, then ``ZSVC_RUNTIME_DIR``/``ZSVC_STATE_DIR``, then the
defaults: ``/run/zsvc`` and ``/var/lib/zsvc`` for root, the XDG base
directories for everybody else.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from zsvc.errors import DaemonUnreachable
from zsvc.naming import instance_id

SYSTEM_RUNTIME_DIR = Path("/run/zsvc")
"""The system daemon's (zsvc.service, RuntimeDirectory=zsvc): mode 0751, group zsvc."""


def runtime_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The directory of the control, bus and notify sockets of the daemon this user runs."""
    if explicit:
        return Path(explicit).absolute()
    if env := os.environ.get("ZSVC_RUNTIME_DIR"):
        return Path(env).absolute()
    if os.geteuid() == 0:
        return SYSTEM_RUNTIME_DIR
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "zsvc"
    return fallback_runtime_dir(os.geteuid())


def fallback_runtime_dir(euid: int) -> Path:
    """A user's runtime directory when there is no XDG one: in /tmp, where anybody may
    have made it first, so the daemon verifies it (:func:`dir_problem`) before use."""
    return Path(f"/tmp/zsvc-{euid}")


def client_runtime_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The daemon a command talks to: the user's own if one runs, else the system daemon.

    Like docker's CLI and its system socket, a member of group zsvc reaches the
    system daemon without options; someone with a daemon of their own (``zsvc
    daemon`` as a user) reaches that one. With neither, the user's directory,
    so that the error says where a daemon of theirs would listen.
    """
    own = runtime_dir(explicit)
    if explicit or os.environ.get("ZSVC_RUNTIME_DIR") or own == SYSTEM_RUNTIME_DIR:
        return own
    _check_fallback(own)
    if (own / "control").exists() or not SYSTEM_RUNTIME_DIR.is_dir():
        return own
    return SYSTEM_RUNTIME_DIR


class UnsafeRuntimeDir(DaemonUnreachable):
    """The user's fallback runtime directory is not theirs alone: nothing is sent there."""

    hint = (
        "hint: remove it (as root if need be), or set XDG_RUNTIME_DIR or --runtime-dir"
        " to a directory only you may write to"
    )


def _check_fallback(path: Path) -> None:
    """Refuse the fallback in /tmp when another user made it or may write to it.

    Whoever made ``/tmp/zsvc-<uid>`` first can put their own ``control`` socket
    in it, and the CLI would send them every command, contexts and their
    secrets included, and believe their answers.
    """
    euid = os.geteuid()
    if path != fallback_runtime_dir(euid):
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if problem := dir_problem(info, euid, private=True):
        raise UnsafeRuntimeDir(
            f"refusing to use {path}: {problem}; another user may be waiting there for commands"
        )


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The directory of the transaction table and the task logs."""
    if explicit:
        return Path(explicit).absolute()
    if env := os.environ.get("ZSVC_STATE_DIR"):
        return Path(env).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/zsvc")
    if xdg := os.environ.get("XDG_STATE_HOME"):
        return Path(xdg) / "zsvc"
    return Path.home() / ".local" / "state" / "zsvc"


@dataclass(frozen=True)
class Modes:
    """The modes a daemon gives its directories and files, whatever its umask.

    The umask it was started with is the caller's (0022 in a shell), not a
    policy: a root daemon started with ``zsvc daemon --detach`` once left every
    stored context readable by every user.
    """

    dir: int
    file: int
    group: int | None
    """The group to give them (None: leave the process's own)."""


def plan_modes(euid: int, control_gid: int | None) -> Modes:
    """The modes for a daemon run by *euid* (pure).

    Root's daemon is the system one: group ``zsvc`` (*control_gid*, when the
    group exists) may reach its sockets and read its table and logs, as
    zsvc.service's ``RuntimeDirectoryMode``/``StateDirectoryMode=0750`` and
    ``UMask=0027`` give. A user's daemon keeps everything to that user.
    """
    if euid == 0:
        return Modes(dir=0o750, file=0o640, group=control_gid)
    return Modes(dir=0o700, file=0o600, group=None)


RUNTIME_TRAVERSE = 0o001
"""Search permission for everybody on root's runtime directory (no listing).

Why: a task that runs as another user (``setpriv``, uwsgi ``--uid``, postgres)
must reach the ``notify`` socket, as every user reaches systemd's
``/run/systemd/notify``; path lookup needs search permission on every directory
on the way. Nothing else becomes reachable: the control and bus sockets are
0660 root:zsvc (connect needs write permission), the lock 0640, ``spawned/``
0700, and without read permission nobody lists the directory. The socket is a
file in a directory only root writes to, so nobody can bind its path first
(an abstract name could be taken by anyone while the daemon reloads)."""


def plan_runtime_modes(euid: int, control_gid: int | None) -> Modes:
    """The modes of the runtime directory (pure): :func:`plan_modes`, plus
    :data:`RUNTIME_TRAVERSE` for root's daemon, whose tasks may run as other users.
    A user's daemon cannot start tasks as anybody else: its directory stays 0700."""
    modes = plan_modes(euid, control_gid)
    if euid == 0:
        return Modes(dir=modes.dir | RUNTIME_TRAVERSE, file=modes.file, group=modes.group)
    return modes


def dir_problem(info: os.stat_result, euid: int, *, private: bool = False) -> str | None:
    """Why a directory with the ``lstat()`` *info* is unsafe for *euid*'s daemon (pure;
    None: safe to use once its mode is set).

    A directory somebody else owns, or may write to, can hold their files where
    ours should be (a symlinked lock, a fake control socket): it is refused,
    not repaired. A *private* one (a fallback in /tmp) must also be closed to
    everyone else already, since it may have been open before we looked.
    """
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if info.st_uid != euid:
        return f"it belongs to uid {info.st_uid}, not to you (uid {euid})"
    if mode & 0o022:
        return f"other users may write to it (mode {mode:04o})"
    if private and mode & 0o077:
        return f"other users may enter it (mode {mode:04o}, not 0700)"
    return None


SYSTEM_KEYS_DIR = Path("/etc/zsvc/keys")
"""Where ``zsvc keys`` writes the system daemon's CURVE keys ([bus] curve_keys)."""


def keys_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The directory of the bus's CURVE keys: /etc/zsvc/keys for root, else XDG config."""
    if explicit:
        return Path(explicit).absolute()
    if os.geteuid() == 0:
        return SYSTEM_KEYS_DIR
    if xdg := os.environ.get("XDG_CONFIG_HOME"):
        return Path(xdg) / "zsvc" / "keys"
    return Path.home() / ".config" / "zsvc" / "keys"


@dataclass(frozen=True)
class RuntimeLayout:
    """The files inside a runtime directory.

    The paths the daemon uses at every task start are computed once
    (``cached_property``): a pathlib join costs more than one would think.
    """

    root: Path

    @property
    def control(self) -> Path:
        return self.root / "control"

    @functools.cached_property
    def bus_pub(self) -> Path:
        """Publishers connect here (the device's XSUB side)."""
        return self.root / "bus-pub"

    @functools.cached_property
    def bus_sub(self) -> Path:
        """Subscribers connect here (the device's XPUB side)."""
        return self.root / "bus-sub"

    def user_bus(self, uid: int) -> tuple[str, str]:
        """The (publishers', subscribers') ``ipc://`` pair of the tasks run as *uid*
        (``<exec user>``): the shared pair is group ``zsvc``'s, a task's user need not be
        in it; this one's files belong to *uid* (:meth:`BusDevice.bind_for_user`)."""
        return (f"ipc://{self.root}/bus-pub.{uid}", f"ipc://{self.root}/bus-sub.{uid}")

    @functools.cached_property
    def notify(self) -> Path:
        return self.root / "notify"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @functools.cached_property
    def spawned_dir(self) -> Path:
        """The directory of the zygote's pid notes (:meth:`spawned`)."""
        return self.root / "spawned"

    def make_spawned_dir(self) -> None:
        """Make :attr:`spawned_dir` 0700 whatever the umask: the zygote's pid notes are the
        daemon's alone, and root's runtime directory may be searched by all (notify)."""
        with contextlib.suppress(FileExistsError):
            self.spawned_dir.mkdir(mode=0o700)
        with contextlib.suppress(OSError):
            if not self.spawned_dir.is_symlink():
                self.spawned_dir.chmod(0o700)

    def spawned(self, invocation: str) -> Path:
        """Where the zygote notes the pid of a task it forked (see :mod:`zsvc.runners.zygote`)."""
        return self.spawned_dir / invocation

    @property
    def control_endpoint(self) -> str:
        return f"ipc://{self.control}"

    @functools.cached_property
    def bus_pub_endpoint(self) -> str:
        return f"ipc://{self.bus_pub}"

    @functools.cached_property
    def bus_sub_endpoint(self) -> str:
        return f"ipc://{self.bus_sub}"


@dataclass(frozen=True)
class StateLayout:
    """The files inside a state directory."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "zsvc.sqlite3"

    @property
    def lock(self) -> Path:
        """One daemon per state directory: the table is not shared, whatever the sockets."""
        return self.root / "daemon.lock"

    @functools.cached_property
    def instance(self) -> str:
        """The daemon of this state dir among others on the machine: the part of its unit
        and cgroup names (:func:`zsvc.naming.instance_id`) that keeps them its own."""
        return instance_id(self.root)

    @functools.cached_property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def daemon_log(self) -> Path:
        """Where ``zsvc daemon --detach`` sends the daemon's own output (capped as task logs)."""
        return self.root / "daemon.log"

    def task_log(self, transaction: str, task_id: str) -> Path:
        return self.logs.joinpath(transaction, f"{task_id}.log")
