"""The daemon built whole from its parts (zsvc.daemon.server), with fakes for each part.

No socket, no process: the bus, manager, monitor and control socket are
stand-ins that record what the daemon asks of them. What is checked here is the
daemon's own logic: where a bus message goes, and how a seed context command
on the bus becomes a control command and an answer on ``state``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from zsvc import protocol
from zsvc.daemon.server import Daemon, DaemonOptions
from zsvc.errors import BadRequest, UnknownTransaction


class FakeManager:
    """Records the commands it is given; refuses transaction ``GONE``."""

    def __init__(self) -> None:
        self.transactions: dict[str, Any] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.observed: list[protocol.Message] = []

    async def _record(self, name: str, *args: Any) -> dict[str, Any]:
        self.calls.append((name, args))
        if args[0] == "GONE":
            raise UnknownTransaction("unknown transaction 'GONE'")
        return {"transaction": args[0]}

    async def start(self, *args: Any) -> dict[str, Any]:
        return await self._record("start", *args)

    async def stop(self, *args: Any) -> dict[str, Any]:
        return await self._record("stop", *args)

    async def restart(self, *args: Any) -> dict[str, Any]:
        return await self._record("restart", *args)

    def on_bus_message(self, message: protocol.Message) -> None:
        self.observed.append(message)


class FakeMonitor:
    def __init__(self) -> None:
        self.observed: list[protocol.Message] = []

    def subscriptions_changed(self, prefix: bytes) -> None:
        pass

    def on_bus_message(self, message: protocol.Message) -> bool:
        if message.action != "top":
            return False
        self.observed.append(message)
        return True


def make_daemon(tmp_path: Path, context_commands: bool = True) -> tuple[Daemon, SimpleNamespace]:
    bus = SimpleNamespace(published=[], on_message=None, on_subscription=None)
    bus.publish = bus.published.append
    runner = SimpleNamespace(name="fake", on_bus_message=lambda message: False)  # no Thread task
    daemon = Daemon(
        DaemonOptions(tmp_path / "run", tmp_path / "state", context_commands=context_commands),
        runner=runner,  # type: ignore[arg-type]
        bus=bus,  # type: ignore[arg-type]
        manager=FakeManager(),  # type: ignore[arg-type]
        monitor=FakeMonitor(),  # type: ignore[arg-type]
        control=SimpleNamespace(),  # type: ignore[arg-type]
        parts=contextlib.AsyncExitStack(),
    )
    return daemon, bus


def context_message(action: str, transaction: str = "T1", service_id: str = "") -> protocol.Message:
    return protocol.make_message(
        protocol.Topic.CONTEXT,
        action,
        transaction=transaction,
        service_id=service_id,
        service_name="context",
    )


def on_the_bus(daemon: Daemon, bus: SimpleNamespace, message: protocol.Message) -> list[Any]:
    """Hand *message* to the daemon as the bus device would; the replies published."""

    async def scenario() -> None:
        bus.on_message(message)
        async with asyncio.timeout(5.0):
            while len(daemon._jobs):  # the context command runs in a job of its own
                await asyncio.sleep(0)

    asyncio.run(scenario())
    return bus.published


def test_the_daemon_takes_over_the_bus_devices_hooks(tmp_path: Path) -> None:
    daemon, bus = make_daemon(tmp_path)
    assert bus.on_message == daemon._on_bus_message
    assert bus.on_subscription == daemon.monitor.subscriptions_changed


def test_bus_messages_go_to_the_monitor_or_the_manager(tmp_path: Path) -> None:
    daemon, bus = make_daemon(tmp_path)
    top = protocol.make_message(protocol.Topic.STATE, "top", transaction="T1")
    request = protocol.make_message(protocol.Topic.STATE, "request", transaction="T1")
    bus.on_message(top)
    bus.on_message(request)
    assert daemon.monitor.observed == [top]  # type: ignore[attr-defined]
    assert daemon.manager.observed == [request]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("action", "service_id", "expected"),
    [
        ("start", "", ("start", ("T1", None, None, [], True, None, False))),
        ("stop", "ts_1", ("stop", ("T1", ["ts_1"], None))),
        ("restart", "", ("restart", ("T1", [], None))),
    ],
)
def test_a_context_command_on_the_bus_runs_the_control_command(
    tmp_path: Path, action: str, service_id: str, expected: tuple[str, tuple[Any, ...]]
) -> None:
    daemon, bus = make_daemon(tmp_path)
    message = context_message(action, service_id=service_id)
    [reply] = on_the_bus(daemon, bus, message)
    assert daemon.manager.calls == [expected]  # type: ignore[attr-defined]
    assert (reply.topic, reply.action, reply.content) == (
        protocol.Topic.STATE,
        f"reply_{action}",
        {"result": "success"},
    )
    assert reply.transaction == "T1"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (context_message("exit"), "unknown context action 'exit'; known: start, stop, restart"),
        (context_message("reboot"), "unknown context action 'reboot'"),
        (context_message("start", transaction=""), "header.service_transaction is empty"),
        (context_message("stop", transaction="GONE"), "unknown transaction 'GONE'"),
    ],
)
def test_a_refused_context_command_is_answered_with_the_reason(
    tmp_path: Path, message: protocol.Message, error: str
) -> None:
    daemon, bus = make_daemon(tmp_path)
    [reply] = on_the_bus(daemon, bus, message)
    assert reply.content["result"] == "failure"
    assert error in reply.content["error"]["message"]


def test_context_commands_are_ignored_unless_turned_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon, bus = make_daemon(tmp_path, context_commands=False)
    assert on_the_bus(daemon, bus, context_message("stop")) == []
    assert daemon.manager.calls == []  # type: ignore[attr-defined]
    assert "ignored a 'stop' command on the bus's context topic" in caplog.text


def test_the_daemon_refuses_a_context_over_the_size_limit(tmp_path: Path) -> None:
    """Issue 19, finding 10/11: the CLI caps the file, and so does the daemon, for any client."""
    daemon, _ = make_daemon(tmp_path)
    text = "<!--" + "x" * protocol.MAX_CONTEXT_BYTES + "-->"
    with pytest.raises(BadRequest, match=r"big\.xml: too large: \d+ bytes \(limit 1048576"):
        asyncio.run(daemon.cmd_start("T", "big.xml", text, [], True, None, False))
