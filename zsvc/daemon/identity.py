"""Whom a task runs as: never with more privilege than its transaction's owner (issue 15).

A member of group ``zsvc`` may create transactions on a root daemon; were their tasks
run as written, a ``<command>`` would run as root and membership would be root. So the
daemon rewrites each task's :class:`~zsvc.config.model.ProcessSettings` for its owner
before anything is launched, and both runners carry out the result as they carry out
any settings (setuid in the local runner's wrapper or zygote child, ``User=``/``Group=``
on a transient unit):

* root's transactions run as written (as root unless ``<exec user>`` says otherwise);
* a non-root owner's tasks run as the owner: ``user`` is the owner's uid, ``group`` the
  owner's primary group (the one the kernel reported for the connection), and the
  supplementary groups the owner's own (the runners' initgroups);
* a ``user``, ``group`` or ``supplementary_groups`` naming anyone else is refused unless
  the daemon's settings grant that identity to the owner (``may_run_as``); a granted
  user comes with its own groups, as ``User=`` does;
* settings that only a privileged process may make are refused for a non-root owner: a
  negative ``nice``, and a ``limit_nofile`` above the daemon's own hard limit (what a
  task gets without the setting: raising a hard limit is a privilege). Limits that only
  restrict (``memory_max``, ``tasks_max``, ``umask``, ``no_new_privileges`` …) and
  ``private_tmp`` (mounted by the runner before privileges are dropped; the task sees
  only its own empty /tmp) are the owner's to set.

:func:`effective_process` is a function of its arguments: user and group look-ups come
through a :class:`Directory`, the system's by default, a table in the tests.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from zsvc.config.model import ProcessSettings
from zsvc.daemon.access import Principal
from zsvc.errors import OperationFailed

SETTINGS_FILE = "/etc/zsvc/zsvc.conf"
"""Where an administrator grants identities (named in refusals)."""


class IdentityRefused(OperationFailed):
    """A task's settings would run it with more privilege than its owner has: ``zsvc
    start`` prints the message and exits 1, as for any task that cannot run."""


class Directory(Protocol):
    """The user and group databases, as far as the policy needs them."""

    def uid_of(self, user: str) -> int | None:
        """The uid of a user name or number (a number needs no entry); None: unknown."""

    def gid_of(self, group: str) -> int | None:
        """The gid of a group name or number (a number needs no entry); None: unknown."""

    def user_name(self, uid: int) -> str:
        """The user's name, or the uid as text without a passwd entry."""

    def group_name(self, gid: int) -> str:
        """The group's name, or the gid as text without an entry."""

    def groups_of(self, uid: int, gid: int | None) -> frozenset[int]:
        """Every gid of the user: *gid* and its groups in the group database."""


class SystemDirectory:
    """This host's passwd and group databases (NSS)."""

    def uid_of(self, user: str) -> int | None:
        if user.isdigit():
            return int(user)
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            return None

    def gid_of(self, group: str) -> int | None:
        if group.isdigit():
            return int(group)
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            return None

    def user_name(self, uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    def group_name(self, gid: int) -> str:
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)

    def groups_of(self, uid: int, gid: int | None) -> frozenset[int]:
        own = {gid} if gid is not None else set()
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return frozenset(own)
        return frozenset({*own, *os.getgrouplist(entry.pw_name, entry.pw_gid)})


SYSTEM = SystemDirectory()

MayRunAs = Callable[[str, bool], bool]
"""Whether the settings grant the owner an identity: ``(name, is_user)`` (a user name,
or a group name: membership of a group never grants the user of the same name)."""


@dataclass(frozen=True)
class _Ask:
    """One question about one task: the words of its refusals."""

    task: str
    transaction: str
    owner: Principal

    def refuse(self, setting: str, value: object, why: str) -> IdentityRefused:
        return IdentityRefused(
            f"task {self.task}: {setting} {value!r} {why}: {_named(self.transaction)}"
            f" belongs to {self.owner.name}"
        )

    def not_yours(self, setting: str, value: str) -> IdentityRefused:
        error = self.refuse(setting, value, "is not yours to run as")
        return IdentityRefused(
            f"{error.message}; a grant run_as.{value} = user:{self.owner.name} in"
            f" {SETTINGS_FILE} [access] allows it (<exec {setting}>)"
        )


def effective_process(
    owner: Principal,
    process: ProcessSettings,
    may_run_as: MayRunAs,
    *,
    task: str,
    transaction: str,
    hard_nofile: int | None = None,
    directory: Directory = SYSTEM,
) -> ProcessSettings:
    """The settings task *task* of *owner*'s transaction runs with.

    *may_run_as* says whether the settings grant *owner* an identity (:data:`MayRunAs`);
    *hard_nofile* is the daemon's own hard open-files limit (None: no ceiling).
    Raises :class:`IdentityRefused` naming the task and the setting.
    """
    if owner.is_root:
        return process
    ask = _Ask(task, transaction, owner)
    if owner.uid is None:
        raise IdentityRefused(
            f"task {task}: {_named(transaction)} belongs to {owner.name}, which acts as"
            " no user of this host: its tasks cannot run (map the key to a local user)"
        )
    _check_privileges(ask, process, hard_nofile)
    if process.user is None:
        user, group = str(owner.uid), process.group or _owner_gid(owner)
        allowed = directory.groups_of(owner.uid, owner.gid)
    else:
        user, group = process.user, process.group
        allowed = _user_groups(ask, process.user, may_run_as, directory)
    if group is not None:
        _check_group(ask, "group", group, allowed, may_run_as, directory)
    for name in process.supplementary_groups:
        _check_group(ask, "supplementary_groups", name, allowed, may_run_as, directory)
    return dataclasses.replace(process, user=user, group=group)


def _named(transaction: str) -> str:
    """How a refusal names the transaction: a new one may have no id yet (it is made
    only once its tasks may run)."""
    return f"transaction {transaction}" if transaction else "the new transaction"


def _owner_gid(owner: Principal) -> str | None:
    return str(owner.gid) if owner.gid is not None else None


def _check_privileges(ask: _Ask, process: ProcessSettings, hard_nofile: int | None) -> None:
    """What no grant of an identity gives: a raised priority or a raised hard limit."""
    if process.nice is not None and process.nice < 0:
        raise ask.refuse("nice", process.nice, "needs root (a negative nice raises priority)")
    limit = process.limit_nofile
    if limit is not None and hard_nofile is not None and limit > hard_nofile:
        raise ask.refuse(
            "limit_nofile",
            limit,
            f"is above the daemon's hard limit {hard_nofile}, which only root may raise",
        )


def _user_groups(
    ask: _Ask, user: str, may_run_as: MayRunAs, directory: Directory
) -> frozenset[int]:
    """The groups a task run as *user* may have: the owner's when *user* is the owner,
    the granted user's own when it is granted; a refusal otherwise."""
    uid = directory.uid_of(user)
    if uid is None:
        raise ask.refuse("user", user, "does not exist on this host")
    assert ask.owner.uid is not None
    mine = directory.groups_of(ask.owner.uid, ask.owner.gid)
    if uid == ask.owner.uid:
        return mine
    name = directory.user_name(uid)
    if not may_run_as(name, True):
        raise ask.not_yours("user", name)
    return mine | directory.groups_of(uid, None)


def _check_group(
    ask: _Ask,
    setting: str,
    group: str,
    allowed: Iterable[int],
    may_run_as: MayRunAs,
    directory: Directory,
) -> None:
    gid = directory.gid_of(group)
    if gid is None:
        raise ask.refuse(setting, group, "does not exist on this host")
    if gid in allowed:
        return
    name = directory.group_name(gid)
    if not may_run_as(name, False):
        raise ask.not_yours(setting, name)
