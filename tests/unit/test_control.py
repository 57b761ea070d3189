"""The daemon's control socket (zsvc.daemon.control): one reply per request, whatever happens.

A real ROUTER socket under a temporary runtime directory and a DEALER client in
the same event loop; the handler is a plain coroutine, no daemon behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from zsvc.commands import encode_request
from zsvc.daemon.access import Principal
from zsvc.daemon.control import UNKNOWN_SENDER, ControlServer, Handler, peer_credentials
from zsvc.errors import ErrorCode, UnknownTransaction
from zsvc.paths import RuntimeLayout

WAIT = 5.0


def serve(
    tmp_path: Path,
    handler: Handler,
    scenario: Callable[..., Awaitable[None]],
    server_class: Callable[..., ControlServer] = ControlServer,
) -> None:
    """Run *scenario(server, ask)* against a started server; everything is closed after."""

    async def main() -> None:
        context = zmq.asyncio.Context()
        server = server_class(context, RuntimeLayout(tmp_path))
        server.start(handler)
        client = context.socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(RuntimeLayout(tmp_path).control_endpoint)

        async def ask(request_id: str, command: str, **args: Any) -> dict[str, Any]:
            await client.send(encode_request(request_id, command, args))
            return json.loads(await asyncio.wait_for(client.recv(), WAIT))

        try:
            await scenario(server, ask)
        finally:
            client.close()
            await server.close()
            context.term()

    asyncio.run(main())


def test_a_request_gets_the_handlers_result_and_the_socket_is_group_only(tmp_path: Path) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    senders: list[Principal] = []

    async def handler(name: str, args: dict[str, Any], principal: Principal) -> Any:
        calls.append((name, args))
        senders.append(principal)
        return {"transactions": []}

    async def scenario(server: ControlServer, ask: Any) -> None:
        assert stat.S_IMODE((tmp_path / "control").stat().st_mode) == 0o660
        reply = await ask("r1", "status", transaction="T1")
        assert reply == {"v": 1, "id": "r1", "ok": True, "result": {"transactions": []}}

    serve(tmp_path, handler, scenario)
    assert calls == [("status", {"transaction": "T1"})]
    # Who asked comes from the kernel (SO_PEERCRED through libzmq), not from the message.
    assert [(p.uid, p.gid, p.key) for p in senders] == [(os.getuid(), os.getgid(), None)]
    assert not (tmp_path / "control").exists()  # closing removes the socket file


def test_a_request_whose_sender_is_unknown_is_refused_before_the_handler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No credentials, no command: the server answers not-yours and logs it."""

    async def handler(name: str, args: dict[str, Any], principal: Principal) -> Any:
        raise AssertionError("called")

    def anonymous(context: zmq.asyncio.Context, runtime: RuntimeLayout) -> ControlServer:
        return ControlServer(context, runtime, identify=lambda frame: None)

    async def scenario(server: ControlServer, ask: Any) -> None:
        reply = await ask("r1", "stop", transaction="T1", services=[], timeout=None)
        assert reply["error"] == {"code": ErrorCode.NOT_YOURS, "message": UNKNOWN_SENDER}

    serve(tmp_path, handler, scenario, anonymous)
    assert "refused a control request (stop) from an unknown sender" in caplog.text


def test_peer_credentials_are_none_without_an_ipc_peer() -> None:
    """A frame made here, and one received over TCP, carry no uid: no principal."""
    assert peer_credentials(zmq.Frame(b"{}")) is None
    context = zmq.Context()
    server, client = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"{}")
        assert server.poll(WAIT * 1000)
        _, payload = server.recv_multipart(copy=False)
        assert payload.get("Peer-Address") == "127.0.0.1"
        assert peer_credentials(payload) is None
    finally:
        server.close(0)
        client.close(0)
        context.term()


def test_a_refusal_and_a_bug_are_both_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(name: str, args: dict[str, Any], principal: Principal) -> Any:
        if name == "stop":
            raise UnknownTransaction("unknown transaction 'T9'")
        raise KeyError("a bug")

    async def scenario(server: ControlServer, ask: Any) -> None:
        refused = await ask("r1", "stop", transaction="T9")
        assert refused["error"]["code"] == ErrorCode.UNKNOWN_TRANSACTION
        broken = await ask("r2", "ping")
        assert broken["error"]["code"] == ErrorCode.INTERNAL
        assert "internal error: KeyError('a bug')" in broken["error"]["message"]

    serve(tmp_path, handler, scenario)
    assert "internal error in ping" in caplog.text


def test_a_bad_request_never_reaches_the_handler(tmp_path: Path) -> None:
    async def handler(name: str, args: dict[str, Any], principal: Principal) -> Any:
        raise AssertionError("called")

    async def scenario(server: ControlServer, ask: Any) -> None:
        reply = await ask("r1", "reboot")
        assert (reply["id"], reply["error"]["code"]) == ("r1", ErrorCode.BAD_REQUEST)

    serve(tmp_path, handler, scenario)


def test_a_slow_command_does_not_hold_up_the_next(tmp_path: Path) -> None:
    """Each request runs in a job of its own: a blocking start leaves status answering."""
    release = asyncio.Event()

    async def handler(name: str, args: dict[str, Any], principal: Principal) -> Any:
        if name == "start":
            await release.wait()
        return name

    async def scenario(server: ControlServer, ask: Any) -> None:
        slow = asyncio.ensure_future(ask("r1", "start", transaction="T1"))
        assert (await ask("r2", "status"))["result"] == "status"
        assert not slow.done()
        release.set()
        assert (await slow)["result"] == "start"

    serve(tmp_path, handler, scenario)


def test_closing_answers_the_requests_in_flight(tmp_path: Path) -> None:
    """A client waiting on a start hears that the daemon stopped, rather than nothing."""
    started = asyncio.Event()

    async def handler(name: str, args: dict[str, Any], principal: Principal) -> Any:
        started.set()
        await asyncio.sleep(3600)

    async def scenario(server: ControlServer, ask: Any) -> None:
        waiting = asyncio.ensure_future(ask("r1", "start", transaction="T1"))
        await asyncio.wait_for(started.wait(), WAIT)
        await server.close()
        reply = await waiting
        assert reply["error"]["message"] == "the daemon stopped before the command finished"

    serve(tmp_path, handler, scenario)
