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
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

# bench/ is the script's directory, so it is on sys.path: share the other benches' helpers.
from core import (
    BenchError,
    Metric,
    add_run_options,
    context_xml,
    cpu_seconds,
    daemon_from_lock,
    is_gone,
    kill_leftovers,
    run_and_report,
    run_metadata,
    stop_daemon,
    wait_gone,
    write_ini,
    zygote_of,
)
from peers import PEERS_VENV, ensure_peers_venv, package_versions

from zsvc import __version__ as zsvc_version
from zsvc.paths import RuntimeLayout

CRASH_PROGRAM = """\
import os, sys
import zmq  # what a bus client loads first
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, b"x")
raise RuntimeError("crashloop bench: crash at start")
"""

CRASH_INSTANCE = "LoopCrash"
CRASH_TASK = '''\
"""crashloop bench task: setup() counts itself and raises."""

import os

from zsvc import Task


class ServiceLoopCrash(Task):
    def setup(self, counter: str = "", **config):
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        raise RuntimeError("crashloop bench: crash in setup()")
'''

ZSVC_FOREVER = {
    "restart": "always",
    "restart_sec": "1",
    "restart_max_sec": "1",
    "start_limit_burst": "1000000000",
    "start_limit_interval_sec": "1",
}
"""Respawn for ever about once a second, as circus (check_delay 1) and supervisord do."""


class Manager:
    """One manager under test: starts, names the processes whose CPU counts, and stops."""

    def __init__(self, bench: Bench, name: str):
        self.bench = bench
        self.name = name
        self.home = bench.work / name
        self.home.mkdir()
        self.counter = self.home / "count"
        self.tasks_seen: dict[int, psutil.Process] = {}

    def start(self) -> list[psutil.Process]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def respawns(self) -> int:
        try:
            return self.counter.stat().st_size
        except FileNotFoundError:
            return 0


class PeerManager(Manager):
    """circusd or supervisord, in the foreground, from the peers' virtualenv."""

    def __init__(self, bench: Bench, name: str, argv: Callable[[Path], list[str]]):
        super().__init__(bench, name)
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> list[psutil.Process]:
        self.proc = subprocess.Popen(
            self.argv(self.home),
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return [psutil.Process(self.proc.pid)]

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.tasks_seen.setdefault(child.pid, child)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        kill_leftovers(self.tasks_seen)


class ZsvcManager(Manager):
    """A zsvc daemon with the local runner; *python_task*: the crash as a zygote-forked task."""

    def __init__(self, bench: Bench, name: str, python_task: bool):
        super().__init__(bench, name)
        self.python_task = python_task
        self.runtime = self.home / "r"
        self.layout = RuntimeLayout(self.runtime)
        self.env = dict(os.environ, ZSVC_RUNTIME_DIR=str(self.runtime))
        self.env["ZSVC_STATE_DIR"] = str(self.home / "s")
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "ZSVC_ZYGOTE"):
            self.env.pop(key, None)
        self.daemon: psutil.Process | None = None

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "zsvc", *args]
        try:
            return subprocess.run(
                argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=True
            )
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
            raise BenchError(f"{' '.join(argv)}: {exc}") from exc

    def start(self) -> list[psutil.Process]:
        argv = [sys.executable, "-m", "zsvc.daemon", "--detach"]
        try:
            subprocess.run(argv, env=self.env, capture_output=True, timeout=60, check=True)
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
            raise BenchError(f"zsvc daemon {self.name} did not start: {exc}") from exc
        self.daemon = psutil.Process(int(json.loads(self.cli("ping").stdout)["pid"]))
        ids = [f"c{i:03d}" for i in range(self.bench.args.tasks)]
        if self.python_task:
            services = self.home / "Services" / CRASH_INSTANCE
            services.mkdir(parents=True)
            (services / "__init__.py").write_text("")
            (services / f"Service{CRASH_INSTANCE}.py").write_text(CRASH_TASK)
            conf = self.home / "Conf"
            text = context_xml("loop", CRASH_INSTANCE, ids, {"counter": self.counter}, ZSVC_FOREVER)
        else:
            conf = self.home
            command = f"{sys.executable} {self.bench.program} {self.counter}"
            text = context_xml("loop", "Crash", ids, {}, ZSVC_FOREVER, command=command)
        conf.mkdir(exist_ok=True)
        context = conf / "Context-Loop.xml"
        context.write_text(text)
        # The start fails (every task fails); the restarts go on.
        subprocess.run(
            [sys.executable, "-m", "zsvc", "start", "--context", str(context), "--keep-going", "L"],
            env=self.env,
            capture_output=True,
            timeout=120,
        )
        counted = [self.daemon]
        if self.python_task:
            zygote = zygote_of(self.daemon)
            if zygote is None:
                raise BenchError(f"zsvc daemon {self.name} has no zygote")
            counted.append(zygote)
        return counted

    def stop(self) -> None:
        daemon = self.daemon or daemon_from_lock(self.layout)
        if daemon is not None and not is_gone(daemon):
            shutdown = functools.partial(self.cli, "shutdown", timeout=60)
            stop_daemon(daemon, shutdown, self.tasks_seen)
        kill_leftovers(self.tasks_seen)


def circus_argv(bench: Bench, home: Path) -> list[str]:
    sections: dict[str, dict[str, object]] = {
        "circus": {
            "endpoint": f"ipc://{home}/ctl",
            "pubsub_endpoint": f"ipc://{home}/pub",
            "check_delay": 1,
        }
    }
    for i in range(bench.args.tasks):
        sections[f"watcher:c{i:03d}"] = {
            "cmd": f"{sys.executable} {bench.program} {home / 'count'}",
            "numprocesses": 1,
            "respawn": "True",
            "warmup_delay": 0,
            "copy_env": "True",
        }
    return [str(PEERS_VENV / "bin" / "circusd"), str(write_ini(home / "circus.ini", sections))]


def supervisord_argv(bench: Bench, home: Path) -> list[str]:
    sections: dict[str, dict[str, object]] = {
        "supervisord": {
            "nodaemon": "true",
            "logfile": f"{home}/supervisord.log",
            "pidfile": f"{home}/supervisord.pid",
            "childlogdir": home,
        },
        "unix_http_server": {"file": f"{home}/supervisor.sock"},
        "rpcinterface:supervisor": {
            "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
        },
    }
    for i in range(bench.args.tasks):
        sections[f"program:c{i:03d}"] = {
            "command": f"{sys.executable} {bench.program} {home / 'count'}",
            "autorestart": "true",
            "startsecs": 0,
            "startretries": 1000000000,
            "stdout_logfile": "NONE",
            "redirect_stderr": "true",
        }
    conf = write_ini(home / "supervisord.conf", sections)
    return [str(PEERS_VENV / "bin" / "supervisord"), "-c", str(conf)]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.metrics: list[Metric] = []
        self.meta: dict[str, Any] = {}
        self.work = Path(tempfile.mkdtemp(prefix="zcl", dir="/tmp"))
        self.program = self.work / "crash.py"
        self.managers: list[Manager] = []

    def measure(self, manager: Manager, label: str, note: str) -> None:
        """Start *manager*, let its loop settle, read CPU and respawns over the window."""
        self.managers.append(manager)
        counted = manager.start()
        deadline = time.monotonic() + 60
        while manager.respawns() < self.args.tasks:  # every task has run once
            if time.monotonic() > deadline:
                raise BenchError(f"{manager.name}: {manager.respawns()} runs within 60 s")
            time.sleep(0.1)  # polls a file's size: no event announces it
        time.sleep(self.args.warmup)  # the measured loop is the steady one
        cpu0, runs0, t0 = cpu_seconds(*counted), manager.respawns(), time.monotonic()
        main0 = cpu_seconds(*counted[:1])
        time.sleep(self.args.window)
        cpu1, runs1, t1 = cpu_seconds(*counted), manager.respawns(), time.monotonic()
        main1 = cpu_seconds(*counted[:1])
        manager.stop()
        runs, cpu, wall = runs1 - runs0, cpu1 - cpu0, t1 - t0
        if runs <= 0:
            raise BenchError(f"{manager.name}: no respawn in {wall:.1f} s")
        self.metrics.append(
            Metric(manager.name, label, cpu / runs * 1e3, "ms", note=note, samples=[runs, cpu])
        )
        if len(counted) > 1:
            self.metrics.append(
                Metric(manager.name, "  of which the daemon", (main1 - main0) / runs * 1e3, "ms")
            )
        self.metrics.append(
            Metric(
                manager.name,
                "  respawns, manager CPU",
                runs / wall,
                "/s",
                note=f"{runs} in {wall:.1f} s; {100 * cpu / wall:.1f} % of a core",
            )
        )

    def main(self) -> None:
        self.program.write_text(CRASH_PROGRAM)
        ensure_peers_venv(PEERS_VENV, self.args.peers_python)
        self.meta["peers"] = package_versions(PEERS_VENV / "bin" / "python")
        per_respawn = "manager CPU per respawn"
        self.measure(
            ZsvcManager(self, "zsvc-exec", python_task=False),
            per_respawn,
            "daemon; command task, executed",
        )
        self.measure(
            ZsvcManager(self, "zsvc-zygote", python_task=True),
            per_respawn,
            "daemon + zygote; Python task, setup() raises",
        )
        self.measure(
            PeerManager(self, "circus", functools.partial(circus_argv, self)),
            per_respawn,
            "circusd; no readiness, no state kept",
        )
        self.measure(
            PeerManager(self, "supervisord", functools.partial(supervisord_argv, self)),
            per_respawn,
            "supervisord; no readiness, no state kept",
        )

    def shutdown(self) -> None:
        for manager in self.managers:
            with contextlib.suppress(Exception):
                manager.stop()
        for manager in self.managers:
            leftovers = [p for p in manager.tasks_seen.values() if not wait_gone(p, 1)]
            if leftovers:
                print(f"{manager.name}: processes left: {leftovers}", file=sys.stderr)


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
    args = parse_args(argv)
    started, meta = run_metadata(args)
    bench = Bench(args)
    print(f"zsvc {zsvc_version} crash-loop bench in {bench.work}", file=sys.stderr)
    return run_and_report(bench, args, meta, started, "crashloop", "each manager's files")


if __name__ == "__main__":
    sys.exit(main())
