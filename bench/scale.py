"""zsvc at scale, measured and checked in one run (issue 8, part 2; see bench/README.md).

    python bench/scale.py [--tasks 500] [--transactions 50] [--clients 20] [--json out.json]

One fresh daemon (the default local runner, Python tasks forked from its
zygote) in a private short directory under /tmp, contexts on free loopback
ports. In this order:

1. one transaction of ``--tasks`` Python tasks (an empty ``setup()``):
   ``zsvc start`` until all are ready; a bus subscriber to ``monitor`` until it
   received a sample covering every task, then ``--samples`` more; ``zsvc
   stop``; ``zsvc forget``. Checked: every command succeeded, every task's
   process is gone (pid *and* start time), every task's cgroup is gone or
   empty, and the daemon's fd count (``/proc/<pid>/fd``) is back to what it
   was before the start. Reported: the times, the daemon's RSS before, at N
   and after, its fds before, at N and after;
2. the same with ``--tasks`` command tasks (``sleep``, ready when spawned);
3. ``--transactions`` transactions of two command tasks each, every one
   started and then stopped by its own ``zsvc`` CLI processes, ``--clients``
   at a time; then forgotten the same way. Checked: every command exited 0
   and none said "busy"; afterwards ``zsvc status --json`` shows every task
   ``inactive`` without a pid, the daemon's SQLite table holds the same
   (state, sub-state, pid) for each, no task process or cgroup is left, and
   the daemon's fds are back to the baseline after the forgets.

A failed check is reported in the table (``leaked …`` rows, value > 0) and
makes the exit status 1. Times on a shared machine vary; the checks do not.
Every subprocess and every wait has a deadline; the daemon is shut down (and,
failing that, killed by pid, with every task process seen) whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from lib.daemon import MIB, ZsvcDaemon, warm_up
from lib.procs import BenchError, Run, is_gone, poll, remember
from lib.report import Metrics, add_run_options, median, percentile, run_scenario
from lib.taskpkg import IDLE, task_ids, write_context, write_task_package

from zsvc.client import ControlClient
from zsvc.naming import instance_id
from zsvc.runners.cgroup import CANDIDATES, SLICE, task_groups

SETTLE_S = 10.0
"""How long the daemon's fd count may take to come back (ZeroMQ closes peers' sockets in
its I/O thread, a moment after the peer went away)."""
TIMEOUTS = {"start_timeout": "300", "stop_timeout": "30"}


def still_running(procs: list[psutil.Process]) -> list[int]:
    """Pids of *procs* alive (psutil compares the start time: a reused pid is not ours)."""
    return [proc.pid for proc in procs if not is_gone(proc)]


def leaked(procs: list[psutil.Process]) -> list[int]:
    """The processes of *procs* still alive 10 s from now (or as soon as none is)."""
    return [] if poll(lambda: not still_running(procs), 10.0) else still_running(procs)


def failures(answers: list[tuple[str, Run]]) -> list[str]:
    return [f"{what}: exit {r.returncode}: {r.output.strip()[-200:]}" for what, r in answers
            if r.returncode]  # fmt: skip


@dataclass
class Sampled:
    """What a ``monitor`` subscriber saw of one transaction."""

    subscribed: float = 0.0
    full: list[float] = field(default_factory=list)
    """When each sample covering every task (each with its usage) arrived."""
    sizes: list[int] = field(default_factory=list)
    cpu: float | None = None
    """The daemon's CPU from the first full sample to the last."""


class ScaleBench(Metrics):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        self.meta["checks"] = {}
        self.failures: list[str] = []
        self.work = Path(tempfile.mkdtemp(prefix="zs", dir="/tmp"))
        self.prefix = f"s{secrets.token_hex(3)}"
        """Of every transaction id: tells this run's transactions from an earlier run's."""
        pyc = None if args.no_pyc_cache else self.work / "pyc"
        self.daemon = ZsvcDaemon(self.work, pyc=pyc, client_timeout=30.0)
        self.instance = instance_id(self.daemon.state)
        """The daemon's part of its cgroup names: only its own groups are looked at."""
        self._seen_lock = threading.Lock()

    # --- plumbing ---------------------------------------------------------------------

    def cli(self, *args: str, timeout: float, check: bool = True) -> tuple[str, Run]:
        """``zsvc ARGS``; what it was (the first two words) and how it went."""
        done = self.daemon.cli(*args, timeout=timeout, ok=(0,) if check else None, cwd=self.work)
        return " ".join(args[:2]), done

    def call(self, command: str, wait: float = 30.0, **args: Any) -> Any:
        return self.daemon.call(command, wait=wait, **args)

    def check(self, section: str, label: str, bad: list[Any], note: str = "") -> None:
        """A correctness row: the count of what went wrong, 0 being the only good value."""
        self.add(section, label, float(len(bad)), "", target=0.0, note=note)
        self.meta["checks"][f"{section}: {label}"] = [str(item) for item in bad[:20]]
        if bad:
            self.failures.append(f"{section}: {label}: {bad[:5]}")

    def remember(self, record: dict[str, Any]) -> list[psutil.Process]:
        with self._seen_lock:
            return remember(self.daemon.tasks_seen, [t.get("pid") for t in record["tasks"]])

    def settled_fds(self, baseline: int) -> int:
        """The daemon's fd count once back to *baseline*, or after SETTLE_S seconds."""
        poll(lambda: self.daemon.fds() <= baseline, SETTLE_S)
        return self.daemon.fds()

    def check_fds(self, section: str, label: str, before: int, note: str) -> int:
        after = self.settled_fds(before)
        bad = list(range(max(0, after - before)))
        self.check(section, label, bad, note=note.format(before=before, after=after))
        return after

    # --- set-up -------------------------------------------------------------------------

    def write_files(self) -> None:
        write_task_package(self.work, IDLE)
        conf, n = self.work / "Conf", self.args.tasks
        ids = task_ids(n)
        sleep = f"{shutil.which('sleep') or '/bin/sleep'} 3600"
        self.contexts = {
            "python": write_context(conf / f"Context-ScalePy{n}.xml", "scalepy", IDLE, ids,
                                    {}, TIMEOUTS)[0],
            "command": write_context(conf / f"Context-ScaleCmd{n}.xml", "scalecmd", IDLE, ids,
                                     {}, TIMEOUTS, sleep)[0],
            "small": write_context(conf / "Context-ScaleSmall.xml", "scalesmall", IDLE,
                                   ["a", "b"], {}, TIMEOUTS, sleep)[0],
        }  # fmt: skip

    def start_daemon(self) -> None:
        warm_up(self.daemon.env)
        self.daemon.start()
        zygote = self.daemon.zygote()
        self.call("ping")  # the bench's own connection is part of every fd count below
        self.meta["daemon"] = {**self.daemon.info, "zygote_pid": zygote.pid if zygote else None}
        self.meta["cgroups"] = any((root / SLICE).is_dir() for root in CANDIDATES)
        self.add("daemon", "daemon RSS, idle", self.daemon.rss(), "MiB")
        self.add("daemon", "daemon fds, idle", float(self.daemon.fds()), "")

    # --- 1 and 2: one big transaction ------------------------------------------------------

    def big(self, kind: str) -> None:
        n, daemon = self.args.tasks, self.daemon
        section = f"{n} {kind} tasks"
        tx = f"{self.prefix}{kind[:2]}{n}"
        fds_before = self.settled_fds(daemon.fds())
        rss_before, cpu_before = daemon.rss(), daemon.cpu()
        _, started = self.cli("start", "--context", str(self.contexts[kind]), tx, timeout=120 + n)
        cpu_start = daemon.cpu() - cpu_before
        record = self.call("status", transaction=tx)
        procs = self.remember(record)
        inactive = [t["id"] for t in record["tasks"] if t["state"] != "active"]
        self.check(section, "tasks not active after start", inactive)
        groups = task_groups([tx], self.instance)
        rss_at, fds_at = daemon.rss(), daemon.fds()
        zygote = daemon.zygote()
        zygote_rss = zygote.memory_info().rss / MIB if zygote is not None else None
        host_rss = [p.memory_info().rss / MIB for p in procs[:20] if not is_gone(p)]
        sampled = self.monitor_samples(tx, n)
        none = f"none within the deadline ({len(sampled.full)} full samples)"
        missing = [] if sampled.full else [none]
        self.check(section, "monitor: no sample covering every task", missing)
        stop = self.stop_and_check(section, tx, procs)
        fds_after = self.check_fds(
            section,
            "leaked daemon fds (after stop + forget)",
            fds_before,
            "{before} before start, {after} after forget",
        )
        rss_after = daemon.rss()
        self.add(section, f"zsvc start, {n} tasks to all ready", started.wall, "s")
        self.add(section, "  daemon CPU during the start", cpu_start, "s", note="psutil")
        self.monitor_rows(section, sampled)
        self.stop_rows(section, stop)
        self.add(section, "daemon RSS before start", rss_before, "MiB")
        self.add(section, f"daemon RSS, {n} tasks running", rss_at, "MiB")
        self.add(section, "daemon RSS after stop + forget", rss_after, "MiB")
        if zygote_rss is not None and kind == "python":
            self.add(section, "  zygote RSS", zygote_rss, "MiB")
            self.add(section, "  task host RSS (median of 20)", median(host_rss), "MiB")
        self.add(section, "daemon fds before start", float(fds_before), "")
        self.add(section, f"daemon fds, {n} tasks running", float(fds_at), "")
        self.add(section, "daemon fds after stop + forget", float(fds_after), "")
        self.meta[f"big_{kind}"] = {
            "cgroups_at_n": len(groups),
            "cgroups_left_after_stop": stop["cgroups_left"],
            "full_samples": len(sampled.full),
        }

    def monitor_samples(self, tx: str, n: int) -> Sampled:
        """Subscribe to 'monitor' (what makes the daemon sample) until a sample covers all
        *n* tasks of *tx*, then ``--samples`` more."""
        sampled = Sampled()
        bus = self.daemon.bus(["monitor"], handshake=10.0)
        try:
            sampled.subscribed = time.perf_counter()
            cpu_mark = 0.0
            deadline = sampled.subscribed + 30.0 + 2.0 * self.args.samples
            while len(sampled.full) <= self.args.samples and time.perf_counter() < deadline:
                message = bus.receive(max(0.01, deadline - time.perf_counter()))
                if message is None or message.topic != "monitor":
                    continue
                if message.action != "sample" or message.transaction != tx:
                    continue
                tasks = message.content.get("tasks", [])
                if len(tasks) == n and all(task.get("usage") for task in tasks):
                    sampled.full.append(time.perf_counter())
                    sampled.sizes.append(len(json.dumps(message.content)))
                    if len(sampled.full) == 1:
                        cpu_mark = self.daemon.cpu()
            if len(sampled.full) > 1:
                sampled.cpu = self.daemon.cpu() - cpu_mark
        finally:
            bus.close()
        return sampled

    def stop_and_check(
        self, section: str, tx: str, procs: list[psutil.Process]
    ) -> dict[str, float]:
        """``zsvc stop``, the checks that nothing is left, ``zsvc forget``; the figures."""
        daemon = self.daemon
        cpu_before, reaped_before = daemon.cpu(), daemon.reaped_cpu()
        _, stopped = self.cli("stop", tx, timeout=120 + self.args.tasks)
        figures = {
            "wall": stopped.wall,
            "cpu": daemon.cpu() - cpu_before,
            "reaped": daemon.reaped_cpu() - reaped_before,
        }
        record = self.call("status", transaction=tx)
        up = [t["id"] for t in record["tasks"] if t["state"] != "inactive" or t["pid"]]
        self.check(section, "tasks not inactive after stop", up)
        self.check(section, "leaked task processes", leaked(procs))
        left = poll(lambda: not any(task_groups([tx], self.instance).values()), 10.0)
        populated = (
            [] if left else [g for g, pids in task_groups([tx], self.instance).items() if pids]
        )
        self.check(section, "leaked processes in task cgroups", populated)
        figures["cgroups_left"] = len(task_groups([tx], self.instance))
        self.cli("forget", tx, timeout=60)
        return figures

    def monitor_rows(self, section: str, sampled: Sampled) -> None:
        if sampled.full:
            first = sampled.full[0] - sampled.subscribed
            self.add(section, "  subscribe to first full monitor sample", first, "s")
        if sampled.cpu is not None and len(sampled.full) > 1:
            count = len(sampled.full) - 1
            span = sampled.full[-1] - sampled.full[0]
            self.add(
                section,
                "  daemon CPU per monitor sample",
                sampled.cpu / count * 1e3,
                "ms",
                note=f"{count} samples over {span:.1f} s; {median(sampled.sizes) / 1024:.0f} kB",
            )

    def stop_rows(self, section: str, stop: dict[str, float]) -> None:
        n = self.args.tasks
        self.add(section, f"zsvc stop, {n} tasks", stop["wall"], "s")
        self.add(section, "  daemon CPU during the stop", stop["cpu"], "s", note="psutil")
        self.add(
            section,
            "  the tasks' CPU, whole life, per task",
            stop["reaped"] / n * 1e3,
            "ms",
            note="counted at reaping: the daemon's children CPU over the stop",
        )

    # --- 3: many transactions, many clients ---------------------------------------------------

    def concurrent(self) -> None:
        count, clients = self.args.transactions, self.args.clients
        section = f"{count} tx x {clients} CLI clients"
        ids = [f"{self.prefix}c{i:03d}" for i in range(count)]
        fds_before = self.settled_fds(self.daemon.fds())
        procs: list[psutil.Process] = []
        begun = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            batches = pool.map(lambda tx: self.start_then_stop(tx, procs), ids)
            answers = [answer for batch in batches for answer in batch]
        wall = time.perf_counter() - begun
        self.check(section, "commands not answered with exit 0", failures(answers))
        busy = [what for what, r in answers if "busy" in r.output.lower()]
        self.check(section, "commands refused as busy", busy)
        self.check_stopped(section, ids)
        distinct = {proc.pid for proc in procs}
        self.check(
            section,
            "task processes seen != 2 per transaction",
            [] if len(distinct) == 2 * count else [f"{len(distinct)} seen"],
        )
        self.check(section, "leaked task processes", leaked(procs))
        populated = [g for g, pids in task_groups(ids, self.instance).items() if pids]
        self.check(section, "leaked processes in task cgroups", populated)
        forget_wall = self.forget_all(section, ids, fds_before)
        self.concurrent_rows(section, answers, wall, forget_wall)

    def start_then_stop(self, tx: str, procs: list[psutil.Process]) -> list[tuple[str, Run]]:
        """One client's turn: ``zsvc start``, a status call (the pids), ``zsvc stop``."""
        path = str(self.contexts["small"])
        answers = [self.cli("start", "--context", path, tx, timeout=120, check=False)]
        with ControlClient(self.daemon.runtime, timeout=60.0) as client:
            record = client.call("status", transaction=tx)
        seen = self.remember(record)
        with self._seen_lock:
            procs.extend(seen)
        answers.append(self.cli("stop", tx, timeout=120, check=False))
        return answers

    def check_stopped(self, section: str, ids: list[str]) -> None:
        """``zsvc status --json`` shows every task stopped, and the SQLite table agrees."""
        _, status = self.cli("status", "--json", timeout=60)
        table = json.loads(status.stdout)["transactions"]
        records = {record["transaction"]: record for record in table}
        wrong = [tx for tx in ids if tx not in records]
        for tx, record in records.items():
            if record["state"] != "stopped":
                wrong.append(f"{tx} is {record['state']}")
            wrong += [
                f"{tx}/{t['id']} {t['state']} pid {t['pid']}"
                for t in record["tasks"]
                if t["state"] != "inactive" or t["pid"] is not None
            ]
        self.check(section, "tasks not stopped (zsvc status)", wrong)
        answered = {
            (tx, t["id"]): (t["state"], t["sub_state"], t["pid"])
            for tx, record in records.items()
            for t in record["tasks"]
        }
        uri = f"file:{self.daemon.state / 'zsvc.sqlite3'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as db:
            rows = db.execute("SELECT transaction_id, task_id, state, sub_state, pid FROM tasks")
            stored = {(tx, task): (state, sub, pid) for tx, task, state, sub, pid in rows}
        disagree = sorted(str(key) for key in answered.keys() | stored.keys()
                          if answered.get(key) != stored.get(key))  # fmt: skip
        self.check(section, "status and SQLite table disagree", disagree)

    def forget_all(self, section: str, ids: list[str], fds_before: int) -> float:
        """``zsvc forget`` of every transaction, ``--clients`` at a time; the wall time."""
        begun = time.perf_counter()
        with ThreadPoolExecutor(self.args.clients) as pool:
            forgets = list(
                pool.map(lambda tx: self.cli("forget", tx, timeout=120, check=False), ids)
            )
        wall = time.perf_counter() - begun
        self.check(section, "forget not answered with exit 0", failures(forgets))
        remaining = self.call("status")["transactions"]
        self.check(section, "transactions left after forget", [r["transaction"] for r in remaining])
        self.check_fds(
            section,
            "leaked daemon fds (after forget)",
            fds_before,
            "{before} before, {after} after",
        )
        return wall

    def concurrent_rows(
        self, section: str, answers: list[tuple[str, Run]], wall: float, forget_wall: float
    ) -> None:
        count, clients = self.args.transactions, self.args.clients
        starts = [r.wall for what, r in answers if what.startswith("start")]
        stops = [r.wall for what, r in answers if what.startswith("stop")]
        note = f"{2 * count} CLI commands, {clients} at a time"
        self.add(section, "all started and stopped: wall", wall, "s", note=note)
        for label, values in (("zsvc start", starts), ("zsvc stop", stops)):
            self.add(
                section,
                f"  {label} CLI: median",
                median(values),
                "s",
                samples=values,
                note=f"p90 {percentile(values, 0.9):.2f} s, max {max(values):.2f} s",
            )
        self.add(section, f"{count} zsvc forget, {clients} at a time: wall", forget_wall, "s")
        self.add(section, "daemon RSS after", self.daemon.rss(), "MiB")

    # --- the whole run ------------------------------------------------------------------------

    def main(self) -> None:
        self.write_files()
        self.start_daemon()
        for kind in self.args.kinds:
            self.big(kind)
        if self.args.transactions:
            self.concurrent()
        self.add("daemon", "daemon RSS, end of run", self.daemon.rss(), "MiB")
        self.add("daemon", "daemon fds, end of run", float(self.daemon.fds()), "")
        if self.failures:
            raise BenchError("checks failed: " + "; ".join(self.failures))

    def shutdown(self) -> None:
        """Stop the daemon and its tasks, bounded; kill by pid whatever outlives that."""
        leftovers = self.daemon.shutdown()
        # A daemon that died (libzmq aborts on EMFILE) leaves its tasks running, by
        # design; tasks it forked but never reported are found by their cgroups.
        for pids in task_groups([self.prefix], self.instance, id_prefixes=True).values():
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    leftovers.append(pid)
        if leftovers:
            print(f"killed task processes left behind: {leftovers}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="zsvc at scale: 500 tasks, 20 clients")
    parser.add_argument("--tasks", type=int, default=500, help="tasks in the big transaction")
    parser.add_argument(
        "--kinds",
        nargs="*",
        choices=("python", "command"),
        default=["python", "command"],
        help="which big transactions to run (none: only the concurrent part)",
    )
    parser.add_argument("--samples", type=int, default=3, help="monitor samples after the first")
    parser.add_argument("--transactions", type=int, default=50, help="concurrent transactions")
    parser.add_argument("--clients", type=int, default=20, help="CLI clients at a time")
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.clients < 1 or args.transactions < 0 or args.samples < 1:
        parser.error("--tasks, --clients and --samples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    banner = "zsvc {version} scale bench in {work} ({cpus} CPUs)"
    kept = "daemon log: {work}/s/daemon.log"
    memory = round(psutil.virtual_memory().total / MIB)
    args = parse_args(argv)
    return run_scenario("scale", args, ScaleBench, banner, kept, memory_total_mib=memory)[0]


if __name__ == "__main__":
    sys.exit(main())
