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
from zsvc.daemon.access import ROOT, AccessRules, Principal
from zsvc.daemon.server import Daemon, DaemonOptions
from zsvc.daemon.settings import parse
from zsvc.errors import BadRequest, NotYours, UnknownTransaction


class FakeManager:
    """Records the commands it is given; refuses transaction ``GONE``."""

    def __init__(self) -> None:
        self.transactions: dict[str, Any] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.observed: list[protocol.Message] = []
        self.owners: list[Principal] = []

    async def _record(self, name: str, *args: Any) -> dict[str, Any]:
        self.calls.append((name, args))
        if args[0] == "GONE":
            raise UnknownTransaction("unknown transaction 'GONE'")
        return {"transaction": args[0]}

    async def start(self, *args: Any, owner: Principal) -> dict[str, Any]:
        self.owners.append(owner)
        return await self._record("start", *args)

    async def stop(self, *args: Any) -> dict[str, Any]:
        return await self._record("stop", *args)

    async def restart(self, *args: Any) -> dict[str, Any]:
        return await self._record("restart", *args)

    async def forget(self, *args: Any) -> dict[str, Any]:
        return await self._record("forget", *args)

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


def make_daemon(
    tmp_path: Path, context_commands: bool = True, access: AccessRules | None = None
) -> tuple[Daemon, SimpleNamespace]:
    bus = SimpleNamespace(published=[], on_message=None, on_subscription=None)
    bus.publish = bus.published.append
    runner = SimpleNamespace(name="fake", on_bus_message=lambda message: False)  # no Thread task
    daemon = Daemon(
        DaemonOptions(
            tmp_path / "run",
            tmp_path / "state",
            context_commands=context_commands,
            access=access or AccessRules(),
        ),
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
        asyncio.run(daemon.cmd_start("T", "big.xml", text, [], True, None, False, principal=ROOT))


# --- who may do what (issue 15) -----------------------------------------------------------

ALICE = Principal(1001, 1001, "alice")
BOB = Principal(1002, 1002, "bob")


def owned_by(daemon: Daemon, owner: Principal, transaction: str = "T1") -> None:
    daemon.manager.transactions[transaction] = SimpleNamespace(id=transaction, owner=owner)


@pytest.mark.parametrize(
    ("command", "args", "verb"),
    [
        ("stop", {"transaction": "T1", "services": [], "timeout": None}, "stop"),
        ("restart", {"transaction": "T1", "services": [], "timeout": None}, "restart"),
        ("forget", {"transaction": "T1"}, "forget"),
        (
            "start",
            dict(
                transaction="T1",
                context_path=None,
                context_text=None,
                services=[],
                block=True,
                timeout=None,
                keep_going=False,
            ),
            "start",
        ),
    ],
)
def test_only_the_owner_or_root_controls_a_transaction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, command: str, args: dict, verb: str
) -> None:
    daemon, _ = make_daemon(tmp_path)
    owned_by(daemon, ALICE)
    with pytest.raises(NotYours) as refused:
        asyncio.run(daemon.call(command, args, BOB))
    assert refused.value.message == (
        f"transaction T1 belongs to alice; only alice, root, or a grant in /etc/zsvc/zsvc.conf"
        f" [access] may {verb} it"
    )
    assert refused.value.exit_code == 5
    assert f"refused: bob (uid 1002) asked to {verb} transaction T1, which belongs to alice" in (
        caplog.text
    )
    assert daemon.manager.calls == []  # type: ignore[attr-defined]


def test_the_owner_root_and_a_grant_control_it(tmp_path: Path) -> None:
    stop = {"transaction": "T1", "services": [], "timeout": None}
    granted = parse("[access]\ncontrol.T* = user:bob\n", "z.conf").access
    daemon, _ = make_daemon(tmp_path, access=granted)
    owned_by(daemon, ALICE)
    for who in (ALICE, ROOT, BOB):
        asyncio.run(daemon.call("stop", stop, who))
    assert len(daemon.manager.calls) == 3  # type: ignore[attr-defined]


def test_a_new_transaction_is_the_callers(tmp_path: Path) -> None:
    daemon, _ = make_daemon(tmp_path)
    asyncio.run(daemon.cmd_start("T2", None, None, [], True, None, False, principal=BOB))
    assert daemon.manager.owners == [BOB]  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["shutdown", "reexec"])
def test_shutdown_and_reexec_are_roots_or_the_plain_control_grant(
    tmp_path: Path, command: str
) -> None:
    daemon, _ = make_daemon(tmp_path)
    with pytest.raises(NotYours, match="only root, or a plain 'control' grant"):
        asyncio.run(daemon.call(command, {}, ALICE))
    assert not daemon.stopped.is_set()
    granted = parse("[access]\ncontrol = user:alice\n", "z.conf").access
    daemon, _ = make_daemon(tmp_path, access=granted)
    asyncio.run(daemon.call("shutdown", {}, ALICE))
    assert daemon.stopped.is_set()


def test_context_commands_on_the_bus_act_on_roots_transactions_only(tmp_path: Path) -> None:
    """The bus does not say who published: a member must not stop another's that way."""
    daemon, bus = make_daemon(tmp_path)
    owned_by(daemon, ALICE)
    owned_by(daemon, ROOT, "T2")
    refused = on_the_bus(daemon, bus, context_message("stop"))
    assert refused[0].content["result"] == "failure"
    assert refused[0].content["error"]["code"] == "not-yours"
    assert (
        "belongs to alice: context commands from the bus" in refused[0].content["error"]["message"]
    )
    done = on_the_bus(daemon, bus, context_message("stop", transaction="T2"))[-1]
    assert done.content == {"result": "success"}
    assert daemon.manager.calls == [("stop", ("T2", [], None))]  # type: ignore[attr-defined]
