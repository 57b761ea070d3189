"""A bound in bytes on what the bus device's XPUB holds for slow subscribers (issue 19, finding 3).

ZeroMQ bounds a subscriber's queue in messages (``SNDHWM``), not bytes: with
10,000 messages per peer, one subscriber that never reads held 1,000 x 1 MiB
messages, and the daemon grew by 1.4 GB. A :class:`SendBudget` bounds the
bytes of *large* messages (over :data:`LARGE_MESSAGE`) that an XPUB still
holds: each is sent zero-copy with a ``MessageTracker``, which says when
libzmq let go of it (delivered to every subscriber it was for, or dropped);
until then its bytes count. A large message that would go over the budget
is dropped for that XPUB's subscribers. Small messages stay bounded by the
high-water mark, so one XPUB holds at most ``budget + HWM * LARGE_MESSAGE``
bytes of messages, however many subscribers are stuck.
"""

from __future__ import annotations

import collections
from typing import Any

import zmq

LARGE_MESSAGE = 1024
"""Bytes above which a message's body is counted against the budget (the daemon's task
events, probes and most reports are smaller)."""
SEND_BUDGET = 16 << 20
"""Bytes of large messages one XPUB may hold at once."""
TRACKING_COST = 4096
"""Bytes charged per held message on top of its body: pyzmq's frame, tracker and event
objects, and the allocator's slack (measured with 2 KiB messages, ``bench/stuck.py``)."""


class SendBudget:
    """The large messages one XPUB still holds, and the limit on their bytes."""

    def __init__(
        self, limit: int = SEND_BUDGET, large: int = LARGE_MESSAGE, cost: int = TRACKING_COST
    ) -> None:
        self.limit = limit
        self.large = large
        self.cost = cost
        self.held = 0
        """Bytes of large messages libzmq has not let go of yet (each with its cost)."""
        self.dropped = 0
        """Large messages refused so far."""
        self._held: collections.deque[tuple[zmq.MessageTracker, int]] = collections.deque()

    def admit(self, size: int) -> bool:
        """Whether a message of *size* bytes may be sent now (small ones always may)."""
        if size <= self.large:
            return True
        self._release(everything=False)
        if self.held + size + self.cost > self.limit:
            self._release(everything=True)  # one slow topic must not hold up the rest
            if self.held + size + self.cost > self.limit:
                self.dropped += 1
                return False
        return True

    def sent(self, tracker: zmq.MessageTracker, size: int) -> None:
        """Count a large message sent with *tracker* until libzmq lets go of it."""
        self._held.append((tracker, size + self.cost))
        self.held += size + self.cost

    def _release(self, everything: bool) -> None:
        """Forget the messages libzmq let go of: from the oldest on until one is still held
        (cheap, since messages are mostly delivered in order), or all of them."""
        if not everything:
            while self._held and self._held[0][0].done:
                self.held -= self._held.popleft()[1]
            return
        kept = collections.deque(item for item in self._held if not item[0].done)
        self.held = sum(size for _, size in kept)
        self._held = kept


def track_sends(xpub: zmq.Socket[Any]) -> None:
    """Make *xpub* ready for tracked sends (:class:`SendBudget`).

    pyzmq copies a message under ``copy_threshold`` (64 KiB) even when told
    not to, and its tracker is then done at once: the threshold goes, so every
    large message is tracked. A tracked send also needs pyzmq's collector
    thread and a socket to it, which hold file descriptors: one tracked send
    now, to nobody (nothing is bound yet), opens them before the daemon
    serves, so its descriptors do not change under load.
    """
    xpub.copy_threshold = 0
    xpub.send(b"\0", flags=zmq.NOBLOCK, copy=False, track=True)
