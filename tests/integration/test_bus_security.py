"""Who may use the bus: CURVE beyond loopback, and commands on the context topic.

Real daemons, real TCP, real CURVE handshakes: an admitted client joins and
may command (when the settings allow it), a client without keys or with
keys nobody admitted fails its handshake, which ZeroMQ reports as a socket
monitor event (awaited with a deadline, never a sleep).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from tests.integration.conftest import (
    Daemon,
    TaskDef,
    free_port,
    render_context,
    wait_message,
    wait_until,
)
from zsvc import curve, protocol
from zsvc.client import BusClient

pytestmark = pytest.mark.skipif(not curve.curve_available(), reason="libzmq without CURVE")

HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed (protocol)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "failed (auth)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
}


def wildcard_context(path: Path) -> tuple[Path, int, int]:
    """A one-task context whose bus is the seed's ``tcp://*:PORT`` pair."""
    sub_port, pub_port = free_port(), free_port()
    text = render_context([TaskDef("t1")], sub_port, pub_port, context_id="secure")
    binds = (
        f"<FrontBind>tcp://*:{sub_port}</FrontBind><BackendBind>tcp://*:{pub_port}</BackendBind>"
    )
    path.write_text(text.replace("<ContextID>", f"{binds}\n  <ContextID>"))
    return path, sub_port, pub_port


def settings(workdir: Path, text: str) -> list[str]:
    path = workdir / "zsvc.conf"
    path.write_text(text)
    return ["--config", str(path)]


def handshake_outcome(endpoint: str, keys: curve.ClientKeys | None) -> str:
    """How a SUB socket's handshake with *endpoint* ends (monitor events, 10 s deadline)."""
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + 10.0
        while (remaining := deadline - time.monotonic()) > 0:
            if monitor.poll(int(remaining * 1000)):
                event = recv_monitor_message(monitor)["event"]
                if event in HANDSHAKE_EVENTS:
                    return HANDSHAKE_EVENTS[event]
        return "no handshake within 10 s"
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()
        context.term()


def listening_hosts(pid: int, port: int) -> set[str]:
    process = psutil.Process(pid)
    connections = getattr(process, "net_connections", process.connections)(kind="tcp")
    return {c.laddr.ip for c in connections if c.status == "LISTEN" and c.laddr.port == port}


def command(bus: BusClient, action: str, transaction: str) -> protocol.Message:
    """Publish the seed's context *action* and return the daemon's reply on ``state``."""
    bus.publish(protocol.make_message("context", action, transaction=transaction))
    return wait_message(
        bus, lambda m: m.action == f"reply_{action}" and m.transaction == transaction
    )


def test_with_keys_the_wildcard_is_bound_and_only_admitted_clients_get_in(
    daemons: Callable[..., Daemon], workdir: Path
) -> None:
    keys = workdir / "keys"
    curve.create(keys, ["alice"], force=False)
    strangers = workdir / "strangers"
    curve.create(strangers, ["mallory"], force=False)
    context, sub_port, pub_port = wildcard_context(workdir / "Context-secure.xml")
    daemon = daemons(
        args=settings(workdir, f"[bus]\ncurve_keys = {keys}\ncontext_commands = yes\n")
    )
    started = daemon.cli("start", "--context", str(context), "--json")
    assert started.code == 0, started.stderr
    transaction = started.json()["transaction"]
    # As written: all interfaces, no longer narrowed to 127.0.0.1.
    assert listening_hosts(daemon.pid(), sub_port) == {"0.0.0.0"}

    alice = curve.load_client(keys, "alice")
    mallory = curve.load_client(strangers, "mallory")
    mallory = curve.ClientKeys(alice.server_public, mallory.public, mallory.secret)
    endpoint = f"tcp://127.0.0.1:{pub_port}"
    assert handshake_outcome(endpoint, alice) == "succeeded"
    # No keys at all: the mechanisms differ (libzmq reports it with or without detail).
    assert handshake_outcome(endpoint, None).startswith("failed")
    assert handshake_outcome(endpoint, mallory) == "failed (auth)"

    # Alice commands the transaction over TCP; the tasks still talk over ipc://.
    bus = BusClient(
        f"tcp://127.0.0.1:{sub_port}", endpoint, topics=["state", "control"], curve=alice
    )
    daemon.buses.append(bus)
    bus.handshake(10.0)
    reply = command(bus, "stop", transaction)
    assert reply.to_dict()["content"] == {"result": "success"}
    assert daemon.call("status", transaction=transaction)["state"] == "stopped"
    reply = command(bus, "start", transaction)
    assert reply.to_dict()["content"] == {"result": "success"}
    assert daemon.call("status", transaction=transaction)["state"] == "running"
    reply = command(bus, "reboot", transaction)
    content = reply.to_dict()["content"]
    assert content["result"] == "failure"
    assert "unknown context action 'reboot'" in content["error"]["message"]


def test_commands_on_the_context_topic_are_ignored_by_default(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    started = daemon.cli("start", "--context", str(make_context([TaskDef("t1")])), "--json")
    assert started.code == 0, started.stderr
    transaction = started.json()["transaction"]
    bus = daemon.bus("state")
    bus.publish(protocol.make_message("context", "stop", transaction=transaction))
    # One publisher, one pipe: the reply to a later request proves the stop was handled.
    bus.publish(protocol.make_message("state", "request", transaction=transaction))
    reply = wait_message(bus, lambda m: m.action == "reply_context")
    assert reply.to_dict()["content"]["state"] == "running"
    wait_until(
        lambda: "ignored a 'stop' command on the bus's context topic" in daemon.log(),
        what="the warning in the daemon's log",
    )
    # Nothing was acted on meanwhile: no stop began, the same process runs.
    task = daemon.call("status", transaction=transaction)["tasks"][0]
    assert task["state"] == "active" and task["last_action"] != "stopped"
    assert task["pid"] == started.json()["tasks"][0]["pid"]


def test_commands_on_a_bus_without_keys_refuse_tcp(
    daemons: Callable[..., Daemon], workdir: Path, make_context: Callable[..., Path]
) -> None:
    """context_commands on and no keys: a TCP pair would let any local user command."""
    daemon = daemons(args=settings(workdir, "[bus]\ncontext_commands = yes\n"))
    refused = daemon.cli("start", "--context", str(make_context([TaskDef("t1")])))
    assert refused.code == 1
    assert "without CURVE keys: context_commands is on" in refused.stderr
    assert daemon.call("ping")["pid"] == daemon.pid()


def test_a_keys_directory_that_does_not_load_stops_the_daemon_with_its_name(
    daemons: Callable[..., Daemon], workdir: Path
) -> None:
    missing = workdir / "nokeys"
    daemon = daemons(args=settings(workdir, f"[bus]\ncurve_keys = {missing}\n"), expect_ready=False)
    assert daemon.wait() == 1
    assert f"the bus's CURVE keys: {missing}/server.key_secret: no such key file" in daemon.log()
