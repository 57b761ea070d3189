"""zsvc's self-managing speed targets (restart policy), measured in one run (bench/README.md).

    python bench/policy.py [--kills 20] [--crash-tasks 100] [--idle 10] [--json out.json]

Two fresh daemons, one after the other, each in its own short directory under
one private temporary directory in /tmp (ipc socket paths must stay below
~100 characters), each context on free loopback TCP ports:

* daemon A, as it runs by default (Python tasks forked from the zygote);
* daemon B, started with ``ZSVC_ZYGOTE=0`` (every task host executed as
  ``python -m zsvc.task``). ``--no-exec-daemon`` skips it.

On each daemon:

1. restart after SIGKILL: a one-task transaction whose ``setup()`` sleeps 0.2 s,
   ``restart="on-failure" restart_sec="0"`` and a start limit that cannot
   interfere (``start_limit_burst="1000"``). A BusClient subscribed to
   ``control`` (handshake first) times ``os.kill(pid, SIGKILL)`` until the
   ``started`` message of that task whose ``content.status.pid`` is not the
   killed pid: the replacement is READY. Median of ``--kills``.
2. crash loop to the start limit: ``--crash-tasks`` tasks whose ``setup()``
   raises, ``restart="on-failure" restart_sec="0.1"`` and the default start
   limit (5 automatic starts in 10 s). The daemon's CPU time (psutil, user +
   system of the daemon process alone) over the wall time from launching
   ``zsvc start --keep-going`` until the bus has carried the
   ``failed (start-limit-hit)`` message of every task; then the same over an
   idle window of ``--idle`` seconds with every task at its limit.
   ``--keep-going`` is needed: without it the first failed task makes the
   start stop the others again, which cancels their pending restarts. The
   loop ends after 6 starts by either limit: the rate (the 6th automatic
   start inside the 10 s window, while the runs average below about 0.76 s)
   or the streak (more than 5 runs in a row that failed before lasting
   ``restart_stable_sec``). A loop still going after ``--crash-deadline``
   seconds (runs outlasting ``restart_stable_sec``) is reported as such (the
   window after it is then a sustained loop, not idle), and the transaction
   is stopped.

Every subprocess and every wait has a timeout; each daemon is shut down
(and, failing that, killed by pid, with any task process it had) whatever
happens. The zsvc processes get a private bytecode cache, as in bench/core.py
(``--no-pyc-cache`` measures the environment as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from lib.daemon import ZsvcDaemon, drain_queued, kill_task, warm_up, zsvc_env
from lib.procs import BenchError, cpu_seconds
from lib.report import Metric, Metrics, add_run_options, median, percentile, run_scenario
from lib.taskpkg import CRASH, SLEEP, task_ids, write_context, write_task_package

from zsvc.client import BusClient

TX_KILL = "pkill"
TX_CRASH = "pcrash"
KILL_ID = "victim"
LIMIT_HIT = "(start-limit-hit)"
"""In ``content.status.reason`` of the ``failed`` report that ends a crash loop."""
PEERS_KILL = "systemd 0.26, circus 0.70, supervisord 1.02 (startsecs=1)"


@dataclass
class Loop:
    """The crash-loop period: from launching ``zsvc start`` until every task hit its limit."""

    wall: float = 0.0
    cpu: float = 0.0
    zygote_cpu: float = 0.0
    machine_cpu: float = 0.0
    cli_wall: float | None = None
    cli_code: int | None = None
    cli_tail: str = ""
    failed: int = 0
    updates: int = 0
    update_bytes: int = 0
    waiting: set[str] = field(default_factory=set)
    """The tasks not (yet) at their limit."""


@dataclass
class Window:
    """The window after the loop, nothing sent to the daemon."""

    wall: float
    cpu: float
    zygote_cpu: float
    messages: int


class Daemon:
    """One zsvc daemon in ``<work>/<name>/{r,s}``, with its own contexts and task package."""

    def __init__(self, bench: Bench, name: str, label: str, zygote: bool):
        self.bench = bench
        self.args = bench.args
        self.name = name
        self.label = label
        self.zygote_wanted = zygote
        self.zsvc = ZsvcDaemon(bench.work / name, pyc=bench.pyc, zygote=zygote)
        self.zygote: psutil.Process | None = None

    def add(self, label: str, *args: Any, **kw: Any) -> Metric:
        return self.bench.add(self.name, label, *args, **kw)

    def call(self, command: str, wait: float = 10.0, **args: Any) -> Any:
        return self.zsvc.call(command, wait=wait, **args)

    # --- life cycle ----------------------------------------------------------------------

    def write_files(self) -> None:
        """Contexts per daemon: each daemon binds its contexts' ports, so they must differ."""
        home, args = self.zsvc.home, self.args
        write_task_package(home, SLEEP, CRASH)  # the contexts' default location: ../Services
        self.kill_path, self.kill_text = write_context(
            home / "Conf" / "Context-PolicyKill.xml",
            TX_KILL,
            SLEEP,
            [KILL_ID],
            {"delay_s": args.delay},
            {"restart": "on-failure", "restart_sec": "0", "start_limit_burst": "1000"},
        )
        self.crash_ids = task_ids(args.crash_tasks, "c")
        self.crash_path, _ = write_context(
            home / "Conf" / f"Context-PolicyCrash{args.crash_tasks}.xml",
            TX_CRASH,
            CRASH,
            self.crash_ids,
            {},
            {"restart": "on-failure", "restart_sec": "0.1"},  # the default start limit
        )

    def start(self) -> None:
        self.write_files()
        detached = self.zsvc.start()
        self.zygote = self.zsvc.zygote()
        log = self.zsvc.state / "daemon.log"
        if self.zygote_wanted and self.zygote is None:
            raise BenchError(f"daemon {self.name} has no zygote (see {log})")
        if not self.zygote_wanted and self.zygote is not None:
            raise BenchError(f"daemon {self.name} runs a zygote despite ZSVC_ZYGOTE=0")
        self.bench.meta[f"daemon_{self.name}"] = {
            **self.zsvc.info,
            "label": self.label,
            "zygote_pid": self.zygote.pid if self.zygote else None,
            "detach_s": round(detached.wall, 4),
        }

    def shutdown(self) -> None:
        leftovers = self.zsvc.shutdown()  # idempotent: a daemon already gone is skipped
        if leftovers:
            print(f"killed processes left behind by {self.name}: {leftovers}", file=sys.stderr)

    # --- 1. SIGKILL to the replacement READY --------------------------------------------

    def kill_restart(self) -> None:
        self.call(
            "start",
            wait=60,
            transaction=TX_KILL,
            context_path=str(self.kill_path),
            context_text=self.kill_text,
            services=[],
            block=True,
            timeout=None,
        )
        task = self.call("status", transaction=TX_KILL)["tasks"][0]
        if task["state"] != "active" or not task["pid"]:
            raise BenchError(f"{self.name}: {TX_KILL}/{KILL_ID} did not start: {task}")
        pid = task["pid"]
        self.zsvc.remember({"tasks": [task]})
        to_ready: list[float] = []
        to_failed: list[float] = []
        bus = self.zsvc.bus(["control"])
        try:
            for _ in range(self.args.kills):
                kill = kill_task(bus, pid, TX_KILL, KILL_ID, "started", 10.0)
                assert kill.started is not None and kill.new_pid is not None
                to_ready.append(kill.started)
                if kill.failed is not None:
                    to_failed.append(kill.failed)
                pid = kill.new_pid
                self.zsvc.remember({"tasks": [{"pid": pid}]})
        finally:
            bus.close()
        task = self.call("status", transaction=TX_KILL)["tasks"][0]
        if task["state"] != "active" or task["pid"] != pid:
            raise BenchError(f"{self.name}: after the kills the task is not the last run: {task}")
        self.kill_rows(to_ready, to_failed)
        self.bench.meta[f"kill_{self.name}_restarts"] = task["restarts"]
        self.call("stop", wait=60, transaction=TX_KILL, services=[], timeout=None)
        self.call("forget", wait=30, transaction=TX_KILL)

    def kill_rows(self, to_ready: list[float], to_failed: list[float]) -> None:
        self.add(
            f"SIGKILL to replacement READY{self.label}",
            median(to_ready),
            "s",
            target=0.3,
            samples=to_ready,
            note=(
                f"median of {len(to_ready)}; p90 {percentile(to_ready, 0.9):.3f} s; {PEERS_KILL}"
            ),
        )
        ms = [value * 1e3 for value in to_failed]
        note = f"{len(ms)} of {len(to_ready)} seen"
        self.add("  SIGKILL to 'failed' on the bus", median(ms), "ms", samples=ms, note=note)
        after = [(r - f) for r, f in zip(to_ready, to_failed, strict=False)]
        if len(to_failed) == len(to_ready):
            self.add(
                "  'failed' to replacement READY",
                median(after),
                "s",
                samples=after,
                note=f"restart_sec=0; setup() sleeps {self.args.delay:g} s",
            )

    # --- 2. crash loop to the start limit ----------------------------------------------

    def crash_loop(self) -> None:
        bus = self.zsvc.bus(["control"])
        try:
            loop = self.loop_to_limit(bus)
            window = self.window_after(bus)
        finally:
            bus.close()
        record = self.call("status", transaction=TX_CRASH)
        states: dict[str, int] = {}
        for task in record["tasks"]:
            key = f"{task['state']}/{task['sub_state']}/{task['result']}"
            states[key] = states.get(key, 0) + 1
        starts = sum(task["restarts"] + 1 for task in record["tasks"])
        # Whatever still loops is stopped now (a stop cancels pending restarts).
        self.call("stop", wait=120, transaction=TX_CRASH, services=[], timeout=None)
        n = self.args.crash_tasks
        self.bench.meta[f"crash_{self.name}"] = {
            "all_hit_the_limit": not loop.waiting,
            "tasks_at_the_limit": n - len(loop.waiting),
            "cli_returncode": loop.cli_code,
            "cli_output_tail": loop.cli_tail,
            "failed_messages": loop.failed,
            "update_messages": loop.updates,
            "update_bytes": loop.update_bytes,
            "messages_in_window_after": window.messages,
            "states_after_window": states,
            "task_starts_after_window": starts,
        }
        self.loop_rows(loop)
        self.window_row(loop, window, starts)

    def loop_to_limit(self, bus: BusClient) -> Loop:
        """``zsvc start --keep-going`` until the bus carried every task's limit, or the deadline.

        Only the bus is read meanwhile: a status call would be daemon work too.
        """
        loop = Loop(waiting=set(self.crash_ids))
        cpu0, zyg0 = cpu_seconds(self.zsvc.proc), cpu_seconds(self.zygote)
        machine0 = psutil.cpu_times()
        start = time.perf_counter()
        argv = [*self.zsvc.zsvc, "start", "--context", str(self.crash_path), "--keep-going"]
        cli = subprocess.Popen(
            [*argv, TX_CRASH], env=self.zsvc.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = start + self.args.crash_deadline
        while loop.waiting and time.perf_counter() < deadline:
            if loop.cli_wall is None and cli.poll() is not None:
                loop.cli_wall = time.perf_counter() - start
            self.count(loop, bus.receive(0.2))
        loop.wall = time.perf_counter() - start
        loop.cpu = cpu_seconds(self.zsvc.proc) - cpu0
        loop.zygote_cpu = cpu_seconds(self.zygote) - zyg0
        machine1 = psutil.cpu_times()
        loop.machine_cpu = machine1.user + machine1.system - machine0.user - machine0.system
        try:
            out, err = cli.communicate(timeout=60)
        except subprocess.TimeoutExpired as exc:
            cli.kill()
            cli.communicate()
            raise BenchError(f"{self.name}: zsvc start did not return within 60 s") from exc
        if loop.cli_wall is None:
            loop.cli_wall = time.perf_counter() - start
        loop.cli_code, loop.cli_tail = cli.returncode, (err or out).strip()[-300:]
        return loop

    @staticmethod
    def count(loop: Loop, message: Any) -> None:
        """Count one bus message of the crash loop (None: nothing came)."""
        if message is None or message.transaction != TX_CRASH:
            return
        if message.action == "update":
            loop.updates += 1
            loop.update_bytes += len(json.dumps(message.to_dict(), separators=(",", ":")))
        elif message.action == "failed":
            loop.failed += 1
            if LIMIT_HIT in str(message.status.get("reason", "")):
                loop.waiting.discard(message.service_id)

    def window_after(self, bus: BusClient) -> Window:
        """The window after: every task at its limit (or, if the loop did not end, still
        looping); the bench sends nothing to the daemon meanwhile."""
        idle0, izyg0 = cpu_seconds(self.zsvc.proc), cpu_seconds(self.zygote)
        start = time.perf_counter()
        time.sleep(self.args.idle)
        wall = time.perf_counter() - start
        idle1, izyg1 = cpu_seconds(self.zsvc.proc), cpu_seconds(self.zygote)
        messages = drain_queued(bus)  # what the daemon published in that window
        return Window(wall, idle1 - idle0, izyg1 - izyg0, messages)

    def loop_rows(self, loop: Loop) -> None:
        n = self.args.crash_tasks
        limit_hit, ended = n - len(loop.waiting), not loop.waiting
        until = "until all hit the limit" if ended else f"{limit_hit} of {n} hit the limit"
        self.add(
            f"daemon CPU, {n} tasks crash-looping{self.label}",
            loop.cpu / loop.wall * 100,
            "%",
            target=10.0,
            note=f"{loop.cpu:.2f} s CPU in {loop.wall:.2f} s: zsvc start {until}; % of one core",
        )
        if self.zygote is not None:
            self.add(
                "  zygote CPU, same period",
                loop.zygote_cpu / loop.wall * 100,
                "%",
                note=f"{loop.zygote_cpu:.2f} s CPU; forks every task host",
            )
        cpus = os.cpu_count() or 1
        self.add(
            "  machine CPU, same period",
            loop.machine_cpu / loop.wall * 100,
            "%",
            note=f"% of one core, {cpus} cores: daemon + task hosts + everything",
        )
        self.add(
            "  wall time until all hit the limit" if ended else "  wall time, loop not ended",
            loop.wall,
            "s",
            note=(
                f"{limit_hit} of {n} at the limit; zsvc start --keep-going returned after"
                f" {loop.cli_wall:.2f} s (exit {loop.cli_code})"
            ),
        )
        self.start_rows(loop)

    def start_rows(self, loop: Loop) -> None:
        n = self.args.crash_tasks
        starts = loop.failed - (n - len(loop.waiting))
        self.add(
            "  task starts",
            starts,
            "starts",
            note=(
                f"'failed' exits on the bus; {starts / n:g} per task"
                " (1 manual + 5 automatic when the limit is hit)"
            ),
        )
        self.add(
            "  daemon CPU per task start",
            loop.cpu / max(1, starts) * 1e3,
            "ms",
            note=(
                f"whole period / starts; {loop.updates} context 'update' messages,"
                f" {loop.update_bytes / 1e6:.1f} MB of JSON"
            ),
        )

    def window_row(self, loop: Loop, window: Window, starts: int) -> None:
        n = self.args.crash_tasks
        name = "idle at the limit" if not loop.waiting else "next window, still looping"
        self.add(
            f"daemon CPU, {n} tasks {name}{self.label}",
            window.cpu / window.wall * 100,
            "%",
            target=10.0,
            note=(
                f"{window.cpu:.2f} s CPU in {window.wall:.1f} s"
                + (f"; zygote {window.zygote_cpu:.2f} s" if self.zygote else "")
                + f"; {window.messages} bus messages; {starts} starts in all"
            ),
        )


class Bench(Metrics):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="zp", dir="/tmp"))
        self.pyc = None if args.no_pyc_cache else self.work / "pyc"
        self.daemons: list[Daemon] = []

    def run_daemon(self, name: str, label: str, zygote: bool) -> None:
        daemon = Daemon(self, name, label, zygote)
        self.daemons.append(daemon)
        try:
            daemon.start()
            daemon.kill_restart()
            if not self.args.no_crash:
                daemon.crash_loop()
        finally:
            daemon.shutdown()

    def main(self) -> None:
        warm_up(zsvc_env(self.work / "w", self.work / "w", self.pyc))
        self.run_daemon("zygote", "", zygote=True)
        if not self.args.no_exec_daemon:
            self.run_daemon("exec", ", ZSVC_ZYGOTE=0", zygote=False)

    def shutdown(self) -> None:
        for daemon in self.daemons:
            daemon.shutdown()  # idempotent: a daemon already gone is skipped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="zsvc restart-policy speed targets, in one run")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILL samples per daemon")
    parser.add_argument("--delay", type=float, default=0.2, help="set-up sleep of the killed task")
    parser.add_argument("--crash-tasks", type=int, default=100, help="crash-looping tasks")
    parser.add_argument("--idle", type=float, default=10.0, help="idle window at the limit (s)")
    parser.add_argument(
        "--crash-deadline", type=float, default=60.0, help="end the crash-loop period after (s)"
    )
    parser.add_argument(
        "--no-exec-daemon", action="store_true", help="skip the ZSVC_ZYGOTE=0 daemon"
    )
    parser.add_argument("--no-crash", action="store_true", help="skip the crash-loop measurement")
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.kills < 1 or args.crash_tasks < 1 or args.idle <= 0:
        parser.error("--kills and --crash-tasks must be at least 1, --idle positive")
    return args


def main(argv: list[str] | None = None) -> int:
    banner = "zsvc {version} policy bench in {work} ({cpus} CPUs)"
    kept = "daemon logs: {work}/*/s/daemon.log"
    return run_scenario("policy", parse_args(argv), Bench, banner, kept)[0]


if __name__ == "__main__":
    sys.exit(main())
