"""zsvc beside circus and supervisord: the same workloads, one run (see bench/README.md).

    python bench/peers.py [--sizes 10 50 200] [--rounds 3] [--window 10] [--json out.json]

The peers are installed into their own virtualenv (``bench/.peers-venv``, git-ignored;
``pip install circus supervisor`` from the configured index), so they never touch
zsvc's environment. Every manager runs the same task program (``task.py`` below: a
0.2 s set-up, READY=1 on ``$NOTIFY_SOCKET``, then idle), in a private directory under
/tmp with short paths (ipc sockets), one manager at a time:

* zsvc, local runner, the daemon of this checkout: command tasks (``<command
  notify="true">``, plain exec) and Python tasks (forked from the zygote);
* circusd (one watcher of N processes), with circusd-stats for the stats window;
* supervisord (one program with ``numprocs=N``), ``startsecs`` from ``--startsecs``.

circus and supervisord have no readiness, so their tasks get ``NOTIFY_SOCKET`` pointing
at a socket of this bench: besides what the manager reports ("running"), the bench
observes when the tasks themselves were ready. zsvc's times include readiness.

Every subprocess and every wait has a timeout; each manager is shut down, then its
process group and every process it was seen to own are killed, whatever happens.
CPU is psutil ``cpu_times`` of the manager process(es) over fixed windows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.daemon import MIB, warm_up, zsvc_env
from lib.managers import Manager, Zsvc, role
from lib.peers import PEERS_VENV, Circus, Supervisord, ensure_peers_venv, package_versions
from lib.procs import BenchError, cpu_seconds, run, task_cpu_ms
from lib.report import (
    Metric,
    Metrics,
    add_run_options,
    comparison,
    median,
    percentile,
    print_comparison,
    run_scenario,
)
from lib.taskpkg import SLEEP, task_ids, write_context, write_task_package
from lib.watch import ReadyWatch

ZSVC_RESTART = {"restart": "on-failure", "restart_sec": "0", "start_limit_burst": "1000"}
MANAGERS = ("zsvc", "circus", "supervisord")
SAME = "= the row above"
AT_SOCKET = "READY=1 at the bench's socket"

TASK_PROGRAM = '''\
"""Peers bench task: a set-up of argv[1] seconds, READY=1 if $NOTIFY_SOCKET is set, idle."""

import os
import signal
import socket
import sys
import time

time.sleep(float(sys.argv[1]))
path = os.environ.get("NOTIFY_SOCKET")
if path:
    address = "\\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)
while True:
    signal.pause()  # SIGTERM's default action ends the process
'''

Variants = list[tuple[str, Callable[[int], str]]]
"""Per manager: each column it fills (zsvc, zsvc-py, circus, supervisord) and the name of
its group of N tasks."""


class Bench(Metrics):
    def __init__(self, args: argparse.Namespace, peer_python: Path):
        super().__init__()
        self.args = args
        self.results: dict[str, dict[str, float]] = {}
        self.work = Path(tempfile.mkdtemp(prefix="zq", dir="/tmp"))
        self.peer_bin = peer_python.parent
        self.poll = args.poll / 1e3
        self.all_sizes = sorted({*args.sizes, args.idle_tasks})
        self.task_argv = [sys.executable, str(self.work / "task.py"), str(args.delay)]
        self.ready = ReadyWatch(self.work / "notify")
        self.managers: list[Manager] = []

    def add(self, section: str, label: str, value: float, unit: str, **kw: Any) -> Metric:
        self.results.setdefault(label, {})[section] = value
        return super().add(section, label, value, unit, **kw)

    # --- the managers, configured alike ------------------------------------------------------

    def zsvc(self) -> tuple[Manager, Variants]:
        """Command tasks (``<command notify="true">``, executed) and Python tasks (forked)."""
        zsvc = Zsvc(self.work / "z", pyc=self.work / "pyc")
        write_task_package(zsvc.home, SLEEP)

        def group(variant: str) -> Callable[[int], str]:
            def name(n: int) -> str:
                tx = f"{variant}{n}"
                if tx not in zsvc.contexts:  # written when first used: its ports are free
                    command = " ".join(self.task_argv) if variant == "cmd" else None
                    path, _ = write_context(
                        zsvc.home / "Conf" / f"Context-{tx}.xml", tx, SLEEP, task_ids(n),
                        {"delay_s": self.args.delay}, ZSVC_RESTART, command, notify=True,
                    )  # fmt: skip
                    zsvc.add_transaction(tx, path, n)
                return tx

            return name

        return zsvc, [("zsvc", group("cmd")), ("zsvc-py", group("py"))]

    def circus(self) -> tuple[Manager, Variants]:
        circus = Circus(
            self.work / "c", self.peer_bin, statsd="True", check_delay=self.args.circus_check_delay
        )
        for n in self.all_sizes:
            circus.add_group(
                f"w{n}", self.task_argv, n, {"NOTIFY_SOCKET": self.ready.path},
                autostart="False", warmup_delay=0, graceful_timeout=10,
            )  # fmt: skip
        return circus, [("circus", lambda n: f"w{n}")]

    def supervisord(self) -> tuple[Manager, Variants]:
        supervisord = Supervisord(self.work / "s", self.peer_bin)
        for n in self.all_sizes:
            supervisord.add_group(
                f"p{n}", self.task_argv, n, {"NOTIFY_SOCKET": self.ready.path},
                process_name="%(program_name)s_%(process_num)03d", autostart="false",
                autorestart="true", startsecs=self.args.startsecs, startretries=1000,
                stopwaitsecs=10, stdout_logfile="NONE", stderr_logfile="NONE",
            )  # fmt: skip
        return supervisord, [("supervisord", lambda n: f"p{n}")]

    # --- the measurements ------------------------------------------------------------------

    def measure(self, manager: Manager, variants: Variants) -> None:
        args = self.args
        manager.start()
        assert manager.main is not None
        self.add(variants[0][0], "manager RSS, idle", manager.main.memory_info().rss / MIB, "MiB")
        for number, (who, group_of) in enumerate(variants):
            for n in args.sizes:
                self.start_stop_rows(manager, who, group_of(n), n)
                if n != args.idle_tasks:
                    manager.retire(group_of(n))  # zsvc forgot it already (group_stop)
            group = group_of(args.idle_tasks)
            manager.group_start(group)
            manager.group_pids(group)
            time.sleep(1.0)  # let start-up work settle
            self.kill_rows(manager, who, group)
            if number == 0:
                self.idle_rows(manager, who, args.idle_tasks)
            manager.group_stop(group)

    def start_stop_rows(self, manager: Manager, who: str, group: str, n: int) -> None:
        """``--rounds`` times (start the group, all N running, all N ready, their CPU, stop)."""
        starts, stops, readies, cpus = [], [], [], []
        for _ in range(self.args.rounds):
            launched = time.perf_counter()
            starts.append(manager.group_start(group))
            pids = manager.group_pids(group)
            if len(pids) != n:
                raise BenchError(f"{who}: {len(pids)} of {n} running after start")
            seen = self.ready.wait_count(launched, n, 30 + n) if who[0] != "z" else {}
            readies.append(max(seen.values()) - launched if seen else starts[-1])
            cpus.append(task_cpu_ms(pids))
            stops.append(manager.group_stop(group))
        label = f"start {n}: to all running (zsvc: ready)"
        self.add(who, label, median(starts), "s", samples=starts)
        note = SAME if who[0] == "z" else AT_SOCKET
        self.add(who, f"start {n}: to all ready", median(readies), "s", samples=readies, note=note)
        self.add(
            who,
            f"start {n}: task CPU to ready, per task",
            median(cpus),
            "ms",
            samples=cpus,
            note="mean over the N tasks, /proc schedstat",
        )
        self.add(who, f"stop {n}: group stop", median(stops), "s", samples=stops)

    def kill_rows(self, manager: Manager, who: str, group: str) -> None:
        running, ready = [], []
        for _ in range(self.args.kills):
            a, b = manager.kill_one(group, self.ready, self.poll)
            running.append(a)
            ready.append(b)
        self.add(
            who,
            "SIGKILL -> replacement running (zsvc: ready)",
            median(running),
            "s",
            samples=running,
            note=f"p90 {percentile(running, 0.9):.3f} s",
        )
        note = SAME if who[0] == "z" else AT_SOCKET
        self.add(who, "SIGKILL -> replacement ready", median(ready), "s", samples=ready, note=note)

    def idle_rows(self, manager: Manager, who: str, n: int) -> None:
        """Manager CPU over fixed windows with N idle tasks, without and with stats; RSS; status."""
        time.sleep(1.0)
        for label, on in (("no stats", False), ("stats at 1 Hz", True)):
            if on:
                manager.stats_on()
            procs = manager.manager_procs()
            before, started = cpu_seconds(*procs), time.monotonic()
            time.sleep(self.args.window)  # the measurement window itself
            used = cpu_seconds(*procs) - before
            percent = 100.0 * used / (time.monotonic() - started)
            note = " + ".join(role(p) for p in procs)
            if on and manager.name == "supervisord":
                note = "supervisord has no resource stats: same as without"
            self.add(who, f"manager CPU, {n} idle tasks, {label}", percent, "%", note=note)
            if on:
                rss = [p.memory_info().rss / MIB for p in procs]
                self.add(who, f"manager RSS, {n} tasks (main process)", rss[0], "MiB")
                label = f"manager RSS, {n} tasks, all its processes"
                self.add(who, label, sum(rss), "MiB", note=note)
                manager.stats_off()
        self.status_rows(manager, who, n)

    def status_rows(self, manager: Manager, who: str, n: int) -> None:
        argv = manager.status_cli()
        # supervisorctl status exits 3 whenever a process is not running: its convention.
        walls = [run(argv, 30, env=manager.env, ok=(0, 3)).wall * 1e3
                 for _ in range(self.args.status_cli)]  # fmt: skip
        self.add(
            who,
            f"status CLI process ({n} tasks)",
            median(walls),
            "ms",
            samples=walls,
            note=" ".join(Path(argv[0]).name.split()[:1]),
        )
        times, size = manager.status_probe(self.args.status_calls)
        self.add(
            who,
            f"status in-process client ({n} tasks)",
            median(times),
            "ms",
            note=f"p90 {percentile(times, 0.9):.3f} ms; reply {size} B",
        )

    # --- the whole run -----------------------------------------------------------------------

    def main(self) -> None:
        (self.work / "task.py").write_text(TASK_PROGRAM)
        warm_up(zsvc_env(self.work / "w", self.work / "w", self.work / "pyc"))
        for name, make in (("zsvc", self.zsvc), ("circus", self.circus),
                           ("supervisord", self.supervisord)):  # fmt: skip
            if name not in self.args.managers:
                continue
            manager, variants = make()
            self.managers.append(manager)
            try:
                self.measure(manager, variants)
            finally:
                manager.teardown()

    def shutdown(self) -> None:
        for manager in self.managers:
            manager.teardown()
        self.ready.close()
        self.meta["comparison"] = comparison(self.results)
        # The bar of issue 8: zsvc ahead of both peers on every row. So the long table's
        # target of a zsvc row is the better peer's value (every row: lower is better).
        for metric in self.metrics:
            peers = [v for k, v in self.results[metric.label].items() if not k.startswith("z")]
            if metric.section.startswith("zsvc") and peers:
                metric.target = min(peers)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="zsvc, circus and supervisord, in one run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200], help="group sizes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each group start/stop")
    parser.add_argument("--idle-tasks", type=int, default=100, help="tasks for CPU/RSS/status")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window, seconds")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILL samples per manager")
    parser.add_argument("--status-cli", type=int, default=10, help="status CLI samples")
    parser.add_argument("--status-calls", type=int, default=500, help="in-process status calls")
    parser.add_argument("--delay", type=float, default=0.2, help="the task's set-up, seconds")
    parser.add_argument("--startsecs", type=int, default=0, help="supervisord's startsecs")
    parser.add_argument(
        "--circus-check-delay",
        type=float,
        default=1.0,
        help="circus's check_delay (its config file's default is 5 s, the Arbiter's 1 s)",
    )
    parser.add_argument("--poll", type=float, default=2.0, help="peers' state poll period, ms")
    parser.add_argument("--managers", nargs="+", default=list(MANAGERS), choices=MANAGERS)
    parser.add_argument("--peers-venv", type=Path, default=PEERS_VENV)
    parser.add_argument(
        "--peers-python",
        default=shutil.which("python3") or sys.executable,
        help="interpreter that creates the peers' virtualenv",
    )
    add_run_options(parser, pyc_cache=False)
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.rounds < 1 or args.kills < 1 or args.window <= 0:
        parser.error("sizes, --rounds and --kills must be at least 1, --window positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peer_python = ensure_peers_venv(args.peers_venv, args.peers_python)
    versions = package_versions(peer_python)
    code, bench = run_scenario(
        "peers",
        args,
        lambda args: Bench(args, peer_python),
        "zsvc {version} vs {peers} in {work}",
        "manager logs in it",
        peers=versions,
    )
    print("\nratios (below 1: zsvc ahead; zsvc = command tasks, zsvc-py = Python tasks):\n")
    print_comparison(bench.meta["comparison"], {m.label: m.unit for m in bench.metrics})
    return code


if __name__ == "__main__":
    sys.exit(main())
