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
import grp
import os
import pwd
from dataclasses import dataclass
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
