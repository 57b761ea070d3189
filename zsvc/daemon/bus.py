"""The bus device: the seed's ZMQ forwarder, owned by the daemon.

Publishers connect to the XSUB side, subscribers to the XPUB side. Unlike
``zmq.proxy`` in a thread, this device runs in the daemon's event loop, so
the daemon can (a) bind more endpoints whenever a context names them, (b)
observe the ``control``, ``state`` and ``context`` traffic it must act on,
(c) publish its own messages without a socket of its own, and (d) see
subscriptions come and go (the monitor samples only while someone listens).

One device binds every endpoint: the runtime directory's ``ipc://`` pair,
which the tasks and the CLI use, and every TCP pair a loaded context names.
They are views of one bus; messages are scoped by their transaction. The
device has two XSUB/XPUB pairs, a trusted one (``ipc://``, CURVE TCP) and a
public one (TCP without CURVE): the daemon observes only the trusted XSUB and
sends its private messages only on the trusted XPUB; everything else is
forwarded between the two (:mod:`zsvc.daemon.trust` says what, and why).
Binds failing (a port in use) raise, so the error reaches the user instead
of being lost as in the original's fire-and-forget forwarder.

Who may use the bus (:func:`plan_bind`): the ``ipc://`` pair is guarded by
the runtime directory's permissions. Without CURVE keys, TCP is bound on
loopback only; with them (``[bus] curve_keys``, :mod:`zsvc.curve`), every
TCP endpoint is bound as written and admits only the clients whose public
keys are in the keys directory, checked by a ZAP handler in the daemon's
loop.

The device reads its sockets when the event loop says their ``ZMQ_FD`` is
readable, draining each with non-blocking receives until ``EAGAIN``, rather
than awaiting one pyzmq Future per message: every message of every task
passes through here, and a Future per message (with its reader registered
and removed again) cost more than forwarding the message itself. ``ZMQ_FD``
is edge-triggered: it signals a change, not a state, so the device always
drains to ``EAGAIN``, and looks again after anything else touched a socket
(a publish, a bind), which may have consumed the signal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from zsvc import protocol
from zsvc.daemon import fs, trust
from zsvc.daemon.access import PEER_ADDRESS
from zsvc.daemon.admission import HANDSHAKE_IVL_MS, TcpGuard
from zsvc.daemon.bindplan import BindError, BindPlan, plan_bind
from zsvc.daemon.budget import SendBudget, track_sends
from zsvc.throttle import ThrottledLog

if TYPE_CHECKING:  # zmq.auth is imported only by a daemon that has keys
    from zsvc.curve import ServerKeys

log = logging.getLogger(__name__)

OBSERVED_TOPICS = (b"control", b"state", b"context")
HIGH_WATER_MARK = 10_000
"""Per-peer queue bound: a subscriber that never reads costs at most this many messages."""
SOCKET_MODE = 0o660
"""The ``ipc://`` socket files' mode: connecting needs write permission."""
USER_SOCKET_MODE = 0o600
"""The mode of a pair bound for one user's tasks (:meth:`BusDevice.bind_for_user`)."""
MAX_MESSAGE_BYTES = protocol.MAX_FRAME_BYTES + 4096
"""The largest frame a publisher may send: a body zsvc reads (1 MiB), or a legacy frame's
topic and body."""
PUBLISHER_HIGH_WATER_MARK = 1_000
"""What the XSUBs hold per publisher before the device reads it (ZeroMQ's default): a
publisher faster than the device keeps the rest in its own queue, not in the daemon."""
MAX_SUBSCRIPTION_BYTES = 4096
"""The largest (un)subscription a subscriber may send."""
DRAIN_BATCH = 1_000
"""Messages moved per event-loop turn at most: a flood must not starve the control socket."""

MessageHandler = Callable[[protocol.Message], None]
_POLLIN = int(zmq.POLLIN)
"""A plain int: ``int & zmq.POLLIN`` would build an enum member per look."""


def _ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint (None: another transport, or abstract)."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    return Path(endpoint[len("ipc://") :]).absolute()


def _share(path: Path) -> None:
    """Give a bound ``ipc://`` socket file the control socket's mode and group (0660,
    group ``zsvc`` of a root daemon): whoever may command zsvc may also use its bus
    (``zsvc send``, ``zsvc monitor``), and nobody else, whatever the umask."""
    os.chmod(path, SOCKET_MODE)
    if (gid := fs.control_gid()) is not None:
        os.chown(path, -1, gid)


def publisher(frame: zmq.Frame) -> tuple[int, int] | None:
    """(uid, pid) of whoever sent *frame* over ``ipc://``: libzmq's ``Peer-Address``
    metadata carries ``SO_PEERCRED`` as ``<host>:<uid>:<gid>:<pid>``; None over TCP."""
    try:
        parts = (frame.get(PEER_ADDRESS) or "").rsplit(":", 3)
    except zmq.ZMQError:  # no such metadata (inproc)
        return None
    if len(parts) != 4 or not (parts[1].isdecimal() and parts[3].isdecimal()):
        return None
    return int(parts[1]), int(parts[3])


def _readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether *sock* has a message to read now (``ZMQ_EVENTS``, which also re-arms its FD).

    Asked before each non-blocking receive rather than catching ``zmq.Again``:
    pyzmq's exceptions cost more than the look.
    """
    return bool(sock.getsockopt(zmq.EVENTS) & _POLLIN)


def _count(subscriptions: collections.Counter[bytes], frame: bytes) -> bytes | None:
    """Apply an XPUB (un)subscription *frame* to *subscriptions*; its topic, or None.

    A topic nobody wants any more is forgotten: every task host's handshake
    subscribes to a topic of its own, so keeping zeros would grow without
    bound and slow down every subscribers() call.
    """
    if not frame:
        return None
    topic = frame[1:]
    if frame[0] == 1:
        subscriptions[topic] += 1
    elif frame[0] == 0 and topic in subscriptions:
        subscriptions[topic] -= 1
        if subscriptions[topic] <= 0:
            del subscriptions[topic]
    else:
        return None
    return topic


def _device_pair(context: zmq.Context[Any]) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """An XSUB and an XPUB as the device uses them: plain sockets (also from an asyncio
    context), since the device drains them itself, and bounded queues."""
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]] = (
        zmq.Socket(context, zmq.XSUB),
        zmq.Socket(context, zmq.XPUB),
    )
    for sock in pair:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    # A peer that sends a larger frame is disconnected by libzmq before it is stored:
    # a publisher's message no zsvc reader would accept, a subscription no topic needs.
    pair[0].setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    pair[0].setsockopt(zmq.RCVHWM, PUBLISHER_HIGH_WATER_MARK)
    pair[1].setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
    track_sends(pair[1])
    return pair


class BusDevice:
    """An XSUB/XPUB forwarder in the event loop, observing what the daemon needs.

    Two pairs (:mod:`zsvc.daemon.trust`): what arrives on the trusted XSUB is
    observed and forwarded to both XPUBs; what arrives on the public XSUB is
    never observed, forwarded to the public XPUB, and to the trusted one only
    when :func:`trust.admit_public` allows.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        on_message: MessageHandler | None = None,
        keys: ServerKeys | None = None,
        open_commands: bool = False,
    ):
        self.on_message = on_message
        """Called with each observed message (:data:`OBSERVED_TOPICS`); until it is set
        (the daemon sets it once every part exists), they are forwarded, not observed."""
        self.keys = keys
        self.open_commands = open_commands
        self.xsub, self.xpub = _device_pair(context)
        """The trusted side (``ipc://``, CURVE TCP): the daemon reads and speaks here."""
        self.public_xsub, self.public_xpub = _device_pair(context)
        """The public side (TCP without CURVE): forwarded, never read by the daemon."""
        self.pub_endpoints: set[str] = set()
        self.sub_endpoints: set[str] = set()
        self._bound_on: dict[str, zmq.Socket[bytes]] = {}
        """The device socket each bound endpoint is bound on (release unbinds it there)."""
        self.public_subscriptions: collections.Counter[bytes] = collections.Counter()
        """The public XPUB's topics: while empty, nothing is sent to the public side."""
        self.withheld = 0
        """Public messages not passed to the trusted side (:func:`trust.admit_public`)."""
        self._invalid = ThrottledLog(log)
        """Invalid messages are logged once per interval: a flood must not fill the log."""
        self._budgets = {id(self.xpub): SendBudget(), id(self.public_xpub): SendBudget()}
        """Each XPUB's large messages still held for slow subscribers (bounded in bytes)."""
        self._over_budget = ThrottledLog(log)
        self.socket_files: dict[Path, fs.SocketFile] = {}
        """The ``ipc://`` socket files this device bound, as bound: only these are removed."""
        self.subscriptions: collections.Counter[bytes] = collections.Counter()
        self.on_subscription: Callable[[bytes], None] | None = None
        """Called with the prefix after each (un)subscription (the monitor wakes on it)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """Set by :meth:`start`: the loop that watches the sockets' FDs."""
        self._drain_scheduled = False
        self._user_endpoints: set[str] = set()
        """The pairs bound for tasks' users (:meth:`bind_for_user`): never released."""
        self._guards: list[TcpGuard] = []
        """Each side's TCP connection budget (:mod:`zsvc.daemon.admission`), from start."""

    def bind(self, pub_endpoint: str, sub_endpoint: str) -> None:
        """Bind a publishers' endpoint and a subscribers' endpoint (idempotent)."""
        pub, sub = self._plan(pub_endpoint), self._plan(sub_endpoint)
        if pub.endpoint in self.sub_endpoints or sub.endpoint in self.pub_endpoints:
            raise BindError(
                f"bus endpoints {pub.endpoint} and {sub.endpoint} clash with the other side"
            )
        for sock, plan, bound in (
            (self.xsub if pub.trusted else self.public_xsub, pub, self.pub_endpoints),
            (self.xpub if sub.trusted else self.public_xpub, sub, self.sub_endpoints),
        ):
            if plan.endpoint in bound:
                continue
            try:
                self._bind(sock, plan)
            except zmq.ZMQError as exc:
                raise BindError(f"cannot bind the bus endpoint {plan.endpoint}: {exc}") from exc
            bound.add(plan.endpoint)
            self._bound_on[plan.endpoint] = sock
            side = " (CURVE)" if plan.curve else "" if plan.trusted else " (public side)"
            log.info("bus bound %s%s", plan.endpoint, side)
        self._drain_soon()  # binding processed the socket's commands: maybe its FD's signal

    def bind_for_user(self, uid: int, pub_endpoint: str, sub_endpoint: str) -> None:
        """Bind a trusted ``ipc://`` pair only *uid* (and root) may reach, kept until the
        daemon closes: a Python task run as another user joins the bus there (the shared
        pair is group ``zsvc``'s; that group would also open the control socket to it)."""
        if pub_endpoint in self._user_endpoints:
            return
        self.bind(pub_endpoint, sub_endpoint)
        for endpoint in (pub_endpoint, sub_endpoint):
            path = _ipc_path(endpoint)
            assert path is not None, "a user's pair is ipc://"
            os.chown(path, uid, -1)
            os.chmod(path, USER_SOCKET_MODE)
        self._user_endpoints.update((pub_endpoint, sub_endpoint))

    def _plan(self, endpoint: str) -> BindPlan:
        return plan_bind(endpoint, curve=self.keys is not None, open_commands=self.open_commands)

    def _bind(self, sock: zmq.Socket, plan: BindPlan) -> None:
        """Bind with CURVE only where planned, and IPv6 only for an IPv6 address (``[::1]``;
        libzmq refuses one without ``ZMQ_IPV6`` with "No such device"): libzmq copies the
        options at each bind, so each is set for its bind alone."""
        path = _ipc_path(plan.endpoint)
        if path is not None and not plan.curve:
            self._bind_ipc(sock, plan.endpoint, path)
            return
        ipv6 = plan.endpoint.startswith("tcp://[")
        if plan.curve:
            assert self.keys is not None
            self.keys.apply(sock)
        if ipv6:
            sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)  # TCP: idle peers go soon
        try:
            sock.bind(plan.endpoint)
        finally:  # the next bind (an ipc://, an IPv4 address) is plain again
            sock.setsockopt(zmq.HANDSHAKE_IVL, 30_000)
            if plan.curve:
                sock.setsockopt(zmq.CURVE_SERVER, 0)
            if ipv6:
                sock.setsockopt(zmq.IPV6, 0)

    def _bind_ipc(self, sock: zmq.Socket, endpoint: str, path: Path) -> None:
        """Bind an ``ipc://`` endpoint unless a live process holds its file (BindError).

        libzmq unlinks the path before binding, so without the probe a second
        daemon would silently take the first one's endpoint (issue 19).
        """
        try:
            fs.claim_socket_path(path)
        except fs.SocketBusy as exc:
            raise BindError(f"cannot bind the bus endpoint {endpoint}: {exc}") from None
        with fs.born_private():
            sock.bind(endpoint)
        _share(path)
        self.socket_files[path] = fs.SocketFile(path)

    def remove_socket_files(self, only: Iterable[str] | None = None) -> None:
        """Remove the socket files this device bound (of the endpoints *only*, if given),
        each only if it is still the file bound: a newer daemon's stays."""
        paths = None if only is None else {_ipc_path(endpoint) for endpoint in only}
        for path, bound in list(self.socket_files.items()):
            if paths is None or path in paths:
                del self.socket_files[path]
                if not bound.remove() and path.exists():
                    log.info("left %s alone: it is no longer the socket this daemon bound", path)

    def release(self, keep: Iterable[tuple[str, str]]) -> None:
        """Unbind every endpoint but the (publishers', subscribers') pairs in *keep*.

        A context's TCP pair is bound when a transaction of it starts; without
        this, each context ever started would hold two listening sockets (two
        daemon fds, and its ports) until the daemon exits, long after its last
        transaction was forgotten, and a restarted daemon would not bind them.
        """
        pubs = {self._plan(pub).endpoint for pub, _ in keep} | self._user_endpoints
        subs = {self._plan(sub).endpoint for _, sub in keep} | self._user_endpoints
        for bound, wanted in ((self.pub_endpoints, pubs), (self.sub_endpoints, subs)):
            for endpoint in sorted(bound - wanted):
                sock = self._bound_on.pop(endpoint)
                try:
                    sock.unbind(endpoint)
                except zmq.ZMQError as exc:  # not bound as spelled: nothing to release
                    log.warning("cannot unbind the bus endpoint %s: %s", endpoint, exc)
                bound.discard(endpoint)
                self.remove_socket_files([endpoint])
                log.info("bus released %s", endpoint)
        self._drain_soon()

    def start(self) -> None:
        # Publishers filter on their side by the subscriptions XSUB sends them:
        # subscribe to everything so that every message reaches the device.
        for xsub in (self.xsub, self.public_xsub):
            xsub.send(b"\x01")
        self._loop = asyncio.get_running_loop()
        for sock in self._sockets():
            self._loop.add_reader(sock.getsockopt(zmq.FD), self._drain)
        self._drain_soon()  # what arrived before the readers were added signals no more
        sides = [(False, "public", (self.public_xsub, self.public_xpub))]
        if self.keys is not None:  # CURVE TCP counts its connections before the handshake
            sides.append((True, "CURVE", (self.xsub, self.xpub)))
        for trusted, name, pair in sides:
            shed = functools.partial(self._shed, trusted)
            self._guards.append(TcpGuard(name, pair, shed, self._restore))
            self._guards[-1].start(self._loop)

    def _shed(self, trusted: bool) -> list[str]:
        """Unbind one side's TCP endpoints (libzmq closes what it accepted on them), still
        listed as bound so that :meth:`_restore` binds them again; returns them."""
        pair = (self.xsub, self.xpub) if trusted else (self.public_xsub, self.public_xpub)
        unbound = []
        for endpoint, sock in self._bound_on.items():
            if sock in pair and endpoint.startswith("tcp://"):
                with contextlib.suppress(zmq.ZMQError):  # a wildcard is unbound as resolved
                    sock.unbind(endpoint.replace("tcp://*:", "tcp://0.0.0.0:"))
                    unbound.append(endpoint)
        return unbound

    def _restore(self, endpoints: list[str]) -> None:
        """Bind again what :meth:`_shed` unbound, but for what was released meanwhile."""
        for endpoint in endpoints:
            if (sock := self._bound_on.get(endpoint)) is not None:
                try:
                    self._bind(sock, self._plan(endpoint))
                except zmq.ZMQError as exc:
                    log.warning("cannot bind the bus endpoint %s again: %s", endpoint, exc)
        self._drain_soon()

    def _sockets(self) -> tuple[zmq.Socket[bytes], ...]:
        return (self.xsub, self.xpub, self.public_xsub, self.public_xpub)

    async def close(self) -> None:
        while self._guards:
            self._guards.pop().close()
        if self._loop is not None:
            for sock in self._sockets():
                self._loop.remove_reader(sock.getsockopt(zmq.FD))
            self._loop = None
        for sock in self._sockets():
            sock.close()

    def publish(self, message: protocol.Message) -> None:
        """Publish the daemon's own message: to the trusted side, and to the public side
        only when it is for every local user's eyes (:func:`trust.is_public`)."""
        public = trust.is_public(message)
        self._send(protocol.encode(message), public)
        # Sending processed XPUB's commands: a subscription that came meanwhile may
        # have used up the FD's signal, so look for one unless a drain is coming anyway.
        if not self._drain_scheduled and (
            _readable(self.xpub) or (public and _readable(self.public_xpub))
        ):
            self._drain_soon()

    def _send(self, frames: list[bytes], public: bool) -> None:
        """Send to the trusted subscribers and, if *public*, to the public ones (if any)."""
        self._put(self.xpub, frames)
        if public and self.public_subscriptions:
            self._put(self.public_xpub, frames)

    def _put(self, xpub: zmq.Socket[bytes], frames: list[bytes]) -> None:
        """Send *frames* on *xpub* without blocking: a full subscriber queue loses it (the
        daemon never waits), and a large message goes only within the XPUB's budget."""
        size = len(frames[-1])
        budget = self._budgets[id(xpub)]
        try:
            if size <= budget.large:
                xpub.send_multipart(frames, flags=zmq.NOBLOCK)
            elif budget.admit(size):
                sent = xpub.send_multipart(frames, flags=zmq.NOBLOCK, copy=False, track=True)
                budget.sent(sent, size)
            else:
                self._over_budget.warning(
                    "dropped a bus message of %d bytes: %d bytes of large messages wait for"
                    " slow subscribers already (at most %d)",
                    size,
                    budget.held,
                    budget.limit,
                )
        except zmq.Again:
            pass

    def _drain_soon(self) -> None:
        """Drain both sockets at the next loop turn (once, however often asked)."""
        if self._loop is not None and not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Move what both sockets hold, up to DRAIN_BATCH messages, until both are empty.

        Called when either FD is readable. Only a pass that moved nothing ends the
        drain: then the last operation on each socket was a look at ``ZMQ_EVENTS``
        that found nothing to read, after every send, so the FDs will signal the
        next message. A pass cut short by the batch limit continues at the next
        loop turn instead.
        """
        self._drain_scheduled = False
        budget = DRAIN_BATCH
        try:
            while budget > 0:
                moved = self._forward(budget)
                moved += self._forward_public(budget - moved)
                moved += self._read_subscriptions(budget - moved)
                if not moved:
                    return
                budget -= moved
        except zmq.Again:  # EVENTS said readable, the receive disagreed: look again soon
            self._drain_soon()
            return
        except zmq.ZMQError as exc:  # closing (ETERM); nothing to drain any more
            log.warning("bus device: %s", exc)
            return
        self._drain_soon()

    def _forward(self, limit: int) -> int:
        """Forward up to *limit* messages of trusted publishers to every subscriber,
        observing those the daemon acts on."""
        moved = 0
        while moved < limit and _readable(self.xsub):
            first = self.xsub.recv(zmq.NOBLOCK, copy=False)  # its metadata: the sender
            frames = [first.bytes]
            if first.more:  # the rest of the message: it arrives whole
                frames += self.xsub.recv_multipart(zmq.NOBLOCK)
            moved += 1
            self._send(frames, True)
            if frames[0].startswith(OBSERVED_TOPICS):
                self._observe(frames, publisher(first))
        return moved

    def _forward_public(self, limit: int) -> int:
        """Forward up to *limit* messages of public publishers, observing none of them:
        to the public subscribers, and to the trusted ones if :func:`trust.admit_public`."""
        moved = 0
        while moved < limit and _readable(self.public_xsub):
            frames = self.public_xsub.recv_multipart(zmq.NOBLOCK)
            moved += 1
            if self.public_subscriptions:
                self._put(self.public_xpub, frames)
            if trust.admit_public(frames):
                self._put(self.xpub, frames)
            else:
                self.withheld += 1
        return moved

    def _observe(self, frames: list[bytes], sender: tuple[int, int] | None) -> None:
        if self.on_message is None:
            return
        try:
            message = protocol.decode(frames, sender)
        except protocol.ProtocolError as exc:
            self._invalid.warning("ignored a bus message: %s", exc)
            return
        try:
            self.on_message(message)
        except Exception:  # the daemon never dies from input; the bug is logged
            log.exception("error while handling a bus message on %r", message.topic)

    def _read_subscriptions(self, limit: int) -> int:
        """Count up to *limit* queued (un)subscriptions of both sides; returns how many."""
        read = 0
        while read < limit and _readable(self.xpub):
            frame = self.xpub.recv(zmq.NOBLOCK)
            read += 1
            if (topic := _count(self.subscriptions, frame)) is not None and self.on_subscription:
                self.on_subscription(topic)
        while read < limit and _readable(self.public_xpub):
            _count(self.public_subscriptions, self.public_xpub.recv(zmq.NOBLOCK))
            read += 1
        return read

    def subscribers(self, topic: bytes) -> int:
        """How many trusted subscriptions would receive *topic* (prefix match, as ZMQ does):
        the daemon's private messages (records, samples) are worth making only for them."""
        return sum(
            count for prefix, count in self.subscriptions.items() if topic.startswith(prefix)
        )
