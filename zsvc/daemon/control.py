"""The control socket: where ``zsvc`` commands reach the daemon, and who may send them.

A ROUTER socket on the runtime directory's ``control`` path. Each request
(:mod:`zsvc.commands`) is answered in a job of its own, so a ``start`` that
waits for readiness does not hold up a ``status`` behind it; every request
gets exactly one reply, also when the handler fails or the daemon closes
under it. Who may connect is decided by the file system: the socket is
mode 0660 in a directory of mode 0750, both of group ``zsvc`` when the
daemon runs as root (:func:`share_with_group`).

The daemon's commands are not here: each decoded request goes to a
*handler* (``Daemon.call``), which the bus's context commands use too, with
the :class:`~zsvc.daemon.access.Principal` who sent it: taken from the
kernel (the connection's ``SO_PEERCRED``, which libzmq gives each message as
its ``Peer-Address``), never from the message. A request whose sender cannot
be established is refused before any handler sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from zsvc import commands
from zsvc.daemon import fs
from zsvc.daemon.access import PEER_ADDRESS, Principal, from_peer_address
from zsvc.daemon.fs import CONTROL_GROUP
from zsvc.errors import ErrorCode, NotYours, OperationFailed, ZsvcError
from zsvc.jobs import Jobs
from zsvc.paths import RuntimeLayout
from zsvc.protocol import MAX_REQUEST_WIRE_BYTES

log = logging.getLogger("zsvc.daemon")


Handler = Callable[[str, dict[str, Any], Principal], Awaitable[Any]]
"""Runs one command: its name, its checked arguments and who asks; returns the result.
Any principal: a local user's (ipc://) or an admitted CURVE key's (``key`` set)."""

Identify = Callable[[zmq.Frame], Principal | None]
"""Who sent a received payload frame; None when it cannot be established (refused)."""

UNKNOWN_SENDER = (
    "refused: the daemon could not establish who sent this request (the connection carries"
    " no peer credentials)"
)


def peer_credentials(frame: zmq.Frame) -> Principal | None:
    """The sender of an ``ipc://`` message: the kernel's uid and gid of its connection."""
    try:
        value = frame.get(PEER_ADDRESS)
    except zmq.ZMQError:  # no such property on this frame (not received from a socket)
        return None
    return from_peer_address(value if isinstance(value, str) else None)


def share_with_group(path: Path) -> None:
    """Give *path* to group ``zsvc`` when we are root and the group exists.

    The runtime directory's mode (0750) and group decide who may reach the
    control socket: membership is the permission.
    """
    if os.geteuid() != 0:
        return
    try:
        gid = grp.getgrnam(CONTROL_GROUP).gr_gid
    except KeyError:
        return
    os.chown(path, 0, gid)


class ControlServer:
    """The daemon's control socket: decodes requests, runs them through *handler*, replies.

    Made before the daemon starts (nothing listens yet); :meth:`start` binds it
    once the daemon can answer, the last step before READY=1, so a client that
    reaches the socket always meets a daemon that has re-adopted its tasks.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        runtime: RuntimeLayout,
        identify: Identify = peer_credentials,
    ):
        self.runtime = runtime
        self.identify = identify
        """Who sent a request: the ipc:// peer's credentials unless told otherwise."""
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Bounds what one message costs before it is read; anything up to it is answered (a
        # request over MAX_REQUEST_BYTES with a bad-request the client matches by its id).
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_WIRE_BYTES)
        self._file: fs.SocketFile | None = None
        """The control socket file as bound: only that file is removed at close."""
        self._jobs = Jobs("control")
        """The serving loop and one job per request in flight."""

    def claim(self) -> None:
        """Make sure the control path is free to bind, before the daemon takes any task.

        libzmq unlinks an ``ipc://`` path before binding it: a live daemon's
        socket there would be stolen. Raises :class:`~zsvc.daemon.fs.SocketBusy`
        when something answers on it; a stale file is removed.
        """
        fs.claim_socket_path(self.runtime.control)

    def start(self, handler: Handler) -> None:
        """Bind the socket (mode 0660, group ``zsvc``) and serve requests through *handler*."""
        with fs.born_private():
            self.socket.bind(self.runtime.control_endpoint)
        os.chmod(self.runtime.control, 0o660)
        share_with_group(self.runtime.control)
        self._file = fs.SocketFile(self.runtime.control)
        self._jobs.spawn(self._serve(handler), "serve")

    async def close(self) -> None:
        """Answer the requests in flight with an error, then close and remove the socket
        (the file this daemon bound only: a newer daemon's at the same path stays)."""
        await self._jobs.cancel_all()
        self.socket.close()
        if self._file is not None:
            self._file.remove()
            self._file = None

    async def _serve(self, handler: Handler) -> None:
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            if len(frames) != 2:
                log.warning("ignored a control message of %d frames", len(frames))
                continue
            identity, payload = frames
            principal = self.identify(payload)
            self._jobs.spawn(
                self._answer(handler, identity.bytes, payload.bytes, principal), "request"
            )

    async def _answer(
        self, handler: Handler, identity: bytes, payload: bytes, principal: Principal | None
    ) -> None:
        """Reply once to one request, whatever happens to it; a bug is logged, never fatal."""
        request_id, command, args = commands.decode_request(payload)
        request_id = request_id or ""
        if isinstance(args, ZsvcError):
            log.warning("bad control request: %s", args)
            reply = commands.encode_reply(request_id, error=args.to_wire())
        elif principal is None:
            log.warning("refused a control request (%s) from an unknown sender", command.name)
            reply = commands.encode_reply(request_id, error=NotYours(UNKNOWN_SENDER).to_wire())
        else:
            assert command is not None  # decode_request gives args only with their command
            try:
                result = await handler(command.name, args, principal)
                reply = commands.encode_reply(request_id, result=result)
            except ZsvcError as exc:
                reply = commands.encode_reply(request_id, error=exc.to_wire())
            except asyncio.CancelledError:
                # The daemon is closing: say so rather than leave the client waiting.
                error = OperationFailed("the daemon stopped before the command finished")
                await self._send(identity, commands.encode_reply(request_id, error=error.to_wire()))
                raise
            except Exception as exc:  # a bug must not kill the daemon nor hang the client
                log.exception("internal error in %s", command.name)
                error = ZsvcError(f"internal error: {exc!r}", code=ErrorCode.INTERNAL)
                reply = commands.encode_reply(request_id, error=error.to_wire())
        await self._send(identity, reply)

    async def _send(self, identity: bytes, reply: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):
            await self.socket.send_multipart([identity, reply])
