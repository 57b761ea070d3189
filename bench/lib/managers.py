"""The managers under test, behind one adapter hierarchy: zsvc, circus, supervisord, systemd.

Every adapter has the same life cycle: :meth:`Manager.start` (returns once the manager
answers), :meth:`Manager.manager_procs` (the processes whose CPU and memory count,
never its tasks) and :meth:`Manager.teardown` (a graceful stop, bounded, then SIGKILL to
the manager and to every process it was seen to own). zsvc, circus and supervisord also
run *groups* (N copies of one program under one name: a transaction, a watcher, a
program), which bench/peers.py measures side by side; bench/crashloop.py configures the
same adapters with programs that crash. :class:`Systemd` is the PID 1 of a throwaway
box (tests/system/box.py) with transient units.

Here: the base class, zsvc and systemd; circus and supervisord are in :mod:`lib.peers`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import psutil

from lib.daemon import ZYGOTE_MARKER, ZsvcDaemon, clean_env, kill_task
from lib.procs import is_gone, kill_leftovers, remember, stop_process, time_calls
from lib.watch import Drain, ReadyWatch
from zsvc.client import BusClient, ControlClient


def role(proc: psutil.Process) -> str:
    """A manager process's name for the notes (zsvc's processes are all called python)."""
    try:
        argv = " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
    for marker, name in (
        (ZYGOTE_MARKER, "zygote"),
        ("zsvc.daemon", "daemon"),
        ("stats.main", "circusd-stats"),
    ):
        if marker in argv:
            return name
    return proc.name()


class Manager:
    """One manager under test: started, measured through the same steps, torn down."""

    name = ""
    helper_marker = ""
    """Part of the command line of the manager's own child process, if it has one."""

    def __init__(self, home: Path | None, env: dict[str, str] | None = None):
        self.home = home
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
        self.env = env if env is not None else clean_env()
        self.main: psutil.Process | None = None
        self.owned: dict[int, psutil.Process] = {}

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the manager; return once it answers."""
        raise NotImplementedError

    def request_stop(self) -> None:
        """Ask the manager to stop (it may fail: :meth:`teardown` kills what is left)."""
        raise NotImplementedError

    def end_session(self) -> None:
        """After the stop: what else ends the manager (its session, its box)."""

    def manager_procs(self) -> list[psutil.Process]:
        """The manager's own processes (the main one first, then its helper), never its tasks."""
        if self.main is None:
            return []
        procs = [self.main]
        if self.helper_marker:
            with contextlib.suppress(psutil.Error):
                for child in self.main.children():
                    if self.helper_marker in " ".join(child.cmdline()):
                        procs.append(child)
        return procs

    def remember(self, pids: list[int]) -> None:
        remember(self.owned, pids)

    def teardown(self) -> None:
        """Graceful stop (bounded), then SIGKILL to the manager and to everything it owned.

        Safe to call again: a manager already gone is skipped.
        """
        if self.main is not None and not is_gone(self.main):
            remember(self.owned, [proc.pid for proc in self.manager_procs()])
            stop_process(self.main, self.request_stop, self.owned)
        self.end_session()
        left = kill_leftovers(self.owned)
        if left:
            print(f"{self.name}: killed processes left behind: {left}", file=sys.stderr)
        self.main = None

    def __enter__(self) -> Manager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # --- a group of N copies of one program (bench/peers.py) -----------------------------------

    def group_start(self, group: str) -> float:
        """Wall time of the CLI process that starts *group* (see bench/README.md)."""
        raise NotImplementedError

    def group_stop(self, group: str) -> float:
        raise NotImplementedError

    def group_pids(self, group: str) -> list[int]:
        """The pids of the group's running processes (remembered for the teardown)."""
        raise NotImplementedError

    def retire(self, group: str) -> None:
        """Drop a stopped group, so that later status replies hold only the idle group."""

    def kill_one(self, group: str, ready: ReadyWatch, period: float) -> tuple[float, float]:
        """SIGKILL one process of *group*; seconds until its replacement runs, is ready."""
        raise NotImplementedError

    def status_cli(self) -> list[str]:
        raise NotImplementedError

    def status_probe(self, calls: int) -> tuple[list[float], int]:
        """The status round trips (ms) through the manager's own client; the reply's size."""
        raise NotImplementedError

    def stats_on(self) -> None:
        """Switch the manager's resource statistics on, with one subscriber draining them."""

    def stats_off(self) -> None:
        """Switch them off again."""


# --- zsvc ------------------------------------------------------------------------------------


class Zsvc(Manager):
    """A zsvc daemon of this checkout (local runner); its groups are transactions."""

    name = "zsvc"

    def __init__(self, home: Path, pyc: Path | None = None):
        self.daemon = ZsvcDaemon(home, pyc=pyc)
        super().__init__(home, self.daemon.env)
        self.owned = self.daemon.tasks_seen
        self.contexts: dict[str, tuple[Path, int]] = {}
        self.bus: BusClient | None = None
        self.watch: Drain | None = None

    def start(self) -> None:
        self.daemon.start()
        self.main = self.daemon.proc

    def manager_procs(self) -> list[psutil.Process]:
        """The daemon and its zygote (the forking host of Python tasks)."""
        if self.main is None:
            return []
        zygote = self.daemon.zygote()
        return [self.main] if zygote is None else [self.main, zygote]

    def teardown(self) -> None:
        self.stats_off()
        if self.bus is not None:
            self.bus.close()
            self.bus = None
        left = self.daemon.shutdown()
        if left:
            print(f"{self.name}: killed processes left behind: {left}", file=sys.stderr)
        self.main = None

    def add_transaction(self, name: str, context: Path, size: int) -> None:
        """A group: transaction *name* of *size* tasks, from the context file *context*."""
        self.contexts[name] = (context, size)

    def group_start(self, group: str) -> float:
        path, size = self.contexts[group]
        # Blocks until every task sent READY=1.
        return self.daemon.cli("start", "--context", str(path), group, timeout=60 + size).wall

    def group_pids(self, group: str) -> list[int]:
        record = self.daemon.call("status", transaction=group)
        pids = [t["pid"] for t in record["tasks"] if t["state"] == "active" and t["pid"]]
        self.remember(pids)
        return pids

    def group_stop(self, group: str) -> float:
        wall = self.daemon.cli("stop", group, timeout=60 + self.contexts[group][1]).wall
        self.daemon.call("forget", wait=30, transaction=group)  # retired with the stop
        return wall

    def kill_one(self, group: str, ready: ReadyWatch, period: float) -> tuple[float, float]:
        """SIGKILL the first task, until the bus says its replacement is READY ('started')."""
        if self.bus is None:
            self.bus = self.daemon.bus(["control"])
        task = min(self.daemon.call("status", transaction=group)["tasks"], key=lambda t: t["id"])
        kill = kill_task(self.bus, task["pid"], group, task["id"], "started", 10.0)
        assert kill.started is not None and kill.new_pid is not None
        self.remember([kill.new_pid])
        return kill.started, kill.started  # 'started' is sent at READY=1

    def status_cli(self) -> list[str]:
        return [*self.daemon.zsvc, "status", "--json"]

    def status_probe(self, calls: int) -> tuple[list[float], int]:
        with ControlClient(self.daemon.runtime, timeout=10.0) as client:
            times, reply = time_calls(lambda: client.call("status"), calls)
        return times, len(json.dumps(reply))

    def stats_on(self) -> None:
        """One `monitor` subscriber, draining the 1 Hz samples in a thread (as the monitor CLI)."""
        self.watch = self.daemon.watch_monitor()
        self.watch.wait_samples(2, 30)  # warm-up: sampling has begun

    def stats_off(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None


# --- systemd ------------------------------------------------------------------------------------

LIMIT_LINE = "Start request repeated too quickly"
"""What systemd logs when a unit hits its start limit."""


class Systemd(Manager):
    """systemd's PID 1 in a throwaway box (a ``tests.system.box.SystemdBox``, not started);
    its work is transient units started with ``systemd-run --no-block``."""

    name = "systemd"

    def __init__(self, box: Any):
        super().__init__(None)
        self.box = box

    def start(self) -> None:
        self.box.start()
        self.main = psutil.Process(self.box.leader)

    def teardown(self) -> None:
        self.box.close()  # powers the box off: every unit and process in it ends
        self.main = None

    def journald(self) -> psutil.Process | None:
        """systemd-journald of the box, as the machine sees it (a child of the box's PID 1)."""
        assert self.main is not None
        for child in self.main.children():
            if child.name() == "systemd-journald":
                return child
        return None

    def start_units(
        self, prefix: str, count: int, command: str, properties: str, timeout: float = 120.0
    ) -> None:
        """*count* transient units ``<prefix>NN`` running *command* with *properties*."""
        self.box.start_units(prefix, count, command, properties, timeout=timeout)

    def remove_units(self, prefix: str) -> None:
        self.box.remove_units(prefix)

    def restarts(self, prefix: str) -> int:
        """The automatic restarts of the units ``<prefix>*`` so far (``NRestarts``)."""
        script = f"systemctl show -p NRestarts --value '{prefix}*'"
        done = self.box.run("sh", "-c", script, check=True)
        return sum(int(value) for value in done.stdout.split())

    def limit_times(self, prefix: str) -> list[float]:
        """When each unit ``<prefix>*`` hit its start limit (journal timestamps, seconds).

        The journal is read from its files, which costs PID 1 nothing.
        """
        script = f"journalctl -q -o json --no-pager -u '{prefix}*'"
        done = self.box.run("sh", "-c", script, check=True, timeout=60)
        times = []
        for line in done.stdout.splitlines():
            entry = json.loads(line)
            if LIMIT_LINE in str(entry.get("MESSAGE", "")):
                times.append(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
        return times
