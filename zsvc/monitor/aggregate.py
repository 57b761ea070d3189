"""How per-process readings add up to a task's and a transaction's usage.

Pure: no psutil, no /proc, no clock. Readings come in (from
:mod:`zsvc.monitor.sampler`, or from a test), JSON-ready dictionaries go out,
and time is an argument. CPU % needs two readings of one process; the
:class:`CpuTracker` remembers the previous one per process (by pid *and*
start time, so a reused pid never inherits a stranger's CPU time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_WINDOW_S = 0.05
"""A process first seen this young is measured over at least this long (no 10,000 %)."""
MARK_MAX_AGE_S = 900.0
"""A process not sampled for this long is forgotten (it most likely ended)."""

ProcKey = tuple[int, float]
"""(pid, start time): one process, whatever became of its pid since."""


@dataclass(frozen=True)
class ProcReading:
    """One process at one moment, as read from the kernel. Counts are None when unreadable."""

    pid: int
    ppid: int
    create_time: float
    name: str
    status: str
    cpu_time: float
    """user + system seconds since the process started."""
    rss: int
    vms: int
    threads: int
    fds: int | None = None
    files: int | None = None
    sockets: int | None = None
    read_bytes: int | None = None
    write_bytes: int | None = None
    uss: int | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    """The lists asked for: ``open_files``, ``connections``, ``memory_maps``."""

    @property
    def key(self) -> ProcKey:
        return (self.pid, self.create_time)


class CpuTracker:
    """CPU % of a process between two readings, or since its start for the first one."""

    def __init__(self) -> None:
        self._marks: dict[ProcKey, tuple[float, float]] = {}

    def percent(self, reading: ProcReading, now: float) -> float:
        """CPU % (100 = one core) since the previous reading of this process, and remember it."""
        mark = self._marks.get(reading.key)
        self._marks[reading.key] = (reading.cpu_time, now)
        if mark is not None and now > mark[1]:
            used, since = reading.cpu_time - mark[0], mark[1]
        else:
            used, since = reading.cpu_time, min(reading.create_time, now - MIN_WINDOW_S)
        window = max(now - since, MIN_WINDOW_S)
        return round(max(used, 0.0) * 100.0 / window, 1)

    def prune(self, now: float, max_age: float = MARK_MAX_AGE_S) -> None:
        """Forget processes not read for *max_age* seconds (bounded memory)."""
        stale = [key for key, (_, at) in self._marks.items() if now - at > max_age]
        for key in stale:
            del self._marks[key]

    def __len__(self) -> int:
        return len(self._marks)


def _sum(values: Iterable[int | None]) -> int | None:
    """The sum of what could be read; None when nothing could."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def child_view(reading: ProcReading, cpu: float) -> dict[str, Any]:
    """One child process of a task, as listed in its sample."""
    return {
        "pid": reading.pid,
        "ppid": reading.ppid,
        "name": reading.name,
        "status": reading.status,
        "cpu_percent": cpu,
        "rss": reading.rss,
        "threads": reading.threads,
    }


def usage(
    readings: Sequence[ProcReading], main_pid: int | None, cpu: Mapping[int, float]
) -> dict[str, Any]:
    """A task's usage: the sum over its processes, with its main process's status.

    *readings* are the processes found now (the main one may have vanished
    since the list was made); *cpu* maps pid to CPU %.
    """
    main = next((r for r in readings if r.pid == main_pid), None)
    children = [r for r in readings if r.pid != main_pid]
    result: dict[str, Any] = {
        "pid": main_pid,
        "status": main.status if main is not None else "vanished",
        "cpu_percent": round(sum(cpu.get(r.pid, 0.0) for r in readings), 1),
        "rss": sum(r.rss for r in readings),
        "vms": sum(r.vms for r in readings),
        "uss": _sum(r.uss for r in readings),
        "threads": sum(r.threads for r in readings),
        "processes": len(readings),
        "fds": _sum(r.fds for r in readings),
        "files": _sum(r.files for r in readings),
        "sockets": _sum(r.sockets for r in readings),
        "read_bytes": _sum(r.read_bytes for r in readings),
        "write_bytes": _sum(r.write_bytes for r in readings),
        "children": [child_view(r, cpu.get(r.pid, 0.0)) for r in children],
    }
    for name in ("open_files", "connections", "memory_maps"):
        lists = {r.pid: r.extras[name] for r in readings if name in r.extras}
        if lists:
            result[name] = {str(pid): items for pid, items in lists.items()}
    return result


TOTAL_FIELDS = ("cpu_percent", "rss", "vms", "threads", "processes", "fds", "files", "sockets")


def totals(tasks: Iterable[Mapping[str, Any]], shared: Iterable[str] = ()) -> dict[str, Any]:
    """A transaction's totals from its tasks' usage; tasks named in *shared* share one
    process (Thread tasks in their host) and are counted once."""
    result: dict[str, Any] = dict.fromkeys(TOTAL_FIELDS, 0)
    result["tasks_up"] = 0
    counted_pids: set[int] = set()
    shared = set(shared)
    for task in tasks:
        use = task.get("usage")
        if not use:
            continue
        result["tasks_up"] += 1
        if task.get("id") in shared:
            if use.get("pid") in counted_pids:
                continue
            counted_pids.add(use.get("pid"))
        for name in TOTAL_FIELDS:
            result[name] += use.get(name) or 0
    result["cpu_percent"] = round(result["cpu_percent"], 1)
    return result
