"""zsvc's core speed targets, measured in one run on this machine (see bench/README.md).

    python bench/core.py [--tasks 50] [--rounds 3] [--json out.json] [--keep] [--no-pyc-cache]

Everything runs against a fresh daemon in a private temporary directory under
/tmp (short paths: ipc socket paths must stay below ~100 characters), with
free TCP ports for the context's bus endpoints. Nothing outside that
directory and bench/results/ is written. Every subprocess and every wait has
a timeout, and the daemon is shut down (and, failing that, killed by pid)
whatever happens.

Measured, in this order:

1. baselines: ``python -c pass``, ``import zmq``, ``import zsvc.task.host`` and
   the "no manager" script (bench/plain.py) starting the same tasks;
2. ``zsvc start --context F TX`` of N tasks whose setup() sleeps 0.2 s, as a
   CLI process, until it returns (it blocks until every task is READY);
3. daemon RSS with the N tasks running;
4. ``zsvc status --json`` as a CLI process, and ``ControlClient.call("status")``
   in-process;
5. the task host's own CPU time from exec to READY, with an empty setup();
6. SIGKILL of a task until a bus subscriber receives its ``failed`` message;
7. daemon RSS again, after all of the above.

By default the zsvc processes (daemon, CLI, task hosts) run with a bytecode
cache in the work directory (PYTHONPYCACHEPREFIX), as an installed package
would have its .pyc files; without it (this checkout has no __pycache__ and
the environment may set PYTHONDONTWRITEBYTECODE) every process compiles
zsvc's sources again. ``--no-pyc-cache`` measures the environment as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from lib.daemon import MIB, ZsvcDaemon, kill_task, warm_up, zsvc_env
from lib.procs import BenchError, Run, run, time_calls
from lib.report import Metrics, add_run_options, median, percentile, run_scenario
from lib.taskpkg import NOOP, SLEEP, task_ids, write_context, write_task_package

from zsvc.client import ControlClient

BENCH_DIR = Path(__file__).resolve().parent
TX_ONE = "bench1"


class Bench(Metrics):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="zb", dir="/tmp"))
        pyc = None if args.no_pyc_cache else self.work / "pyc"
        # zygote=None: the daemon runs as the environment says (ZSVC_ZYGOTE inherited).
        self.daemon = ZsvcDaemon(self.work, pyc=pyc, zygote=None)
        self.env = self.daemon.env
        self.zsvc = self.daemon.zsvc
        self.python = sys.executable
        self.tx_many = f"bench{args.tasks}"
        self.task_ids = task_ids(args.tasks)

    # --- plumbing ---------------------------------------------------------------------

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> Run:
        return run(argv, timeout, env=env or self.env)

    def repeat(self, argv: list[str], times: int, timeout: float, **kw: Any) -> list[Run]:
        return [self.run(argv, timeout, **kw) for _ in range(times)]

    def call(self, command: str, wait: float = 10.0, **args: Any) -> Any:
        return self.daemon.call(command, wait=wait, **args)

    def write_services(self) -> None:
        write_task_package(self.work, SLEEP, NOOP)
        conf = self.work / "Conf"
        self.many_path, self.many_text = write_context(
            conf / f"Context-Bench{self.args.tasks}.xml",
            self.tx_many,
            SLEEP,
            self.task_ids,
            {"delay_s": self.args.delay},
        )
        self.one_path, self.one_text = write_context(
            conf / "Context-Bench1.xml", TX_ONE, NOOP, ["noop"]
        )

    def start_call(self, transaction: str, path: Path | None, text: str, wait: float) -> float:
        """An in-process blocking ``start`` (of a new transaction when *path* is given)."""
        context = {} if path is None else {"context_path": str(path), "context_text": text}
        start = time.perf_counter()
        self.call(
            "start",
            wait=wait,
            transaction=transaction,
            services=[],
            block=True,
            timeout=None,
            **context,
        )
        return time.perf_counter() - start

    def stop_call(self, transaction: str) -> float:
        start = time.perf_counter()
        self.call("stop", wait=120, transaction=transaction, services=[], timeout=None)
        return time.perf_counter() - start

    def stop_and_forget(self, transaction: str) -> None:
        with contextlib.suppress(Exception):
            self.stop_call(transaction)
        self.call("forget", wait=30, transaction=transaction)

    def check_all_active(self, transaction: str, count: int) -> dict[str, Any]:
        record = self.call("status", transaction=transaction)
        self.daemon.remember(record)
        active = [t for t in record["tasks"] if t["state"] == "active"]
        if len(active) != count:
            raise BenchError(f"{transaction}: {len(active)} of {count} tasks active")
        return record

    # --- 1. baselines -----------------------------------------------------------------

    def warm_up(self) -> None:
        """Fill the bytecode cache (or the page cache) once, so no sample pays for it."""
        warm_up(self.env)
        self.run([self.python, str(BENCH_DIR / "plain.py"), "--tasks", "2", "--import-zmq"], 60)

    def cpu_row(self, label: str, argv: list[str], times: int, **kw: Any) -> None:
        cpus = [r.cpu * 1e3 for r in self.repeat(argv, times, 30, env=kw.pop("env", None))]
        self.add("baseline", label, median(cpus), "ms", samples=cpus, **kw)

    def baselines(self) -> None:
        section = "baseline"
        runs = self.repeat([self.python, "-c", "pass"], 20, 30)
        walls, cpus = [r.wall * 1e3 for r in runs], [r.cpu * 1e3 for r in runs]
        self.add(section, "python -c pass: wall", median(walls), "ms", samples=walls)
        self.add(section, "python -c pass: CPU", median(cpus), "ms", samples=cpus)
        self.cpu_row("python -c 'import zmq': CPU", [self.python, "-c", "import zmq"], 10)
        host = [self.python, "-c", "import zsvc.task.host"]
        note = "task host imports" + ("" if self.args.no_pyc_cache else ", .pyc cached")
        self.cpu_row("import zsvc.task.host: CPU", host, 10, note=note)
        if not self.args.no_pyc_cache:
            raw = zsvc_env(self.daemon.runtime, self.daemon.state, None, zygote=None)
            note = "environment as inherited"
            self.cpu_row("import zsvc.task.host: CPU, no .pyc", host, 5, env=raw, note=note)
        self.plain_baselines()

    def plain_baselines(self) -> None:
        """bench/plain.py: the same tasks and readiness, no manager."""
        section, n = "baseline", self.args.tasks
        plain = [self.python, str(BENCH_DIR / "plain.py"), "--tasks", str(n)]
        plain += ["--delay", str(self.args.delay)]
        runs = self.repeat(plain, self.args.rounds, 120)
        walls = [r.wall for r in runs]
        note = "plain.py, peers' plain script: 1.10 s"
        self.add(
            section, f"no manager: {n} tasks to READY", median(walls), "s", samples=walls, note=note
        )
        cpus = [r.cpu for r in runs]
        self.add(section, "no manager: total CPU", median(cpus), "s", samples=cpus)
        walls = [r.wall for r in self.repeat([*plain, "--import-zmq"], self.args.rounds, 120)]
        note = "same, each task also imports pyzmq"
        self.add(
            section, "no manager, tasks import zmq", median(walls), "s", samples=walls, note=note
        )

    # --- the daemon -------------------------------------------------------------------

    def start_daemon(self) -> None:
        detached = self.daemon.start()
        self.add("daemon", "daemon --detach to READY", detached.wall * 1e3, "ms")
        self.meta["daemon"] = self.daemon.info
        walls = [r.wall * 1e3 for r in self.repeat([*self.zsvc, "ping"], 5, 30)]
        self.add(
            "daemon",
            "zsvc ping CLI (typer path): wall",
            median(walls),
            "ms",
            samples=walls,
            note="CLI start-up cost outside the status fast path",
        )
        self.add("daemon", "daemon RSS, idle", self.daemon.rss(), "MiB")

    # --- 2. N tasks from `zsvc start` to all ready -------------------------------------

    def start_many(self) -> None:
        self.start_many_cli()
        self.start_many_inprocess()

    def start_many_cli(self) -> None:
        """``zsvc start`` of the N tasks, per round, with a timeline of the round."""
        section, n = f"{self.args.tasks} tasks", self.args.tasks
        argv = [*self.zsvc, "start", "--context", str(self.many_path), self.tx_many]
        walls, cli_cpu, daemon_cpu = [], [], []
        timeline: dict[str, list[float]] = {"spawned": [], "first": [], "last": []}
        for round_no in range(self.args.rounds):
            if round_no:
                self.stop_and_forget(self.tx_many)
            cpu_before = self.daemon.cpu()
            launched = time.time()
            result = self.run(argv, 60 + n)
            daemon_cpu.append(self.daemon.cpu() - cpu_before)
            walls.append(result.wall)
            cli_cpu.append(result.cpu * 1e3)
            self.timeline(launched, timeline)
        self.add(
            section,
            f"zsvc start, {n} tasks to READY",
            median(walls),
            "s",
            target=1.5,
            samples=walls,
            note="peers: systemd 1.34, circus 1.05, supervisord 0.86",
        )
        self.add(section, "  zsvc start CLI process CPU", median(cli_cpu), "ms", samples=cli_cpu)
        for label, key in (
            ("  last task forked, after CLI launch", "spawned"),
            ("  first task READY, after CLI launch", "first"),
            ("  last task READY, after CLI launch", "last"),
        ):
            self.add(section, label, median(timeline[key]), "s", samples=timeline[key])
        per_task = [cpu / n * 1e3 for cpu in daemon_cpu]
        note = "psutil, 10 ms ticks over the whole start"
        self.add(
            section,
            "  daemon CPU per task started",
            median(per_task),
            "ms",
            samples=per_task,
            note=note,
        )

    def timeline(self, launched: float, timeline: dict[str, list[float]]) -> None:
        """When, relative to the CLI's launch, the daemon had forked the last task (process
        start times: 10 ms ticks) and the first and the last task became active (the
        table's "since", set on READY=1)."""
        record = self.check_all_active(self.tx_many, self.args.tasks)
        seen = self.daemon.tasks_seen
        starts = [seen[t["pid"]].create_time() for t in record["tasks"]]
        since = [t["since"] for t in record["tasks"]]
        timeline["spawned"].append(max(starts) - launched)
        timeline["first"].append(min(since) - launched)
        timeline["last"].append(max(since) - launched)

    def start_many_inprocess(self) -> None:
        section, n = f"{self.args.tasks} tasks", self.args.tasks
        walls, stops = [], []
        for _ in range(self.args.rounds):
            stops.append(self.stop_call(self.tx_many))
            self.call("forget", wait=30, transaction=self.tx_many)
            walls.append(self.start_call(self.tx_many, self.many_path, self.many_text, 60 + n))
            self.check_all_active(self.tx_many, n)
        self.add(
            section,
            "  same, in-process start call (no CLI)",
            median(walls),
            "s",
            samples=walls,
        )
        self.add(
            section,
            f"  in-process stop call, {n} tasks",
            median(stops),
            "s",
            samples=stops,
            note="SIGTERM to every task until all exited",
        )

    # --- 6. daemon RSS ----------------------------------------------------------------

    def daemon_rss(self, label: str) -> None:
        note = "peers: circus 31 MB, supervisord 26 MB"
        with contextlib.suppress(psutil.Error):
            note += f"; USS {self.daemon.running.memory_full_info().uss / MIB:.1f} MiB"
        self.add("memory", label, self.daemon.rss(), "MiB", target=31.0, note=note)

    # --- 4. status ----------------------------------------------------------------------

    def status_cli(self) -> None:
        runs = self.repeat([*self.zsvc, "status", "--json"], self.args.status_cli, 30)
        table = json.loads(runs[0].stdout)
        tasks = sum(len(t["tasks"]) for t in table["transactions"])
        walls, cpus = [r.wall * 1e3 for r in runs], [r.cpu * 1e3 for r in runs]
        self.add(
            "status",
            f"zsvc status --json CLI ({tasks} tasks)",
            median(walls),
            "ms",
            target=100.0,
            samples=walls,
            note=f"p90 {percentile(walls, 0.9):.1f} ms; circusctl 129, supervisorctl 125",
        )
        self.add("status", "  status CLI process CPU", median(cpus), "ms", samples=cpus)

    def status_inprocess(self, transaction: str, tasks: int, target: float | None) -> None:
        calls = self.args.status_calls
        with ControlClient(self.daemon.runtime, timeout=10.0) as client:
            times, reply = time_calls(lambda: client.call("status", transaction=transaction), calls)
        size = len(json.dumps(reply, separators=(",", ":")))
        self.add(
            "status",
            f"ControlClient status, {tasks}-task tx",
            median(times),
            "ms",
            target=target,
            samples=[],
            note=(
                f"median of {calls}; p90 {percentile(times, 0.9):.3f}, p99"
                f" {percentile(times, 0.99):.3f} ms; reply {size} B"
            ),
        )

    # --- 3. task host cost ------------------------------------------------------------------

    def host_sample(self, first: bool) -> dict[str, float]:
        """(Re)start the one-task transaction; what its host reported and psutil read."""
        if first:
            wall = self.start_call(TX_ONE, self.one_path, self.one_text, 60)
        else:
            self.stop_call(TX_ONE)
            wall = self.start_call(TX_ONE, None, "", 60)
        task = self.call("status", transaction=TX_ONE)["tasks"][0]
        proc = psutil.Process(task["pid"])
        self.daemon.tasks_seen[proc.pid] = proc
        times = proc.cpu_times()
        fields = dict(item.split("=", 1) for item in task["status_text"].split())
        return {
            "wall": wall * 1e3,
            "ticks": (times.user + times.system) * 1e3,
            "cpu": float(fields["cpu_s"]) * 1e3,
            "rusage": float(fields["ru_s"]) * 1e3,
            "rss": proc.memory_info().rss / MIB,
        }

    def host_cost(self) -> None:
        section = "task host"
        self.host_sample(first=True)  # a warm-up (imports the task module first)
        samples = [self.host_sample(first=False) for _ in range(self.args.host_samples)]
        got = {key: [sample[key] for sample in samples] for key in samples[0]}
        rows = (
            ("task host CPU, zygote fork to READY", "cpu", "ms",
             "process_time() in an empty setup(); what the daemon runs"),
            ("  same, getrusage(RUSAGE_SELF)", "rusage", "ms", ""),
            ("  psutil cpu_times after start", "ticks", "ms", "cross-check, 10 ms ticks"),
            # Not ru_maxrss: Linux carries the peak of the pre-exec image (the forked daemon) over.
            ("  task host RSS after READY", "rss", "MiB", ""),
            ("  1-task start call to READY: wall", "wall", "ms", "in-process start, empty setup()"),
        )  # fmt: skip
        for label, key, unit, note in rows:
            self.add(section, label, median(got[key]), unit, samples=got[key], note=note)

    def host_cost_exec(self) -> None:
        """The host started the plain way, ``python -m zsvc.task``, as with ZSVC_ZYGOTE=0.

        It joins the running daemon's bus, and reports READY=1 to a notify
        socket of the bench's own, so nothing else is in the measurement.
        """
        from zsvc.hostwire import HostSpec
        from zsvc.notify import NotifyServer

        layout = self.daemon.layout
        spec = HostSpec(
            transaction="benchexec",
            task_id="noop",
            service_name="noop",
            instance=NOOP,
            location=str(self.work / "Services"),
            bus_pub=layout.bus_pub_endpoint,
            bus_sub=layout.bus_sub_endpoint,
        )
        with NotifyServer(self.work / "bench-notify") as server:
            env = dict(self.env, ZSVC_TASK=spec.to_json(), NOTIFY_SOCKET=server.path)
            cpu = [self.exec_host(server, env) for _ in range(self.args.host_samples)]
        self.add(
            "task host",
            "task host CPU, exec to READY",
            median(cpu),
            "ms",
            target=60.0,
            samples=cpu,
            note="python -m zsvc.task (ZSVC_ZYGOTE=0), empty setup()",
        )

    def exec_host(self, server: Any, env: dict[str, str]) -> float:
        """One executed task host until READY=1; the CPU it reported (ms)."""
        proc = subprocess.Popen(
            [self.python, "-m", "zsvc.task"], env=env, cwd=self.work,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        status, ready = "", False
        deadline = time.monotonic() + 30
        while not ready and time.monotonic() < deadline:
            if not select.select([server.fileno()], [], [], 1.0)[0]:
                continue
            for note in server.drain():
                if isinstance(note, Exception) or note.pid != proc.pid:
                    continue
                status = note.status or status
                ready = ready or note.ready
        proc.terminate()
        proc.wait(30)
        if not ready:
            raise BenchError("the exec'd task host never sent READY=1")
        fields = dict(item.split("=", 1) for item in status.split())
        return float(fields["cpu_s"]) * 1e3

    # --- 5. exit noticed --------------------------------------------------------------------

    def kill_latency(self) -> None:
        victim = self.task_ids[0]
        latencies, restarts = [], []
        bus = self.daemon.bus(["control"])
        try:
            for _ in range(self.args.kills):
                record = self.call("status", transaction=self.tx_many)
                task = next(t for t in record["tasks"] if t["id"] == victim)
                if task["state"] != "active" or not task["pid"]:
                    raise BenchError(f"{self.tx_many}/{victim} is not running: {task}")
                self.daemon.remember(record)
                kill = kill_task(bus, task["pid"], self.tx_many, victim, "failed", 5.0)
                assert kill.failed is not None
                latencies.append(kill.failed * 1e3)
                argv = [*self.zsvc, "start", self.tx_many, "--service", victim]
                restarts.append(self.run(argv, 60).wall * 1e3)
        finally:
            bus.close()
        self.check_all_active(self.tx_many, self.args.tasks)
        self.add(
            "exit",
            "SIGKILL to 'failed' on the bus",
            median(latencies),
            "ms",
            target=10.0,
            samples=latencies,
            note=f"median of {len(latencies)}; max {max(latencies):.2f} ms",
        )
        self.add(
            "exit",
            "  zsvc start TX --service ID (1 task)",
            median(restarts),
            "ms",
            samples=restarts,
            note="CLI restart of the killed task",
        )

    # --- shutdown -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the daemon and its tasks, bounded; kill by pid whatever outlives that."""
        leftovers = self.daemon.shutdown()
        if self.daemon.shutdown_s is not None:
            took = self.daemon.shutdown_s
            self.daemon.shutdown_s = None
            self.add("daemon", "zsvc shutdown until the daemon exited", took, "s")
        if leftovers:
            print(f"killed task processes left behind: {leftovers}", file=sys.stderr)

    # --- the whole run -----------------------------------------------------------------------

    def main(self) -> None:
        self.write_services()
        self.warm_up()
        self.baselines()
        self.start_daemon()
        self.start_many()
        self.daemon_rss(f"daemon RSS, {self.args.tasks} tasks just started")
        self.status_cli()
        self.status_inprocess(self.tx_many, self.args.tasks, target=0.3)
        self.host_cost()
        self.host_cost_exec()
        self.status_inprocess(TX_ONE, 1, target=0.3)
        self.kill_latency()
        self.daemon_rss(f"daemon RSS, {self.args.tasks} tasks, end of run")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="zsvc core speed targets, in one run")
    parser.add_argument("--tasks", type=int, default=50, help="tasks in the big transaction")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the N-task start")
    parser.add_argument("--delay", type=float, default=0.2, help="set-up sleep of each task")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILL samples")
    parser.add_argument("--status-cli", type=int, default=20, help="zsvc status CLI samples")
    parser.add_argument("--status-calls", type=int, default=1000, help="in-process status calls")
    parser.add_argument("--host-samples", type=int, default=10, help="task host CPU samples")
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.rounds < 1 or args.kills < 1:
        parser.error("--tasks, --rounds and --kills must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    banner = "zsvc {version} bench in {work} ({cpus} CPUs)"
    kept = "daemon log: {work}/s/daemon.log"
    return run_scenario("core", parse_args(argv), Bench, banner, kept)[0]


if __name__ == "__main__":
    sys.exit(main())
