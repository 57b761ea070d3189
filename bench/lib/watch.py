"""Threads that watch what processes send: READY=1 on the bench's own notify socket, and a
subscriber draining a stream of samples (zsvc's ``monitor``, circusd-stats)."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lib.procs import BenchError, poll
from zsvc.notify import NotifyServer


class ReadyWatch:
    """The bench's own sd_notify socket: records when each pid sent READY=1 (a thread).

    circus and supervisord do not read ``NOTIFY_SOCKET``; pointed at this socket, their
    tasks tell the bench when they were really ready, without the manager knowing.
    """

    def __init__(self, path: Path):
        self.server = NotifyServer(path)
        self.path = self.server.path
        self.ready: dict[int, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if not select.select([self.server.fileno()], [], [], 0.2)[0]:
                continue
            now = time.perf_counter()
            for note in self.server.drain():
                if not isinstance(note, Exception) and note.ready:
                    with self.lock:
                        self.ready.setdefault(note.pid, now)

    def since(self, start: float) -> dict[int, float]:
        with self.lock:
            return {pid: at for pid, at in self.ready.items() if at >= start}

    def wait_count(self, start: float, count: int, timeout: float) -> dict[int, float]:
        """The READY times of at least *count* pids since *start*, or BenchError."""
        seen = poll(lambda: len(self.since(start)) >= count, timeout, period=0.002)
        if not seen:
            got = len(self.since(start))
            raise BenchError(f"only {got} of {count} tasks sent READY=1 in {timeout} s")
        return self.since(start)

    def wait_pid(self, pid: int, timeout: float) -> float:
        """When *pid* sent READY=1 (perf_counter), waiting up to *timeout* s for it."""

        def ready_at() -> float | None:
            with self.lock:
                return self.ready.get(pid)

        at = poll(ready_at, timeout, period=0.002)
        if at is None:
            raise BenchError(f"pid {pid} sent no READY=1 within {timeout} s")
        return at

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()


class Drain:
    """A subscriber that drains and counts samples in a thread, as a live viewer would.

    *receive(timeout)* waits up to *timeout* s for one sample and says whether one came;
    *close* releases the subscriber, in the draining thread (sockets are not shared).
    """

    def __init__(self, receive: Callable[[float], bool], close: Callable[[], None]):
        self.receive = receive
        self.release = close
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            while not self.stopping.is_set():
                if self.receive(0.2):
                    self.samples += 1
        finally:
            self.release()

    def wait_samples(self, count: int, timeout: float) -> bool:
        """Whether *count* samples came within *timeout* s (sampling has begun)."""
        return bool(poll(lambda: self.samples >= count, timeout, period=0.05))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
