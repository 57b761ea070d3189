"""Clients of the daemon: the control client (commands) and the bus client (messages).

Both are synchronous and cheap to import: the CLI and every task host load
this module, so it pulls in nothing but pyzmq and zsvc's small modules.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from zsvc import commands, protocol
from zsvc.errors import BadRequest, DaemonForbidden, DaemonUnreachable, ErrorCode, ZsvcError
from zsvc.paths import RuntimeLayout

if TYPE_CHECKING:  # task hosts import this module: keep zmq.auth out of their start-up
    from zsvc.curve import ClientKeys

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
LIVENESS_CHECK = 0.5
"""While waiting for a reply, how often to check that the daemon still listens."""


def socket_listening(path: Path) -> bool:
    """True when something accepts connections on the unix socket *path*.

    ZMQ's ``connect`` never fails on a dead ``ipc://`` endpoint, it just
    retries; probing the path first lets the CLI say "no daemon" at once
    instead of after a timeout.

    Raises :class:`DaemonForbidden` when the socket is there but this user
    may not connect to it: "no daemon" would send them looking for the wrong
    problem.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(os.fspath(path))
    except PermissionError:
        raise DaemonForbidden(f"permission denied: {path} (a zsvc daemon runs there)") from None
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _request(command: str, args: dict[str, Any]) -> tuple[str, bytes]:
    """A new request id and the encoded request; :class:`BadRequest` when it is too large.

    The daemon would refuse an oversized request too: saying so here costs
    no megabytes on the socket and names the limit before anything is sent.
    """
    if command not in commands.COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    request_id = uuid.uuid4().hex
    request = commands.encode_request(request_id, command, args)
    if len(request) > protocol.MAX_REQUEST_BYTES:
        raise BadRequest(
            f"{command}: request too large: {len(request)} bytes exceeds the limit of"
            f" {protocol.MAX_REQUEST_BYTES} bytes"
        )
    return request_id, request


class ControlClient:
    """Sends commands over the control socket and waits for their replies."""

    def __init__(self, runtime_dir: Path, timeout: float = DEFAULT_TIMEOUT):
        self.layout = RuntimeLayout(runtime_dir)
        self.timeout = timeout
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._daemon: tuple[int, int, int] | None = None
        """The control socket file connected to (device, inode, change time in ns): a new
        file is a new daemon (the inode number alone is often reused at once)."""

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            if not socket_listening(self.layout.control):
                raise DaemonUnreachable(f"no zsvc daemon is listening on {self.layout.control}")
            self._daemon = self._socket_file()
            self._context = zmq.Context()
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.layout.control_endpoint)
            self._socket = sock
        return self._socket

    def call(self, command: str, *, wait: float | None = None, **args: Any) -> Any:
        """Run *command* in the daemon and return its result.

        *wait* bounds the wait for the reply (default: the client's timeout).
        Raises :class:`ZsvcError` with the daemon's error code, or
        :class:`DaemonUnreachable` when nothing answers in time.
        """
        request_id, request = _request(command, args)
        sock = self._connect()
        sock.send(request)
        limit = self.timeout if wait is None else wait
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonUnreachable(
                    f"the zsvc daemon on {self.layout.control} did not answer '{command}'"
                    f" within {limit:g} s"
                )
            if not sock.poll(int(min(remaining, LIVENESS_CHECK) * 1000) + 1):
                # A long command (start waits for readiness) is fine; a daemon that
                # went away is not worth waiting for until the deadline.
                # A daemon that re-executed or restarted meanwhile binds a new socket
                # file: the request went to the old one and will never be answered.
                if not socket_listening(self.layout.control) or (
                    self._socket_file() != self._daemon
                ):
                    raise DaemonUnreachable(
                        f"the zsvc daemon on {self.layout.control} went away"
                        f" before answering '{command}'"
                    )
                continue
            reply = json.loads(sock.recv())
            if reply.get("id") != request_id and (reply.get("id") or reply.get("ok")):
                continue  # the late answer to an earlier, timed-out request
            # An error without an id answers a request of ours the daemon could not read
            # (this socket is ours alone): raise it rather than wait for the deadline.
            if reply.get("ok"):
                return reply.get("result")
            error = reply.get("error") or {}
            try:
                code = ErrorCode(error.get("code"))
            except ValueError:
                code = ErrorCode.INTERNAL
            raise ZsvcError(
                str(error.get("message", "unknown error")), code=code, details=error.get("details")
            )

    def _socket_file(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.layout.control)
        except OSError:
            return None
        return (info.st_dev, info.st_ino, info.st_ctime_ns)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BusClient:
    """A publisher and a subscriber on the bus, with a subscription handshake.

    ZMQ drops what a subscriber publishes or misses before its connections
    and subscriptions are in place (the "slow joiner"). :meth:`handshake`
    closes that window for real: it publishes a probe on a private topic
    until the probe comes back through the device, with a deadline.
    """

    def __init__(
        self,
        pub_endpoint: str,
        sub_endpoint: str,
        topics: Iterable[str] = (),
        context: zmq.Context | None = None,
        curve: ClientKeys | None = None,
    ):
        """*curve*: this client's keys, for a daemon whose TCP bus requires them
        (:func:`zsvc.curve.load_client`)."""
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.pub = self.context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.pub.setsockopt(zmq.SNDHWM, 10_000)
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for sock in (self.pub, self.sub):
            sock.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:P too (IPv4 addresses work as before)
        if curve is not None:
            curve.apply(self.pub)
            curve.apply(self.sub)
        self.pub.connect(pub_endpoint)
        self.sub.connect(sub_endpoint)
        for topic in topics:
            self.subscribe(topic)

    def subscribe(self, topic: str) -> None:
        self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def handshake(self, timeout: float) -> None:
        """Return once messages published now reach this subscriber; TimeoutError otherwise."""
        nonce = uuid.uuid4().hex
        topic = protocol.probe_topic(nonce)
        self.subscribe(topic)
        probe = protocol.make_message(topic, "probe")
        deadline = time.monotonic() + timeout
        wait = 0.002
        try:
            while True:
                self.publish(probe)
                end = min(deadline, time.monotonic() + wait)
                while (remaining := end - time.monotonic()) > 0:
                    if not self.sub.poll(max(1, int(remaining * 1000))):
                        break
                    frames = self.sub.recv_multipart()
                    if frames[0] == topic.encode():
                        return
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no answer from the bus within {timeout:g} s")
                wait = min(wait * 2, 0.05)
        finally:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, topic.encode())

    def publish(self, message: protocol.Message) -> None:
        self.pub.send_multipart(protocol.encode(message))

    def receive(self, timeout: float) -> protocol.Message | None:
        """The next valid message within *timeout* seconds, or None.

        Invalid frames are logged with the reason and skipped: a bad
        publisher must not break a subscriber.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            # Poll at least once, so that receive(0) reads what is already queued.
            if not self.sub.poll(max(0, int(remaining * 1000))):
                return None
            frames = self.sub.recv_multipart()
            if frames[0].startswith(protocol.PROBE_PREFIX.encode()):
                continue
            try:
                return protocol.decode(frames)
            except protocol.ProtocolError as exc:
                log.warning("ignored a bus message: %s", exc)

    def close(self) -> None:
        """Close both sockets (idempotent); the context too when this client made it."""
        if self.pub.closed:
            return
        self.pub.close()  # lingers up to 1 s: a task's last report is still delivered
        self.sub.close()
        if self._own_context:
            self.context.term()

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
