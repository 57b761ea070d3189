"""A flood of TCP connections from a second user cannot abort the daemon (issue 19, finding 6).

Every connection libzmq accepts on a bus port holds a daemon fd, idle or
not, CURVE or not (it counts before the handshake). Once the fd table was
full, the next ``ipc://`` connection (a task host, ``zsvc send``) hit
libzmq's assertion (``Too many open files (src/ipc_listener.cpp:297)``) and
the daemon died. A throwaway user (``useradd``, removed at the end) opens
connections to a context's TCP pair until they are refused or time out,
some idle, some through the ZMTP greeting, and holds them while the
daemon's own user pings it, joins its ``ipc://`` bus and starts a
transaction. The daemon's limits are lowered to :data:`FD_LIMIT` once it
runs (``prlimit``), so that a flood of about a thousand connections fills
it. Once the flood ends the TCP pair serves again.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, Daemon, TaskDef, wait_until
from tests.integration.test_bus_security import settings, wildcard_context
from tests.integration.test_bus_trust import as_user, read_line
from tests.users import throwaway_user
from zsvc import curve
from zsvc.client import BusClient
from zsvc.errors import DaemonUnreachable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user, runs as it"),
]

FD_LIMIT = 1024
"""The daemon's hard (and so its soft) open-files limit: a flood of ~1,000 connections."""
FLOOD_TIMEOUT = 120.0

FLOODER = r"""
import resource, socket, struct, sys, time
host_ports = [("127.0.0.1", int(port)) for port in sys.argv[1].split(",")]
want, greet_every = int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
# A ZMTP 3.0 greeting (NULL mechanism) and a READY of a PUB socket: a peer that completes
# the handshake of a plain endpoint (and fails that of a CURVE one).
GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
BODY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 3) + b"PUB"
READY = bytes([0x04, len(BODY)]) + BODY
held, stopped = [], "enough"
deadline = time.monotonic() + 90
while len(held) < want and time.monotonic() < deadline:
    sock = socket.socket()
    sock.settimeout(3)
    try:
        sock.connect(host_ports[len(held) % len(host_ports)])
        if greet_every and len(held) % greet_every == 0:
            sock.sendall(GREETING + READY)
    except OSError as exc:
        sock.close()
        stopped = type(exc).__name__
        break
    held.append(sock)
print(f"flooding {len(held)} {stopped}", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def flooding(
    ports: str,
    wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
    host: str = "127.0.0.1",
    **popen: Any,
) -> Iterator[str]:
    """:data:`FLOODER` holding connections to *ports* (comma-separated) of *host* while the
    block runs (*wrap* runs it as another user); yields what it said once it was done
    opening them. Also the TCP control endpoint's flood (test_remote_cli.py)."""
    argv = [sys.executable, "-c", FLOODER.replace("127.0.0.1", host), ports, str(2 * FD_LIMIT)]
    flooder = subprocess.Popen(
        wrap([*argv, "3"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    try:
        said = read_line(flooder, time.monotonic() + FLOOD_TIMEOUT)
        assert said.startswith("flooding "), said
        yield said
    finally:
        assert flooder.stdin is not None
        flooder.stdin.close()
        flooder.wait(30)


def ping(daemon: Daemon) -> None:
    """The daemon answers on its control socket (or the test fails with its log's end)."""
    try:
        assert daemon.call("ping")["pid"] == daemon.pid()
    except (AssertionError, DaemonUnreachable) as exc:
        pytest.fail(f"the daemon did not answer: {exc}\n{daemon.log()[-3000:]}")


def open_tcp_bus(publishers: int, subscribers: int, keys: curve.ClientKeys | None) -> None:
    """A client on the TCP pair (its publishers' and subscribers' ports) gets its own probe
    back (bounded): the pair serves."""
    bus = BusClient(f"tcp://127.0.0.1:{publishers}", f"tcp://127.0.0.1:{subscribers}", curve=keys)
    try:
        bus.handshake(60.0)
    finally:
        bus.close()


def tcp_ports(path: Path) -> tuple[int, int]:
    """The (publishers', subscribers') ports of a context written by :func:`render_context`
    (subscribers connect to its FrontEndEndpoint)."""
    text = path.read_text()
    sub = text.split("<FrontEndEndpoint>tcp://127.0.0.1:")[1].split("<")[0]
    pub = text.split("<BackendEndpoint>tcp://127.0.0.1:")[1].split("<")[0]
    return int(pub), int(sub)


@pytest.mark.parametrize("side", ["public", "curve"])
def test_a_connection_flood_from_another_user_leaves_the_daemon_serving(
    side: str,
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    workdir: Path,
) -> None:
    keys: curve.ClientKeys | None = None
    args: list[str] = []
    if side == "curve":
        if not curve.curve_available():
            pytest.skip("libzmq without CURVE")
        curve.create(workdir / "keys", ["alice"], force=False)
        keys = curve.load_client(workdir / "keys", "alice")
        args = settings(workdir, f"[bus]\ncurve_keys = {workdir / 'keys'}\n")
        # Its FrontBind (publishers) is the first port, its BackendBind the second.
        context, publishers, subscribers = wildcard_context(workdir / "Context-secure.xml")
    else:
        context = make_context([TaskDef("t1", command="sleep 600", location=None)])
        publishers, subscribers = tcp_ports(context)
    daemon = daemons(args=args)
    resource.prlimit(daemon.pid(), resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    started = daemon.cli("start", "--context", str(context), "FLOOD0")
    assert started.code == 0, started.stderr
    open_tcp_bus(publishers, subscribers, keys)

    env = {"PATH": os.environ["PATH"], "HOME": "/"}
    ports = f"{publishers},{subscribers}"
    with (
        throwaway_user() as user,
        flooding(ports, lambda argv: as_user(user, argv), env=env, cwd="/"),
    ):
        # During the flood: the control socket, a new ipc:// bus client, a new task.
        ping(daemon)
        daemon.bus("state")
        task = TaskDef("py", location=REPO / "tests" / "tasks")
        again = daemon.cli("start", "--context", str(make_context([task])), "FLOOD1")
        assert again.code == 0, again.stderr + daemon.log()[-3000:]
        ping(daemon)
    wait_until(
        lambda: "bus connections" in daemon.log(), what="the shedding logged", log=daemon.log
    )
    # Once the flood is over, the TCP pair serves again.
    open_tcp_bus(publishers, subscribers, keys)
    ping(daemon)
