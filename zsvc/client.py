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
from dataclasses import dataclass
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
CONNECT_ENV = "ZSVC_CONNECT"
KEYS_ENV = "ZSVC_KEYS"
"""``zsvc --connect tcp://HOST:PORT --keys PATH``, as environment variables (the options set
them, so every control client of the command sees the same daemon)."""
_HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the daemon does not admit this key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "not a CURVE server, or not zsvc",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "is server.key this daemon's?",
}
"""What a failed CURVE handshake most likely means, by libzmq's event."""


class RemoteUnreachable(DaemonUnreachable):
    """A daemon on another host did not answer, or refused this client's key (exit 3)."""

    hint = (
        "hint: check the address, that the daemon there sets [control] listen to it, and that"
        " your key's public half is in its keys directory's clients/"
    )


@dataclass(frozen=True)
class Remote:
    """A daemon's TCP control endpoint and this client's CURVE keys for it."""

    endpoint: str
    key: str
    """The client key's name (the daemon attributes the requests to it)."""
    keys: ClientKeys

    @classmethod
    def load(cls, endpoint: str, keys: str | None) -> Remote:
        """*endpoint* (``tcp://HOST:PORT``) with the keys at *keys* (a ``NAME.key_secret``
        or a directory: :func:`zsvc.curve.load_remote`); BadRequest (exit 2) says what is
        wrong before anything is sent: the daemon admits CURVE clients only."""
        from zsvc import curve

        if not endpoint.startswith("tcp://"):
            raise BadRequest(f"--connect {endpoint}: expected tcp://HOST:PORT")
        if not keys:
            raise BadRequest(
                f"--connect {endpoint} needs --keys (or {KEYS_ENV}): a daemon's TCP control"
                " endpoint admits CURVE clients only (keys from 'zsvc keys --client NAME')"
            )
        try:
            name, client_keys = curve.load_remote(Path(keys))
        except curve.KeysError as exc:
            raise BadRequest(f"--keys: {exc}") from None
        return cls(endpoint, name, client_keys)

    @classmethod
    def from_environment(cls) -> Remote | None:
        """The remote daemon of :data:`CONNECT_ENV` and :data:`KEYS_ENV`; None: local."""
        endpoint = os.environ.get(CONNECT_ENV)
        return cls.load(endpoint, os.environ.get(KEYS_ENV)) if endpoint else None


def open_control(runtime: str | os.PathLike[str] | None, timeout: float) -> ControlClient:
    """The CLI's control client: the daemon of ``--connect`` when given, else the local one
    (:func:`zsvc.paths.client_runtime_dir`)."""
    from zsvc.paths import client_runtime_dir

    remote = Remote.from_environment()
    if remote is not None:
        return ControlClient(Path("/"), timeout=timeout, remote=remote)
    return ControlClient(client_runtime_dir(runtime), timeout=timeout)


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
    """Sends commands over the control socket and waits for their replies.

    Local by default (the runtime directory's ``ipc://`` socket); with *remote*, a
    daemon's TCP control endpoint over CURVE. The local socket's file tells at once
    whether a daemon listens (and whether it is still the same one); a TCP endpoint
    cannot, so there the connection's events tell: a failed CURVE handshake ends the
    wait at once, silence lasts until the deadline.
    """

    def __init__(
        self, runtime_dir: Path, timeout: float = DEFAULT_TIMEOUT, remote: Remote | None = None
    ):
        self.layout = RuntimeLayout(runtime_dir)
        self.timeout = timeout
        self.remote = remote
        self.where = remote.endpoint if remote is not None else str(self.layout.control)
        """Where the daemon is, as messages name it."""
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._poller: zmq.Poller | None = None
        self._monitor: zmq.Socket | None = None
        """A remote connection's events (handshakes), read while waiting for a reply."""
        self._retried = False
        self._daemon: tuple[int, int, int] | None = None
        """The control socket file connected to (device, inode, change time in ns): a new
        file is a new daemon (the inode number alone is often reused at once)."""

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            if self.remote is None:
                if not socket_listening(self.layout.control):
                    raise DaemonUnreachable(f"no zsvc daemon is listening on {self.where}")
                self._daemon = self._socket_file()
            self._context = zmq.Context()
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
            if self.remote is None:
                sock.connect(self.layout.control_endpoint)
            else:
                self._connect_remote(sock, self.remote)
            self._socket = sock
        return self._socket

    def _connect_remote(self, sock: zmq.Socket, remote: Remote) -> None:
        sock.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:P too
        remote.keys.apply(sock)
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECT_RETRIED
        for event in _HANDSHAKE_FAILED:
            events |= event
        self._monitor = sock.get_monitor_socket(events)
        assert self._poller is not None
        self._poller.register(self._monitor, zmq.POLLIN)
        sock.connect(remote.endpoint)

    def _wait(self, sock: zmq.Socket, seconds: float) -> bool:
        """Whether a reply is ready within *seconds*; raises what a remote connection's
        events say (a refused handshake: the reply will never come)."""
        assert self._poller is not None
        ready = dict(self._poller.poll(int(seconds * 1000) + 1))
        if self._monitor is not None and self._monitor in ready:
            from zmq.utils.monitor import recv_monitor_message

            while self._monitor.poll(0):
                event = recv_monitor_message(self._monitor)["event"]
                self._retried |= event == zmq.EVENT_CONNECT_RETRIED
                if event in _HANDSHAKE_FAILED:
                    assert self.remote is not None
                    raise RemoteUnreachable(
                        f"the zsvc daemon at {self.where} refused key {self.remote.key!r}:"
                        f" the CURVE handshake failed ({_HANDSHAKE_FAILED[event]})"
                    )
        return sock in ready

    def _gone(self) -> bool:
        """A local daemon that went away, or re-executed (a new socket file): the request
        went to the old one and will never be answered. Unknowable over TCP."""
        if self.remote is not None:
            return False
        return not socket_listening(self.layout.control) or self._socket_file() != self._daemon

    def _silence(self, command: str, limit: float) -> DaemonUnreachable:
        if self.remote is None:
            return DaemonUnreachable(
                f"the zsvc daemon on {self.where} did not answer '{command}' within {limit:g} s"
            )
        why = " (connection refused)" if self._retried else ""
        return RemoteUnreachable(
            f"no zsvc daemon answered '{command}' at {self.where}{why} within {limit:g} s"
        )

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
                raise self._silence(command, limit)
            if not self._wait(sock, min(remaining, LIVENESS_CHECK)):
                # A long command (start waits for readiness) is fine; a daemon that
                # went away is not worth waiting for until the deadline.
                if self._gone():
                    raise DaemonUnreachable(
                        f"the zsvc daemon on {self.where} went away before answering '{command}'"
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
        if self._monitor is not None:
            assert self._socket is not None
            self._socket.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
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
