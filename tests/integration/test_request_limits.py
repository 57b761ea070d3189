"""Size limits and task text against a real daemon (issue 19, findings 10 and 17).

An oversized request used to be answered with an empty request id: the
client dropped the answer, waited for its timeout (310 s for ``start``)
and blamed an unreachable daemon, exit 3. Now the refusal carries the
request's id (``bad-request``, exit 2), a context file over the limit never
leaves the CLI, and a peer over the socket's hard cap is dropped while the
daemon goes on answering.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from tests.integration.conftest import Daemon, TaskDef, wait_until
from zsvc import commands, protocol
from zsvc.paths import RuntimeLayout


def raw_call(daemon: Daemon, payload: bytes, timeout: float = 20.0) -> dict | None:
    """Send *payload* as it is on a DEALER of its own; the reply, or None after *timeout*."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(RuntimeLayout(daemon.runtime).control_endpoint)
        sock.send(payload)
        if not sock.poll(int(timeout * 1000)):
            return None
        return json.loads(sock.recv())
    finally:
        sock.close(0)
        context.term()


def test_an_oversized_request_is_refused_with_its_own_id(daemon: Daemon) -> None:
    request_id = uuid.uuid4().hex
    args = {"context_path": "/big.xml", "context_text": "x" * protocol.MAX_REQUEST_BYTES}
    started = time.monotonic()
    reply = raw_call(daemon, commands.encode_request(request_id, "start", args))
    assert reply is not None, "no answer to an oversized request"
    assert reply["id"] == request_id and reply["ok"] is False, reply
    assert reply["error"]["code"] == "bad-request"
    assert f"limit of {protocol.MAX_REQUEST_BYTES} bytes" in reply["error"]["message"]
    assert time.monotonic() - started < 10
    assert daemon.call("ping")["pid"] == daemon.pid()


def test_a_peer_over_the_hard_cap_is_dropped_and_the_daemon_answers_on(daemon: Daemon) -> None:
    payload = b" " * (protocol.MAX_REQUEST_WIRE_BYTES + 1)
    assert raw_call(daemon, payload, timeout=2.0) is None
    assert daemon.call("ping")["pid"] == daemon.pid()


def test_the_cli_refuses_a_context_over_the_limit_before_sending(
    daemon: Daemon, tmp_path: Path
) -> None:
    big = tmp_path / "big10m.xml"
    big.write_bytes(b"<Context>" + b" " * (10 << 20) + b"</Context>")
    started = time.monotonic()
    result = daemon.cli("start", "-c", str(big), "BIG", timeout=30)
    assert result.code == 2, result.stderr
    assert f"zsvc: {big}: too large" in result.stderr
    assert f"(limit {protocol.MAX_CONTEXT_BYTES} bytes)" in result.stderr
    assert "hint" not in result.stderr and time.monotonic() - started < 10
    assert daemon.cli("status", "BIG").code == 4


ESCAPES = "\x1b]0;owned\x07\x1b[31mred\x1b[0m"
NOISY_TASK = """
import os, socket, sys, time
text = {text!r}
print("out: " + text, flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(("READY=1\\nSTATUS=" + text).encode(), os.environ["NOTIFY_SOCKET"])
time.sleep(3600)
"""


def test_a_tasks_terminal_escapes_are_shown_escaped_by_status_and_logs(
    daemon: Daemon,
    make_context: Callable[..., Path],
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 17 end to end: STATUS= text and output with escapes, through a real daemon."""
    monkeypatch.setenv("COLUMNS", "250")  # rich's width off a terminal: no folded cells
    script = workdir / "noisy.py"
    script.write_text(NOISY_TASK.format(text=ESCAPES))
    task = TaskDef("noisy", command=f"python3 {script}", notify=True, location=None)
    started = daemon.cli("start", "--context", str(make_context([task])), "ESC", "--json")
    assert started.code == 0, started.stderr
    assert started.json()["tasks"][0]["status_text"] == ESCAPES  # JSON: the exact text
    for argv in (("status", "ESC"), ("status",), ("logs", "ESC")):
        shown = wait_until(
            lambda a=argv: (out := daemon.cli(*a)).code == 0 and "red" in out.stdout and out
        )
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, (argv, shown.stdout)
        assert "\\x1b]0;owned\\x07\\x1b[31mred" in shown.stdout, (argv, shown.stdout)
