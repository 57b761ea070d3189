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
import functools
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# bench/ is the script's directory, so it is on sys.path: share core.py's helpers.
from core import (
    IPC_PATH_LIMIT,
    BenchError,
    Metric,
    add_run_options,
    daemon_from_lock,
    is_gone,
    kill_leftovers,
    median,
    percentile,
    run_and_report,
    run_metadata,
    stop_daemon,
    zygote_of,
)
from core import context_xml as bench_context_xml

from zsvc import __version__ as zsvc_version
from zsvc.client import BusClient, ControlClient
from zsvc.paths import RuntimeLayout
from zsvc.runners.cgroup import CANDIDATES, SLICE, task_groups

MIB = 1024 * 1024
IDLE_INSTANCE = "ScaleIdle"
SETTLE_S = 10.0
"""How long the daemon's fd count may take to come back (ZeroMQ closes peers' sockets in
its I/O thread, a moment after the peer went away)."""

IDLE_TASK = '''\
"""Scale bench task: nothing to set up; after READY the host only waits for messages."""

from zsvc import Task


class ServiceScaleIdle(Task):
    interval = 3600.0
'''


def context_xml(context_id: str, ids: list[str], command: str | None) -> str:
    """One TaskService per id: a Python task of IDLE_INSTANCE, or *command* (no notify)."""
    timeouts = {"start_timeout": "300", "stop_timeout": "30"}
    return bench_context_xml(context_id, IDLE_INSTANCE, ids, {}, timeouts, command)


def still_running(procs: list[psutil.Process]) -> list[int]:
    """Pids of *procs* alive (psutil compares the start time: a reused pid is not ours)."""
    return [proc.pid for proc in procs if not is_gone(proc)]


def poll(predicate: Callable[[], Any], timeout: float) -> Any:
    """*predicate*'s first true value within *timeout* seconds, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


@dataclass
class Answer:
    """One CLI command of the concurrent scenario."""

    what: str
    code: int
    wall: float
    stdout: str
    output: str
    """stdout and stderr, for the checks."""


class ScaleBench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.metrics: list[Metric] = []
        self.meta: dict[str, Any] = {"checks": {}}
        self.failures: list[str] = []
        self.work = Path(tempfile.mkdtemp(prefix="zs", dir="/tmp"))
        self.prefix = f"s{secrets.token_hex(3)}"
        """Of every transaction id: unit and cgroup names are per machine, not per daemon."""
        self.runtime = self.work / "r"
        self.state = self.work / "s"
        self.layout = RuntimeLayout(self.runtime)
        if len(str(self.layout.bus_sub)) >= IPC_PATH_LIMIT:
            raise BenchError(f"runtime dir {self.runtime} is too long for ipc sockets")
        self.python = sys.executable
        script = Path(sys.executable).parent / "zsvc"
        fallback = [self.python, "-c", "from zsvc.cli import main; main()"]
        self.zsvc = [str(script)] if script.exists() else fallback
        self.env = dict(os.environ)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "ZSVC_ZYGOTE"):
            self.env.pop(key, None)
        self.env["ZSVC_RUNTIME_DIR"] = str(self.runtime)
        self.env["ZSVC_STATE_DIR"] = str(self.state)
        if not args.no_pyc_cache:  # as bench/core.py: an installed package has its .pyc
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(self.work / "pyc")
        self.daemon: psutil.Process | None = None
        self.zygote: psutil.Process | None = None
        self.client: ControlClient | None = None
        self.tasks_seen: dict[int, psutil.Process] = {}
        self._seen_lock = threading.Lock()

    # --- plumbing ---------------------------------------------------------------------

    def cli(self, *args: str, timeout: float, check: bool = True) -> Answer:
        argv = [*self.zsvc, *args]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
        answer = Answer(
            " ".join(args[:2]),
            done.returncode,
            time.perf_counter() - start,
            done.stdout,
            done.stdout + done.stderr,
        )
        if check and done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise BenchError(f"{' '.join(argv)} exited {done.returncode}:\n  " + "\n  ".join(tail))
        return answer

    def call(self, command: str, wait: float = 30.0, **args: Any) -> Any:
        assert self.client is not None
        return self.client.call(command, wait=wait, **args)

    def add(self, section: str, label: str, *args: Any, **kw: Any) -> Metric:
        metric = Metric(section, label, *args, **kw)
        self.metrics.append(metric)
        return metric

    def check(self, section: str, label: str, bad: list[Any], note: str = "") -> None:
        """A correctness row: the count of what went wrong, 0 being the only good value."""
        self.add(section, label, float(len(bad)), "", target=0.0, note=note)
        self.meta["checks"][f"{section}: {label}"] = [str(item) for item in bad[:20]]
        if bad:
            self.failures.append(f"{section}: {label}: {bad[:5]}")

    def remember(self, record: dict[str, Any]) -> list[psutil.Process]:
        procs = []
        for task in record["tasks"]:
            if not task.get("pid"):
                continue
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(task["pid"])
                procs.append(proc)
                with self._seen_lock:
                    self.tasks_seen.setdefault(proc.pid, proc)
        return procs

    def fds(self) -> int:
        assert self.daemon is not None
        return len(os.listdir(f"/proc/{self.daemon.pid}/fd"))

    def settled_fds(self, baseline: int) -> int:
        """The daemon's fd count once back to *baseline*, or after SETTLE_S seconds."""
        poll(lambda: self.fds() <= baseline, SETTLE_S)
        return self.fds()

    def rss(self, proc: psutil.Process | None = None) -> float:
        proc = proc or self.daemon
        assert proc is not None
        return proc.memory_info().rss / MIB

    def cpu(self, proc: psutil.Process | None = None) -> float:
        proc = proc or self.daemon
        assert proc is not None
        times = proc.cpu_times()
        return times.user + times.system

    def reaped_cpu(self) -> float:
        """CPU of the processes the daemon reaped (every task: it is their subreaper)."""
        assert self.daemon is not None
        times = self.daemon.cpu_times()
        return times.children_user + times.children_system

    # --- set-up -------------------------------------------------------------------------

    def write_files(self) -> None:
        folder = self.work / "Services" / IDLE_INSTANCE
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / f"Service{IDLE_INSTANCE}.py").write_text(IDLE_TASK)
        conf = self.work / "Conf"
        conf.mkdir()
        ids = [f"t{i:03d}" for i in range(self.args.tasks)]
        self.contexts = {
            "python": conf / f"Context-ScalePy{self.args.tasks}.xml",
            "command": conf / f"Context-ScaleCmd{self.args.tasks}.xml",
            "small": conf / "Context-ScaleSmall.xml",
        }
        self.contexts["python"].write_text(context_xml("scalepy", ids, None))
        sleep = shutil.which("sleep") or "/bin/sleep"
        self.contexts["command"].write_text(context_xml("scalecmd", ids, f"{sleep} 3600"))
        self.contexts["small"].write_text(context_xml("scalesmall", ["a", "b"], f"{sleep} 3600"))

    def warm_up(self) -> None:
        """Fill the bytecode cache once, so no measured process compiles zsvc."""
        imports = "import zmq, psutil, lxml.etree, zsvc.task.host, zsvc.daemon.main, zsvc.cli.app"
        subprocess.run([self.python, "-c", imports], env=self.env, check=True, timeout=120)
        self.cli("--help", timeout=60)

    def start_daemon(self) -> None:
        argv = [self.python, "-m", "zsvc.daemon", "--detach"]
        argv += ["--runtime-dir", str(self.runtime), "--state-dir", str(self.state)]
        try:
            subprocess.run(argv, env=self.env, capture_output=True, timeout=60, check=True)
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
            raise BenchError(f"the daemon did not start: {exc}") from exc
        info = json.loads(self.cli("ping", timeout=30).stdout)
        self.daemon = psutil.Process(int(info["pid"]))
        self.zygote = zygote_of(self.daemon)
        self.client = ControlClient(self.runtime, timeout=30.0)
        self.call("ping")  # the bench's own connection is part of every fd count below
        self.meta["daemon"] = {**info, "zygote_pid": self.zygote.pid if self.zygote else None}
        self.meta["cgroups"] = any((root / SLICE).is_dir() for root in CANDIDATES)
        self.add("daemon", "daemon RSS, idle", self.rss(), "MiB")
        self.add("daemon", "daemon fds, idle", float(self.fds()), "")

    # --- 1 and 2: one big transaction ------------------------------------------------------

    def big(self, kind: str) -> None:
        n = self.args.tasks
        section = f"{n} {kind} tasks"
        tx = f"{self.prefix}{kind[:2]}{n}"
        path = self.contexts[kind]
        fds_before = self.settled_fds(self.fds())
        rss_before = self.rss()
        cpu_before = self.cpu()
        started = self.cli("start", "--context", str(path), tx, timeout=120 + n)
        cpu_start = self.cpu() - cpu_before
        record = self.call("status", transaction=tx)
        procs = self.remember(record)
        inactive = [t["id"] for t in record["tasks"] if t["state"] != "active"]
        self.check(section, "tasks not active after start", inactive)
        groups = task_groups([tx])
        rss_at, fds_at = self.rss(), self.fds()
        zygote_rss = self.rss(self.zygote) if self.zygote is not None else None
        host_rss = [p.memory_info().rss / MIB for p in procs[:20] if not is_gone(p)]

        # The monitor: subscribing to 'monitor' is what makes the daemon sample.
        bus = BusClient(self.layout.bus_pub_endpoint, self.layout.bus_sub_endpoint, ["monitor"])
        full: list[float] = []
        sizes: list[int] = []
        try:
            bus.handshake(10.0)
            subscribed = time.perf_counter()
            cpu_mark = 0.0
            deadline = subscribed + 30.0 + 2.0 * self.args.samples
            while len(full) <= self.args.samples and time.perf_counter() < deadline:
                message = bus.receive(max(0.01, deadline - time.perf_counter()))
                if message is None or message.topic != "monitor":
                    continue
                if message.action != "sample" or message.transaction != tx:
                    continue
                tasks = message.content.get("tasks", [])
                if len(tasks) == n and all(task.get("usage") for task in tasks):
                    full.append(time.perf_counter())
                    sizes.append(len(json.dumps(message.content)))
                    if len(full) == 1:
                        cpu_mark = self.cpu()
            sampled_cpu = self.cpu() - cpu_mark if len(full) > 1 else None
        finally:
            bus.close()
        self.check(
            section,
            "monitor: no sample covering every task",
            [] if full else [f"none within the deadline ({len(full)} full samples)"],
        )

        stop_at = time.perf_counter()
        cpu_before, reaped_before = self.cpu(), self.reaped_cpu()
        self.cli("stop", tx, timeout=120 + n)
        stop_wall = time.perf_counter() - stop_at
        cpu_stop, reaped_stop = self.cpu() - cpu_before, self.reaped_cpu() - reaped_before
        record = self.call("status", transaction=tx)
        up = [t["id"] for t in record["tasks"] if t["state"] != "inactive" or t["pid"]]
        self.check(section, "tasks not inactive after stop", up)
        leaked = poll(lambda: not still_running(procs), 10.0) or still_running(procs)
        self.check(section, "leaked task processes", [] if leaked is True else leaked)
        left = poll(lambda: not any(task_groups([tx]).values()), 10.0)
        populated = [] if left else [g for g, pids in task_groups([tx]).items() if pids]
        self.check(section, "leaked processes in task cgroups", populated)
        groups_after = task_groups([tx])
        self.cli("forget", tx, timeout=60)
        fds_after = self.settled_fds(fds_before)
        self.check(
            section,
            "leaked daemon fds (after stop + forget)",
            list(range(max(0, fds_after - fds_before))),
            note=f"{fds_before} before start, {fds_after} after forget",
        )
        rss_after = self.rss()

        self.add(section, f"zsvc start, {n} tasks to all ready", started.wall, "s")
        self.add(section, "  daemon CPU during the start", cpu_start, "s", note="psutil")
        if full:
            first = full[0] - subscribed
            self.add(section, "  subscribe to first full monitor sample", first, "s")
        if sampled_cpu is not None and len(full) > 1:
            per = sampled_cpu / (len(full) - 1)
            span = full[-1] - full[0]
            self.add(
                section,
                "  daemon CPU per monitor sample",
                per * 1e3,
                "ms",
                note=f"{len(full) - 1} samples over {span:.1f} s; {median(sizes) / 1024:.0f} kB",
            )
        self.add(section, f"zsvc stop, {n} tasks", stop_wall, "s")
        self.add(section, "  daemon CPU during the stop", cpu_stop, "s", note="psutil")
        self.add(
            section,
            "  the tasks' CPU, whole life, per task",
            reaped_stop / n * 1e3,
            "ms",
            note="counted at reaping: the daemon's children CPU over the stop",
        )
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
            "cgroups_left_after_stop": len(groups_after),
            "full_samples": len(full),
        }

    # --- 3: many transactions, many clients ---------------------------------------------------

    def concurrent(self) -> None:
        count, clients = self.args.transactions, self.args.clients
        section = f"{count} tx x {clients} CLI clients"
        path = self.contexts["small"]
        ids = [f"{self.prefix}c{i:03d}" for i in range(count)]
        fds_before = self.settled_fds(self.fds())
        procs: list[psutil.Process] = []
        lock = threading.Lock()

        def start_then_stop(tx: str) -> list[Answer]:
            answers = [self.cli("start", "--context", str(path), tx, timeout=120, check=False)]
            with ControlClient(self.runtime, timeout=60.0) as client:
                record = client.call("status", transaction=tx)
            seen = self.remember(record)
            with lock:
                procs.extend(seen)
            answers.append(self.cli("stop", tx, timeout=120, check=False))
            return answers

        def forget(tx: str) -> Answer:
            return self.cli("forget", tx, timeout=120, check=False)

        begun = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = [a for batch in pool.map(start_then_stop, ids) for a in batch]
        wall = time.perf_counter() - begun
        failed = [f"{a.what}: exit {a.code}: {a.output.strip()[-200:]}" for a in answers if a.code]
        self.check(section, "commands not answered with exit 0", failed)
        busy = [a.what for a in answers if "busy" in a.output.lower()]
        self.check(section, "commands refused as busy", busy)

        status = json.loads(self.cli("status", "--json", timeout=60).stdout)
        records = {record["transaction"]: record for record in status["transactions"]}
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
        uri = f"file:{self.state / 'zsvc.sqlite3'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as db:
            rows = db.execute("SELECT transaction_id, task_id, state, sub_state, pid FROM tasks")
            stored = {(tx, task): (state, sub, pid) for tx, task, state, sub, pid in rows}
        disagree = sorted(str(key) for key in answered.keys() | stored.keys()
                          if answered.get(key) != stored.get(key))  # fmt: skip
        self.check(section, "status and SQLite table disagree", disagree)
        distinct = {proc.pid for proc in procs}
        self.check(
            section,
            "task processes seen != 2 per transaction",
            [] if len(distinct) == 2 * count else [f"{len(distinct)} seen"],
        )
        alive = poll(lambda: not still_running(procs), 10.0) or still_running(procs)
        self.check(section, "leaked task processes", [] if alive is True else alive)
        populated = [g for g, pids in task_groups(ids).items() if pids]
        self.check(section, "leaked processes in task cgroups", populated)

        begun_forget = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            forgets = list(pool.map(forget, ids))
        forget_wall = time.perf_counter() - begun_forget
        failed = [f"{a.what}: exit {a.code}: {a.output.strip()[-200:]}" for a in forgets if a.code]
        self.check(section, "forget not answered with exit 0", failed)
        remaining = self.call("status")["transactions"]
        self.check(section, "transactions left after forget", [r["transaction"] for r in remaining])
        fds_after = self.settled_fds(fds_before)
        self.check(
            section,
            "leaked daemon fds (after forget)",
            list(range(max(0, fds_after - fds_before))),
            note=f"{fds_before} before, {fds_after} after",
        )

        starts = [a.wall for a in answers if a.what.startswith("start")]
        stops = [a.wall for a in answers if a.what.startswith("stop")]
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
        self.add(section, "daemon RSS after", self.rss(), "MiB")

    # --- the whole run ------------------------------------------------------------------------

    def main(self) -> None:
        self.write_files()
        self.warm_up()
        self.start_daemon()
        for kind in self.args.kinds:
            self.big(kind)
        if self.args.transactions:
            self.concurrent()
        self.add("daemon", "daemon RSS, end of run", self.rss(), "MiB")
        self.add("daemon", "daemon fds, end of run", float(self.fds()), "")
        if self.failures:
            raise BenchError("checks failed: " + "; ".join(self.failures))

    def shutdown(self) -> None:
        """Stop the daemon and its tasks, bounded; kill by pid whatever outlives that."""
        if self.client is not None:
            self.client.close()
            self.client = None
        daemon = self.daemon or daemon_from_lock(self.layout)
        if daemon is not None and not is_gone(daemon):
            shutdown = functools.partial(self.cli, "shutdown", timeout=30, check=False)
            stop_daemon(daemon, shutdown, self.tasks_seen)
        leftovers = kill_leftovers(self.tasks_seen)
        # A daemon that died (libzmq aborts on EMFILE) leaves its tasks running, by
        # design; tasks it forked but never reported are found by their cgroups.
        for pids in task_groups([self.prefix], id_prefixes=True).values():
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
    args = parse_args(argv)
    started, meta = run_metadata(args)
    meta["memory_total_mib"] = round(psutil.virtual_memory().total / MIB)
    bench = ScaleBench(args)
    print(f"zsvc {zsvc_version} scale bench in {bench.work} ({meta['cpus']} CPUs)", file=sys.stderr)
    return run_and_report(
        bench, args, meta, started, "scale", f"daemon log: {bench.state / 'daemon.log'}"
    )


if __name__ == "__main__":
    sys.exit(main())
