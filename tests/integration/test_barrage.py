"""The daemon survives 10,000 random frames on each of its sockets (issue 8 part 4).

One test per socket: the control ROUTER, the publishers' (XSUB) side of the bus and
the sd_notify datagram socket. The frames come from a seeded generator
(``ZSVC_BARRAGE_SEED`` replays one): random bytes, JSON of every shape, near-valid
requests and messages with fields mutated, oversize frames, and raw bytes on the
socket file that are not ZMTP at all. After the barrage the daemon still answers
``ping`` and ``status``, its task runs on with the same pid, it holds no more fds
than before, and its log has no traceback (a bug reached by input).

No frame names the test's own transaction: a well-formed command to stop it would be
obeyed, which is not what this test is about.
"""

from __future__ import annotations

import array
import json
import os
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.integration.conftest import Daemon, TaskDef, pid_alive, wait_until
from zsvc import protocol
from zsvc.commands import COMMANDS

pytestmark = pytest.mark.integration

FRAMES = 10_000
SEED = int(os.environ.get("ZSVC_BARRAGE_SEED", random.randrange(1 << 32)))
TRANSACTION = "BARRAGE"


@pytest.fixture
def victim(daemon: Daemon, make_context: Callable[..., Path]) -> Iterator[tuple[Daemon, int]]:
    """A daemon running one task: (daemon, the task's pid)."""
    context = make_context([TaskDef("t1", command="sleep 600", location=None)])
    daemon.call(
        "start",
        transaction=TRANSACTION,
        context_path=str(context),
        context_text=context.read_text(),
    )
    pid = daemon.call("status", transaction=TRANSACTION)["tasks"][0]["pid"]
    print(f"barrage: ZSVC_BARRAGE_SEED={SEED}")
    yield daemon, pid


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def assert_unharmed(daemon: Daemon, pid: int, fds: int) -> None:
    assert daemon.call("ping")["pid"] == daemon.pid()
    task = daemon.call("status", transaction=TRANSACTION)["tasks"][0]
    assert (task["state"], task["pid"]) == ("active", pid)
    assert pid_alive(pid)
    assert {r["transaction"] for r in daemon.call("status")["transactions"]} == {TRANSACTION}
    # Connections the barrage opened are closed by now: the daemon's fds go back down.
    wait_until(lambda: open_fds(daemon.pid()) <= fds, 10.0, "the daemon's fds back to before")
    log = daemon.log()
    assert "Traceback" not in log and "internal error" not in log, log[-4000:]


# --------------------------------------------------------------------------- generators


def json_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str"] + ["list", "dict"] * (depth < 3)
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 7, 2**63, -(2**70), rng.randrange(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e-300, rng.uniform(-1e6, 1e6)])
    if kind == "str":
        return text(rng)
    if kind == "list":
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {text(rng): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def text(rng: random.Random) -> str:
    alphabet = ["a", "Z", "_", "-", "/", " ", "\n", "\x00", "é", "\udc80", "@@@", "💥", "1"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))


def to_json(value: Any) -> bytes:
    """JSON bytes; strings with lone surrogates are escaped, as a peer may send them."""
    return json.dumps(value).encode()


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 3, 17, 200, 1000]))


def odd_frame(rng: random.Random) -> bytes:
    """Bytes that are not a valid message: random, truncated, deep, huge, bad UTF-8."""
    return rng.choice(
        [
            lambda: random_bytes(rng),
            lambda: to_json(json_value(rng)),
            lambda: to_json(json_value(rng))[: rng.randrange(1, 10)],
            lambda: b"[" * 50_000,
            lambda: b'{"a": "\xff\xfe"}',
            lambda: b'{"v": 1e999999}',
            lambda: b"9" * 5000,
        ]
    )()


def control_request(rng: random.Random) -> bytes:
    """A request that is wrong in one way or another, or harmless when it is right."""
    # shutdown and reexec, when right, end this daemon's execution: not harmless.
    names = [*sorted(set(COMMANDS) - {"shutdown", "reexec"}), "nope", "", "__class__"]
    request: dict[str, Any] = {
        "v": rng.choice([1, 1, 1, 2, "1", None, True]),
        "id": rng.choice([text(rng) or "x", 5, None, ""]),
        "command": rng.choice([*names, 7, None]),
        "args": rng.choice(
            [
                {},
                None,
                [],
                json_value(rng),
                {"transaction": rng.choice(["NOPE", text(rng), 7, None, ["x"]])},
                {"transaction": "NOPE", "services": [json_value(rng)], "timeout": "soon"},
                {"context_text": "<Context>" + text(rng), "context_path": text(rng)},
                {text(rng): json_value(rng)},
            ]
        ),
    }
    for key in rng.sample(sorted(request), rng.randrange(3)):  # some keys missing
        del request[key]
    if rng.random() < 0.1:
        request[text(rng)] = json_value(rng)
    return to_json(request)


def bus_frames(rng: random.Random) -> list[bytes]:
    topics = [b"control", b"state", b"context", b"process", b"monitor", b"", b"\xff"]
    topic = rng.choice(topics) + rng.choice([b"", b"", random_bytes(rng)[:5]])
    header = {
        "action": rng.choice(["request", "start", "stop", "updated", "", "started", text(rng)]),
        "service_transaction": rng.choice(["", "NOPE", "x/y", text(rng), 7]),
        "service_id": rng.choice(["t1", "", text(rng), None]),
        "service_name": json_value(rng),
    }
    for key in rng.sample(sorted(header), rng.randrange(3)):
        del header[key]
    message = {"header": rng.choice([header, header, json_value(rng)])}
    if rng.random() < 0.7:
        message["content"] = rng.choice([{"status": json_value(rng)}, json_value(rng)])
    body = rng.choice([to_json(message), to_json(message), odd_frame(rng)])
    shape = rng.randrange(10)
    if shape == 0:
        return [topic + b" @@@ " + body]  # the seed's single frame
    if shape == 1:
        return [random_bytes(rng)]
    if shape == 2:
        return [topic, body, random_bytes(rng)]
    if shape == 3:
        return [topic, b"x" * (protocol.MAX_FRAME_BYTES + 1)] if rng.random() < 0.05 else [body]
    return [topic, body]


SENDABLE_DATAGRAM_BYTES = 128 * 1024
"""Longest datagram the barrage sends. The kernel refuses a longer one than the sender's
``SO_SNDBUF`` (208 KiB by default on Debian) with EMSGSIZE, so no task could send it;
128 KiB still overruns the daemon's 64 KiB read, so truncation is exercised."""


def notify_datagram(rng: random.Random) -> bytes:
    assignments = [
        "READY=1",
        "READY=0",
        "STOPPING=1",
        "RELOADING=1",
        "WATCHDOG=1",
        "WATCHDOG=trigger",
        "WATCHDOG_USEC=1",
        "EXTEND_TIMEOUT_USEC=99999999999999999999",
        f"MAINPID={rng.choice([1, 0, -5, os.getpid(), 2**40])}",
        f"MAINPID={text(rng)}",
        f"STATUS={text(rng)}",
        "STATUS=" + "s" * 60_000,
        f"ERRNO={rng.randrange(-5, 300)}",
        "FDSTORE=1",
        "BARRIER=1",
        text(rng),
        "=",
        "",
    ]
    if rng.random() < 0.2:
        return random_bytes(rng)
    lines = [rng.choice(assignments) for _ in range(rng.randrange(1, 5))]
    datagram = "\n".join(lines).encode("utf-8", "surrogateescape")
    return datagram[:SENDABLE_DATAGRAM_BYTES]


# --------------------------------------------------------------------------- the barrages


def control_barrage(
    endpoint: str,
    daemon_pid: int,
    raw: Callable[[bytes], None],
    prepare: Callable[[zmq.Socket], None] = lambda _: None,
) -> int:
    """Send FRAMES random control frames to *endpoint* (and bytes that are not ZMTP at all
    on a new connection, *raw*, every 500), then a ping; returns how many replies came.
    *prepare* sets the dealer's options before it connects (the TCP control endpoint's
    barrage gives it CURVE keys: tests/integration/test_remote_cli.py)."""
    rng = random.Random(SEED)
    replies = 0
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 0)
        prepare(dealer)
        dealer.connect(endpoint)
        for number in range(FRAMES):
            if number % 500 == 0:
                raw(random_bytes(rng) + b"\xff" * 10)
            frames = [control_request(rng) if rng.random() < 0.6 else odd_frame(rng)]
            if rng.random() < 0.05:
                frames = [random_bytes(rng) for _ in range(rng.randrange(0, 4))] or [b""]
            dealer.send_multipart(frames)
            while dealer.poll(0):
                dealer.recv()
                replies += 1
        # Every request before it was handled once the daemon answers this one.
        dealer.send(b'{"v":1,"id":"last","command":"ping"}')
        while True:
            assert dealer.poll(30_000), "no answer to the ping after the barrage"
            reply = json.loads(dealer.recv())
            replies += 1
            if reply.get("id") == "last":
                assert reply["ok"] and reply["result"]["pid"] == daemon_pid
                print(f"{replies} replies to {FRAMES} frames")
                return replies
    finally:
        ctx.destroy(0)


def test_control_socket_survives_random_frames(victim: tuple[Daemon, int]) -> None:
    daemon, pid = victim
    fds = open_fds(daemon.pid())
    endpoint = f"ipc://{daemon.runtime / 'control'}"

    def raw(data: bytes) -> None:  # raw bytes on the socket file, then a hang-up
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(daemon.runtime / "control"))
            sock.sendall(data)

    replies = control_barrage(endpoint, daemon.pid(), raw)
    assert replies > FRAMES // 2  # single-frame requests are each answered
    assert_unharmed(daemon, pid, fds)


def test_bus_publishers_side_survives_random_frames(victim: tuple[Daemon, int]) -> None:
    daemon, pid = victim
    listener = daemon.bus("barrage-end")
    fds = open_fds(daemon.pid())
    rng = random.Random(SEED)
    ctx = zmq.Context()
    try:
        publisher = ctx.socket(zmq.PUB)
        publisher.setsockopt(zmq.LINGER, 0)
        publisher.setsockopt(zmq.SNDHWM, 0)
        publisher.connect(f"ipc://{daemon.runtime / 'bus-pub'}")
        end = protocol.encode(protocol.make_message("barrage-end", "done"))

        def connected() -> bool:
            publisher.send_multipart(end)
            return listener.receive(0.2) is not None

        wait_until(connected, 20.0, "the publisher reached the bus")
        for number in range(FRAMES):
            if number % 500 == 0:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                    raw.connect(str(daemon.runtime / "bus-pub"))
                    raw.sendall(random_bytes(rng) + b"\x00" * 10)
            publisher.send_multipart(bus_frames(rng))
        # Messages from one publisher are forwarded in order: this one comes after all.
        publisher.send_multipart(end)
        assert listener.receive(30.0) is not None, "the bus stopped forwarding"
    finally:
        ctx.destroy(0)
    assert_unharmed(daemon, pid, fds)
    assert "ignored a bus message" in daemon.log()  # they were read, and refused


def test_notify_socket_survives_random_datagrams(victim: tuple[Daemon, int]) -> None:
    daemon, pid = victim
    fds = open_fds(daemon.pid())
    rng = random.Random(SEED)
    path = str(daemon.runtime / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(True)
        for number in range(FRAMES):
            datagram = notify_datagram(rng)
            if number % 1000 == 0:
                # Passed fds (FDSTORE=1 style): they must be closed, not leaked.
                with open(os.devnull, "rb") as handle:
                    rights = array.array("i", [handle.fileno()]).tobytes()
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)]
                    sender.sendmsg([b"FDSTORE=1"], ancillary, 0, path)
            sender.sendto(datagram, path)
    assert_unharmed(daemon, pid, fds)
