"""Manager CPU per respawn of a program that crashes at once: zsvc beside circus and supervisord.

    python bench/crashloop.py [--tasks 100] [--window 10] [--json out.json]

``bench/policy.py`` measures zsvc's crash loop under its default policy, which
ends at the start limit; no peer has that policy. What every manager does is
respawn, so this compares the manager's CPU per respawn, in one run, each
manager supervising ``--tasks`` copies of the same program and respawning them
for ever at its own pace:

* circusd: ``respawn = True``, no flapping plugin, ``check_delay = 1`` (its default);
* supervisord: ``autorestart = true``, ``startsecs = 0`` (an immediate exit is a
  finished run, so no BACKOFF or FATAL);
* zsvc, the program as a command task (executed, as the peers do), and the
  same crash as a Python task forked from the zygote: ``restart="always"``,
  ``restart_sec="1" restart_max_sec="1"`` (about the peers' pace) and a start
  limit too large to be reached.

The program is a Python interpreter that imports zmq, appends one byte to a
counter file and raises (for the zygote, a task whose ``setup()`` does the
same). After a warm-up of ``--warmup`` seconds, the manager's CPU (psutil,
user + system of its process; for the zygote row also of the zygote) and the
counter's growth are read over ``--window`` seconds: CPU / respawns.
circus and supervisord come from ``bench/.peers-venv`` (``bench/peers.py``
creates it). Every subprocess has a timeout; every manager is stopped, and
killed if need be, whatever happens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil
from lib.managers import Manager, Zsvc
from lib.peers import PEERS_VENV, Circus, Supervisord, ensure_peers_venv, package_versions
from lib.procs import BenchError, cpu_seconds, poll
from lib.report import Metrics, add_run_options, run_scenario
from lib.taskpkg import COUNT_CRASH, task_ids, write_context, write_task_package

CRASH_PROGRAM = """\
import os, sys
import zmq  # what a bus client loads first
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, b"x")
raise RuntimeError("crashloop bench: crash at start")
"""

ZSVC_FOREVER = {
    "restart": "always",
    "restart_sec": "1",
    "restart_max_sec": "1",
    "start_limit_burst": "1000000000",
    "start_limit_interval_sec": "1",
}
"""Respawn for ever about once a second, as circus (check_delay 1) and supervisord do."""
PER_RESPAWN = "manager CPU per respawn"


def respawns(home: Path) -> int:
    """The runs so far: each appends one byte to ``<home>/count``."""
    try:
        return (home / "count").stat().st_size
    except FileNotFoundError:
        return 0


class Bench(Metrics):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="zcl", dir="/tmp"))
        self.program = self.work / "crash.py"
        self.peer_bin = PEERS_VENV / "bin"
        self.managers: list[Manager] = []

    def argv(self, home: Path) -> list[str]:
        return [sys.executable, str(self.program), str(home / "count")]

    # --- the managers, each respawning --tasks crashing programs ------------------------------

    def zsvc(self, name: str, python_task: bool) -> tuple[Manager, list[psutil.Process]]:
        """The crash as a command task (executed), or as a Python task forked from the zygote."""
        zsvc = Zsvc(self.work / name)
        zsvc.start()
        ids, home = task_ids(self.args.tasks, "c"), zsvc.daemon.home
        context = home / "Conf" / "Context-Loop.xml"
        if python_task:
            write_task_package(home, COUNT_CRASH)
            config = {"counter": home / "count"}
            write_context(context, "loop", COUNT_CRASH, ids, config, ZSVC_FOREVER)
        else:
            command = " ".join(self.argv(home))
            write_context(context, "loop", "Crash", ids, {}, ZSVC_FOREVER, command)
        # The start fails (every task fails); the restarts go on.
        zsvc.daemon.cli(
            "start", "--context", str(context), "--keep-going", "L", timeout=120, ok=None
        )
        counted = zsvc.manager_procs()
        if python_task and len(counted) < 2:
            raise BenchError(f"zsvc daemon {name} has no zygote")
        return zsvc, counted if python_task else counted[:1]

    def circus(self) -> tuple[Manager, list[psutil.Process]]:
        """``respawn = True``, no flapping plugin, ``check_delay = 1`` (its default)."""
        circus = Circus(self.work / "circus", self.peer_bin, quiet=True, check_delay=1)
        for name in task_ids(self.args.tasks, "c"):
            circus.add_group(
                name, self.argv(circus.home), 1, respawn="True", warmup_delay=0, copy_env="True"
            )
        circus.start()
        return circus, circus.manager_procs()

    def supervisord(self) -> tuple[Manager, list[psutil.Process]]:
        """``startsecs = 0``: an immediate exit is a finished run (no BACKOFF, no FATAL)."""
        supervisord = Supervisord(self.work / "supervisord", self.peer_bin, quiet=True)
        for name in task_ids(self.args.tasks, "c"):
            supervisord.add_group(
                name, self.argv(supervisord.home), 1, autorestart="true", startsecs=0,
                startretries=1000000000, stdout_logfile="NONE", redirect_stderr="true",
            )  # fmt: skip
        supervisord.start()
        return supervisord, supervisord.manager_procs()

    # --- the measurement ---------------------------------------------------------------------

    def measure(self, started: tuple[Manager, list[psutil.Process]], note: str) -> None:
        """Let the manager's loop settle, read its CPU and the respawns over the window."""
        manager, counted = started
        self.managers.append(manager)
        assert manager.home is not None
        home = manager.home
        # Every task has run once: polls a file's size, no event announces it.
        if not poll(lambda: respawns(home) >= self.args.tasks, 60, period=0.1):
            raise BenchError(f"{manager.name}: {respawns(home)} runs within 60 s")
        time.sleep(self.args.warmup)  # the measured loop is the steady one
        cpu0, runs0, t0 = cpu_seconds(*counted), respawns(home), time.monotonic()
        main0 = cpu_seconds(*counted[:1])
        time.sleep(self.args.window)
        cpu1, runs1, t1 = cpu_seconds(*counted), respawns(home), time.monotonic()
        main1 = cpu_seconds(*counted[:1])
        manager.teardown()
        runs, cpu, wall = runs1 - runs0, cpu1 - cpu0, t1 - t0
        if runs <= 0:
            raise BenchError(f"{manager.name}: no respawn in {wall:.1f} s")
        section = home.name  # the manager, as it is named in the table: its directory
        self.add(section, PER_RESPAWN, cpu / runs * 1e3, "ms", note=note, samples=[runs, cpu])
        if len(counted) > 1:
            self.add(section, "  of which the daemon", (main1 - main0) / runs * 1e3, "ms")
        note = f"{runs} in {wall:.1f} s; {100 * cpu / wall:.1f} % of a core"
        self.add(section, "  respawns, manager CPU", runs / wall, "/s", note=note)

    def main(self) -> None:
        self.program.write_text(CRASH_PROGRAM)
        ensure_peers_venv(PEERS_VENV, self.args.peers_python)
        self.meta["peers"] = package_versions(self.peer_bin / "python")
        self.measure(self.zsvc("zsvc-exec", False), "daemon; command task, executed")
        self.measure(self.zsvc("zsvc-zygote", True), "daemon + zygote; Python task, setup() raises")
        self.measure(self.circus(), "circusd; no readiness, no state kept")
        self.measure(self.supervisord(), "supervisord; no readiness, no state kept")

    def shutdown(self) -> None:
        for manager in self.managers:
            manager.teardown()  # idempotent; reports what it had to kill


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="manager CPU per respawn, zsvc and peers")
    parser.add_argument("--tasks", type=int, default=100, help="crash-looping programs")
    parser.add_argument("--window", type=float, default=10.0, help="measured window (s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="settling time (s)")
    parser.add_argument(
        "--peers-python", default=sys.executable, help="interpreter for bench/.peers-venv"
    )
    add_run_options(parser, pyc_cache=False)
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.window <= 0 or args.warmup < 0:
        parser.error("--tasks must be at least 1, --window positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    banner = "zsvc {version} crash-loop bench in {work}"
    return run_scenario("crashloop", parse_args(argv), Bench, banner, "each manager's files")[0]


if __name__ == "__main__":
    sys.exit(main())
