"""Who asks the daemon, and whom a transaction belongs to (issue 15).

A :class:`Principal` is established by the daemon, never taken from a message: for the
``ipc://`` control socket, from the kernel's credentials of the connection (libzmq puts
``SO_PEERCRED``'s uid, gid and pid in each message's ``Peer-Address`` property,
``"<host>:<uid>:<gid>:<pid>"``, on Debian 12's libzmq 4.3.4 as on today's); for a CURVE
client over TCP, from the name of its admitted key. The creator of a transaction is its
owner (stored in the table with it).

The rules themselves (who may control which transaction, whom a transaction's tasks may
run as) are pure functions of a principal, an owner and the daemon's settings, tested
without a daemon.
"""

from __future__ import annotations

import contextlib
import fnmatch
import grp
import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

PEER_ADDRESS = "Peer-Address"
"""The libzmq message property that carries an ``ipc://`` peer's credentials."""


@dataclass(frozen=True)
class Principal:
    """Who sent a request, or owns a transaction.

    ``uid``/``gid`` come from the kernel for a local client; ``key`` is the admitted CURVE
    key's name for a remote one (its ``uid`` then says which local user it acts as, or is
    None when it acts as nobody here).
    """

    uid: int | None
    gid: int | None
    name: str
    """The user's name (or the uid as text when it has no passwd entry); ``key:NAME`` for
    a remote client acting as nobody here."""
    key: str | None = None

    @property
    def is_root(self) -> bool:
        return self.uid == 0 and self.key is None

    def groups(self) -> frozenset[str]:
        """The names of the user's groups in the group database (primary included): what
        a grant to ``group:NAME`` is checked against. The kernel gives the connection's
        uid and primary gid only."""
        if self.uid is None:
            return frozenset()
        names: set[str] = set()
        gids = {self.gid} if self.gid is not None else set()
        with contextlib.suppress(KeyError):  # a uid without a passwd entry: its gid only
            gids.update(_group_ids(self.name, self.gid))
        for gid in gids:
            try:
                names.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
        return frozenset(names)

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "name": self.name, "key": self.key}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Principal:
        return cls(data.get("uid"), data.get("gid"), str(data.get("name", "")), data.get("key"))

    @classmethod
    def local(cls, uid: int, gid: int) -> Principal:
        """A local user by its ids (its name looked up; the uid as text without an entry)."""
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(uid, gid, name)


ROOT = Principal(0, 0, "root")
"""The owner of transactions made before owners existed, and of root's own."""


def _group_ids(name: str, gid: int | None) -> list[int]:
    """``getgrouplist(3)`` of *name*; KeyError when the user is unknown."""
    pwd.getpwnam(name)  # KeyError for an unknown name, as the caller expects
    return os.getgrouplist(name, gid if gid is not None else 0)


def from_peer_address(value: str | None) -> Principal | None:
    """The principal of an ``ipc://`` connection from libzmq's ``Peer-Address``
    (``"<host>:<uid>:<gid>:<pid>"``); None when it carries no credentials (refuse then)."""
    if not value:
        return None
    parts = value.rsplit(":", 3)
    if len(parts) != 4 or not (parts[1].isdecimal() and parts[2].isdecimal()):
        return None
    return Principal.local(int(parts[1]), int(parts[2]))


# --- the rules: who may do what (the daemon's settings, [access]) ---------------------------

WHO_KINDS = ("user", "group", "key")
"""How a grant names whom it is for: ``user:NAME``, ``group:NAME`` or ``key:NAME`` (an
admitted CURVE client's key name)."""

GroupsOf = Callable[[Principal], frozenset[str]]
"""The group names of a principal (:meth:`Principal.groups`; tests give their own)."""


@dataclass(frozen=True)
class Who:
    """One ``kind:name`` token of a grant's value."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Grant:
    """``control[.PATTERN] = WHO…`` or ``run_as.IDENTITY = WHO…``: *whom* it is for.

    *target* is the transaction-id glob of a ``control.`` grant (None: the plain
    ``control`` key, every transaction and the daemon itself), or the user/group name
    (a glob too) of a ``run_as.`` grant.
    """

    target: str | None
    whom: tuple[Who, ...]


@dataclass(frozen=True)
class AccessRules:
    """Who may control which transaction, and whom tasks may run as, beyond the defaults.

    The defaults: root may everything; a transaction's owner may control it; a user may
    run tasks as themself and as their own groups. Grants only ever add to that.
    """

    control: tuple[Grant, ...] = ()
    run_as: tuple[Grant, ...] = ()
    groups_of: GroupsOf = field(default=Principal.groups, compare=False, repr=False)

    def may_control(self, principal: Principal, owner: Principal, transaction_id: str) -> bool:
        """Stop, restart, start again, forget: root, the owner, or a ``control`` grant."""
        if principal.is_root or same_principal(principal, owner):
            return True
        return any(
            (grant.target is None or fnmatch.fnmatchcase(transaction_id, grant.target))
            and self._names(principal, grant.whom)
            for grant in self.control
        )

    def may_administer(self, principal: Principal) -> bool:
        """Shut the daemon down or execute it anew: that stops or touches every
        transaction, so root or the plain ``control`` grant (all transactions) only."""
        if principal.is_root:
            return True
        return any(
            grant.target is None and self._names(principal, grant.whom) for grant in self.control
        )

    def may_run_as(self, principal: Principal, identity: str, *, user: bool = False) -> bool:
        """Whether *principal*'s transactions may run tasks as user or group *identity*:
        root any; others themself, their own groups, and what a ``run_as`` grant names.
        A glob never grants root: only ``run_as.root`` names it. *user*: *identity* is a
        user (a task's ``user=``), which membership of a group of that name does not give
        (group ``www-data`` is not user ``www-data``, group ``root`` not user ``root``)."""
        if principal.is_root:
            return True
        if principal.uid is not None and identity == principal.name:
            return True
        if principal.uid is not None and not user and identity in self.groups_of(principal):
            return True
        return any(
            _identity_matches(grant.target or "", identity) and self._names(principal, grant.whom)
            for grant in self.run_as
        )

    def _names(self, principal: Principal, whom: tuple[Who, ...]) -> bool:
        """Whether one of *whom* is *principal* (group tokens ask the group database once)."""
        groups: frozenset[str] | None = None
        for who in whom:
            if who.kind == "key":
                if principal.key == who.name:
                    return True
            elif principal.uid is None:
                continue  # a remote key acting as nobody here has no user nor groups
            elif who.kind == "user":
                if principal.name == who.name:
                    return True
            else:
                groups = self.groups_of(principal) if groups is None else groups
                if who.name in groups:
                    return True
        return False


def same_principal(a: Principal, b: Principal) -> bool:
    """The same local user (by uid), or the same remote key acting as nobody here."""
    if a.uid is not None or b.uid is not None:
        return a.uid == b.uid
    return a.key is not None and a.key == b.key


def _identity_matches(pattern: str, identity: str) -> bool:
    if identity == "root" or identity == "0":
        return pattern == identity  # named, never matched by a glob
    return fnmatch.fnmatchcase(identity, pattern)


def refusal(owner: Principal, transaction_id: str, verb: str) -> str:
    """The message of a refused command on someone else's transaction."""
    return (
        f"transaction {transaction_id} belongs to {owner.name}; only {owner.name}, root, or a"
        f" grant in /etc/zsvc/zsvc.conf [access] may {verb} it"
    )


def parse_whom(value: str) -> tuple[Who, ...]:
    """``user:NAME group:NAME key:NAME …`` (whitespace-separated); ValueError says what
    is wrong."""
    tokens = value.split()
    if not tokens:
        raise ValueError("names nobody; expected user:NAME, group:NAME or key:NAME")
    whom = []
    for token in tokens:
        kind, colon, name = token.partition(":")
        if not colon or kind not in WHO_KINDS or not name or ":" in name:
            raise ValueError(f"{token!r} is not user:NAME, group:NAME or key:NAME")
        whom.append(Who(kind, name))
    return tuple(whom)


def parse_grant(key: str, value: str) -> tuple[str, Grant]:
    """One ``[access]`` line: ``control``, ``control.PATTERN`` or ``run_as.IDENTITY`` with
    its whom; returns the rule's kind (``control`` or ``run_as``) and the grant."""
    kind, dot, target = key.partition(".")
    if kind not in ("control", "run_as") or (dot and not target) or (kind == "run_as" and not dot):
        raise ValueError(
            f"unknown setting {key!r} in [access]; known: control, control.PATTERN,"
            " run_as.USER_OR_GROUP"
        )
    if dot and any(c.isspace() for c in target):
        raise ValueError(f"{target!r}: a name or pattern has no spaces")
    return kind, Grant(target if dot else None, parse_whom(value))


def rules_of(grants: list[tuple[str, Grant]]) -> AccessRules:
    """The rules of the parsed ``[access]`` lines, in file order."""
    return AccessRules(
        control=tuple(grant for kind, grant in grants if kind == "control"),
        run_as=tuple(grant for kind, grant in grants if kind == "run_as"),
    )


def describe(principal: Principal) -> str:
    """How the daemon's log names who asked: the user and uid, and the key of a remote one."""
    if principal.key is not None:
        acting = (
            f"as {principal.name}, uid {principal.uid}"
            if principal.uid is not None
            else "as nobody"
        )
        return f"key {principal.key} ({acting})"
    return f"{principal.name} (uid {principal.uid})"


def may_report(
    sender: tuple[int, int] | None, owner: Principal, processes: Callable[[], Iterable[int]]
) -> bool:
    """Whether a bus report from *sender* ((uid, pid) from the kernel, None when unknown)
    may speak for a task of *owner*'s transaction whose processes are *processes()*.

    An ``updated`` report fires the task's triggers, which start and stop its
    transaction's tasks: control of that transaction. So it is believed from root, the
    owner, or a process of the task itself (a task run as a granted identity); a
    publisher the kernel did not name (TCP with CURVE) speaks for root's transactions
    only, as the bus's context commands do.
    """
    if sender is None:
        return owner.is_root
    uid, pid = sender
    return uid == 0 or uid == owner.uid or pid in processes()
