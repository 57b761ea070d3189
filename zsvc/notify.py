"""The sd_notify protocol, both ends: the client a task (or the daemon) calls, and the server.

The protocol (sd_notify(3)) is deliberately tiny: the service manager binds an
``AF_UNIX``/``SOCK_DGRAM`` socket, passes its address in ``$NOTIFY_SOCKET``, and a
service sends datagrams of newline-separated ``KEY=VALUE`` assignments
(``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, …). The manager learns *who* sent a
datagram from the kernel, through ``SCM_CREDENTIALS``, never from the payload.

zsvc's local runner plays systemd's part, so this module holds:

* :func:`sd_notify` and :func:`watchdog_interval`, the client side, used by task
  processes and by the daemon itself when systemd supervises it;
* :func:`tell_supervisor`, the daemon's own notifications (READY, STATUS,
  WATCHDOG, RELOADING, STOPPING), with the daemon's one error policy;
* :func:`parse_notification` and :class:`Notification`, the pure wire format;
* :class:`NotifyServer`, the daemon's notify socket.

**Who may send to the local runner's socket** (issue 14). A task may run as
another user (``setpriv``, uwsgi ``--uid``, postgres), so, like systemd's
``/run/systemd/notify``, the socket accepts datagrams from every local user
(:data:`PUBLIC_SOCKET_MODE`) and the daemon believes only credentials: a
datagram counts for a task when its kernel-reported pid is the task's main
process, or a process of the task (its process group, its cgroup); any other
is held a few seconds for a pid not yet known, then dropped
(:mod:`zsvc.runners.local`). The socket is the file ``notify`` in the runtime
directory, which only root writes to and everybody may search but not list
(0751: :data:`zsvc.paths.RUNTIME_TRAVERSE`), so nobody can bind that path
before the daemon does, not even while it reloads; an abstract name
(``@…``) could be taken by anyone first. The rest of that directory stays
closed by its own modes (control and bus sockets 0660 root:zsvc, lock 0640,
``spawned/`` 0700).

Standard library only: a task process imports this without zsvc's dependencies.
"""

from __future__ import annotations

import array
import contextlib
import errno as errno_module
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Self

__all__ = [
    "PUBLIC_SOCKET_MODE",
    "Notification",
    "NotifyProtocolError",
    "NotifyServer",
    "RawNotification",
    "parse_notification",
    "sd_notify",
    "tell_supervisor",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

MAX_DATAGRAM_BYTES = 64 * 1024
"""Receive buffer for one datagram; a longer one is reported as truncated, not parsed.

systemd itself only reads ``PIPE_BUF`` (4096) bytes; zsvc is more generous with
``STATUS=`` texts but still refuses to act on a cut-off message.
"""

RECEIVE_BUFFER_BYTES = 1 << 20
"""``SO_RCVBUF`` asked for, so a burst of notifications is queued rather than dropped."""

SUPERVISOR_TIMEOUT = 1.0
"""Seconds the daemon waits for room in its supervisor's queue (:func:`tell_supervisor`)."""

SCM_MAX_FD = 253
"""The kernel's limit of descriptors in one ``SCM_RIGHTS`` message: room for all of them."""

SOCKET_MODE = 0o660
"""Senders need write permission on a path socket: the owner and its group, nobody else."""
PUBLIC_SOCKET_MODE = 0o666
"""The local runner's socket: any user may send (systemd's ``/run/systemd/notify`` is
0777), since a task may run as another user; who *speaks for a task* is decided by the
sender's kernel credentials alone (:attr:`Notification.pid`), never by the file's mode.
Its directory decides who can reach it (:data:`zsvc.paths.RUNTIME_TRAVERSE`)."""

_UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_INT_SIZE = array.array("i").itemsize
_ANCILLARY_BYTES = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(SCM_MAX_FD * _INT_SIZE)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

_KEY = re.compile(r"[A-Z0-9_]+")
_UNSIGNED = re.compile(r"[0-9]+")
_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1
_SHOWN_CHARS = 60


class NotifyProtocolError(ValueError):
    """A datagram that does not follow the sd_notify protocol; the text says why.

    ``reason`` is the bare explanation; ``pid`` is the sender's pid when the kernel
    told us (it always does once ``SO_PASSCRED`` is set), else None.
    """

    def __init__(self, reason: str, *, pid: int | None = None) -> None:
        message = reason if pid is None else f"notification from pid {pid}: {reason}"
        super().__init__(message)
        self.reason = reason
        self.pid = pid


# --------------------------------------------------------------------------- client


def sd_notify(
    *assignments: str, environ: Mapping[str, str] | None = None, timeout: float | None = None
) -> bool:
    """Send *assignments* (``"READY=1"``, ``"STATUS=…"``) as one datagram to ``$NOTIFY_SOCKET``.

    Returns False, sending nothing, when ``$NOTIFY_SOCKET`` is unset or empty: as in
    sd_notify(3), a process not supervised by a notify-aware manager is not an
    error. Returns True once the datagram is sent. A send failure raises
    :class:`OSError`: whether a lost ``READY=1`` is fatal is the caller's call.

    All assignments go in a single datagram because the manager acts on a datagram
    atomically (``READY=1`` together with ``MAINPID=`` or ``STATUS=``). Each is
    checked against the grammar :func:`parse_notification` accepts, so whatever
    this sends, zsvc's server can read; a bad one raises :class:`ValueError`.

    A fresh ``SOCK_CLOEXEC`` socket per call: a task may fork between two calls,
    and a cached socket would be shared with (or leaked into) the child.

    The receiver's queue is short (``net.unix.max_dgram_qlen``, often 10): a send
    blocks while it is full. *timeout* bounds that wait (``TimeoutError``, an
    OSError), so a task never hangs on a manager that is stopped or being restarted.
    The socket is connected first: only then does poll() wait for room in the
    receiver's queue. Unconnected, poll() reports it writable at once and every
    sendto() fails with EAGAIN, so with a timeout the wait was a busy loop; 500
    tasks told to stop at once spun both cores while the manager, starved,
    drained their STOPPING=1 (a 500-task stop took 12 to 16 s instead of 1.8 s).
    """
    env = os.environ if environ is None else environ
    address = env.get(NOTIFY_SOCKET_ENV, "")
    if not address:
        return False
    payload = _encode_assignments(assignments)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(_socket_address(address))
        sock.send(payload, socket.MSG_NOSIGNAL)
    return True


def tell_supervisor(*assignments: str) -> None:
    """The daemon tells its own supervisor (systemd, or ``zsvc daemon --detach``) how it is.

    The policy, one for every notification the daemon sends: a notification
    never stops the daemon, which must go on serving its tasks whatever
    became of its supervisor.

    * no ``$NOTIFY_SOCKET`` (started by hand): nothing is sent, silently;
    * the socket is gone or refuses (``--detach`` returned and closed its
      socket, systemd is being restarted): silently, as that is expected;
    * any other failure (a full queue past :data:`SUPERVISOR_TIMEOUT`,
      permissions): logged as a warning, and the daemon goes on;
    * an assignment the protocol cannot carry (a newline) raises ValueError:
      that is a bug in the daemon, not a state of the world.
    """
    try:
        sd_notify(*assignments, timeout=SUPERVISOR_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


def _encode_assignments(assignments: tuple[str, ...]) -> bytes:
    """The datagram for *assignments*; ValueError for anything the protocol cannot carry."""
    if not assignments:
        raise ValueError("sd_notify needs at least one KEY=VALUE assignment")
    for assignment in assignments:
        _check_assignment(assignment)
    return "\n".join(assignments).encode("utf-8")


def _check_assignment(assignment: str) -> None:
    """Reject an assignment the receiver would misread or refuse.

    A newline would split it into two assignments; a NUL would cut the message
    short for systemd, which parses it as a C string.
    """
    if "\n" in assignment:
        raise ValueError(f"assignment contains a newline: {_shorten(assignment)}")
    if "\0" in assignment:
        raise ValueError(f"assignment contains a NUL character: {_shorten(assignment)}")
    key, sep, _value = assignment.partition("=")
    if not sep:
        raise ValueError(f"assignment has no '=': {_shorten(assignment)}")
    if not _KEY.fullmatch(key):
        raise ValueError(f"invalid key {_shorten(key)}: expected A-Z, 0-9 and '_'")


def _socket_address(value: str) -> bytes:
    """The ``sockaddr_un`` path for a ``$NOTIFY_SOCKET`` value.

    sd_notify(3): an absolute path names a socket file; a leading ``@`` names a
    socket in Linux's abstract namespace, where the ``@`` stands for a NUL byte.
    Anything else is refused with EINVAL, as libsystemd does.
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    raise OSError(
        errno_module.EINVAL,
        f"${NOTIFY_SOCKET_ENV} is neither an absolute path nor an '@' abstract name: {value!r}",
    )


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is expected of us.

    The manager sets ``$WATCHDOG_USEC`` (the timeout) and ``$WATCHDOG_PID`` (the
    process it applies to, so children that inherit the environment do not ping
    on its behalf). Following sd_watchdog_enabled(3), the answer is half the
    timeout, leaving slack for a late ping. Invalid values mean no watchdog:
    pinging on a guess is worse than not pinging.
    """
    env = os.environ if environ is None else environ
    timeout_usec = _parse_unsigned(env.get(WATCHDOG_USEC_ENV), _UINT64_MAX)
    if not timeout_usec:
        return None
    if WATCHDOG_PID_ENV in env:
        pid = _parse_unsigned(env[WATCHDOG_PID_ENV], _INT32_MAX)
        if pid != os.getpid():
            return None
    return timeout_usec / 2 / 1_000_000


# --------------------------------------------------------------------------- wire format


def parse_notification(data: bytes) -> dict[str, str]:
    """The assignments in one sd_notify datagram, as a dict.

    The format (sd_notify(3)) is an environment block with newlines for
    separators: ``KEY=VALUE`` per line, UTF-8. Empty lines are skipped (a trailing
    newline is common); the value is everything after the first ``=`` and may be
    empty; a key repeated later in the datagram overrides the earlier one. Keys
    are upper-case letters, digits and ``_``, like every variable the protocol
    defines: a lower-case key is a typo that would otherwise be silently ignored.

    Raises :class:`NotifyProtocolError` naming the offending line.
    """
    text = _decode(data)
    fields: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if line:
            key, value = _parse_line(number, line)
            fields[key] = value
    return fields


def _decode(data: bytes) -> str:
    """*data* as text; NotifyProtocolError when it is not UTF-8 or holds a NUL byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotifyProtocolError(
            f"not valid UTF-8: {exc.reason} at byte {exc.start} ({data[exc.start : exc.end]!r})"
        ) from None
    nul = text.find("\0")
    if nul >= 0:
        raise NotifyProtocolError(f"NUL byte at character {nul}")
    return text


def _parse_line(number: int, line: str) -> tuple[str, str]:
    """The key and value of one non-empty line (numbered from 1 for messages)."""
    key, sep, value = line.partition("=")
    if not sep:
        raise NotifyProtocolError(f"line {number}: no '=' in {_shorten(line)}")
    if not key:
        raise NotifyProtocolError(f"line {number}: empty key in {_shorten(line)}")
    if not _KEY.fullmatch(key):
        raise NotifyProtocolError(
            f"line {number}: invalid key {_shorten(key)} (expected A-Z, 0-9 and '_')"
        )
    return key, value


def _shorten(text: str) -> str:
    """``repr`` of *text*, cut short: a hostile datagram must not flood the log."""
    if len(text) > _SHOWN_CHARS:
        return repr(text[:_SHOWN_CHARS]) + "…"
    return repr(text)


def _parse_unsigned(value: str | None, maximum: int) -> int | None:
    """A plain decimal in ``0..maximum``, else None.

    Stricter than :func:`int`, which would accept ``" 5"``, ``"+5"``, ``"1_000"``
    and non-ASCII digits; systemd's parsers accept none of those, so neither do we.
    """
    if value is None or not _UNSIGNED.fullmatch(value):
        return None
    number = int(value)
    return number if number <= maximum else None


@dataclass(frozen=True)
class Notification:
    """One datagram: who sent it (from the kernel) and what it says.

    The properties read the variables of sd_notify(3). They never raise: a
    malformed number reads as None, the way systemd logs and ignores it, so one
    bad field does not cost the rest of the message.
    """

    pid: int
    uid: int
    fields: dict[str, str]

    def _flag(self, key: str, value: str = "1") -> bool:
        return self.fields.get(key) == value

    @property
    def ready(self) -> bool:
        """``READY=1``: start-up (or a reload) is complete."""
        return self._flag("READY")

    @property
    def stopping(self) -> bool:
        """``STOPPING=1``: the service began shutting down on its own."""
        return self._flag("STOPPING")

    @property
    def reloading(self) -> bool:
        """``RELOADING=1``: the service is reloading its configuration; READY=1 follows."""
        return self._flag("RELOADING")

    @property
    def watchdog_ping(self) -> bool:
        """``WATCHDOG=1``: keep-alive; resets the watchdog timer."""
        return self._flag("WATCHDOG")

    @property
    def watchdog_trigger(self) -> bool:
        """``WATCHDOG=trigger``: the service asks to be treated as if its watchdog expired."""
        return self._flag("WATCHDOG", "trigger")

    @property
    def status(self) -> str | None:
        """``STATUS=``: free-form status text (possibly empty), None when absent."""
        return self.fields.get("STATUS")

    @property
    def errno(self) -> int | None:
        """``ERRNO=``: the errno-style reason of a failure; None when absent or invalid."""
        return _parse_unsigned(self.fields.get("ERRNO"), _INT32_MAX)

    @property
    def main_pid(self) -> int | None:
        """``MAINPID=``: the service's main process, when it is not the sender; 0 is invalid."""
        pid = _parse_unsigned(self.fields.get("MAINPID"), _INT32_MAX)
        return pid or None

    @property
    def extend_timeout_usec(self) -> int | None:
        """``EXTEND_TIMEOUT_USEC=``: the current start/stop timeout is extended to this."""
        return _parse_unsigned(self.fields.get("EXTEND_TIMEOUT_USEC"), _UINT64_MAX)

    @property
    def watchdog_usec(self) -> int | None:
        """``WATCHDOG_USEC=``: the service resets its own watchdog timeout."""
        return _parse_unsigned(self.fields.get("WATCHDOG_USEC"), _UINT64_MAX)


# --------------------------------------------------------------------------- server


class NotifyServer:
    """The daemon's notify socket: pass :attr:`path` as ``$NOTIFY_SOCKET`` to tasks.

    The socket is non-blocking, meant for an event loop's reader callback
    (``loop.add_reader(server.fileno(), …)`` calling :meth:`drain`). It does not
    decide whether a sender may speak for a task: that is the caller's job, from
    :attr:`Notification.pid` (sd_notify(3): the manager attributes a message by
    the sender's pid, as reported by the kernel).

    *path* is a filesystem path, or ``@name`` for Linux's abstract namespace (no
    file, nothing to clean up, but visible to the whole network namespace, and
    anybody may bind the name first, e.g. while the daemon reloads: the local
    runner uses a path in a directory only root writes to). *mode* is the socket
    file's: :data:`SOCKET_MODE`, or :data:`PUBLIC_SOCKET_MODE` for tasks of any user.
    """

    def __init__(self, path: str | os.PathLike[str], mode: int = SOCKET_MODE) -> None:
        self._path = os.fspath(path)
        self._abstract = self._path.startswith("@")
        address = _socket_address(self._path)
        if not self._abstract:
            _remove_stale_socket(self._path)
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            # Before bind: a datagram queued earlier would arrive without credentials.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            _raise_receive_buffer(sock)
            sock.bind(address)
            self._identity = None if self._abstract else _set_socket_mode(self._path, mode)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        # One buffer for every datagram: recvmsg() would allocate MAX_DATAGRAM_BYTES per
        # call, which made reading a 30,000/s flood cost three times as much.
        self._buffer = bytearray(MAX_DATAGRAM_BYTES)
        self._view = memoryview(self._buffer)

    @property
    def path(self) -> str:
        """The address as given, in ``$NOTIFY_SOCKET`` syntax."""
        return self._path

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed), for select() or an event loop."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket and remove its file. Safe to call twice."""
        if self._sock.fileno() < 0:
            return
        self._sock.close()
        if self._identity is not None:
            _unlink_if_same(self._path, self._identity)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NotifyServer({self._path!r}, fd={self.fileno()})"

    def receive(self) -> Notification | None:
        """Read one datagram; None when none is waiting.

        Raises :class:`NotifyProtocolError` for a datagram that has no credentials,
        was truncated or does not parse; it is consumed, so the next call reads the
        next datagram. Descriptors passed along (``FDSTORE=1``) are closed at once:
        zsvc keeps no file descriptor store, and an unclosed one would leak.
        """
        raw = self.receive_raw()
        return None if raw is None else raw.parse()

    def receive_raw(self) -> RawNotification | None:
        """Read one datagram, unparsed; None when none is waiting.

        The cheap half of :meth:`receive`: the sender is known (so a runner can
        apply a per-task budget) before any parsing is paid for. Raises
        :class:`NotifyProtocolError` for a datagram without credentials or truncated.
        """
        try:
            size, ancdata, flags, _address = self._sock.recvmsg_into(
                [self._buffer], _ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return None
        data = bytes(self._view[:size])
        credentials = _credentials(ancdata)
        if credentials is None:
            raise NotifyProtocolError("datagram without SCM_CREDENTIALS: sender unknown")
        pid, uid, _gid = credentials
        if flags & socket.MSG_TRUNC:
            raise NotifyProtocolError(
                f"datagram longer than {MAX_DATAGRAM_BYTES} bytes, truncated", pid=pid
            )
        return RawNotification(pid, uid, data)

    def drain(self, max_count: int | None = None) -> list[Notification | NotifyProtocolError]:
        """Read every waiting datagram (at most *max_count*), in arrival order.

        Errors are returned in place rather than raised, so one bad sender does not
        hide the notifications queued behind it. *max_count* bounds one wake-up of an
        event loop under a flood; what is left makes the socket readable again.
        """
        results: list[Notification | NotifyProtocolError] = []
        for item in self.drain_raw(max_count):
            if isinstance(item, NotifyProtocolError):
                results.append(item)
                continue
            try:
                results.append(item.parse())
            except NotifyProtocolError as exc:
                results.append(exc)
        return results

    def drain_raw(
        self, max_count: int | None = None
    ) -> list[RawNotification | NotifyProtocolError]:
        """:meth:`drain`, unparsed: what :meth:`receive_raw` reads, at most *max_count*."""
        results: list[RawNotification | NotifyProtocolError] = []
        while max_count is None or len(results) < max_count:
            try:
                raw = self.receive_raw()
            except NotifyProtocolError as exc:
                results.append(exc)
                continue
            if raw is None:
                break
            results.append(raw)
        return results


class RawNotification(NamedTuple):
    """One datagram as received: its sender (from the kernel) and its bytes, not parsed.

    A named tuple, not a dataclass: one is made per datagram, flood included, and
    a frozen dataclass costs several times as much to build.
    """

    pid: int
    uid: int
    data: bytes

    def parse(self) -> Notification:
        """The :class:`Notification`; :class:`NotifyProtocolError` naming the sender."""
        try:
            fields = parse_notification(self.data)
        except NotifyProtocolError as exc:
            raise NotifyProtocolError(exc.reason, pid=self.pid) from None
        return Notification(pid=self.pid, uid=self.uid, fields=fields)


def _credentials(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` from ``SCM_CREDENTIALS``, closing every ``SCM_RIGHTS`` descriptor.

    All descriptors are closed before anything is inspected, so no error path can
    leak one.
    """
    credentials = None
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            _close_descriptors(payload)
        elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
            credentials = _UCRED.unpack_from(payload)
    return credentials


def _close_descriptors(payload: bytes) -> None:
    """Close the descriptors in an ``SCM_RIGHTS`` payload (a partial last int is dropped)."""
    fds = array.array("i")
    fds.frombytes(payload[: len(payload) - len(payload) % _INT_SIZE])
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by an earlier run; bind() fails on an existing file.

    Anything that is not a socket is left alone: the path is probably wrong, and
    deleting a user's file to make room would be worse than failing.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno_module.EEXIST, "exists and is not a socket", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _set_socket_mode(path: str, mode: int) -> tuple[int, int]:
    """Set the socket file's mode to *mode*; return its (device, inode).

    bind() creates the file with the umask's mode, so this is done right after.
    The identity lets :meth:`NotifyServer.close` avoid unlinking a newer server's
    socket that has since replaced ours at the same path.
    """
    os.chmod(path, mode)
    info = os.lstat(path)
    return info.st_dev, info.st_ino


def _unlink_if_same(path: str, identity: tuple[int, int]) -> None:
    """Unlink *path* if it is still the file we created."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if (info.st_dev, info.st_ino) == identity:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _raise_receive_buffer(sock: socket.socket) -> None:
    """Ask for :data:`RECEIVE_BUFFER_BYTES` of receive buffer, best effort.

    ``SO_RCVBUF`` is silently capped by ``net.core.rmem_max``; ``SO_RCVBUFFORCE``
    passes the cap but needs ``CAP_NET_ADMIN``. A smaller buffer only means
    senders block sooner, so failures are ignored.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    with contextlib.suppress(OSError):
        # The kernel reports twice the size asked for (bookkeeping overhead).
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER_BYTES:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
