"""Processes for the benchmarks: subprocesses with deadlines, CPU, and a bounded clean-up.

Every subprocess a benchmark runs has a timeout and every wait a deadline; whatever a
manager leaves behind is killed by pid *and* start time (psutil), so a reused pid is
never hit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


class BenchError(Exception):
    """A step of a benchmark failed; the message says which and why."""


@dataclass
class Run:
    """One finished subprocess: wall time, CPU time (user+sys of it and its reaped children)."""

    argv: list[str]
    wall: float
    cpu: float
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run(
    argv: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
    ok: Collection[int] | None = (0,),
    cwd: Path | None = None,
) -> Run:
    """Run *argv* to completion within *timeout* s; BenchError unless its exit is in *ok*.

    *ok* None accepts any exit status. The CPU time comes from RUSAGE_CHILDREN deltas,
    exact as long as nothing else reaps a child meanwhile (it is not read in threads).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if ok is not None and done.returncode not in ok:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}:\n  " + "\n  ".join(tail))
    return Run(argv, wall, cpu, done.returncode, done.stdout, done.stderr)


def poll(predicate: Callable[[], Any], timeout: float, period: float = 0.02) -> Any:
    """*predicate*'s first true value within *timeout* seconds, else its last value.

    For a fact no event announces (a process gone, a file grown), with a deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(period)


def time_calls(call: Callable[[], Any], calls: int, warmup: int = 50) -> tuple[list[float], Any]:
    """*call*'s round trip in ms, *calls* times after *warmup* calls; and its first reply."""
    reply = call()
    for _ in range(warmup):  # connect, warm caches
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times, reply


def is_gone(proc: psutil.Process) -> bool:
    """True once *proc* has exited. A zombie counts as gone: a detached daemon's parent is
    PID 1, which may take a while to reap it (about 1 s in some sandboxes)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    return bool(poll(lambda: is_gone(proc), timeout, period=0.005))


def cpu_seconds(*procs: psutil.Process | None) -> float:
    """User + system CPU seconds of *procs* themselves (not of their reaped children).

    None, and a process already gone, count nothing: every benchmark reads a
    manager's CPU this way, before and after a window.
    """
    total = 0.0
    for proc in procs:
        if proc is None:
            continue
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def task_cpu_ms(pids: list[int]) -> float:
    """Mean CPU per task process so far, in ms.

    From /proc/PID/task/*/schedstat (run time in ns, every thread): psutil's
    cpu_times counts 10 ms ticks, which reads 0 for a 4 ms forked host. The
    time a forked child spends in the manager's code before exec is included.
    """
    values = []
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total = 0
            for thread in Path(f"/proc/{pid}/task").iterdir():
                total += int((thread / "schedstat").read_text().split()[0])
            values.append(total / 1e6)
    return sum(values) / len(values) if values else float("nan")


def remember(seen: dict[int, psutil.Process], pids: list[int]) -> list[psutil.Process]:
    """Keep a handle (pid + start time) on each of *pids* still there; those handles."""
    procs = []
    for pid in pids:
        if not pid:
            continue
        with contextlib.suppress(psutil.Error):
            proc = seen.get(pid) or psutil.Process(pid)
            seen.setdefault(pid, proc)
            procs.append(proc)
    return procs


def stop_process(
    main: psutil.Process, graceful: Callable[[], object], seen: dict[int, psutil.Process]
) -> bool:
    """Ask *main* to stop, then SIGTERM, then SIGKILL, each bounded; True if it exited in 30 s.

    Its descendants are remembered in *seen* first, so that :func:`kill_leftovers`
    can find what outlives it. *graceful*'s errors are ignored (the kills follow).
    """
    with contextlib.suppress(psutil.Error):
        for child in main.children(recursive=True):
            seen.setdefault(child.pid, child)
    with contextlib.suppress(Exception):
        graceful()
    if wait_gone(main, 30):
        return True
    print(f"pid {main.pid} still running 30 s after the stop request: SIGTERM", file=sys.stderr)
    with contextlib.suppress(psutil.Error):
        main.terminate()
    if not wait_gone(main, 10):
        with contextlib.suppress(psutil.Error):
            main.kill()
        wait_gone(main, 5)
    return False


def kill_leftovers(seen: dict[int, psutil.Process], grace: float = 2.0) -> list[int]:
    """SIGKILL every remembered process still alive after *grace* s; their pids.

    A leftover that leads its own process group (a task that called setsid or
    setpgrp) has its group killed too.
    """
    leftovers = []
    for proc in seen.values():
        if wait_gone(proc, grace):
            continue
        leftovers.append(proc.pid)
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
    return leftovers
