"""Whom the daemon believes on the bus, tried by a real second user (issue 19, finding 2).

A root daemon binds a context's TCP pair on loopback without CURVE, which
every local user can reach. A throwaway user (``useradd``, removed at the
end) runs the attacks of the report against it: a forged ``updated`` report
for a task whose ``on_update`` trigger stops another, a ``state``/``request``
and a ``top`` asking for open files. None may work; the daemon's own user,
on the runtime directory's ``ipc://`` bus, still gets all three.

Absence is proved by order, never by waiting for nothing: the attacker's
probe comes back after its attacks (the device handled them), and it reads
until a marker the daemon's user publishes after its own ``top`` was
answered (a ``top`` answer to the attacker would have been published first).
"""

from __future__ import annotations

import json
import os
import pwd
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    REPO,
    Daemon,
    TaskDef,
    python_for_user,
    wait_message,
    wait_until,
)
from tests.users import throwaway_user
from zsvc import protocol

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user, runs as it"),
]

MARKER_TOPIC = "zsvc-test-marker"
ATTACK_TIMEOUT = 30.0

ATTACKER = r"""
import json, sys, time
import zmq
from zsvc import protocol

sub_endpoint, pub_endpoint, transaction, marker = sys.argv[1:5]
context = zmq.Context()
sub = context.socket(zmq.SUB)
pub = context.socket(zmq.PUB)
for sock in (sub, pub):
    sock.setsockopt(zmq.LINGER, 0)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sub_endpoint)
pub.connect(pub_endpoint)
deadline = time.monotonic() + 30.0
seen = []

def read_until(topic, resend=None):
    wait = 2
    while time.monotonic() < deadline:
        if resend is not None:
            pub.send_multipart(resend)
        if sub.poll(wait):
            frames = sub.recv_multipart()
            if frames[0] == topic.encode():
                return
            seen.append(frames)
        wait = min(wait * 2, 50)
    raise SystemExit(f"nothing on {topic} within 30 s")

def send(topic, action, **fields):
    pub.send_multipart(protocol.encode(protocol.make_message(topic, action, **fields)))

def probe(tag):
    topic = f"_probe.{tag}"
    read_until(topic, protocol.encode(protocol.make_message(topic, "probe")))

probe("join")
send("control", "updated", transaction=transaction, service_id="t1", service_name="t1")
send("state", "request", transaction=transaction)
wanted = {"configuration": {"opened_files": 1, "open_connections": 1}}
send("state", "top", transaction=transaction, content=wanted)
send("state", "top", content=wanted)
probe("after")
print("sent", flush=True)
read_until(marker)
report = []
for frames in seen:
    try:
        message = protocol.decode(frames)
    except protocol.ProtocolError:
        continue
    text = json.dumps(message.content)
    report.append([message.topic, message.action, "open_files" in text, "tasks" in text])
print(json.dumps(report), flush=True)
"""


def as_user(user: pwd.struct_passwd, argv: list[str], groups: bool = False) -> list[str]:
    """*argv* run as *user*: its uid and gid, and its supplementary groups only if
    *groups* (without, not even ``zsvc``)."""
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--init-groups" if groups else "--clear-groups",
        "--",
        *argv,
    ]


def attack_as(
    user: pwd.struct_passwd, sub: str, pub: str, transaction: str, groups: bool = False
) -> subprocess.Popen[str]:
    """:data:`ATTACKER` run as *user* (with its groups if *groups*) against the bus pair
    *sub*/*pub*: it prints "sent" once its messages are out, then waits for the marker."""
    python = python_for_user(user.pw_uid, user.pw_gid)
    argv = [python, "-c", ATTACKER, sub, pub, transaction, MARKER_TOPIC]
    return subprocess.Popen(
        as_user(user, argv, groups),
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": "/"},
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The next line *proc* prints, or the test fails at *deadline* with what it said."""
    assert proc.stdout is not None
    while (remaining := deadline - time.monotonic()) > 0:
        if select.select([proc.stdout], [], [], remaining)[0]:
            line = proc.stdout.readline()
            if line:
                return line.strip()
            break
    proc.kill()
    _, err = proc.communicate(timeout=10)
    pytest.fail(f"the attacker said nothing (exit {proc.returncode}):\n{err}")


def tcp_context(make_context: Callable[..., Path]) -> tuple[Path, str, str]:
    """t1 (no bus of its own) stops t2 when it reports ``updated``; the context's
    subscribers' and publishers' TCP endpoints."""
    path = make_context(
        [
            TaskDef(
                "t1", command="sleep 600", location=None, triggers={"on_update": ("stop", "t2")}
            ),
            TaskDef("t2", command="sleep 600", location=None),
        ]
    )
    text = path.read_text()
    sub_port = text.split("<FrontEndEndpoint>tcp://127.0.0.1:")[1].split("<")[0]
    pub_port = text.split("<BackendEndpoint>tcp://127.0.0.1:")[1].split("<")[0]
    # Subscribers connect to FrontEndEndpoint (the XPUB), publishers to BackendEndpoint.
    return path, f"tcp://127.0.0.1:{sub_port}", f"tcp://127.0.0.1:{pub_port}"


def task(daemon: Daemon, transaction: str, task_id: str) -> dict[str, Any]:
    tasks = daemon.call("status", transaction=transaction)["tasks"]
    return next(t for t in tasks if t["id"] == task_id)


def test_another_user_on_plain_tcp_can_neither_command_nor_read(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    path, sub_endpoint, pub_endpoint = tcp_context(make_context)
    started = daemon.cli("start", "--context", str(path), "TRUST1")
    assert started.code == 0, started.stderr
    own = daemon.bus("state", MARKER_TOPIC)
    with throwaway_user() as user:
        attacker = attack_as(user, sub_endpoint, pub_endpoint, "TRUST1")
        try:
            deadline = time.monotonic() + ATTACK_TIMEOUT
            assert read_line(attacker, deadline) == "sent"
            # (a) The forged report changed nothing: no 'updated', no trigger, t2 runs.
            assert task(daemon, "TRUST1", "t1")["last_action"] != "updated"
            assert task(daemon, "TRUST1", "t2")["state"] == "active"
            # The daemon's own user gets the record and the open files over ipc://.
            own.publish(protocol.make_message("state", "request", transaction="TRUST1"))
            record = wait_message(own, lambda m: m.action == "reply_context")
            assert {t["id"] for t in record.content["tasks"]} == {"t1", "t2"}
            wanted = {"configuration": {"opened_files": 1}}
            own.publish(protocol.make_message("state", "top", transaction="TRUST1", content=wanted))
            top = wait_message(own, lambda m: m.action == "reply_top")
            assert "open_files" in json.dumps(top.content)
            own.publish(protocol.make_message(MARKER_TOPIC, "done"))
            report = json.loads(read_line(attacker, deadline))
            assert attacker.wait(10) == 0, attacker.stderr
        finally:
            if attacker.poll() is None:
                attacker.kill()
            attacker.wait(10)
    # (b), (c): no record, no sample, no open files reached the other user.
    assert not [entry for entry in report if entry[2] or entry[3]], report
    assert not {"reply_context", "reply_top", "update"} & {entry[1] for entry in report}
    # The daemon's own user may still make it act: the same report over ipc:// fires.
    own.publish(
        protocol.make_message(
            "control", "updated", transaction="TRUST1", service_id="t1", service_name="t1"
        )
    )
    wait_until(lambda: task(daemon, "TRUST1", "t2")["state"] == "inactive", what="t2 stopped")
    assert task(daemon, "TRUST1", "t1")["last_action"] == "updated"
