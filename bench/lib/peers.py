"""circus and supervisord as managers under test (:mod:`lib.managers`' hierarchy), and the
virtualenv they come from (``bench/.peers-venv``, git-ignored; ``pip install circus
supervisor`` from the configured index), so that they never touch zsvc's environment.

Each runs in the foreground, in a session of its own, configured by an INI file the
bench writes: the groups a scenario adds (:meth:`Spawned.add_group`: a circus watcher,
a supervisord program) and their options.
"""

from __future__ import annotations

import configparser
import contextlib
import http.client
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any

import psutil
import zmq

from lib.managers import Manager
from lib.procs import BenchError, run, time_calls
from lib.watch import Drain, ReadyWatch

PEERS_VENV = Path(__file__).resolve().parents[1] / ".peers-venv"
PEER_PACKAGES = ("circus", "supervisor")

# Run with the peers' own interpreter: each peer's real client library, in-process, timed
# by lib.procs.time_calls itself (its source is part of the script).
STATUS_PROBE = f"""\
from __future__ import annotations
import json, sys, time
kind, address, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "circus":
    from circus.client import CircusClient
    client = CircusClient(endpoint=address, timeout=10)
    call = lambda: client.call({{"command": "status", "properties": {{}}}})
else:
    import xmlrpc.client
    from supervisor.xmlrpc import SupervisorTransport
    proxy = xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, "unix://" + address))
    call = proxy.supervisor.getAllProcessInfo
{inspect.getsource(time_calls)}
times, reply = time_calls(call, calls)
print(json.dumps({{"times": times, "size": len(json.dumps(reply))}}))
"""


class _CaseKeeping(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr  # an [env:…] section's NOTIFY_SOCKET stays upper case


def write_ini(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """Write a peer manager's INI file (circus, supervisord): section → key → value.

    Values are written as they are (no interpolation: supervisord's own
    ``%(program_name)s`` must reach it), keys keep their case.
    """
    parser = _CaseKeeping(interpolation=None)
    parser.read_dict(sections)
    with path.open("w") as handle:
        parser.write(handle)
    return path


def new_child(
    parent: psutil.Process, old: set[int], marker: str, timeout: float, period: float
) -> int:
    """Poll (psutil only: the manager is not asked) for a child of *parent* not in *old*
    whose command line holds *marker*."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psutil.Error):
            for child in parent.children():
                if child.pid not in old and marker in " ".join(child.cmdline()):
                    return child.pid
        if time.monotonic() > deadline:
            raise BenchError(f"no new child of {parent.pid} within {timeout} s")
        time.sleep(period)


class Spawned(Manager):
    """A peer manager in the foreground, in a session of its own (so a group kill works),
    from the peers' virtualenv *peer_bin*."""

    def __init__(self, home: Path, peer_bin: Path, quiet: bool = False):
        """*quiet*: the manager's own output goes to /dev/null, not to a log in *home*."""
        super().__init__(home)
        self.home: Path = home
        self.peer_bin = peer_bin
        self.quiet = quiet
        self.proc: subprocess.Popen[bytes] | None = None
        self.programs: dict[str, tuple[list[str], int]] = {}
        """Per group: its program's argv and its size."""
        self.sections: dict[str, dict[str, object]] = {}
        """The INI file's, section → key → value."""

    def add_group(
        self,
        name: str,
        argv: list[str],
        size: int,
        env: dict[str, str] | None = None,
        **options: object,
    ) -> None:
        """A group: *size* processes of *argv* under *name* (a circus watcher, a supervisord
        program), with *env* and the manager's own *options* for it; before :meth:`start`."""
        self.sections.update(self.group_sections(name, argv, size, env or {}, options))
        self.programs[name] = (argv, size)

    def group_sections(
        self, name: str, argv: list[str], size: int, env: dict[str, str], options: dict[str, object]
    ) -> dict[str, dict[str, object]]:
        """The configuration sections of a group."""
        raise NotImplementedError

    def spawn(self, argv: list[str], log: str) -> None:
        with open(os.devnull if self.quiet else self.home / log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.home, start_new_session=True,
            )  # fmt: skip
        self.main = psutil.Process(self.proc.pid)

    def died(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def end_session(self) -> None:
        """SIGKILL the manager's session group, and reap the manager."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.proc = None  # reaped: its pid (and group id) may be reused from now on

    def timed(self, argv: list[str], group: str) -> float:
        return run(argv, 60 + self.programs[group][1], env=self.env).wall

    def status_probe(self, calls: int) -> tuple[list[float], int]:
        """The status round trip through the peer's own client library (peers' interpreter)."""
        script = self.home / "probe.py"
        script.write_text(STATUS_PROBE)
        kind, address = self.probe_address()
        argv = [str(self.peer_bin / "python"), str(script), kind, address, str(calls)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"{kind} status probe failed: {done.stderr.strip()[-400:]}")
        data = json.loads(done.stdout)
        return data["times"], data["size"]

    def replacement(self, before: set[int], group: str, period: float) -> int:
        """The new child that replaces a killed one (its program's script in its argv)."""
        argv = self.programs[group][0]
        marker = argv[1] if len(argv) > 1 else argv[0]
        assert self.main is not None
        new = new_child(self.main, before, marker, 15, period)
        self.remember([new])
        return new

    def kill_one(self, group: str, ready: ReadyWatch, period: float) -> tuple[float, float]:
        """SIGKILL one process; running = a new child exists (see :meth:`await_running`).

        The new child is found with psutil, not by asking the manager: requests would
        compete with its own loop, and could wake it and so speed up the very restart
        being measured.
        """
        victim, before = self.victim(group)
        start = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        new = self.replacement(before, group, period)
        self.await_running(group, new, start + 15)
        running = time.perf_counter() - start
        return running, ready.wait_pid(new, 10) - start

    def victim(self, group: str) -> tuple[int, set[int]]:
        """The process to kill, and the group's processes before the kill."""
        raise NotImplementedError

    def await_running(self, group: str, new: int, deadline: float) -> None:
        """Until the manager calls *new* running: once spawned, unless it says otherwise."""

    def probe_address(self) -> tuple[str, str]:
        """The status probe's client (``circus``, ``supervisor``) and its address."""
        raise NotImplementedError


class Circus(Spawned):
    """circusd; its groups are watchers of N processes."""

    name = "circus"
    helper_marker = "stats.main"  # circusd-stats, while it runs (a watcher of circusd's)

    def __init__(self, home: Path, peer_bin: Path, quiet: bool = False, **options: object):
        """*options*: the ``[circus]`` section's (``check_delay``; ``statsd="True"`` for
        circusd-stats, which a stats endpoint alone would start too)."""
        super().__init__(home, peer_bin, quiet)
        self.endpoint = f"ipc://{home}/ctl"
        self.stats_endpoint = f"ipc://{home}/stats"
        self.statsd = str(options.get("statsd")) == "True"
        circus: dict[str, object] = {"endpoint": self.endpoint}
        circus["pubsub_endpoint"] = f"ipc://{home}/pub"
        if self.statsd:
            circus["stats_endpoint"] = self.stats_endpoint
        self.sections["circus"] = {**circus, **options}
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.drain: Drain | None = None

    def group_sections(
        self, name: str, argv: list[str], size: int, env: dict[str, str], options: dict[str, object]
    ) -> dict[str, dict[str, object]]:
        """Watcher *name* of *size* processes (and its ``[env:…]``)."""
        watcher = {"cmd": argv[0], "args": " ".join(argv[1:]), "numprocesses": size, **options}
        return {f"watcher:{name}": watcher, **({f"env:{name}": env} if env else {})}

    def circusctl(self, *args: str) -> list[str]:
        return [str(self.peer_bin / "circusctl"), "--endpoint", self.endpoint, *args]

    def start(self) -> None:
        write_ini(self.home / "circus.ini", self.sections)
        self.spawn([str(self.peer_bin / "circusd"), str(self.home / "circus.ini")], "log")
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("list", timeout=1.0)
                break
            except BenchError:
                if time.monotonic() > deadline or self.died():
                    raise BenchError(f"circusd did not answer; see {self.home / 'log'}") from None
        if self.statsd:
            self.stats_off()  # circusd-stats runs only while measured

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

    def group_start(self, group: str) -> float:
        return self.timed(self.circusctl("start", group, "--waiting"), group)

    def group_pids(self, group: str) -> list[int]:
        pids = [int(p) for p in self.call("list", name=group)["pids"]]
        self.remember(pids)
        return pids

    def group_stop(self, group: str) -> float:
        return self.timed(self.circusctl("stop", group, "--waiting"), group)

    def victim(self, group: str) -> tuple[int, set[int]]:
        """The oldest pid of the watcher (circus: a process is running once spawned)."""
        before = set(self.group_pids(group))
        return min(before), before

    def status_cli(self) -> list[str]:
        return self.circusctl("status")

    def probe_address(self) -> tuple[str, str]:
        return "circus", self.endpoint

    def stats_on(self) -> None:
        """Start circusd-stats and subscribe to its 1 Hz stream (as circus-top does)."""
        self.call("start", name="circusd-stats", waiting=True)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"stat.")
        sub.connect(self.stats_endpoint)

        def receive(timeout: float) -> bool:
            if not sub.poll(timeout * 1000):
                return False
            sub.recv_multipart()
            return True

        self.drain = Drain(receive, sub.close)
        self.drain.wait_samples(2, 30)

    def stats_off(self) -> None:
        if self.drain is not None:
            self.drain.close()
            self.drain = None
        self.call("stop", name="circusd-stats", waiting=True)

    def retire(self, group: str) -> None:
        self.call("rm", name=group, waiting=True)

    def request_stop(self) -> None:
        try:
            self.call("quit", timeout=5.0)
        finally:
            if self.sock is not None:
                self.sock.close()
                self.sock = None


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


class Supervisord(Spawned):
    """supervisord (``-n``); its groups are programs of ``numprocs`` processes."""

    name = "supervisord"

    def __init__(self, home: Path, peer_bin: Path, quiet: bool = False):
        super().__init__(home, peer_bin, quiet)
        self.sock_path = str(home / "sock")
        self.conf = home / "supervisord.conf"
        self.rpc = xmlrpc.client.ServerProxy("http://localhost", UnixTransport(self.sock_path))
        supervisord: dict[str, object] = {"logfile": home / "log", "pidfile": home / "pid"}
        supervisord["nodaemon"] = "true"
        if os.getuid() == 0:
            supervisord["user"] = "root"
        self.sections |= {
            "unix_http_server": {"file": self.sock_path},
            "supervisord": supervisord,
            "rpcinterface:supervisor": {
                "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
            },
            "supervisorctl": {"serverurl": f"unix://{self.sock_path}"},
        }

    def group_sections(
        self, name: str, argv: list[str], size: int, env: dict[str, str], options: dict[str, object]
    ) -> dict[str, dict[str, object]]:
        """Program *name* of ``numprocs`` *size* (its environment in ``environment``)."""
        program: dict[str, object] = {"command": " ".join(argv), "numprocs": size, **options}
        if env:
            program["environment"] = ",".join(f'{key}="{value}"' for key, value in env.items())
        return {f"program:{name}": program}

    def ctl(self, *args: str) -> list[str]:
        return [str(self.peer_bin / "supervisorctl"), "-c", str(self.conf), *args]

    def start(self) -> None:
        write_ini(self.conf, self.sections)
        self.spawn([str(self.peer_bin / "supervisord"), "-c", str(self.conf)], "out")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                if self.rpc.supervisor.getState()["statename"] == "RUNNING":
                    break
            if time.monotonic() > deadline or self.died():
                raise BenchError(f"supervisord did not answer; see {self.home / 'log'}")
            time.sleep(0.05)

    def infos(self, group: str) -> list[dict[str, Any]]:
        return [i for i in self.rpc.supervisor.getAllProcessInfo() if i["group"] == group]

    def group_start(self, group: str) -> float:
        return self.timed(self.ctl("start", f"{group}:*"), group)  # waits for RUNNING

    def group_pids(self, group: str) -> list[int]:
        pids = [i["pid"] for i in self.infos(group) if i["statename"] == "RUNNING" and i["pid"]]
        self.remember(pids)
        return pids

    def group_stop(self, group: str) -> float:
        return self.timed(self.ctl("stop", f"{group}:*"), group)

    def process_name(self, group: str) -> str:
        """The group's first process, as supervisorctl names it (``group:name``)."""
        template = str(self.sections[f"program:{group}"].get("process_name", "%(program_name)s"))
        return f"{group}:{template % {'program_name': group, 'process_num': 0}}"

    def victim(self, group: str) -> tuple[int, set[int]]:
        victim = self.rpc.supervisor.getProcessInfo(self.process_name(group))["pid"]
        return victim, set(self.group_pids(group))

    def await_running(self, group: str, new: int, deadline: float) -> None:
        """With startsecs=0 the new child is running once it exists, found with psutil
        alone: polling the XML-RPC server would wake supervisord's loop (it sleeps up to
        1 s in poll()) and so speed up the very restart being measured. With startsecs > 0
        only supervisord knows when it calls the process RUNNING, so it is polled every
        10 ms from the spawn on (and that caveat applies)."""
        if int(str(self.sections[f"program:{group}"].get("startsecs", 1))) <= 0:
            return
        name = self.process_name(group)
        while True:
            info = self.rpc.supervisor.getProcessInfo(name)
            if info["statename"] == "RUNNING" and info["pid"] == new:
                return
            if time.perf_counter() > deadline:
                raise BenchError(f"supervisord {name}: no replacement RUNNING within 15 s")
            time.sleep(0.01)

    def status_cli(self) -> list[str]:
        return self.ctl("status")

    def probe_address(self) -> tuple[str, str]:
        return "supervisor", self.sock_path

    def retire(self, group: str) -> None:
        self.rpc.supervisor.removeProcessGroup(group)

    def request_stop(self) -> None:
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self.rpc.supervisor.shutdown()


# --- the peers' virtualenv ------------------------------------------------------------


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
