"""The TCP control endpoint: the CLI on another host, over CURVE only (issue 15).

Off unless ``[control] listen`` is set, and refused without ``[bus] curve_keys``
(:mod:`zsvc.daemon.settings`): a control socket on the network without authentication
would hand the machine to whoever reaches the port. The endpoint is a second
:class:`~zsvc.daemon.control.ControlServer` (same decoding, one reply per request, the
same handler) bound to TCP as a CURVE server; who sent a request comes from the
handshake, never from the message: the ZAP handler admits only the public keys in the
keys directory's ``clients/`` and names each connection by its key file's name, which
libzmq then gives every message as its ``User-Id`` property. That name becomes a
:class:`~zsvc.daemon.access.Principal` (:mod:`zsvc.daemon.remoteauth`: the local user
the key acts as, or nobody, who never starts anything). Every remote request is logged with
its key, so the daemon's log (the journal under systemd) says who asked for what.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from zsvc import curve
from zsvc.daemon.access import Principal
from zsvc.daemon.admission import HANDSHAKE_IVL_MS, TcpGuard
from zsvc.daemon.control import ControlServer, Handler
from zsvc.daemon.remoteauth import READ_ONLY, KeyPrincipals, describe, may_ask
from zsvc.errors import NotYours
from zsvc.paths import RuntimeLayout

log = logging.getLogger("zsvc.daemon")

USER_ID = "User-Id"
"""The libzmq message property that carries the ZAP handler's name for the peer."""


def key_names(clients: Path) -> dict[bytes, str]:
    """The admitted keys of *clients* (``NAME.key`` files), z85 public key -> NAME."""
    names: dict[bytes, str] = {}
    for name in curve.admitted(clients.parent):
        path = clients / f"{name}{curve.PUBLIC_SUFFIX}"
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:  # pyzmq's handler refuses such a file's key too
            log.warning("ignored the client key %s: %s", path, exc)
            continue
        names[public] = name
    return names


class NamingAuthenticator(AsyncioAuthenticator):
    """pyzmq's ZAP handler, answering with the admitted key's file name as the user id
    (pyzmq's own answer is the z85 key: correct, but no log reader knows whose it is).
    ``curve_user_id`` is called only for a key the handler admitted (pyzmq 24 and on)."""

    def __init__(self, context: zmq.asyncio.Context, names: dict[bytes, str]):
        super().__init__(context)
        self.names = names

    def curve_user_id(self, client_public_key: bytes) -> str:
        encoded = z85.encode(client_public_key)
        return self.names.get(encoded) or encoded.decode("ascii")


class RemoteControl(ControlServer):
    """The control endpoint on TCP: a CURVE server whose requests are their key's.

    :meth:`bind` comes early (a port in use stops the daemon before it takes a task);
    :meth:`start` serves once the daemon can answer, as the local socket does.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        runtime: RuntimeLayout,
        endpoint: str,
        principals: KeyPrincipals,
    ):
        super().__init__(context, runtime, identify=self._identify)
        self.endpoint = endpoint
        self.principals = principals
        self._guard = TcpGuard("control", [self.socket], self._shed, self._restore)
        """Its budget of TCP connections, as the bus's sides have (:mod:`~zsvc.daemon.
        admission`): each accepted connection holds a daemon fd before any handshake."""

    def _identify(self, frame: zmq.Frame) -> Principal | None:
        try:
            user_id = frame.get(USER_ID)
        except zmq.ZMQError:  # no ZAP user id: not a message of an admitted CURVE peer
            return None
        return self.principals.of(user_id if isinstance(user_id, str) else None)

    def claim(self) -> None:
        """Nothing to claim: a TCP port in use is refused by :meth:`bind` itself."""

    def bind(self, keys: curve.ServerKeys) -> None:
        """Bind *endpoint* as a CURVE server; OSError-like zmq.ZMQError when it cannot be."""
        keys.apply(self.socket)
        self.socket.setsockopt(zmq.IPV6, 1)  # tcp://[::]:P; IPv4 addresses work as before
        self.socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)  # silent peers go at 5 s
        self.socket.bind(self.endpoint)

    def _shed(self) -> list[str]:
        """A flood of connections: unbind (libzmq closes every accepted connection)."""
        self.socket.unbind(self.endpoint)
        return [self.endpoint]

    def _restore(self, endpoints: list[str]) -> None:
        for endpoint in endpoints:
            try:
                self.socket.bind(endpoint)
            except zmq.ZMQError as exc:  # taken meanwhile: remote control stays off
                log.error("cannot bind the control endpoint %s again: %s", endpoint, exc)

    async def close(self) -> None:
        self._guard.close()
        await super().close()

    def start(self, handler: Handler) -> None:
        """Serve the requests, each checked against what its key may ask, then logged."""

        async def guarded(command: str, args: dict[str, Any], principal: Principal) -> Any:
            if not may_ask(principal, command):
                log.warning(
                    "refused %s from %s: it acts as nobody here", command, describe(principal)
                )
                raise NotYours(
                    f"key {principal.key!r} acts as nobody on this host, and a transaction's"
                    " tasks run as its owner: [control] act_as in the daemon's settings maps"
                    " the key to a local user who may start"
                )
            # Reads at DEBUG: a dashboard polling status must not fill the journal.
            level = logging.DEBUG if command in READ_ONLY else logging.INFO
            log.log(level, "remote %s from %s", command, describe(principal))
            return await handler(command, args, principal)

        self._guard.start(asyncio.get_running_loop())
        self._jobs.spawn(self._serve(guarded), "serve")


class ControlEndpoints:
    """The local control socket and the TCP one, started together: the daemon starts its
    control (``start(handler)``) once, after re-adopting its tasks; each is closed by
    the daemon's exit stack, in the reverse order of their making."""

    def __init__(self, local: ControlServer, remote: RemoteControl):
        self.local = local
        self.remote = remote

    def start(self, handler: Handler) -> None:
        self.local.start(handler)
        self.remote.start(handler)
