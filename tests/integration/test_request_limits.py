"""Size limits against a real daemon (issue 19, finding 10).

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
from pathlib import Path

import zmq

from tests.integration.conftest import Daemon
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
