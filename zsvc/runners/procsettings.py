"""A task's process settings as plain numbers, and how a forked child takes them on.

The local runner resolves a task's :class:`~zsvc.config.model.ProcessSettings` once, in
the daemon (:mod:`zsvc.runners.localsettings`: names become ids, refusals are made
there), into a :class:`Resolved`. That one value then travels two ways: into the shell
wrapper's command line for an executed task (:func:`zsvc.runners.localexec.wrap_exec`),
or as JSON to the zygote, whose forked child calls :func:`apply` before the task's
module is imported. Numbers, not names: the child never looks a user up (NSS in a
forked child of a threaded process is not safe, and the answer could differ from the
one the daemon checked).

Standard library only (and :mod:`zsvc.runners.exitcodes`, which is too): the zygote
imports it.

The order in :func:`apply` is systemd's (exec_child): what needs root first (limits,
nice, the mount namespace), then the groups, the gid, the uid, and ``no_new_privs``
last, as it does not stop the uid change but would be pointless before it.
"""

from __future__ import annotations

import ctypes
import os
import resource
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from zsvc.runners.exitcodes import (
    EXIT_GROUP,
    EXIT_LIMITS,
    EXIT_NAMESPACE,
    EXIT_NICE,
    EXIT_NO_NEW_PRIVILEGES,
    EXIT_USER,
)

PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp")
"""What ``PrivateTmp=`` replaces, each with a fresh tmpfs (systemd: the same two)."""
TMPFS_OPTIONS = "mode=1777"
"""The tmpfs's data (its flags: nosuid, nodev): world-writable and sticky, as /tmp is."""

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class Resolved:
    """What the task's first process does to itself before the task runs; None: nothing.

    ``groups`` is the whole supplementary list (the user's own groups, as initgroups(3)
    finds them, and ``SupplementaryGroups=``), set only when not None.
    """

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None
    umask: int | None = None
    nice: int | None = None
    nofile: int | None = None
    """Both the soft and the hard open-files limit (``LimitNOFILE=N``)."""
    no_new_privs: bool = False
    private_tmp: bool = False

    @property
    def empty(self) -> bool:
        """True when there is nothing to do (the launch is exactly as without settings)."""
        return self == NOTHING

    @property
    def credentials(self) -> bool:
        """True when the process changes its uid, gid or groups (or sets no_new_privs)."""
        return (
            self.uid is not None
            or self.gid is not None
            or self.groups is not None
            or self.no_new_privs
        )

    def to_wire(self) -> dict[str, Any]:
        """JSON for the zygote's request."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Resolved:
        groups = data.get("groups")
        return cls(**{**data, "groups": None if groups is None else tuple(groups)})


NOTHING = Resolved()


class SetupFailed(Exception):
    """A setting could not be applied: the child exits with *code* (systemd's)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def apply(settings: Resolved) -> None:
    """Take *settings* on, in this (freshly forked, single-threaded) process.

    Raises :class:`SetupFailed` with systemd's exit status for the step that failed.
    """
    if settings.umask is not None:
        os.umask(settings.umask)
    _step(EXIT_LIMITS, "set the open-files limit", _set_nofile, settings.nofile)
    if settings.nice is not None:
        _step(EXIT_NICE, "set the nice level", os.setpriority, os.PRIO_PROCESS, 0, settings.nice)
    if settings.private_tmp:
        _step(EXIT_NAMESPACE, "make a private /tmp", private_tmp)
    if settings.groups is not None:
        _step(EXIT_GROUP, "set the supplementary groups", os.setgroups, list(settings.groups))
    if settings.gid is not None:
        _step(EXIT_GROUP, "set the group", os.setresgid, *(settings.gid,) * 3)
    if settings.uid is not None:
        _step(EXIT_USER, "set the user", os.setresuid, *(settings.uid,) * 3)
    if settings.no_new_privs:
        _step(EXIT_NO_NEW_PRIVILEGES, "set no_new_privs", _libc_call, "prctl",
              _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # fmt: skip


def _step(code: int, what: str, function: Any, *args: Any) -> None:
    if args and args[0] is None:
        return
    try:
        function(*args)
    except OSError as exc:
        raise SetupFailed(code, f"cannot {what}: {exc.strerror or exc}") from exc


def _set_nofile(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _libc_call(name: str, *args: Any) -> None:
    """Call libc's *name* (ints and bytes only); OSError with its errno on failure."""
    function = getattr(ctypes.CDLL(None, use_errno=True), name)
    if function(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def private_tmp() -> None:
    """A mount namespace of this process's own, with a fresh tmpfs on /tmp and /var/tmp.

    What ``unshare --mount --propagation private`` and two ``mount -t tmpfs`` do for an
    executed task (os.unshare is Python 3.12): nothing mounted here reaches the host.
    """
    _libc_call("unshare", _CLONE_NEWNS)
    _libc_call("mount", None, b"/", None, _MS_REC | _MS_PRIVATE, None)
    for path in PRIVATE_TMP_DIRS:
        _libc_call("mount", b"tmpfs", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                   TMPFS_OPTIONS.encode())  # fmt: skip
