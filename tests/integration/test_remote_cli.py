"""The CLI on another host: ``zsvc --connect tcp://HOST:PORT --keys …`` over CURVE (issue 15).

The daemon runs in this host's network namespace with ``[control] listen`` on one end of
a veth pair; the CLI runs in a network namespace of its own (``ip netns exec``), so the
requests cross a real network interface, not loopback. Without root or ``ip netns``, both
sides use loopback (the test says so in its output).

Keys: ``alice`` acts as the root user here (``act_as``), ``viewer`` is admitted but mapped
to nobody (it may read, never start), ``ops`` too, but granted control by ``[access]``,
``eve`` is a key made for this daemon's server key
but not admitted (its public key is removed from ``clients/`` before the daemon starts).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import zmq

from tests.integration.conftest import IGNORES_SIGTERM, REPO, Daemon, TaskDef, free_port, wait_until
from tests.integration.test_barrage import (
    FRAMES,
    TRANSACTION,
    assert_unharmed,
    control_barrage,
    open_fds,
    victim,  # noqa: F401  (a fixture: the one task the tests look after)
)
from tests.integration.test_connection_flood import FD_LIMIT, flooding
from tests.users import throwaway_user
from zsvc import curve

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Network:
    """Where the daemon listens, and how to run a command on the CLI's side."""

    address: str
    prefix: tuple[str, ...]
    """``ip netns exec NS`` (empty: loopback, same namespace)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """A network namespace for the CLI, joined to this one by a veth pair (root and
    ``ip netns`` needed); loopback otherwise."""
    tag = f"{os.getpid() % 100000}"
    name, host_end, ns_end = f"zsvc-rc{tag}", f"zrc{tag}h", f"zrc{tag}n"
    octet = os.getpid() % 250 + 1
    host, guest = f"10.213.{octet}.1", f"10.213.{octet}.2"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"remote CLI over loopback: no network namespace ({exc})")
        yield Network("127.0.0.1", ())
        return
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", name)
        _ip("addr", "add", f"{host}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", name, "addr", "add", f"{guest}/30", "dev", ns_end)
        _ip("-n", name, "link", "set", ns_end, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        print(f"remote CLI from network namespace {name} ({guest}) to {host}")
        yield Network(host, ("ip", "netns", "exec", name))
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_end)
        _ip("netns", "del", name)


@dataclass(frozen=True)
class Remote:
    daemon: Daemon
    endpoint: str
    keys: Path
    network: Network

    def key(self, name: str) -> str:
        return str(self.keys / curve.CLIENTS / f"{name}{curve.SECRET_SUFFIX}")

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0):
        """``zsvc ARGS`` on the CLI's side of the network; (exit status, stdout, stderr)."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith("ZSVC_")}
        # No local daemon to fall back on: a runtime directory where none listens.
        environment["ZSVC_RUNTIME_DIR"] = str(self.keys.parent / "no-daemon-here")
        environment.update(env or {})
        done = subprocess.run(
            [*self.network.prefix, sys.executable, "-m", "zsvc", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        return done.returncode, done.stdout, done.stderr

    def as_key(self, name: str, *args: str, timeout: float = 60.0):
        return self.cli(
            "--connect", self.endpoint, "--keys", self.key(name), *args, timeout=timeout
        )


@pytest.fixture
def endpoint(network: Network) -> str:
    return f"tcp://{network.address}:{free_port()}"


@pytest.fixture
def daemon(daemons: Callable[..., Daemon], workdir: Path, endpoint: str) -> Daemon:
    """A daemon with a TCP control endpoint (CURVE), the keys in *workdir*/keys (the
    barrage's ``victim`` fixture runs its one task, BARRAGE, on this daemon)."""
    keys = workdir / "keys"
    curve.create(keys, ["alice", "viewer", "ops", "eve"], force=False)
    (keys / curve.CLIENTS / f"eve{curve.PUBLIC_SUFFIX}").unlink()  # a key, not admitted
    config = workdir / "zsvc.conf"
    config.write_text(
        f"[daemon]\nrunner = local\n[bus]\ncurve_keys = {keys}\n"
        f"[control]\nlisten = {endpoint}\nact_as = alice:root\n[access]\ncontrol = key:ops\n"
    )
    return daemons(args=["--config", str(config)])


@pytest.fixture
def remote(
    request: pytest.FixtureRequest, workdir: Path, endpoint: str, network: Network
) -> Remote:
    daemon, _ = request.getfixturevalue("victim")
    return Remote(daemon, endpoint, workdir / "keys", network)


def test_an_admitted_key_drives_the_daemon(remote: Remote, make_context) -> None:
    context = make_context([TaskDef("t1", command="sleep 600", location=None)])
    code, out, err = remote.as_key("alice", "start", "-c", str(context), "REMOTE", "--json")
    assert code == 0, err
    assert json.loads(out)["tasks"][0]["state"] == "active"
    # The environment variables do the same, through the typer-free fast path too.
    env = {"ZSVC_CONNECT": remote.endpoint, "ZSVC_KEYS": remote.key("alice")}
    code, out, err = remote.cli("status", "--json", env=env)
    assert code == 0, err
    listed = {t["transaction"] for t in json.loads(out)["transactions"]}
    assert listed == {TRANSACTION, "REMOTE"}
    assert remote.as_key("alice", "stop", "REMOTE")[0] == 0
    assert remote.daemon.call("status", transaction="REMOTE")["tasks"][0]["state"] == "inactive"
    log = remote.daemon.log()
    assert "remote start from key alice (as root, uid 0)" in log
    assert "remote stop from key alice" in log


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user")
def test_a_key_mapped_to_a_user_runs_tasks_as_that_user(
    daemons: Callable[..., Daemon], workdir: Path, network: Network, make_context
) -> None:
    """``act_as = dev:USER``: the key's transaction is USER's (its owner) and its task runs
    with USER's uid (the kernel's word: the process's real uid), never root's."""
    workdir.chmod(0o711)  # the daemon's directories decide, not the test's temp dir
    keys, endpoint = workdir / "keys2", f"tcp://{network.address}:{free_port()}"
    curve.create(keys, ["dev"], force=False)
    with throwaway_user() as user:
        config = workdir / "dev.conf"
        config.write_text(
            f"[daemon]\nrunner = local\n[bus]\ncurve_keys = {keys}\n"
            f"[control]\nlisten = {endpoint}\nact_as = dev:{user.pw_name}\n"
        )
        (workdir / "dev").mkdir()
        daemon = daemons(root=workdir / "dev", args=["--config", str(config)])
        remote = Remote(daemon, endpoint, keys, network)
        context = make_context([TaskDef("t1", command="sleep 600", location=None)])
        code, out, err = remote.as_key("dev", "start", "-c", str(context), "DEV", "--json")
        assert code == 0, err + daemon.log()[-2000:]
        view = json.loads(out)
        assert view["owner"] == user.pw_name
        assert psutil.Process(view["tasks"][0]["pid"]).uids().real == user.pw_uid
        assert f"remote start from key dev (as {user.pw_name}, uid {user.pw_uid})" in daemon.log()
        assert remote.as_key("dev", "stop", "DEV")[0] == 0


def test_a_key_mapped_to_nobody_may_only_read(remote: Remote, make_context) -> None:
    code, out, err = remote.as_key("viewer", "status", "--json")
    assert code == 0, err
    assert [t["transaction"] for t in json.loads(out)["transactions"]] == [TRANSACTION]
    # Starting would run tasks as no one: refused before the owner rules, grants or not.
    context = make_context([TaskDef("t1", command="sleep 600", location=None)])
    code, _, err = remote.as_key("viewer", "start", "-c", str(context), "NOBODYS")
    assert code == 5, err
    assert "key 'viewer' acts as nobody on this host" in err
    assert "refused start from key viewer (as nobody)" in remote.daemon.log()
    # Anything else is the owner rules': it owns nothing, and nothing grants it control.
    code, _, err = remote.as_key("viewer", "stop", TRANSACTION)
    assert code == 5 and "belongs to root" in err, err
    assert remote.daemon.call("status", transaction=TRANSACTION)["tasks"][0]["state"] == "active"
    assert {t["transaction"] for t in remote.daemon.call("status")["transactions"]} == {TRANSACTION}


def test_a_granted_key_controls_and_shuts_down(remote: Remote, make_context) -> None:
    """``[access] control = key:ops``: a key acting as nobody may stop root's transaction
    and shut the daemon down; ``shutdown --wait`` returns once the daemon is gone."""
    code, _, err = remote.as_key("ops", "stop", TRANSACTION)
    assert code == 0, err
    # Root's, started locally: a task that only SIGKILL ends, 1 s after the stop's SIGTERM.
    stubborn = TaskDef("t1", command=IGNORES_SIGTERM, notify=True, location=None, stop_timeout=1)
    context = make_context([stubborn])
    remote.daemon.call(
        "start", transaction="STUBBORN", context_path=str(context), context_text=context.read_text()
    )
    code, out, err = remote.as_key("ops", "shutdown", "--wait", "--timeout", "30")
    assert (code, out.strip()) == (0, "daemon stopped"), err
    host, port = remote.endpoint.removeprefix("tcp://").rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):  # gone when --wait returns, not after
        socket.create_connection((host, int(port)), timeout=5).close()
    assert remote.daemon.wait(10) == 0
    assert "remote shutdown from key ops (as nobody)" in remote.daemon.log()


def test_what_the_control_endpoint_cannot_carry_is_said(remote: Remote) -> None:
    """The tasks' output and the bus are on the daemon's host: ``logs`` says where,
    ``monitor`` and a bus ``send`` refuse (exit 2) rather than read this host's."""
    code, out, err = remote.as_key("viewer", "logs", TRANSACTION)
    assert code == 0, err
    assert out.startswith(f"on the daemon's host ({remote.endpoint}): t1: "), out
    for argv in (["monitor", "--once"], ["send", "--service-name", "state", "--action", "x"]):
        code, _, err = remote.as_key("viewer", *argv)
        assert code == 2 and "run it on the daemon's host" in err, err


def test_an_unknown_key_fails_the_handshake(remote: Remote) -> None:
    started = time.monotonic()
    code, _, err = remote.as_key("eve", "status")
    assert code == 3, err
    assert "refused key 'eve': the CURVE handshake failed" in err
    assert time.monotonic() - started < 8.0  # at the handshake, not at the 10 s timeout
    # No key at all: the CLI says so before sending anything.
    code, _, err = remote.cli("--connect", remote.endpoint, "status")
    assert code == 2 and "needs --keys" in err, err


def test_clients_without_curve_get_nothing(remote: Remote) -> None:
    """A ZMTP client without CURVE fails its handshake; a plain TCP client is hung up on."""
    host, port = remote.endpoint.removeprefix("tcp://").rsplit(":", 1)
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        monitor = dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        dealer.connect(remote.endpoint)
        dealer.send(b'{"v":1,"id":"x","command":"status"}')
        assert monitor.poll(10_000), "no handshake failure for a NULL client"
        assert not dealer.poll(1000), "a client without CURVE got an answer"
        dealer.disable_monitor()
    finally:
        ctx.destroy(0)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        received = b""
        with contextlib.suppress(ConnectionResetError):  # a hang-up either way
            while chunk := raw.recv(4096):  # ends when the daemon hangs up (timeout: 10 s)
                received += chunk
        assert b"status" not in received
    assert remote.daemon.call("ping")["pid"] == remote.daemon.pid()


def test_tcp_control_endpoint_survives_random_frames(remote: Remote) -> None:
    """The ipc barrage's frames (tests/integration/test_barrage.py), from an admitted key
    acting as root, and raw bytes on new TCP connections every 500 frames."""
    daemon = remote.daemon
    pid = daemon.call("status", transaction=TRANSACTION)["tasks"][0]["pid"]
    fds = open_fds(daemon.pid())
    host, port = remote.endpoint.removeprefix("tcp://").rsplit(":", 1)

    def raw(data: bytes) -> None:  # not ZMTP at all, then a hang-up
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(data)

    _, keys = curve.load_remote(Path(remote.key("alice")))
    replies = control_barrage(remote.endpoint, daemon.pid(), raw, prepare=keys.apply)
    assert replies > FRAMES // 2  # the frames reached the daemon's handler, not a wall
    assert_unharmed(daemon, pid, fds)
    assert remote.as_key("alice", "ping")[0] == 0


def test_a_connection_flood_on_the_control_endpoint_is_shed(remote: Remote) -> None:
    """Connections held open on the TCP control endpoint (idle, or past a NULL greeting)
    cannot fill the daemon's fd table: past its budget the endpoint is unbound for a
    back-off (tests/integration/test_connection_flood.py's flooder, against this port),
    the local socket serves throughout, and the remote CLI works again afterwards."""
    daemon = remote.daemon
    resource.prlimit(daemon.pid(), resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    host, port = remote.endpoint.removeprefix("tcp://").rsplit(":", 1)
    with flooding(port, host=host):
        assert daemon.call("ping")["pid"] == daemon.pid()
    wait_until(lambda: "on the control side" in daemon.log(), what="the shedding logged")
    # Bound again after the back-off (1 s, doubled per flood): the CLI reaches it.
    wait_until(lambda: remote.as_key("alice", "ping")[0] == 0, 60.0, "the endpoint serving again")
