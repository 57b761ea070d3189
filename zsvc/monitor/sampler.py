"""Reading processes: psutil (``oneshot``) plus one cheap pass over ``/proc/<pid>/fd``.

Each process costs a handful of small reads: ``stat``, ``status`` and
``statm`` through one ``oneshot()``, ``io``, and a ``readlink`` per open
descriptor, which classifies them (files, sockets) without psutil's
``open_files()`` (that one also reads every ``fdinfo``) and without
``net_connections()`` (that one parses the machine's whole socket tables).
The lists (open files, inet connections, memory maps) are read only when
asked. A process that ends while it is read is simply not in the result:
vanishing is normal, not an error.

psutil 5.9 (Debian 12) names the connection list ``connections()``, psutil
6+ ``net_connections()``; both are used through :func:`connections_of`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any

import psutil

from zsvc.monitor.aggregate import ProcReading
from zsvc.monitor.options import NO_OPTIONS, MonitorOptions

MAX_LISTED = 256
"""At most this many open files, connections or memory maps per process (one bus message
stays well below the bus's 1 MiB limit)."""


def fd_kinds(pid: int) -> tuple[int, int, int] | None:
    """(descriptors, regular files, sockets) of *pid*; None when unreadable or gone."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    files = sockets = 0
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:"):
            sockets += 1
        elif target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            files += 1
    return len(names), files, sockets


def connections_of(process: psutil.Process) -> list[Any]:
    """The inet connections of *process*, under psutil 5.9 and 6+/7 alike."""
    method = getattr(process, "net_connections", None) or process.connections
    return list(method(kind="inet"))


def _endpoint(address: Any) -> str:
    if not address:
        return ""
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


def _extras(process: psutil.Process, options: MonitorOptions) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if options.opened_files:
        with contextlib.suppress(psutil.AccessDenied):
            extras["open_files"] = [
                {"path": f.path, "fd": f.fd} for f in process.open_files()[:MAX_LISTED]
            ]
    if options.open_connections:
        with contextlib.suppress(psutil.AccessDenied):
            extras["connections"] = [
                {
                    "fd": c.fd,
                    "family": getattr(c.family, "name", str(c.family)),
                    "type": getattr(c.type, "name", str(c.type)),
                    "laddr": _endpoint(c.laddr),
                    "raddr": _endpoint(c.raddr),
                    "status": c.status,
                }
                for c in connections_of(process)[:MAX_LISTED]
            ]
    if options.memory_maps:
        with contextlib.suppress(psutil.AccessDenied):
            extras["memory_maps"] = [m._asdict() for m in process.memory_maps()[:MAX_LISTED]]
    return extras


def read_process(pid: int, options: MonitorOptions = NO_OPTIONS) -> ProcReading | None:
    """One process now; None when it does not exist (any more)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            status = process.status()
            create_time = process.create_time()
            name = process.name()
            ppid = process.ppid()
            times = process.cpu_times()
            memory = process.memory_info()
            threads = process.num_threads()
        io: Any = None
        with contextlib.suppress(psutil.AccessDenied, NotImplementedError, AttributeError):
            io = process.io_counters()
        uss = None
        extras: dict[str, Any] = {}
        if options.memory_maps:  # reading smaps is what makes USS costly; it comes with maps
            with contextlib.suppress(psutil.AccessDenied):
                uss = process.memory_full_info().uss
        if options.opened_files or options.open_connections or options.memory_maps:
            extras = _extras(process, options)
    except psutil.ZombieProcess:
        return _zombie(pid)
    except psutil.NoSuchProcess:
        return None
    kinds = fd_kinds(pid)
    fds, files, sockets = kinds if kinds is not None else (None, None, None)
    return ProcReading(
        pid=pid,
        ppid=ppid,
        create_time=create_time,
        name=name,
        status=str(status),
        cpu_time=times.user + times.system,
        rss=memory.rss,
        vms=memory.vms,
        threads=threads,
        fds=fds,
        files=files,
        sockets=sockets,
        read_bytes=getattr(io, "read_bytes", None),
        write_bytes=getattr(io, "write_bytes", None),
        uss=uss,
        extras=extras,
    )


def _zombie(pid: int) -> ProcReading | None:
    """A process that ended and was not reaped yet: shown as such, with nothing in use."""
    try:
        process = psutil.Process(pid)
        return ProcReading(
            pid=pid,
            ppid=process.ppid(),
            create_time=process.create_time(),
            name=process.name(),
            status=psutil.STATUS_ZOMBIE,
            cpu_time=0.0,
            rss=0,
            vms=0,
            threads=0,
        )
    except psutil.Error:
        return None


def read_processes(pids: Iterable[int], options: MonitorOptions = NO_OPTIONS) -> list[ProcReading]:
    """Every process of *pids* that still exists, in order, each once."""
    readings: list[ProcReading] = []
    seen: set[int] = set()
    for pid in pids:
        if pid in seen:
            continue
        seen.add(pid)
        reading = read_process(pid, options)
        if reading is not None:
            readings.append(reading)
    return readings
