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
import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any

import psutil
import zmq

# bench/ is the script's directory, so it is on sys.path: share core.py's helpers.
from core import (
    IPC_PATH_LIMIT,
    MIB,
    SLEEP_INSTANCE,
    SLEEP_TASK,
    BenchError,
    Metric,
    add_run_options,
    cpu_seconds,
    fmt,
    is_gone,
    median,
    percentile,
    run_and_report,
    run_metadata,
    wait_gone,
    write_ini,
)
from policy import context_xml

from zsvc import __version__ as zsvc_version
from zsvc.client import BusClient, ControlClient
from zsvc.notify import NotifyServer
from zsvc.paths import RuntimeLayout

BENCH_DIR = Path(__file__).resolve().parent
PEERS_VENV = BENCH_DIR / ".peers-venv"
PEER_PACKAGES = ("circus", "supervisor")
ZSVC_RESTART = {"restart": "on-failure", "restart_sec": "0", "start_limit_burst": "1000"}
MANAGERS = ("zsvc", "circus", "supervisord")

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

# Run with the peers' own interpreter: each peer's real client library, in-process.
STATUS_PROBE = """\
import json, sys, time
kind, address, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "circus":
    from circus.client import CircusClient
    client = CircusClient(endpoint=address, timeout=10)
    call = lambda: client.call({"command": "status", "properties": {}})
else:
    import xmlrpc.client
    from supervisor.xmlrpc import SupervisorTransport
    proxy = xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, "unix://" + address))
    call = proxy.supervisor.getAllProcessInfo
reply = call()
for _ in range(50):
    call()
times = []
for _ in range(calls):
    start = time.perf_counter()
    call()
    times.append((time.perf_counter() - start) * 1e3)
print(json.dumps({"times": times, "size": len(json.dumps(reply))}))
"""


# --- the peers' virtualenv ------------------------------------------------------------------


def ensure_peers_venv(venv: Path, python: str) -> Path:
    """Create the peers' virtualenv once; the marker makes a half-made one rebuild."""
    marker = venv / ".installed"
    if marker.exists() and (venv / "bin" / "circusd").exists():
        return venv / "bin" / "python"
    print(
        f"creating {venv} with {python} and installing {' '.join(PEER_PACKAGES)}", file=sys.stderr
    )
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *PEER_PACKAGES],
        check=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    marker.write_text("\n".join(PEER_PACKAGES) + "\n")
    return venv / "bin" / "python"


def package_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json;"
        f"print(json.dumps({{p: m.version(p) for p in {list(PEER_PACKAGES)!r}}}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {}


# --- small pieces -----------------------------------------------------------------------------


class ReadyWatch:
    """The bench's own sd_notify socket: records when each pid sent READY=1 (a thread)."""

    def __init__(self, path: Path):
        self.server = NotifyServer(path)
        self.path = self.server.path
        self.ready: dict[int, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if not select.select([self.server.fileno()], [], [], 0.2)[0]:
                continue
            now = time.perf_counter()
            for note in self.server.drain():
                if not isinstance(note, Exception) and note.ready:
                    with self.lock:
                        self.ready.setdefault(note.pid, now)

    def since(self, start: float) -> dict[int, float]:
        with self.lock:
            return {pid: at for pid, at in self.ready.items() if at >= start}

    def wait_count(self, start: float, count: int, timeout: float) -> dict[int, float]:
        """The READY times of at least *count* pids since *start*, or BenchError."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.since(start)
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(seen)} of {count} tasks sent READY=1 in {timeout} s")
            time.sleep(0.002)

    def wait_pid(self, pid: int, timeout: float) -> float:
        """When *pid* sent READY=1 (perf_counter), waiting up to *timeout* s for it."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if pid in self.ready:
                    return self.ready[pid]
            if time.monotonic() > deadline:
                raise BenchError(f"pid {pid} sent no READY=1 within {timeout} s")
            time.sleep(0.002)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over supervisord's unix socket (what supervisorctl talks)."""

    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.unix_path)
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str):
        super().__init__()
        self.unix_path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self.unix_path)


def task_cpu_ms(pids: list[int]) -> float:
    """Mean CPU per task process so far, in ms.

    From /proc/PID/task/*/schedstat (run time in ns, every thread): psutil's
    cpu_times counts 10 ms ticks, which reads 0 for a 4 ms forked host. The
    time a forked child spends in the manager's code before exec is included.
    """
    values = []
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total = 0
            for thread in Path(f"/proc/{pid}/task").iterdir():
                total += int((thread / "schedstat").read_text().split()[0])
            values.append(total / 1e6)
    return sum(values) / len(values) if values else float("nan")


def new_child(parent: psutil.Process, old: set[int], timeout: float, period: float) -> int:
    """Poll (psutil only: the manager is not asked) for a child of *parent* not in *old*."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psutil.Error):
            for child in parent.children():
                if child.pid not in old and "task.py" in " ".join(child.cmdline()):
                    return child.pid
        if time.monotonic() > deadline:
            raise BenchError(f"no new child of {parent.pid} within {timeout} s")
        time.sleep(period)


def role(proc: psutil.Process) -> str:
    """A manager process's name for the notes (zsvc's processes are all called python)."""
    try:
        argv = " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
    for marker, name in (
        ("zsvc.runners.zygote", "zygote"),
        ("zsvc.daemon", "daemon"),
        ("stats.main", "circusd-stats"),
    ):
        if marker in argv:
            return name
    return proc.name()


def timed(
    argv: list[str], env: dict[str, str], timeout: float, ok: tuple[int, ...] = (0,)
) -> float:
    """Wall time of *argv* run to completion (it must exit with a code in *ok*)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
    wall = time.perf_counter() - start
    if done.returncode not in ok:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}:\n  " + "\n  ".join(tail))
    return wall


# --- the managers --------------------------------------------------------------------------------


class Manager:
    """One manager under test: started, measured through the same steps, torn down."""

    name = ""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.home = bench.work / self.name[0]
        self.home.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.main: psutil.Process | None = None
        self.owned: dict[int, psutil.Process] = {}
        self.env = dict(os.environ)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "ZSVC_ZYGOTE"):
            self.env.pop(key, None)

    # what each manager implements
    def start_manager(self) -> None: ...
    def group_start(self, n: int, variant: str) -> float: ...
    def group_stop(self, n: int, variant: str) -> float: ...
    def pids(self, n: int, variant: str) -> list[int]: ...
    def kill_one(self, n: int, variant: str) -> tuple[float, float]: ...
    def status_cli(self) -> list[str]: ...
    def status_probe(self, calls: int) -> tuple[list[float], int]: ...
    def stats_on(self) -> None: ...
    def stats_off(self) -> None: ...
    def stop_manager(self) -> None: ...

    def retire(self, n: int) -> None:
        """Drop a stopped group, so that later status replies hold only the idle group."""

    helper_marker = ""
    """Part of the command line of the manager's own child process, if it has one."""

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
        for pid in pids:
            if pid not in self.owned:
                with contextlib.suppress(psutil.Error):
                    self.owned[pid] = psutil.Process(pid)

    def spawn(self, argv: list[str], log: str) -> None:
        """Start the manager in the foreground, in a session of its own (so a group kill works)."""
        with open(self.home / log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.home, start_new_session=True,
            )  # fmt: skip
        self.main = psutil.Process(self.proc.pid)

    def teardown(self) -> None:
        """Graceful stop (bounded), then SIGKILL to its group and to everything it owned."""
        with contextlib.suppress(psutil.Error):
            for proc in self.manager_procs():
                self.owned.setdefault(proc.pid, proc)
            if self.main is not None:
                for child in self.main.children(recursive=True):
                    self.owned.setdefault(child.pid, child)
        if self.main is not None and not is_gone(self.main):
            with contextlib.suppress(Exception):
                self.stop_manager()
            if not wait_gone(self.main, 30):
                print(f"{self.name} {self.main.pid} still running: SIGKILL", file=sys.stderr)
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.proc = None  # reaped: its pid (and group id) may be reused from now on
        left = []
        for proc in self.owned.values():
            if not is_gone(proc):  # psutil checks the start time: never a reused pid
                left.append(proc.pid)
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getpgid(proc.pid) == proc.pid:  # a task's own group (setsid/setpgrp)
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.kill()
        if left:
            print(f"{self.name}: killed processes left behind: {left}", file=sys.stderr)
        self.main = None


class Zsvc(Manager):
    name = "zsvc"
    helper_marker = "zsvc.runners.zygote"  # the zygote: the forking host of Python tasks
    variants = ("cmd", "py")

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.runtime = self.home / "r"
        self.layout = RuntimeLayout(self.runtime)
        if len(str(self.layout.bus_sub)) >= IPC_PATH_LIMIT:
            raise BenchError(f"runtime dir {self.runtime} is too long for ipc sockets")
        self.env.update(ZSVC_RUNTIME_DIR=str(self.runtime), ZSVC_STATE_DIR=str(self.home / "s"))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(bench.work / "pyc")
        script = Path(sys.executable).parent / "zsvc"
        fallback = [sys.executable, "-c", "from zsvc.cli import main; main()"]
        self.cli = [str(script)] if script.exists() else fallback
        self.client: ControlClient | None = None
        self.contexts: dict[str, tuple[Path, str]] = {}
        self.bus: BusClient | None = None
        self.watcher: threading.Thread | None = None
        self.watching = threading.Event()

    def tx(self, n: int, variant: str) -> str:
        return f"{variant}{n}"

    def context(self, n: int, variant: str) -> tuple[Path, str]:
        """The context file of a group; command tasks get <command notify="true"> added."""
        tx = self.tx(n, variant)
        if tx not in self.contexts:
            ids = [f"t{i:03d}" for i in range(n)]
            text = context_xml(tx, SLEEP_INSTANCE, ids, ZSVC_RESTART, {"delay_s": self.bench.delay})
            if variant == "cmd":
                command = f'<command notify="true">{" ".join(self.bench.task_argv)}</command>'
                text = text.replace("</description>", "</description>" + command)
            path = self.home / "Conf" / f"Context-{tx}.xml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            self.contexts[tx] = (path, text)
        return self.contexts[tx]

    def start_manager(self) -> None:
        shutil.copytree(self.bench.work / "Services", self.home / "Services")
        argv = [sys.executable, "-m", "zsvc.daemon", "--detach", "--runtime-dir"]
        timed([*argv, str(self.runtime), "--state-dir", str(self.home / "s")], self.env, 60)
        done = subprocess.run(
            [*self.cli, "ping"], env=self.env, capture_output=True, text=True, timeout=30
        )
        self.main = psutil.Process(int(json.loads(done.stdout)["pid"]))
        self.client = ControlClient(self.runtime, timeout=10.0)

    def call(self, command: str, wait: float = 10.0, **args: Any) -> Any:
        assert self.client is not None
        return self.client.call(command, wait=wait, **args)

    def group_start(self, n: int, variant: str) -> float:
        path, _ = self.context(n, variant)
        argv = [*self.cli, "start", "--context", str(path), self.tx(n, variant)]
        return timed(argv, self.env, 60 + n)  # blocks until every task sent READY=1

    def pids(self, n: int, variant: str) -> list[int]:
        record = self.call("status", transaction=self.tx(n, variant))
        pids = [t["pid"] for t in record["tasks"] if t["state"] == "active" and t["pid"]]
        self.remember(pids)
        if len(pids) != n:
            raise BenchError(f"zsvc {self.tx(n, variant)}: {len(pids)} of {n} tasks active")
        return pids

    def group_stop(self, n: int, variant: str) -> float:
        wall = timed([*self.cli, "stop", self.tx(n, variant)], self.env, 60 + n)
        self.call("forget", wait=30, transaction=self.tx(n, variant))
        return wall

    def kill_one(self, n: int, variant: str) -> tuple[float, float]:
        """SIGKILL task t000, until the bus says its replacement is READY ('started')."""
        tx = self.tx(n, variant)
        if self.bus is None:
            self.bus = BusClient(
                self.layout.bus_pub_endpoint, self.layout.bus_sub_endpoint, ["control"]
            )
            self.bus.handshake(5.0)
        task = next(t for t in self.call("status", transaction=tx)["tasks"] if t["id"] == "t000")
        pid = task["pid"]
        while self.bus.sub.poll(0):
            self.bus.sub.recv_multipart()
        start = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        deadline = start + 10.0
        while True:
            message = self.bus.receive(max(0.0, deadline - time.perf_counter()))
            now = time.perf_counter()
            if message is None:
                if now >= deadline:
                    raise BenchError(f"zsvc {tx}: no replacement 'started' within 10 s")
                continue
            new_pid = message.status.get("pid") if message.action == "started" else None
            mine = message.service_id == "t000" and message.transaction == tx
            if mine and new_pid and new_pid != pid:
                self.remember([int(new_pid)])
                return now - start, now - start  # 'started' is sent at READY=1

    def status_cli(self) -> list[str]:
        return [*self.cli, "status", "--json"]

    def status_probe(self, calls: int) -> tuple[list[float], int]:
        with ControlClient(self.runtime, timeout=10.0) as client:
            reply = client.call("status")
            for _ in range(50):
                client.call("status")
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                client.call("status")
                times.append((time.perf_counter() - start) * 1e3)
        return times, len(json.dumps(reply))

    def stats_on(self) -> None:
        """One `monitor` subscriber, draining the 1 Hz samples in a thread (as the monitor CLI)."""
        monitor = BusClient(self.layout.bus_pub_endpoint, self.layout.bus_sub_endpoint, ["monitor"])
        monitor.handshake(10.0)
        self.watching.clear()
        self.samples = 0

        def drain() -> None:
            while not self.watching.is_set():
                if monitor.receive(0.2) is not None:
                    self.samples += 1
            monitor.close()

        self.watcher = threading.Thread(target=drain, daemon=True)
        self.watcher.start()
        deadline = time.monotonic() + 30
        while self.samples < 2 and time.monotonic() < deadline:  # warm-up: sampling has begun
            time.sleep(0.05)

    def stats_off(self) -> None:
        if self.watcher is not None:
            self.watching.set()
            self.watcher.join(5)
            self.watcher = None

    def stop_manager(self) -> None:
        self.stats_off()
        if self.bus is not None:
            self.bus.close()
            self.bus = None
        if self.client is not None:
            self.client.close()
            self.client = None
        subprocess.run([*self.cli, "shutdown"], env=self.env, capture_output=True, timeout=30)


class Circus(Manager):
    name = "circus"
    helper_marker = "stats.main"  # circusd-stats, while it runs (a watcher of circusd's)
    variants = ("",)

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.endpoint = f"ipc://{self.home}/ctl"
        self.stats_endpoint = f"ipc://{self.home}/stats"
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.subscriber: threading.Thread | None = None
        self.draining = threading.Event()

    def circusctl(self, *args: str) -> list[str]:
        return [str(self.bench.peer_bin / "circusctl"), "--endpoint", self.endpoint, *args]

    def start_manager(self) -> None:
        sections: dict[str, dict[str, object]] = {
            "circus": {
                "endpoint": self.endpoint,
                "pubsub_endpoint": f"ipc://{self.home}/pub",
                "stats_endpoint": self.stats_endpoint,
                "statsd": "True",
                "check_delay": self.bench.args.circus_check_delay,
            }
        }
        for n in self.bench.all_sizes:
            sections[f"watcher:w{n}"] = {
                "cmd": self.bench.task_argv[0],
                "args": " ".join(self.bench.task_argv[1:]),
                "numprocesses": n,
                "autostart": "False",
                "warmup_delay": 0,
                "graceful_timeout": 10,
            }
            sections[f"env:w{n}"] = {"NOTIFY_SOCKET": self.bench.ready.path}
        write_ini(self.home / "circus.ini", sections)
        self.spawn([str(self.bench.peer_bin / "circusd"), str(self.home / "circus.ini")], "log")
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("list", timeout=1.0)
                break
            except BenchError:
                if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                    raise BenchError(f"circusd did not answer; see {self.home / 'log'}") from None
        self.stats_off()

    def call(self, command: str, timeout: float = 10.0, **properties: Any) -> dict[str, Any]:
        """circus's protocol (what CircusClient sends): DEALER, one JSON request, one reply."""
        if self.sock is None:
            self.sock = self.ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.connect(self.endpoint)
        request = {"id": uuid.uuid4().hex, "command": command, "properties": properties}
        self.sock.send_string(json.dumps(request))
        while True:
            if not self.sock.poll(timeout * 1000):
                self.sock.close()
                self.sock = None  # a late reply must not be read as the next one's
                raise BenchError(f"circus {command}: no reply within {timeout} s")
            reply = json.loads(self.sock.recv())
            if reply.get("id") == request["id"]:
                break
        if reply.get("status") != "ok":
            raise BenchError(f"circus {command}: {reply.get('reason')}")
        return reply

    def group_start(self, n: int, variant: str) -> float:
        return timed(self.circusctl("start", f"w{n}", "--waiting"), self.env, 60 + n)

    def pids(self, n: int, variant: str) -> list[int]:
        pids = [int(p) for p in self.call("list", name=f"w{n}")["pids"]]
        self.remember(pids)
        return pids

    def group_stop(self, n: int, variant: str) -> float:
        return timed(self.circusctl("stop", f"w{n}", "--waiting"), self.env, 60 + n)

    def kill_one(self, n: int, variant: str) -> tuple[float, float]:
        """SIGKILL one process; running = a new child exists (circus: running once spawned).

        The new child is found with psutil, not by asking circusd: requests to the
        arbiter would compete with its own loop (and its global command lock).
        """
        assert self.main is not None
        before = set(self.pids(n, variant))
        start = time.perf_counter()
        os.kill(min(before), signal.SIGKILL)
        new = new_child(self.main, before, 15, self.bench.poll)
        running = time.perf_counter() - start
        self.remember([new])
        ready = self.bench.ready.wait_pid(new, 10)
        return running, ready - start

    def status_cli(self) -> list[str]:
        return self.circusctl("status")

    def status_probe(self, calls: int) -> tuple[list[float], int]:
        return self.bench.probe("circus", self.endpoint, calls)

    def stats_on(self) -> None:
        """Start circusd-stats and subscribe to its 1 Hz stream (as circus-top does)."""
        self.call("start", name="circusd-stats", waiting=True)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"stat.")
        sub.connect(self.stats_endpoint)
        self.draining.clear()
        self.samples = 0

        def drain() -> None:
            while not self.draining.is_set():
                if sub.poll(200):
                    sub.recv_multipart()
                    self.samples += 1
            sub.close()

        self.subscriber = threading.Thread(target=drain, daemon=True)
        self.subscriber.start()
        deadline = time.monotonic() + 30
        while self.samples < 2 and time.monotonic() < deadline:
            time.sleep(0.05)

    def stats_off(self) -> None:
        if self.subscriber is not None:
            self.draining.set()
            self.subscriber.join(5)
            self.subscriber = None
        self.call("stop", name="circusd-stats", waiting=True)

    def retire(self, n: int) -> None:
        self.call("rm", name=f"w{n}", waiting=True)

    def stop_manager(self) -> None:
        with contextlib.suppress(Exception):
            self.call("quit", timeout=5.0)
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Supervisord(Manager):
    name = "supervisord"
    variants = ("",)

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.sock_path = str(self.home / "sock")
        self.conf = self.home / "supervisord.conf"
        self.rpc = xmlrpc.client.ServerProxy("http://localhost", UnixTransport(self.sock_path))

    def ctl(self, *args: str) -> list[str]:
        return [str(self.bench.peer_bin / "supervisorctl"), "-c", str(self.conf), *args]

    def start_manager(self) -> None:
        supervisord: dict[str, object] = {
            "logfile": self.home / "log",
            "pidfile": self.home / "pid",
            "nodaemon": "true",
        }
        if os.getuid() == 0:
            supervisord["user"] = "root"
        sections: dict[str, dict[str, object]] = {
            "unix_http_server": {"file": self.sock_path},
            "supervisord": supervisord,
            "rpcinterface:supervisor": {
                "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
            },
            "supervisorctl": {"serverurl": f"unix://{self.sock_path}"},
        }
        for n in self.bench.all_sizes:
            sections[f"program:p{n}"] = {
                "command": " ".join(self.bench.task_argv),
                "numprocs": n,
                "process_name": "%(program_name)s_%(process_num)03d",
                "autostart": "false",
                "autorestart": "true",
                "startsecs": self.bench.args.startsecs,
                "startretries": 1000,
                "stopwaitsecs": 10,
                "stdout_logfile": "NONE",
                "stderr_logfile": "NONE",
                "environment": f'NOTIFY_SOCKET="{self.bench.ready.path}"',
            }
        write_ini(self.conf, sections)
        self.spawn([str(self.bench.peer_bin / "supervisord"), "-c", str(self.conf)], "out")
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.rpc.supervisor.getState()["statename"] == "RUNNING":
                    break
            except (OSError, xmlrpc.client.Error):
                pass
            if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"supervisord did not answer; see {self.home / 'log'}")
            time.sleep(0.05)

    def infos(self, n: int) -> list[dict[str, Any]]:
        return [i for i in self.rpc.supervisor.getAllProcessInfo() if i["group"] == f"p{n}"]

    def group_start(self, n: int, variant: str) -> float:
        return timed(self.ctl("start", f"p{n}:*"), self.env, 60 + n)  # waits for RUNNING

    def pids(self, n: int, variant: str) -> list[int]:
        pids = [i["pid"] for i in self.infos(n) if i["statename"] == "RUNNING" and i["pid"]]
        self.remember(pids)
        return pids

    def group_stop(self, n: int, variant: str) -> float:
        return timed(self.ctl("stop", f"p{n}:*"), self.env, 60 + n)

    def kill_one(self, n: int, variant: str) -> tuple[float, float]:
        """SIGKILL one process; running = the new child exists (startsecs=0) or is RUNNING.

        With startsecs=0 the new child is found with psutil alone: polling the
        XML-RPC server would wake supervisord's loop (it sleeps up to 1 s in
        poll()) and so speed up the very restart being measured. With
        startsecs > 0 only supervisord knows when it calls the process RUNNING,
        so it is polled every 10 ms from the spawn on (and that caveat applies).
        """
        assert self.main is not None
        name = f"p{n}:p{n}_000"
        victim = self.rpc.supervisor.getProcessInfo(name)["pid"]
        before = set(self.pids(n, variant))
        start = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        new = new_child(self.main, before, 15, self.bench.poll)
        self.remember([new])
        deadline = start + 15
        while self.bench.args.startsecs > 0:
            info = self.rpc.supervisor.getProcessInfo(name)
            if info["statename"] == "RUNNING" and info["pid"] == new:
                break
            if time.perf_counter() > deadline:
                raise BenchError(f"supervisord {name}: no replacement RUNNING within 15 s")
            time.sleep(0.01)
        running = time.perf_counter() - start
        ready = self.bench.ready.wait_pid(new, 10)
        return running, ready - start

    def status_cli(self) -> list[str]:
        return self.ctl("status")

    def status_probe(self, calls: int) -> tuple[list[float], int]:
        return self.bench.probe("supervisor", self.sock_path, calls)

    def stats_on(self) -> None:
        """supervisord has no resource statistics: nothing to switch on."""

    def stats_off(self) -> None:
        """supervisord has no resource statistics: nothing to switch off."""

    def retire(self, n: int) -> None:
        self.rpc.supervisor.removeProcessGroup(f"p{n}")

    def stop_manager(self) -> None:
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self.rpc.supervisor.shutdown()


# --- the run -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, peer_python: Path):
        self.args = args
        self.metrics: list[Metric] = []
        self.meta: dict[str, Any] = {}
        self.results: dict[str, dict[str, float]] = {}
        self.work = Path(tempfile.mkdtemp(prefix="zq", dir="/tmp"))
        self.peer_bin = peer_python.parent
        self.peer_python = peer_python
        self.delay = args.delay
        self.poll = args.poll / 1e3
        self.all_sizes = sorted({*args.sizes, args.idle_tasks})
        self.task_argv = [sys.executable, str(self.work / "task.py"), str(args.delay)]
        self.ready = ReadyWatch(self.work / "notify")
        self.managers: list[Manager] = []

    def add(self, section: str, label: str, value: float, unit: str, **kw: Any) -> None:
        self.metrics.append(Metric(section, label, value, unit, **kw))
        self.results.setdefault(label, {})[section] = value

    def probe(self, kind: str, address: str, calls: int) -> tuple[list[float], int]:
        """The status round trip through the peer's own client library (peers' interpreter)."""
        argv = [str(self.peer_python), str(self.work / "probe.py"), kind, address, str(calls)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"{kind} status probe failed: {done.stderr.strip()[-400:]}")
        data = json.loads(done.stdout)
        return data["times"], data["size"]

    def write_files(self) -> None:
        (self.work / "task.py").write_text(TASK_PROGRAM)
        (self.work / "probe.py").write_text(STATUS_PROBE)
        folder = self.work / "Services" / SLEEP_INSTANCE
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / f"Service{SLEEP_INSTANCE}.py").write_text(SLEEP_TASK)

    def label(self, manager: Manager, variant: str) -> str:
        if manager.name != "zsvc":
            return manager.name
        return "zsvc" if variant == "cmd" else "zsvc-py"

    def measure(self, manager: Manager) -> None:
        args = self.args
        manager.start_manager()
        self.add(
            self.label(manager, "cmd"),
            "manager RSS, idle",
            manager.main.memory_info().rss / MIB,
            "MiB",
        )
        for variant in manager.variants:
            who = self.label(manager, variant)
            for n in args.sizes:
                starts, stops, readies, cpus = [], [], [], []
                for _ in range(args.rounds):
                    launched = time.perf_counter()
                    starts.append(manager.group_start(n, variant))
                    pids = manager.pids(n, variant)
                    if len(pids) != n:
                        raise BenchError(f"{who}: {len(pids)} of {n} running after start")
                    seen = self.ready.wait_count(launched, n, 30 + n) if who[0] != "z" else {}
                    readies.append(max(seen.values()) - launched if seen else starts[-1])
                    cpus.append(task_cpu_ms(pids))
                    stops.append(manager.group_stop(n, variant))
                self.add(
                    who,
                    f"start {n}: to all running (zsvc: ready)",
                    median(starts),
                    "s",
                    samples=starts,
                )
                note = "= the row above" if who[0] == "z" else "READY=1 at the bench's socket"
                self.add(
                    who,
                    f"start {n}: to all ready",
                    median(readies),
                    "s",
                    samples=readies,
                    note=note,
                )
                self.add(
                    who,
                    f"start {n}: task CPU to ready, per task",
                    median(cpus),
                    "ms",
                    samples=cpus,
                    note="mean over the N tasks, /proc schedstat",
                )
                self.add(who, f"stop {n}: group stop", median(stops), "s", samples=stops)
                if n != args.idle_tasks:
                    manager.retire(n)  # zsvc forgot it already (group_stop)
            n = args.idle_tasks
            manager.group_start(n, variant)
            manager.pids(n, variant)
            time.sleep(1.0)  # let start-up work settle
            running, ready = [], []
            for _ in range(args.kills):
                a, b = manager.kill_one(n, variant)
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
            self.add(
                who,
                "SIGKILL -> replacement ready",
                median(ready),
                "s",
                samples=ready,
                note="= the row above" if who[0] == "z" else "READY=1 at the bench's socket",
            )
            if variant == manager.variants[0]:
                self.idle_rows(manager, who, n)
            manager.group_stop(n, variant)

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
                self.add(
                    who, f"manager RSS, {n} tasks, all its processes", sum(rss), "MiB", note=note
                )
                manager.stats_off()
        walls = []
        for _ in range(self.args.status_cli):
            walls.append(timed(manager.status_cli(), manager.env, 30, ok=(0, 3)) * 1e3)
        self.add(
            who,
            f"status CLI process ({n} tasks)",
            median(walls),
            "ms",
            samples=walls,
            note=" ".join(Path(manager.status_cli()[0]).name.split()[:1]),
        )
        times, size = manager.status_probe(self.args.status_calls)
        self.add(
            who,
            f"status in-process client ({n} tasks)",
            median(times),
            "ms",
            note=f"p90 {percentile(times, 0.9):.3f} ms; reply {size} B",
        )

    def main(self) -> None:
        self.write_files()
        warm = dict(os.environ, PYTHONPYCACHEPREFIX=str(self.work / "pyc"))
        warm.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import zsvc.task.host, zsvc.daemon.main, zsvc.cli.app,"
                " zsvc.runners.zygote, zsvc.config.loader",
            ],
            env=warm,
            timeout=120,
            check=True,
        )
        for cls in {"zsvc": Zsvc, "circus": Circus, "supervisord": Supervisord}.items():
            name, kind = cls
            if name not in self.args.managers:
                continue
            manager = kind(self)
            self.managers.append(manager)
            try:
                self.measure(manager)
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


def comparison(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """zsvc (and zsvc-py) over each peer, per metric measured for both."""
    rows = []
    for label, values in results.items():
        row: dict[str, Any] = {"metric": label, **values}
        for ours in ("zsvc", "zsvc-py"):
            for peer in ("circus", "supervisord"):
                if ours in values and peer in values and values[peer]:
                    row[f"{ours}/{peer}"] = values[ours] / values[peer]
        rows.append(row)
    return rows


def print_comparison(rows: list[dict[str, Any]], units: dict[str, str]) -> None:
    """metric | zsvc | zsvc-py | circus | supervisord | zsvc/circus | zsvc/supervisord."""
    head = ("metric", "zsvc", "zsvc-py", "circus", "supervisord", "zsvc/circus", "zsvc/superv.")
    table = [head]
    for row in rows:
        unit = units.get(row["metric"], "")
        cells = [row["metric"]]
        cells += [fmt(row[k], unit) if k in row else "-" for k in head[1:5]]
        cells += [f"{row[k]:.2f}" if k in row else "-" for k in ("zsvc/circus", "zsvc/supervisord")]
        table.append(tuple(cells))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for number, row in enumerate(table):
        print(
            "  ".join(
                [row[0].ljust(widths[0])]
                + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            )
        )
        if number == 0:
            print("-" * (sum(widths) + 2 * (len(head) - 1)))


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
    started, meta = run_metadata(args)
    meta["peers"] = package_versions(peer_python)
    bench = Bench(args, peer_python)
    print(f"zsvc {zsvc_version} vs {meta['peers']} in {bench.work}", file=sys.stderr)
    code = run_and_report(bench, args, meta, started, "peers", "manager logs in it")
    print("\nratios (below 1: zsvc ahead; zsvc = command tasks, zsvc-py = Python tasks):\n")
    print_comparison(bench.meta["comparison"], {m.label: m.unit for m in bench.metrics})
    return code


if __name__ == "__main__":
    sys.exit(main())
