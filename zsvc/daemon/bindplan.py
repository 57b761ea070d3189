"""Where and how the bus binds an endpoint: the policy in one pure function.

Without CURVE keys TCP is bound on loopback only (every local user can reach it: the
public side of :mod:`zsvc.daemon.bus`), and not at all when the bus carries commands;
``ipc://`` is bound as written, its file's permissions deciding who may connect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zsvc.daemon import trust

__all__ = ["LOOPBACK_HOSTS", "WILDCARD_HOSTS", "BindError", "BindPlan", "plan_bind"]


class BindError(Exception):
    """An endpoint of the bus could not be bound."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("*", "0.0.0.0", "[::]")


@dataclass(frozen=True)
class BindPlan:
    """How one endpoint is bound: where, and whether CURVE guards it."""

    endpoint: str
    curve: bool

    @property
    def trusted(self) -> bool:
        """Whether whoever connects here was vetted: by the file system (``ipc://``) or
        by a CURVE handshake. Plain TCP is open to every local user: the public side."""
        return self.curve or self.endpoint.startswith(trust.TRUSTED_TRANSPORTS)


def plan_bind(endpoint: str, *, curve: bool, open_commands: bool = False) -> BindPlan:
    """Where and how to bind the bus endpoint *endpoint* (pure: the policy in one place).

    * ``ipc://`` and ``inproc://``: as written; the file system guards them.
    * TCP with CURVE keys (*curve*): as written, wildcard included, CURVE.
    * TCP without keys: loopback only (the seed's ``tcp://*:5557`` binds
      127.0.0.1), and not at all when the bus carries commands
      (*open_commands*, ``[bus] context_commands``): every local user can
      reach loopback.
    """
    if not endpoint.startswith("tcp://"):
        return BindPlan(endpoint, curve=False)
    if curve:
        return BindPlan(endpoint, curve=True)
    hint = "create keys with 'zsvc keys' and set curve_keys in [bus] of /etc/zsvc/zsvc.conf"
    if open_commands:
        raise BindError(
            f"refusing to bind the bus on {endpoint} without CURVE keys: context_commands"
            f" is on, so anyone reaching the port could command zsvc; {hint}"
        )
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if host in WILDCARD_HOSTS:
        return BindPlan(f"tcp://127.0.0.1:{port}", curve=False)
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return BindPlan(endpoint, curve=False)
    raise BindError(
        f"refusing to bind the bus on {endpoint}: without CURVE keys TCP endpoints are"
        f" bound on loopback (127.0.0.1) only; {hint}"
    )


PRIVILEGED_PORTS = 1024
"""TCP ports below this one are root's to bind (without CAP_NET_BIND_SERVICE)."""


def owner_refusal(endpoint: str, uid: int) -> str | None:
    """Why a transaction of the non-root user *uid* may not have the daemon bind
    *endpoint*; None when that user could bind it themselves.

    The daemon binds as root: a member's context must not make it take a port below
    1024 (root's) or put a socket file where only root may write (``ipc:///etc/x``), so an
    ``ipc://`` path must be in a directory *uid* owns. Abstract ``ipc://@`` names and TCP
    ports from 1024 up are anyone's.
    """
    if endpoint.startswith("tcp://"):
        port = endpoint.rpartition(":")[2]
        if port.isdecimal() and int(port) < PRIVILEGED_PORTS:
            return f"{endpoint}: ports below {PRIVILEGED_PORTS} are root's to bind"
        return None
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    parent = Path(endpoint[len("ipc://") :]).absolute().parent
    try:
        owner = os.stat(parent).st_uid
    except OSError as exc:
        return f"{endpoint}: its directory {parent} cannot be used ({exc.strerror})"
    if owner != uid:
        return (
            f"{endpoint}: the daemon binds as root, so a socket file of your transaction must"
            f" be in a directory you own ({parent} is not yours)"
        )
    return None
