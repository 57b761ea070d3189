"""Notify traffic, tamed: a status line per task at human speed, and a budget per task.

A task may send ``STATUS=`` in a tight loop (tens of thousands of datagrams
a second). Each one used to reach the daemon, which committed the task's row
to SQLite and published it: one task held the daemon at 93 % of a core and
other clients waited over a second for an answer. Two pure mechanisms, with
time as an argument so that they are tested without processes or clocks:

* :class:`Coalescer`: per key, the latest value wins and is delivered at most
  once per interval. A value that arrives inside the window is kept as
  *pending* and delivered when the window ends (the caller sets a timer at
  :meth:`Coalescer.deadline`), or earlier by :meth:`Coalescer.flush`, which a
  runner calls before any state event of the same task (READY=1, STOPPING=1,
  a new main pid, the end), so a status line is never reordered with them and
  a run's last words (quoted by a failed start) are never lost.
* :class:`Budget`: a token bucket per key. A datagram within the budget is
  parsed and acted upon; beyond it, the runner handles it the cheap way
  (:func:`lone_status`: a lone ``STATUS=`` line is kept raw as the pending
  status, unparsed; a datagram that names a state change is still parsed;
  anything else is dropped and counted) and the count is logged at most once
  per :data:`REPORT_INTERVAL`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

STATUS_INTERVAL = 0.1
"""Seconds between two status lines of one task given to the daemon: a status line is
for humans, and each one costs the daemon a committed write and a publication."""

NOTIFY_RATE = 200.0
"""Datagrams per second of one task that are parsed and acted upon in full."""

NOTIFY_BURST = 400.0
"""How many datagrams one task may send at once before its budget applies."""

NOTIFY_BATCH = 64
"""Datagrams read per turn of the event loop at most: a flood must not starve the rest."""

FLOOD_PAUSE = 0.005
"""Seconds the notify socket is left unread after a batch that went beyond a task's
budget. While a task floods, the daemon thus reads at most NOTIFY_BATCH / FLOOD_PAUSE
datagrams a second (12,800), in batches rather than one wake-up per datagram, and the
kernel makes the flooder wait in send(): its flood costs the daemon a bounded share of
a core whatever its rate. Other tasks' notifications wait that long at most, plus
their turn in the socket's queue."""

REPORT_INTERVAL = 10.0
"""Seconds between two log lines about one task's datagrams beyond its budget."""

_STATE_MARKERS = (
    b"READY=",
    b"STOPPING=",
    b"RELOADING=",
    b"MAINPID=",
    b"WATCHDOG=",
    b"EXTEND_TIMEOUT_USEC=",
    b"ERRNO=",
)


def lone_status(data: bytes) -> bool:
    """Whether *data* is one ``STATUS=`` assignment and nothing else (a trailing newline
    allowed): such a datagram can be kept raw as the latest status, without parsing."""
    return data.startswith(b"STATUS=") and b"\n" not in data.rstrip(b"\n")


def names_state(data: bytes) -> bool:
    """Whether *data* may carry something other than a status line that the runner acts
    on (readiness, stopping, a main pid, a watchdog ping, a timeout): never dropped."""
    return any(marker in data for marker in _STATE_MARKERS)


@dataclass
class TokenBucket:
    """*rate* tokens a second, at most *burst* saved up; one token per datagram."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate=rate, burst=burst, tokens=burst, stamp=now)

    def take(self, now: float) -> bool:
        """Spend one token if there is one; a clock going backwards adds none."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Account:
    bucket: TokenBucket
    over: int = 0
    """Datagrams beyond the budget since the last report."""
    reported: float = float("-inf")
    """When the excess was last reported: the first excess is reported at once."""


@dataclass
class Budget(Generic[K]):
    """A token bucket per key, and a count of what went beyond it, reported sparingly."""

    rate: float = NOTIFY_RATE
    burst: float = NOTIFY_BURST
    report_interval: float = REPORT_INTERVAL
    _accounts: dict[K, _Account] = field(default_factory=dict)

    def admit(self, key: K, now: float) -> bool:
        """True when the datagram is within *key*'s budget; else it is counted."""
        account = self._accounts.get(key)
        if account is None:
            bucket = TokenBucket.full(self.rate, self.burst, now)
            account = self._accounts[key] = _Account(bucket)
        if account.bucket.take(now):
            return True
        account.over += 1
        return False

    def report(self, key: K, now: float) -> int:
        """How many datagrams went beyond the budget since the last report, when that is
        some and :attr:`report_interval` has passed since it (or there was none); else 0
        (nothing to log)."""
        account = self._accounts.get(key)
        if account is None or not account.over or now - account.reported < self.report_interval:
            return 0
        over, account.over, account.reported = account.over, 0, now
        return over

    def forget(self, key: K) -> int:
        """Drop *key*'s account (its run ended); what it had not reported yet."""
        account = self._accounts.pop(key, None)
        return account.over if account is not None else 0


@dataclass
class Coalescer(Generic[K, V]):
    """Per key, the latest value wins and goes out at most once per *interval*."""

    interval: float = STATUS_INTERVAL
    _sent: dict[K, float] = field(default_factory=dict)
    _pending: dict[K, V] = field(default_factory=dict)

    def offer(self, key: K, value: V, now: float) -> V | None:
        """*value* when it may go out now; else None: it is pending (replacing any
        earlier pending one), to go out at :meth:`deadline` or at a :meth:`flush`."""
        sent = self._sent.get(key)
        if key not in self._pending and (sent is None or now - sent >= self.interval):
            self._sent[key] = now
            return value
        self._pending[key] = value
        return None

    def deadline(self, key: K) -> float | None:
        """When *key*'s pending value is due; None when nothing is pending."""
        if key not in self._pending:
            return None
        return self._sent.get(key, float("-inf")) + self.interval

    def due(self, key: K, now: float) -> V | None:
        """The pending value of *key* if its window has ended (it goes out now), else None."""
        deadline = self.deadline(key)
        if deadline is None or now < deadline:
            return None
        return self.flush(key, now)

    def flush(self, key: K, now: float) -> V | None:
        """The pending value of *key*, going out now whatever the window (before a state
        event of the same key); None when nothing is pending."""
        if key not in self._pending:
            return None
        self._sent[key] = now
        return self._pending.pop(key)

    def forget(self, key: K) -> V | None:
        """Drop everything about *key*; its pending value, which is not sent."""
        self._sent.pop(key, None)
        return self._pending.pop(key, None)

    def pending(self) -> list[K]:
        """The keys with a pending value."""
        return list(self._pending)
