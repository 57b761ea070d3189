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
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

# bench/ is the script's directory, so it is on sys.path: share core.py's helpers.
from core import (
    IPC_PATH_LIMIT,
    BenchError,
    Metric,
    add_run_options,
    cpu_seconds,
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

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

SLEEP_INSTANCE = "PolicySleep"
CRASH_INSTANCE = "PolicyCrash"
TX_KILL = "pkill"
TX_CRASH = "pcrash"
KILL_ID = "victim"
LIMIT_HIT = "(start-limit-hit)"
"""In ``content.status.reason`` of the ``failed`` report that ends a crash loop."""

SLEEP_TASK = '''\
"""Policy bench task: setup() sleeps (the peers' workload), then the task idles."""

import time

from zsvc import Task


class ServicePolicySleep(Task):
    interval = 3600.0

    def setup(self, delay_s: float = 0.2, **config):
        time.sleep(delay_s)
'''

CRASH_TASK = '''\
"""Policy bench task: setup() raises at once, so the run fails before READY."""

from zsvc import Task


class ServicePolicyCrash(Task):
    def setup(self, **config):
        raise RuntimeError("policy bench: crash in setup()")
'''


def context_xml(
    context_id: str,
    instance: str,
    ids: list[str],
    attributes: dict[str, str],
    config: dict[str, Any],
) -> str:
    """A context of one TaskService per id, with the given restart attributes."""
    return bench_context_xml(context_id, instance, ids, config, attributes=attributes)


class Daemon:
    """One zsvc daemon in ``<work>/<name>/{r,s}``, with its own contexts and clients."""

    def __init__(self, bench: Bench, name: str, label: str, zygote: bool):
        self.bench = bench
        self.name = name
        self.label = label
        self.zygote_wanted = zygote
        self.home = bench.work / name
        self.runtime = self.home / "r"
        self.state = self.home / "s"
        self.layout = RuntimeLayout(self.runtime)
        if len(str(self.layout.bus_sub)) >= IPC_PATH_LIMIT:
            raise BenchError(f"runtime dir {self.runtime} is too long for ipc sockets")
        self.env = bench.env_for(self.runtime, self.state, zygote)
        self.proc: psutil.Process | None = None
        self.zygote: psutil.Process | None = None
        self.client: ControlClient | None = None
        self.tasks_seen: dict[int, psutil.Process] = {}
        self.conf = self.home / "Conf"

    # --- plumbing ----------------------------------------------------------------------

    def write_contexts(self) -> None:
        """Contexts per daemon: each daemon binds its contexts' ports, so they must differ."""
        self.conf.mkdir(parents=True)
        args = self.bench.args
        self.kill_path = self.conf / "Context-PolicyKill.xml"
        self.kill_text = context_xml(
            TX_KILL,
            SLEEP_INSTANCE,
            [KILL_ID],
            {"restart": "on-failure", "restart_sec": "0", "start_limit_burst": "1000"},
            {"delay_s": args.delay},
        )
        self.kill_path.write_text(self.kill_text)
        self.crash_ids = [f"c{i:03d}" for i in range(args.crash_tasks)]
        self.crash_path = self.conf / f"Context-PolicyCrash{args.crash_tasks}.xml"
        self.crash_text = context_xml(
            TX_CRASH,
            CRASH_INSTANCE,
            self.crash_ids,
            {"restart": "on-failure", "restart_sec": "0.1"},  # the default start limit
            {},
        )
        self.crash_path.write_text(self.crash_text)
        # The tasks' code: the contexts' default location is ../Services.
        shutil.copytree(self.bench.work / "Services", self.home / "Services")

    def cli(self, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        argv = [*self.bench.zsvc, *args]
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
        if check and done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise BenchError(f"{' '.join(argv)} exited {done.returncode}:\n  " + "\n  ".join(tail))
        return done

    def call(self, command: str, wait: float = 10.0, **args: Any) -> Any:
        assert self.client is not None
        return self.client.call(command, wait=wait, **args)

    def bus(self) -> BusClient:
        bus = BusClient(self.layout.bus_pub_endpoint, self.layout.bus_sub_endpoint, ["control"])
        try:
            bus.handshake(5.0)
        except BaseException:
            bus.close()
            raise
        return bus

    def remember(self, pid: int | None) -> None:
        if pid and pid not in self.tasks_seen:
            with contextlib.suppress(psutil.Error):
                self.tasks_seen[pid] = psutil.Process(pid)

    def add(self, label: str, *args: Any, **kw: Any) -> Metric:
        return self.bench.add(self.name, f"{label}", *args, **kw)

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.write_contexts()
        argv = [self.bench.python, "-m", "zsvc.daemon", "--detach"]
        argv += ["--runtime-dir", str(self.runtime), "--state-dir", str(self.state)]
        begun = time.perf_counter()
        try:
            subprocess.run(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                check=True,
            )
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
            raise BenchError(f"daemon {self.name} did not start: {exc}") from exc
        took = time.perf_counter() - begun
        info = json.loads(self.cli("ping", timeout=30).stdout)
        self.proc = psutil.Process(int(info["pid"]))
        self.client = ControlClient(self.runtime, timeout=10.0)
        self.zygote = zygote_of(self.proc)
        if self.zygote_wanted and self.zygote is None:
            raise BenchError(f"daemon {self.name} has no zygote (see {self.state}/daemon.log)")
        if not self.zygote_wanted and self.zygote is not None:
            raise BenchError(f"daemon {self.name} runs a zygote despite ZSVC_ZYGOTE=0")
        self.bench.meta[f"daemon_{self.name}"] = {
            **info,
            "label": self.label,
            "zygote_pid": self.zygote.pid if self.zygote else None,
            "detach_s": round(took, 4),
        }

    def shutdown(self) -> None:
        """Stop the daemon and its tasks, bounded; kill by pid whatever outlives that."""
        if self.client is not None:
            self.client.close()
            self.client = None
        daemon = self.proc or daemon_from_lock(self.layout)
        if daemon is not None and not is_gone(daemon):
            shutdown = functools.partial(self.cli, "shutdown", timeout=30, check=False)
            stop_daemon(daemon, shutdown, self.tasks_seen)
        leftovers = kill_leftovers(self.tasks_seen)
        if leftovers:
            print(f"killed processes left behind by {self.name}: {leftovers}", file=sys.stderr)

    # --- 1. SIGKILL to the replacement READY --------------------------------------------

    def kill_restart(self) -> None:
        args = self.bench.args
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
        self.remember(pid)
        to_ready, to_failed = [], []
        bus = self.bus()
        try:
            for number in range(args.kills):
                while bus.sub.poll(0):  # drop what came before
                    bus.sub.recv_multipart()
                start = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                deadline = start + 10.0
                failed_at = None
                while True:
                    message = bus.receive(max(0.0, deadline - time.perf_counter()))
                    now = time.perf_counter()
                    if message is None:
                        if now >= deadline:
                            raise BenchError(
                                f"{self.name}: kill {number + 1}: no new 'started' for"
                                f" {KILL_ID} within 10 s (failed seen: {failed_at is not None})"
                            )
                        continue
                    if message.service_id != KILL_ID or message.transaction != TX_KILL:
                        continue
                    new_pid = message.status.get("pid")
                    if message.action == "failed" and failed_at is None:
                        failed_at = now
                    elif message.action == "started" and new_pid and new_pid != pid:
                        break
                to_ready.append(now - start)
                if failed_at is not None:
                    to_failed.append(failed_at - start)
                pid = int(new_pid)
                self.remember(pid)
        finally:
            bus.close()
        task = self.call("status", transaction=TX_KILL)["tasks"][0]
        if task["state"] != "active" or task["pid"] != pid:
            raise BenchError(f"{self.name}: after the kills the task is not the last run: {task}")
        self.add(
            f"SIGKILL to replacement READY{self.label}",
            median(to_ready),
            "s",
            target=0.3,
            samples=to_ready,
            note=(
                f"median of {len(to_ready)}; p90 {percentile(to_ready, 0.9):.3f} s;"
                " systemd 0.26, circus 0.70, supervisord 1.02 (startsecs=1)"
            ),
        )
        ms = [value * 1e3 for value in to_failed]
        self.add(
            "  SIGKILL to 'failed' on the bus",
            median(ms),
            "ms",
            samples=ms,
            note=f"{len(ms)} of {len(to_ready)} seen",
        )
        after = [(r - f) for r, f in zip(to_ready, to_failed, strict=False)]
        if len(to_failed) == len(to_ready):
            self.add(
                "  'failed' to replacement READY",
                median(after),
                "s",
                samples=after,
                note=f"restart_sec=0; setup() sleeps {args.delay:g} s",
            )
        task_restarts = task["restarts"]
        self.bench.meta[f"kill_{self.name}_restarts"] = task_restarts
        self.call("stop", wait=60, transaction=TX_KILL, services=[], timeout=None)
        self.call("forget", wait=30, transaction=TX_KILL)

    # --- 2. crash loop to the start limit ----------------------------------------------

    def crash_loop(self) -> None:
        args = self.bench.args
        n = args.crash_tasks
        waiting = set(self.crash_ids)
        failed_messages = update_messages = update_bytes = 0
        bus = self.bus()
        try:
            cpu0, zyg0 = cpu_seconds(self.proc), cpu_seconds(self.zygote)
            machine0 = psutil.cpu_times()
            start = time.perf_counter()
            argv = [*self.bench.zsvc, "start", "--context", str(self.crash_path), "--keep-going"]
            cli = subprocess.Popen(
                [*argv, TX_CRASH],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            cli_wall = None
            deadline = start + args.crash_deadline
            # Only the bus is read meanwhile: a status call would be daemon work too.
            while waiting and time.perf_counter() < deadline:
                if cli_wall is None and cli.poll() is not None:
                    cli_wall = time.perf_counter() - start
                message = bus.receive(0.2)
                if message is None or message.transaction != TX_CRASH:
                    continue
                if message.action == "update":
                    update_messages += 1
                    update_bytes += len(json.dumps(message.to_dict(), separators=(",", ":")))
                elif message.action == "failed":
                    failed_messages += 1
                    if LIMIT_HIT in str(message.status.get("reason", "")):
                        waiting.discard(message.service_id)
            wall = time.perf_counter() - start
            cpu1, zyg1 = cpu_seconds(self.proc), cpu_seconds(self.zygote)
            machine1 = psutil.cpu_times()
            try:
                out, err = cli.communicate(timeout=60)
            except subprocess.TimeoutExpired as exc:
                cli.kill()
                cli.communicate()
                raise BenchError(f"{self.name}: zsvc start did not return within 60 s") from exc
            if cli_wall is None:
                cli_wall = time.perf_counter() - start
            # The window after: every task at its limit (or, if the loop did not end, still
            # looping); the bench sends nothing to the daemon meanwhile.
            idle0, izyg0 = cpu_seconds(self.proc), cpu_seconds(self.zygote)
            idle_start = time.perf_counter()
            time.sleep(args.idle)
            idle_wall = time.perf_counter() - idle_start
            idle1, izyg1 = cpu_seconds(self.proc), cpu_seconds(self.zygote)
            idle_messages = 0
            while bus.sub.poll(0):  # what the daemon published in that window
                bus.sub.recv_multipart()
                idle_messages += 1
        finally:
            bus.close()
        record = self.call("status", transaction=TX_CRASH)
        states: dict[str, int] = {}
        for task in record["tasks"]:
            key = f"{task['state']}/{task['sub_state']}/{task['result']}"
            states[key] = states.get(key, 0) + 1
        starts = sum(task["restarts"] + 1 for task in record["tasks"])
        limit_hit = n - len(waiting)
        ended = not waiting
        # Whatever still loops is stopped now (a stop cancels pending restarts).
        self.call("stop", wait=120, transaction=TX_CRASH, services=[], timeout=None)
        cpus = os.cpu_count() or 1
        busy = machine1.user + machine1.system - machine0.user - machine0.system
        self.bench.meta[f"crash_{self.name}"] = {
            "all_hit_the_limit": ended,
            "tasks_at_the_limit": limit_hit,
            "cli_returncode": cli.returncode,
            "cli_output_tail": (err or out).strip()[-300:],
            "failed_messages": failed_messages,
            "update_messages": update_messages,
            "update_bytes": update_bytes,
            "messages_in_window_after": idle_messages,
            "states_after_window": states,
            "task_starts_after_window": starts,
        }
        until = "until all hit the limit" if ended else f"{limit_hit} of {n} hit the limit"
        self.add(
            f"daemon CPU, {n} tasks crash-looping{self.label}",
            (cpu1 - cpu0) / wall * 100,
            "%",
            target=10.0,
            note=f"{cpu1 - cpu0:.2f} s CPU in {wall:.2f} s: zsvc start {until}; % of one core",
        )
        if self.zygote is not None:
            self.add(
                "  zygote CPU, same period",
                (zyg1 - zyg0) / wall * 100,
                "%",
                note=f"{zyg1 - zyg0:.2f} s CPU; forks every task host",
            )
        self.add(
            "  machine CPU, same period",
            busy / wall * 100,
            "%",
            note=f"% of one core, {cpus} cores: daemon + task hosts + everything",
        )
        self.add(
            "  wall time until all hit the limit" if ended else "  wall time, loop not ended",
            wall,
            "s",
            note=(
                f"{limit_hit} of {n} at the limit; zsvc start --keep-going returned after"
                f" {cli_wall:.2f} s (exit {cli.returncode})"
            ),
        )
        self.add(
            "  task starts",
            failed_messages - limit_hit,
            "starts",
            note=(
                f"'failed' exits on the bus; {(failed_messages - limit_hit) / n:g} per task"
                " (1 manual + 5 automatic when the limit is hit)"
            ),
        )
        self.add(
            "  daemon CPU per task start",
            (cpu1 - cpu0) / max(1, failed_messages - limit_hit) * 1e3,
            "ms",
            note=(
                f"whole period / starts; {update_messages} context 'update' messages,"
                f" {update_bytes / 1e6:.1f} MB of JSON"
            ),
        )
        window = "idle at the limit" if ended else "next window, still looping"
        self.add(
            f"daemon CPU, {n} tasks {window}{self.label}",
            (idle1 - idle0) / idle_wall * 100,
            "%",
            target=10.0,
            note=(
                f"{idle1 - idle0:.2f} s CPU in {idle_wall:.1f} s"
                + (f"; zygote {izyg1 - izyg0:.2f} s" if self.zygote else "")
                + f"; {idle_messages} bus messages; {starts} starts in all"
            ),
        )


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.metrics: list[Metric] = []
        self.meta: dict[str, Any] = {}
        self.work = Path(tempfile.mkdtemp(prefix="zp", dir="/tmp"))
        self.python = sys.executable
        script = Path(sys.executable).parent / "zsvc"
        fallback = [self.python, "-c", "from zsvc.cli import main; main()"]
        self.zsvc = [str(script)] if script.exists() else fallback
        self.daemons: list[Daemon] = []

    def env_for(self, runtime: Path, state: Path, zygote: bool) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "ZSVC_ZYGOTE"):
            env.pop(key, None)
        env["ZSVC_RUNTIME_DIR"] = str(runtime)
        env["ZSVC_STATE_DIR"] = str(state)
        if not zygote:
            env["ZSVC_ZYGOTE"] = "0"
        if not self.args.no_pyc_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.work / "pyc")
        return env

    def add(self, section: str, label: str, *args: Any, **kw: Any) -> Metric:
        metric = Metric(section, label, *args, **kw)
        self.metrics.append(metric)
        return metric

    def write_services(self) -> None:
        for instance, source in ((SLEEP_INSTANCE, SLEEP_TASK), (CRASH_INSTANCE, CRASH_TASK)):
            folder = self.work / "Services" / instance
            folder.mkdir(parents=True)
            (folder / "__init__.py").write_text("")
            (folder / f"Service{instance}.py").write_text(source)

    def warm_up(self) -> None:
        """Fill the bytecode cache once, so that no sample pays for compiling zsvc."""
        env = self.env_for(self.work / "w", self.work / "w", True)
        imports = (
            "import zmq, psutil, lxml.etree, zsvc.task.host,"
            " zsvc.daemon.main, zsvc.daemon.server, zsvc.runners.zygote, zsvc.cli.app,"
            " zsvc.cli.render, zsvc.config.loader"
        )
        for argv in ([self.python, "-c", imports], [*self.zsvc, "--help"]):
            subprocess.run(argv, env=env, capture_output=True, timeout=120, check=True)

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
        self.write_services()
        self.warm_up()
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
    args = parse_args(argv)
    started, meta = run_metadata(args)
    bench = Bench(args)
    cpus = meta["cpus"]
    print(f"zsvc {zsvc_version} policy bench in {bench.work} ({cpus} CPUs)", file=sys.stderr)
    return run_and_report(
        bench, args, meta, started, "policy", f"daemon logs: {bench.work}/*/s/daemon.log"
    )


if __name__ == "__main__":
    sys.exit(main())
