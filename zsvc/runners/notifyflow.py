"""A runner's notify traffic on its way to the daemon: coalesced, budgeted, in order.

The rules are the pure :class:`~zsvc.runners.coalesce.Coalescer` and
:class:`~zsvc.runners.coalesce.Budget`; :class:`StatusFlow` adds what needs an
event loop: a timer per task with a pending status line, and the daemon's
``on_status`` callback. A runner calls :meth:`StatusFlow.status` for each status
line, :meth:`StatusFlow.flush` before any other event of the same task (READY=1,
STOPPING=1, a new main pid), and :meth:`StatusFlow.end` before reporting the
end of a run: the pending line is then delivered, not dropped, because the
failed-start message quotes a run's last status line
(:meth:`zsvc.daemon.model.TaskRecord.end_run`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from zsvc.notify import Notification, NotifyProtocolError, NotifyServer, parse_notification
from zsvc.runners.base import ExitInfo, TaskKey
from zsvc.runners.coalesce import (
    FLOOD_PAUSE,
    NOTIFY_BATCH,
    NOTIFY_BURST,
    NOTIFY_RATE,
    REPORT_INTERVAL,
    STATUS_INTERVAL,
    Budget,
    Coalescer,
    lone_status,
    names_state,
)
from zsvc.throttle import ThrottledLog

log = logging.getLogger(__name__)

Status = str | bytes
"""A status line: text, or a raw lone ``STATUS=`` datagram kept unparsed."""


class StatusFlow:
    """Status lines of a runner's tasks, paced per task, delivered through *deliver*."""

    def __init__(
        self,
        deliver: Callable[[TaskKey, str], None],
        interval: float = STATUS_INTERVAL,
        rate: float = NOTIFY_RATE,
        burst: float = NOTIFY_BURST,
    ) -> None:
        self._deliver = deliver
        self._coalescer: Coalescer[TaskKey, Status] = Coalescer(interval)
        self._budget: Budget[TaskKey] = Budget(rate, burst)
        self._timers: dict[TaskKey, asyncio.TimerHandle] = {}
        self._invalid = ThrottledLog(log, REPORT_INTERVAL, self._now)
        self.flooded = False
        """Set when a datagram went beyond its task's budget; the reader resets it."""

    @staticmethod
    def _now() -> float:
        """The event loop's clock (asyncio's loops read time.monotonic())."""
        return time.monotonic()

    def status(self, key: TaskKey, value: Status, now: float | None = None) -> None:
        """A new status line of *key*: delivered now, or pending until its window ends."""
        now = self._now() if now is None else now
        ready = self._coalescer.offer(key, value, now)
        if ready is not None:
            self._send(key, ready)
        elif key not in self._timers:
            self._arm(key)

    def flush(self, key: TaskKey) -> None:
        """Deliver *key*'s pending status line now: another event of it follows."""
        value = self._coalescer.flush(key, self._now())
        if value is not None:
            self._send(key, value)

    def end(self, key: TaskKey) -> None:
        """*key*'s run ended: its last words go out, then everything about it is forgotten."""
        self.flush(key)
        self._coalescer.forget(key)
        self._report(key, self._budget.forget(key))
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def cheap(self, key: TaskKey, data: bytes, now: float | None = None) -> bool:
        """True when *data*, a datagram from *key*, was handled without being parsed: it
        is beyond the task's budget and is a lone status line (kept raw as the pending
        one) or carries nothing the runner acts on (dropped). False: parse and apply it.
        *now* (the loop's time) spares a flood's batch a clock read per datagram."""
        now = self._now() if now is None else now
        if self._budget.admit(key, now):
            return False
        self.flooded = True
        self._report(key, self._budget.report(key, now))
        if lone_status(data):
            self.status(key, data, now)
            return True
        return not names_state(data)

    def invalid(self, error: NotifyProtocolError) -> None:
        """A datagram that does not parse: logged, at most once per report interval."""
        self._invalid.warning("ignored a notification: %s", error)

    def close(self) -> None:
        """Cancel the timers: nothing pending is delivered once the runner is closed."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _arm(self, key: TaskKey) -> None:
        deadline = self._coalescer.deadline(key)
        if deadline is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait in (a runner driven by hand): no pacing
            self.flush(key)
            return
        self._timers[key] = loop.call_at(deadline, self._on_timer, key)

    def _on_timer(self, key: TaskKey) -> None:
        self._timers.pop(key, None)
        value = self._coalescer.due(key, self._now())
        if value is not None:
            self._send(key, value)
        else:
            self._arm(key)  # flushed meanwhile and pending again: a later deadline

    def _send(self, key: TaskKey, value: Status) -> None:
        text = _text(value) if isinstance(value, bytes) else value
        if text is not None:
            self._deliver(key, text)

    def _report(self, key: TaskKey, over: int) -> None:
        if over:
            log.warning(
                "%s/%s sent %d notifications beyond its budget (%g a second): "
                "status lines coalesced, others without a state change dropped",
                *key,
                over,
                self._budget.rate,
            )


def _text(data: bytes) -> str | None:
    """The status text of a raw lone ``STATUS=`` datagram, by the protocol's own grammar;
    None (and a debug line) when it does not parse."""
    try:
        return parse_notification(data).get("STATUS")
    except NotifyProtocolError as exc:
        log.debug("ignored a status line: %s", exc)
        return None


class _Task(Protocol):
    @property
    def key(self) -> TaskKey: ...

    @property
    def exit_info(self) -> ExitInfo | None: ...


T = TypeVar("T", bound=_Task)


class NotifyReader(Generic[T]):
    """Reads a runner's notify socket in bounded batches, and pauses it during a flood.

    Each datagram costs a wake-up of the event loop, not only its parsing: a
    flood paced evenly (one datagram at a time, 30,000 a second) woke the daemon
    for nearly every one. So when a batch held datagrams beyond a task's budget,
    the socket is not read again for :data:`FLOOD_PAUSE` seconds: what arrives
    meanwhile waits in the kernel's queue and is read in one batch, and a sender
    that fills the queue blocks in send() (sd_notify's back-pressure), which
    costs the daemon nothing. Other tasks' notifications wait at most as long.
    """

    def __init__(
        self,
        flow: StatusFlow,
        sender: Callable[[int], T | None],
        apply: Callable[[T, Notification], None],
        hold: Callable[[Notification], None],
    ) -> None:
        self._flow = flow
        self._sender = sender
        self._apply = apply
        self._hold = hold
        self._server: NotifyServer | None = None
        self._resume: asyncio.TimerHandle | None = None

    def start(self, server: NotifyServer) -> None:
        self._server = server
        asyncio.get_running_loop().add_reader(server.fileno(), self.read)

    def stop(self) -> None:
        """Stop reading (the server is the caller's to close)."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        elif self._server is not None:
            asyncio.get_running_loop().remove_reader(self._server.fileno())
        self._server = None

    def read(self) -> None:
        """Read a bounded batch; beyond its budget, a task's datagrams are handled the
        cheap way, unparsed (:meth:`StatusFlow.cheap`)."""
        if self._server is None:
            return
        self._flow.flooded = False
        senders: dict[int, T | None] = {}  # one lookup per sender and batch
        now = time.monotonic()  # one clock read per batch
        for raw in self._server.drain_raw(NOTIFY_BATCH):
            if isinstance(raw, NotifyProtocolError):
                self._flow.invalid(raw)
                continue
            if raw.pid not in senders:
                senders[raw.pid] = self._sender(raw.pid)
            task = senders[raw.pid]
            alive = task is not None and task.exit_info is None
            if alive and self._flow.cheap(task.key, raw.data, now):  # type: ignore[union-attr]
                continue
            try:
                note = raw.parse()
            except NotifyProtocolError as exc:
                self._flow.invalid(exc)
                continue
            if task is None:
                self._hold(note)
            else:
                self._apply(task, note)
        if self._flow.flooded and self._resume is None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._server.fileno())
            self._resume = loop.call_later(FLOOD_PAUSE, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        if self._server is not None:
            asyncio.get_running_loop().add_reader(self._server.fileno(), self.read)
