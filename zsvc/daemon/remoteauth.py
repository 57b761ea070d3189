"""Who a remote CLI is, and what it may ask: the pure half of the TCP control endpoint.

The daemon's ``[control]`` settings open a TCP control endpoint (``listen``), admitted
only over CURVE (the clients of ``[bus] curve_keys``), and say which local user each key
acts as (``act_as = alice:alice ci:deploy``). A request is then attributed to the key's
:class:`~zsvc.daemon.access.Principal`: with the local user's uid and gid when the key is
mapped (the owner rules and the tasks' identity then treat it as that user), else as
nobody here (``key:NAME``, no uid). A key acting as nobody never starts anything: a
transaction's tasks run as its owner, and a key nobody mapped must not create processes
under an identity no one chose. Whatever else it asks is up to the owner rules
(:mod:`zsvc.daemon.access`): without an ``[access]`` grant to ``key:NAME`` that is reading
(:data:`READ_ONLY`), as it owns nothing.

Kept free of sockets and of I/O but the user database, so that the settings parser can use
its converters and the rules are tested without a daemon (:mod:`zsvc.daemon.remote` binds).
"""

from __future__ import annotations

import pwd
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from zsvc.curve import CLIENT_NAME
from zsvc.daemon.access import Principal

USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
"""A local user's name: what useradd accepts, without the trailing '$' of machine accounts."""
_TCP = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9*.-]+):(?P<port>[0-9]{1,5})")

READ_ONLY = frozenset({"ping", "status", "logs"})
"""The commands that change nothing (logged at DEBUG when remote: a poller must not fill
the journal)."""
NEEDS_IDENTITY = frozenset({"start"})
"""What a key acting as nobody may never ask, grants or not: it would run tasks as no one."""


def tcp_endpoint(value: str) -> str:
    """``[control] listen``: a ``tcp://HOST:PORT`` endpoint (HOST a name, an address,
    ``[v6]`` or ``*``; PORT 1-65535); ValueError says what is wrong."""
    match = _TCP.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not tcp://HOST:PORT (e.g. tcp://0.0.0.0:5560)")
    if not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{value!r}: port {match['port']} is not 1-65535")
    return value


def act_as(value: str) -> tuple[tuple[str, str], ...]:
    """``[control] act_as``: ``KEY:USER`` pairs separated by blanks, each key once."""
    pairs: dict[str, str] = {}
    for item in value.split():
        key, colon, user = item.partition(":")
        if not colon or not CLIENT_NAME.fullmatch(key) or not USER_NAME.fullmatch(user):
            raise ValueError(f"{item!r} is not KEY:USER (a key name of 'zsvc keys', a user)")
        if key in pairs:
            raise ValueError(f"key {key!r} is given twice")
        pairs[key] = user
    return tuple(pairs.items())


@dataclass(frozen=True)
class KeyPrincipals:
    """The principal of each admitted key: built once when the daemon starts."""

    by_key: Mapping[str, Principal]

    @classmethod
    def resolve(cls, admitted: Iterable[str], mapping: Iterable[tuple[str, str]]) -> KeyPrincipals:
        """Each admitted key's principal; a mapped user must exist here (KeyError names
        it: the daemon refuses to start rather than guess)."""
        users = dict(mapping)
        found: dict[str, Principal] = {}
        for key in admitted:
            user = users.get(key)
            if user is None:
                found[key] = Principal(None, None, f"key:{key}", key=key)
                continue
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise KeyError(f"act_as {key}:{user}: no user {user!r} on this host") from None
            found[key] = Principal(entry.pw_uid, entry.pw_gid, entry.pw_name, key=key)
        return cls(found)

    def of(self, user_id: str | None) -> Principal | None:
        """The principal of a request whose ZAP user id is *user_id* (the key's name);
        None when it names no admitted key (the request is refused)."""
        if not user_id:
            return None
        return self.by_key.get(user_id)


def may_ask(principal: Principal, command: str) -> bool:
    """A key acting as nobody here may not start; a mapped key asks as its user. The owner
    rules decide the rest, for both."""
    return principal.uid is not None or command not in NEEDS_IDENTITY


def describe(principal: Principal) -> str:
    """How the log names a remote client: its key, and whom it acts as."""
    if principal.uid is None:
        return f"key {principal.key} (as nobody)"
    return f"key {principal.key} (as {principal.name}, uid {principal.uid})"
