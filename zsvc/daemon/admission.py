"""A budget of TCP connections on the bus device (issue 19, finding 6).

Every connection libzmq accepts on a bus port holds a daemon fd, idle or
not, CURVE or not (the handshake comes after the accept). Idle connections
from any local user filled the fd table, and the next ``ipc://`` connection
(a task host, the control socket's client) hit libzmq's assertion
``Too many open files (src/ipc_listener.cpp:297)``: the daemon aborted.
libzmq has no limit on the connections of a listener and no hook in its
accept, so the device counts them itself, from socket monitor events
(``ACCEPTED`` opens, ``DISCONNECTED`` closes, each with its fd), and past the
budget it *sheds* the side: it unbinds the side's TCP endpoints, which
closes every connection libzmq accepted on them (measured: the fds go at
once, without ``DISCONNECTED`` events), and binds them again after a back-off.

:class:`ConnectionBudget` is the pure policy (tested in
``tests/unit/test_admission.py``); :class:`TcpGuard` reads the monitors of
one side's two device sockets in the daemon's loop and asks the device to
shed and restore.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable, Iterable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

BUDGET_FRACTION = 4
"""Each guarded side (public; CURVE TCP) may hold 1/4 of the soft open-files limit: both
together half of it, so the other half stays for tasks, ``ipc://`` peers and files
(5,000 connections a side under the usual hard limit of 20,000)."""
MIN_BUDGET = 16
LOW_WATER_FRACTION = 2
"""A shed side is bound again only once its count is at most half its budget."""
FIRST_BACKOFF = 1.0
"""Seconds a shed side stays unbound; doubled at each flood that follows within
:data:`QUIET`, up to :data:`MAX_BACKOFF`."""
MAX_BACKOFF = 30.0
QUIET = 60.0
"""Seconds without a flood after which the back-off starts from :data:`FIRST_BACKOFF`."""
HANDSHAKE_IVL_MS = 5_000
"""ZMQ_HANDSHAKE_IVL on TCP binds (libzmq's default: 30 s): a connection that never
greets is closed after 5 s."""
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


def budget_for(fd_limit: int) -> int:
    """The connections one guarded side may hold under the soft open-files limit."""
    return max(MIN_BUDGET, fd_limit // BUDGET_FRACTION)


class ConnectionBudget:
    """Open TCP connections of one side, counted by fd, with shedding and back-off.

    A hysteresis in time and count: once the count reaches the budget the
    side is shed (:meth:`opened` says so); it may be restored only after the
    back-off and with the count at most the low-water mark. The fds are a
    set, so an event seen twice or a closing never seen (its connection went
    with an unbind) cannot drift the count for long: the fd's next opening
    replaces it.
    """

    def __init__(self, budget: int, backoff: float = FIRST_BACKOFF) -> None:
        self.budget = budget
        self.fds: set[int] = set()
        self.shed_at: float | None = None
        """When the side was shed (None while it accepts)."""
        self.backoff = backoff
        self.sheds = 0
        self._last_shed = float("-inf")

    @property
    def low_water(self) -> int:
        return self.budget // LOW_WATER_FRACTION

    def opened(self, fd: int) -> bool:
        """Count a connection; True when the side must be shed now."""
        self.fds.add(fd)
        return self.shed_at is None and len(self.fds) >= self.budget

    def closed(self, fd: int) -> None:
        self.fds.discard(fd)

    def shed(self, now: float) -> float:
        """The side was unbound (its connections closed): returns the back-off, doubled
        when the last flood was less than :data:`QUIET` ago."""
        if now - self._last_shed < QUIET + self.backoff:
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        else:
            self.backoff = FIRST_BACKOFF
        self.fds.clear()
        self.shed_at = self._last_shed = now
        self.sheds += 1
        return self.backoff

    def may_restore(self, now: float) -> bool:
        """Whether a shed side may be bound again at *now*."""
        return (
            self.shed_at is not None
            and now - self.shed_at >= self.backoff
            and len(self.fds) <= self.low_water
        )

    def restored(self) -> None:
        self.shed_at = None


class TcpGuard:
    """Watches one side's device sockets (monitor events, in the loop) against its budget.

    *shed* unbinds the side's TCP endpoints and returns those it unbound;
    *restore* binds them again. Events of ``ipc://`` endpoints (the trusted
    side has them) are not counted: the runtime directory guards those.
    """

    def __init__(
        self,
        side: str,
        sockets: Iterable[zmq.Socket[Any]],
        shed: Callable[[], list[str]],
        restore: Callable[[list[str]], None],
    ) -> None:
        self.side = side
        self.sockets = list(sockets)
        self.monitors = [_monitor(sock) for sock in self.sockets]
        self._shed, self._restore = shed, restore
        self.budget = ConnectionBudget(budget_for(_fd_limit()))
        self._unbound: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for monitor in self.monitors:
            loop.add_reader(monitor.getsockopt(zmq.FD), self.drain)
        loop.call_soon(self.drain)

    def close(self) -> None:
        for sock, monitor in zip(self.sockets, self.monitors, strict=True):
            if self._loop is not None:
                self._loop.remove_reader(monitor.getsockopt(zmq.FD))
            sock.disable_monitor()
            monitor.close()
        self._loop = None

    def drain(self) -> None:
        """Count every queued event (``ZMQ_FD`` is edge-triggered: read to EAGAIN)."""
        self.budget.budget = budget_for(_fd_limit())  # one syscall: follows a prlimit
        for monitor in self.monitors:
            while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
                if not event["endpoint"].startswith(b"tcp://"):
                    continue
                if event["event"] != zmq.EVENT_ACCEPTED:
                    self.budget.closed(event["value"])
                elif self.budget.opened(event["value"]):
                    self._shed_now()

    def _shed_now(self) -> None:
        assert self._loop is not None
        count = len(self.budget.fds)
        self._unbound = self._shed()
        backoff = self.budget.shed(self._loop.time())
        log.warning(
            "%d bus connections on the %s side (at most %d): closed them all and stopped"
            " accepting on %s for %g s",
            count,
            self.side,
            self.budget.budget,
            ", ".join(self._unbound) or "nothing",
            backoff,
        )
        self._loop.call_later(backoff, self._try_restore)

    def _try_restore(self) -> None:
        if self._loop is None:
            return
        self.drain()
        if not self.budget.may_restore(self._loop.time()):
            self._loop.call_later(self.budget.backoff, self._try_restore)
            return
        self.budget.restored()
        unbound, self._unbound = self._unbound, []
        self._restore(unbound)
        log.info("the %s side of the bus accepts connections again", self.side)


def _monitor(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """A plain (not asyncio) PAIR socket receiving *sock*'s connection events: pyzmq's
    ``get_monitor_socket`` returns a socket of the context's class, Futures in the daemon."""
    address = f"inproc://zsvc-admission-{id(sock):x}"
    sock.monitor(address, EVENTS)
    monitor: zmq.Socket[Any] = zmq.Socket(sock.context, zmq.PAIR)
    monitor.setsockopt(zmq.LINGER, 0)
    monitor.connect(address)
    return monitor


def _fd_limit() -> int:
    """The soft open-files limit now (an operator's prlimit counts from the next flood)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft
