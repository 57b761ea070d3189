"""Where zsvc keeps its sockets (runtime dir) and its state (state dir).

One module decides, so the daemon, the CLI and the tests agree. Explicit
arguments win, then ``ZSVC_RUNTIME_DIR``/``ZSVC_STATE_DIR``, then the
defaults: ``/run/zsvc`` and ``/var/lib/zsvc`` for root, the XDG base
directories for everybody else.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

SYSTEM_RUNTIME_DIR = Path("/run/zsvc")
"""The system daemon's (zsvc.service, RuntimeDirectory=zsvc): mode 0750, group zsvc."""


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
    return Path(f"/tmp/zsvc-{os.geteuid()}")


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
    if (own / "control").exists() or not SYSTEM_RUNTIME_DIR.is_dir():
        return own
    return SYSTEM_RUNTIME_DIR


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

    @functools.cached_property
    def logs(self) -> Path:
        return self.root / "logs"

    def task_log(self, transaction: str, task_id: str) -> Path:
        return self.logs.joinpath(transaction, f"{task_id}.log")
