"""The daemon's Manager against a fake runner: every command and every runner event.

No process is started: :class:`tests.unit.fake_runner.FakeRunner` records what
the manager asks and emits the events a test tells it to (ready, status,
stopping, main pid, exit). The rest is real: contexts from the real loader,
the transaction table in SQLite (read back through a second connection), the
launch specs, the restart-policy engine and, for Thread tasks, the real
:class:`~zsvc.runners.threads.ThreadRunner` wrapping the fake, fed its
hosts' reports as the bus would. The integration tier keeps the proof with
real processes; these run in milliseconds.

Each test is one ``asyncio.run`` bounded by :data:`TEST_LIMIT`; every wait
inside is bounded too, and none sleeps to synchronise: a test waits for a
runner call (:meth:`FakeRunner.wait_for`), a bus message
(:meth:`Published.wait_for`), or for the manager's background work to end
(:func:`settle`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import TaskDef, render_context
from tests.unit.fake_runner import (
    CRASHED,
    EXITED,
    HOLD,
    STOP_TIMED_OUT,
    WAIT,
    FakeRunner,
    fake_pid,
)
from zsvc import protocol
from zsvc.config.loader import load_context_text
from zsvc.config.model import Context
from zsvc.daemon.access import Principal
from zsvc.daemon.manager import Manager
from zsvc.daemon.table import Table, TaskRow
from zsvc.errors import (
    BadRequest,
    ErrorCode,
    OperationFailed,
    StorageError,
    UnknownTask,
    UnknownTransaction,
    ZsvcError,
)
from zsvc.hostwire import ORDER_KEY, ORDER_START, ORDER_STOP, REPORT_ACTION, THREAD_HOST_ID, Event
from zsvc.paths import RuntimeLayout, StateLayout
from zsvc.runners.base import ExitInfo, Runner
from zsvc.runners.threads import ThreadRunner
from zsvc.states import LastAction, Result

TX = "T"
TEST_LIMIT = 10.0
"""Seconds one test may take at most (each takes milliseconds)."""

Task = dict[str, Any]


def key(task_id: str, transaction: str = TX) -> tuple[str, str]:
    return (transaction, task_id)


# --------------------------------------------------------------------------- the rig


class Published(list[protocol.Message]):
    """The bus, as the manager sees it: what it publishes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def __call__(self, message: protocol.Message) -> None:
        self.append(message)
        self._changed.set()

    def events(self, task_id: str) -> list[str]:
        """The seed's task events (``control`` started/failed/…) published for *task_id*."""
        words = {str(action) for action in LastAction}
        return [
            m.action
            for m in self
            if m.topic == protocol.Topic.CONTROL and m.service_id == task_id and m.action in words
        ]

    def last_event(self, task_id: str) -> protocol.Message:
        words = {str(action) for action in LastAction}
        return [
            m
            for m in self
            if m.topic == protocol.Topic.CONTROL and m.service_id == task_id and m.action in words
        ][-1]

    def orders(self, task_id: str, action: str) -> list[protocol.Message]:
        """The thread runner's orders to a thread host about *task_id*."""
        return [
            m
            for m in self
            if m.topic == protocol.Topic.PROCESS and m.service_id == task_id and m.action == action
        ]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Rig:
    """A manager with a fake runner (wrapped in a ThreadRunner for Thread tasks)."""

    tmp: Path
    fake: FakeRunner
    runner: Runner
    manager: Manager
    table: Table
    published: Published
    runtime: RuntimeLayout
    state: StateLayout
    contexts: list[Path] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        tmp: Path,
        *,
        threaded: bool = False,
        auto_ready: bool = False,
        fake: FakeRunner | None = None,
    ) -> Rig:
        """As the daemon builds it (zsvc.daemon.startup): table, runner, manager, open."""
        runtime, state = RuntimeLayout(tmp / "run"), StateLayout(tmp / "state")
        runtime.root.mkdir(exist_ok=True)
        table = Table(state.database)
        published = Published()
        fake = fake or FakeRunner(auto_ready=auto_ready)
        runner: Runner = ThreadRunner(fake, published) if threaded else fake
        manager = Manager(runner, table, published, runtime, state)
        await runner.open(manager)
        return cls(tmp, fake, runner, manager, table, published, runtime, state)

    async def close(self) -> None:
        await self.manager.jobs.cancel_all()
        if isinstance(self.runner, ThreadRunner):
            await self.runner.jobs.cancel_all()
        self.table.close()

    def context(self, tasks: Sequence[TaskDef], thread_ids: Sequence[str] = ()) -> Context:
        """A context file of *tasks* (those in *thread_ids* are Thread tasks), loaded."""
        return load_context_text(*self.context_text(tasks, thread_ids))

    def context_text(
        self, tasks: Sequence[TaskDef], thread_ids: Sequence[str] = ()
    ) -> tuple[str, Path]:
        text = render_context(list(tasks), 5501, 5502)  # nothing binds: any ports do
        for task_id in thread_ids:
            pattern = rf'(<TaskService id="{task_id}" [^>]*?)serviceType="Process"'
            text, count = re.subn(pattern, r'\1serviceType="Thread"', text)
            assert count == 1, task_id
        path = self.tmp / f"Context-{len(self.contexts)}.xml"
        path.write_text(text)
        self.contexts.append(path)
        return text, path

    async def start(
        self,
        tasks: Sequence[TaskDef] | None = None,
        *,
        transaction: str | None = TX,
        services: Sequence[str] = (),
        block: bool = True,
        timeout: float | None = None,
        keep_going: bool = False,
        thread_ids: Sequence[str] = (),
    ) -> dict[str, Any]:
        """``zsvc start``: of a new transaction of *tasks*, or of a known one (tasks None)."""
        context = text = None
        if tasks is not None:
            text, path = self.context_text(tasks, thread_ids)
            context = load_context_text(text, path)
        return await self.manager.start(
            transaction, context, text, list(services), block, timeout, keep_going
        )

    def starting(self, tasks: Sequence[TaskDef] | None = None, **options: Any) -> asyncio.Task:
        """A blocking start in the background: the test drives its tasks meanwhile."""
        return asyncio.create_task(self.start(tasks, **options))

    def stopping(self, services: Sequence[str] = (), **options: Any) -> asyncio.Task:
        return asyncio.create_task(self.manager.stop(TX, list(services), None, **options))

    def status(self, transaction: str = TX) -> dict[str, Any]:
        """``zsvc status --json`` of one transaction, decoded."""
        return json.loads(self.manager.status(transaction))

    def task(self, task_id: str, transaction: str = TX) -> Task:
        return {t["id"]: t for t in self.status(transaction)["tasks"]}[task_id]

    def stored(self, transaction: str = TX) -> dict[str, TaskRow]:
        """The table's rows, read back through a connection of their own."""
        table = Table(self.state.database)
        try:
            return {row.task_id: row for row in table.tasks(transaction)}
        finally:
            table.close()

    def stored_transactions(self) -> list[tuple[str, bool]]:
        """The table's transactions and whether each is stopping, read back."""
        table = Table(self.state.database)
        try:
            return [(row.id, row.stopping) for row in table.transactions()]
        finally:
            table.close()


def scenario(*, threaded: bool = False, auto_ready: bool = False) -> Callable:
    """Turn ``async def test_x(rig, <fixtures>)`` into a test run in its own event loop."""

    def wrap(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
        @functools.wraps(body)
        def test(tmp_path: Path, **fixtures: Any) -> None:
            async def main() -> None:
                async with asyncio.timeout(TEST_LIMIT):
                    rig = await Rig.open(tmp_path, threaded=threaded, auto_ready=auto_ready)
                    try:
                        await body(rig, **fixtures)
                    finally:
                        await rig.close()

            asyncio.run(main())

        others = [p for name, p in inspect.signature(body).parameters.items() if name != "rig"]
        tmp = inspect.Parameter("tmp_path", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        test.__signature__ = inspect.Signature([tmp, *others])  # type: ignore[attr-defined]
        del test.__wrapped__  # type: ignore[attr-defined]  # pytest reads __signature__
        return test

    return wrap


async def settle(*pending: asyncio.Task, timeout: float = WAIT) -> None:
    """Let the background work (triggers, restarts, stops) run until none is left; bounded.

    Yields to the loop so that due callbacks (a restart timer of 0 s) spawn
    their jobs, then waits for every other task of the loop to end, until a
    pass finds none; *pending* are tasks the test knows still wait (a blocking
    start waiting for readiness). Use it before asserting that something did
    *not* happen.
    """
    skip = {asyncio.current_task(), *pending}
    async with asyncio.timeout(timeout):
        while True:
            for _ in range(5):
                await asyncio.sleep(0)
            others = [t for t in asyncio.all_tasks() if t not in skip and not t.done()]
            if not others:
                return
            await asyncio.wait(others)


async def up(rig: Rig, tasks: Sequence[TaskDef], **options: Any) -> dict[str, Any]:
    """Start a transaction of *tasks* and make each launched task ready as it is launched."""
    was, rig.fake.auto_ready = rig.fake.auto_ready, True
    try:
        return await rig.start(tasks, **options)
    finally:
        rig.fake.auto_ready = was


def report(rig: Rig, task_id: str, event: str, run: str | None = None, **items: Any) -> Any:
    """A thread host's report on *task_id*'s current run (the last ordered), as on the bus."""
    if run is None:
        order = rig.published.orders(task_id, ORDER_START)[-1]
        run = order.content[ORDER_KEY]["run"]
    message = protocol.control_message(
        REPORT_ACTION,
        transaction=TX,
        service_id=task_id,
        service_name=task_id,
        status={"event": event, "run": run, **items},
    )
    host = rig.manager.transactions[TX].tasks[task_id].pid  # the kernel's word on the sender
    return dataclasses.replace(message, sender=(0, host))


def state_of(task: Task) -> tuple[str, str, str, str | None]:
    return (task["state"], task["sub_state"], task["result"], task["last_action"])


ACTIVE = ("active", "running", "success", "started")
STOPPED = ("inactive", "dead", "success", "stopped")


# --------------------------------------------------------------------------- start


@scenario()
async def test_start_launches_in_waves_along_after(rig: Rig) -> None:
    tasks = [
        TaskDef("d", attrs={"after": "b c"}),
        TaskDef("b", attrs={"after": "a"}),
        TaskDef("c", attrs={"after": "a"}),
        TaskDef("a"),
    ]
    starting = rig.starting(tasks)
    a = await rig.fake.started("a")
    assert rig.fake.order("start") == ["a"]  # b and c wait for a to be ready
    assert state_of(rig.task("a")) == ("activating", "start", "success", None)
    assert rig.status()["state"] == "starting"
    assert rig.stored()["a"].state == "activating"  # committed before the runner ran it
    assert rig.stored()["a"].runner_data["invocation"] == a.spec.invocation
    rig.fake.ready(key("a"))
    await rig.fake.started("c")
    assert rig.fake.order("start") == ["a", "b", "c"]  # one wave, in context order
    rig.fake.ready(key("b"))
    await settle(starting)
    assert rig.fake.start_count("d") == 0  # d is after b and c
    rig.fake.ready(key("c"))
    await rig.fake.started("d")
    rig.fake.ready(key("d"))
    view = await asyncio.wait_for(starting, WAIT)

    assert view["state"] == "running"
    handles = {task_id: rig.fake.handles[key(task_id)] for task_id in "abcd"}
    for task in view["tasks"]:
        assert state_of(task) == ACTIVE
        assert task["pid"] == handles[task["id"]].pid
        assert task["restarts"] == 0 and task["status_text"] == ""
    rows = rig.stored()
    for task_id, handle in handles.items():
        row = rows[task_id]
        assert (row.state, row.sub_state, row.last_action) == ("active", "running", "started")
        assert row.pid == handle.pid and row.runner_data["pid"] == handle.pid
    assert rig.stored_transactions() == [(TX, False)]
    started = [m.service_id for m in rig.published if m.action == LastAction.STARTED]
    assert started == ["a", "b", "c", "d"]
    message = rig.published.last_event("a")
    assert message.status["result"] == "success" and message.status["pid"] == handles["a"].pid
    assert message.status["state"] == "active"


@scenario()
async def test_start_hands_the_runner_the_task_launch(rig: Rig) -> None:
    await up(rig, [TaskDef("a"), TaskDef("cmd", command="/bin/true --x", notify=True)])
    a, cmd = (rig.fake.handles[key(t)].spec for t in ("a", "cmd"))
    assert a.key == key("a") and a.host_entry and a.notify
    assert a.argv[1:] == ("-P", "-m", "zsvc.task")
    assert a.log_path == rig.state.task_log(TX, "a")
    assert a.env["ZSVC_TRANSACTION"] == TX and a.env["ZSVC_TASK_ID"] == "a"
    assert cmd.argv == ("/bin/true", "--x") and cmd.notify and not cmd.host_entry
    assert cmd.cwd == str(rig.contexts[0].parent)
    assert a.invocation != cmd.invocation


@scenario()
async def test_start_without_block_answers_at_once(rig: Rig) -> None:
    view = await rig.start([TaskDef("a"), TaskDef("b", attrs={"after": "a"})], block=False)
    # The answer comes before the first launch: the record as it was (no task up yet).
    assert view["transaction"] == TX and [t["pid"] for t in view["tasks"]] == [None, None]
    await rig.fake.started("a")
    rig.fake.ready(key("a"))
    await rig.fake.started("b")  # the start goes on in the background
    rig.fake.ready(key("b"))
    assert rig.status()["state"] == "running"


@scenario()
async def test_start_refusals_create_nothing(rig: Rig) -> None:
    with pytest.raises(BadRequest, match="give a transaction id or a context"):
        await rig.start(None, transaction=None)
    with pytest.raises(UnknownTransaction):
        await rig.start(None, transaction="nope")
    with pytest.raises(UnknownTask, match="no task 'zz'"):
        await rig.start([TaskDef("a")], services=["zz"])
    with pytest.raises(BadRequest, match="invalid transaction id"):
        await rig.start([TaskDef("a")], transaction="bad id")
    with pytest.raises(OperationFailed, match=r"task a: task module .*NoSuch.* does not exist"):
        await rig.start([TaskDef("a", instance="NoSuch")])
    assert rig.manager.transactions == {} and rig.stored_transactions() == []
    assert rig.fake.calls == [("open",)]


@scenario()
async def test_start_names_a_generated_transaction(rig: Rig) -> None:
    view = await up(rig, [TaskDef("a")], transaction=None)
    assert re.fullmatch(r"[A-Z0-9]{20}", view["transaction"])
    assert rig.stored_transactions() == [(view["transaction"], False)]


@scenario()
async def test_start_of_a_known_transaction(rig: Rig) -> None:
    tasks = [TaskDef("a"), TaskDef("w", entry="on_fail")]
    await up(rig, tasks)
    assert rig.task("w")["sub_state"] == "waiting"  # not an entry task: waits for a trigger
    pid = rig.task("a")["pid"]

    # The same context again, or the id alone: what runs is not launched again.
    again = await up(rig, tasks)
    assert rig.fake.start_count("a") == 1 and again["tasks"][0]["pid"] == pid
    await up(rig, None)
    assert rig.fake.start_count("a") == 1

    # Another context while it runs: refused.
    with pytest.raises(ZsvcError, match="running with another context") as refused:
        await up(rig, [TaskDef("a"), TaskDef("b")])
    assert refused.value.code is ErrorCode.EXISTS

    # A start naming the waiting task starts it.
    await up(rig, None, services=["w"])
    assert state_of(rig.task("w")) == ACTIVE


@scenario()
async def test_start_of_a_stopped_transaction_runs_it_again(rig: Rig) -> None:
    await up(rig, [TaskDef("a"), TaskDef("b", attrs={"after": "a"})])
    first = rig.task("a")["pid"]
    await rig.manager.stop(TX, [], None)
    view = await up(rig, None)
    assert view["state"] == "running"
    assert rig.fake.order("start") == ["a", "b", "a", "b"]
    a = rig.task("a")
    assert state_of(a) == ACTIVE and a["pid"] != first and a["restarts"] == 1
    assert rig.stored()["a"].restarts == 1


@scenario()
async def test_stopped_transaction_takes_a_corrected_context(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    await rig.manager.stop(TX, [], None)
    await up(rig, [TaskDef("a"), TaskDef("b")])  # nothing runs: the new file replaces the old
    assert set(rig.stored()) == {"a", "b"}
    assert state_of(rig.task("b")) == ACTIVE and rig.task("a")["restarts"] == 0


@scenario()
async def test_launch_error_fails_the_task_and_the_start(rig: Rig) -> None:
    rig.fake.fail_start("b", ExitInfo(Result.RESOURCES, detail="no such file"))
    with pytest.raises(OperationFailed) as failed:
        await up(rig, [TaskDef("a"), TaskDef("b")])
    assert "task b ended (resources): no such file" in failed.value.message
    b = rig.task("b")
    assert state_of(b) == ("failed", "failed", "resources", "failed") and b["pid"] is None
    assert rig.stored()["b"].state == "failed"
    assert state_of(rig.task("a")) == STOPPED  # rolled back
    assert rig.published.events("b") == ["failed"]
    assert "no such file" in rig.published.last_event("b").status["reason"]


# --------------------------------------------------------------------------- a failed start


CHAIN = [
    TaskDef("a"),
    TaskDef("b", attrs={"after": "a"}),
    TaskDef("c", attrs={"after": "b"}),
    TaskDef("x"),
]
"""a ← b ← c, and x on its own."""


@scenario()
async def test_failed_start_rolls_back_in_reverse_order(rig: Rig) -> None:
    starting = rig.starting(CHAIN)
    await rig.fake.started("x")
    rig.fake.ready(key("x"))
    rig.fake.ready(key("a"))
    await rig.fake.started("b")
    rig.fake.status(key("b"), "cannot reach the database")
    rig.fake.exit(key("b"), CRASHED)  # before READY=1
    with pytest.raises(OperationFailed) as failed:
        await asyncio.wait_for(starting, WAIT)

    message = failed.value.message  # what the CLI prints
    assert message.startswith(f"transaction {TX} did not start: ")
    assert "task b exited with status 1 (exit-code)" in message
    assert "[status: cannot reach the database]" in message
    assert "not started (after a failed task): c" in message
    assert "stopped again: a, x" in message
    assert failed.value.details["transaction"]["transaction"] == TX
    assert rig.fake.start_count("c") == 0
    assert rig.fake.order("stop") == ["a", "x"]  # one wave: both are first-wave tasks
    assert state_of(rig.task("a")) == STOPPED and state_of(rig.task("x")) == STOPPED
    b = rig.task("b")
    assert state_of(b) == ("failed", "failed", "exit-code", "failed")
    assert "exited with status 1" in b["last_exit"]
    assert rig.task("c")["sub_state"] == "dead" and rig.task("c")["last_action"] is None
    assert rig.status()["state"] == "failed"
    assert rig.stored()["a"].state == "inactive" and rig.stored()["b"].result == "exit-code"


@scenario()
async def test_rollback_stops_dependents_first(rig: Rig) -> None:
    starting = rig.starting([*CHAIN[:3], TaskDef("d", attrs={"after": "b"})])
    for task_id in "ab":
        await rig.fake.started(task_id)
        rig.fake.ready(key(task_id))
    await rig.fake.started("d")
    rig.fake.ready(key("d"))
    rig.fake.exit(key("c"), CRASHED)
    with pytest.raises(OperationFailed, match="stopped again: a, b, d"):
        await asyncio.wait_for(starting, WAIT)
    assert rig.fake.order("stop") == ["d", "b", "a"]


@scenario()
async def test_keep_going_leaves_the_rest_running(rig: Rig) -> None:
    starting = rig.starting(CHAIN, keep_going=True)
    await rig.fake.started("x")
    rig.fake.ready(key("a"))
    rig.fake.exit(key("x"), CRASHED)
    await rig.fake.started("b")  # x failed: the start goes on
    rig.fake.ready(key("b"))
    await rig.fake.started("c")
    rig.fake.exit(key("c"), ExitInfo(Result.SIGNAL, signal=11))
    with pytest.raises(OperationFailed) as failed:
        await asyncio.wait_for(starting, WAIT)
    message = failed.value.message
    assert "task x exited with status 1 (exit-code)" in message
    assert "task c killed by SIGSEGV (signal)" in message
    assert "stopped again" not in message
    assert rig.fake.order("stop") == []
    assert state_of(rig.task("a")) == ACTIVE and state_of(rig.task("b")) == ACTIVE
    assert rig.status()["state"] == "degraded"


@scenario()
async def test_keep_going_skips_what_comes_after_a_failed_task(rig: Rig) -> None:
    starting = rig.starting(CHAIN, keep_going=True)
    await rig.fake.started("x")
    rig.fake.ready(key("x"))
    rig.fake.exit(key("a"), CRASHED)
    with pytest.raises(OperationFailed, match=r"not started \(after a failed task\): b, c"):
        await asyncio.wait_for(starting, WAIT)
    assert rig.fake.order("start") == ["a", "x"]
    assert state_of(rig.task("x")) == ACTIVE


@scenario()
async def test_start_timeout_fails_and_rolls_back(rig: Rig) -> None:
    starting = rig.starting([TaskDef("a"), TaskDef("slow")], timeout=0.05)
    await rig.fake.started("slow")
    rig.fake.ready(key("a"))
    rig.fake.status(key("slow"), "warming up")  # never ready
    with pytest.raises(OperationFailed) as failed:
        await asyncio.wait_for(starting, WAIT)
    message = failed.value.message
    assert "task slow is not ready within the --timeout" in message
    assert "stopped again: a, slow" in message
    slow = rig.task("slow")
    assert state_of(slow) == STOPPED  # stopped on request: the stop was clean
    assert rig.fake.order("stop") == ["a", "slow"]


@scenario()
async def test_stop_during_a_start_fails_the_start(rig: Rig) -> None:
    starting = rig.starting(CHAIN[:2])
    await rig.fake.started("a")
    await rig.manager.stop(TX, [], None)  # runs at once: a start waits without the lock
    with pytest.raises(OperationFailed, match="task a killed by SIGTERM"):
        await asyncio.wait_for(starting, WAIT)
    assert rig.fake.start_count("b") == 0
    assert state_of(rig.task("a")) == STOPPED


@scenario()
async def test_stop_between_waves_ends_the_start(rig: Rig) -> None:
    """A stop while a wave waits bumps the epoch: the next wave is not launched."""
    starting = rig.starting([*CHAIN[:2], TaskDef("w", entry="on_exit")])
    await rig.fake.started("a")
    await up(rig, None, services=["w"])  # another command on the transaction meanwhile
    await rig.manager.stop(TX, ["w"], None)
    rig.fake.ready(key("a"))
    with pytest.raises(OperationFailed, match="was stopped while it started"):
        await asyncio.wait_for(starting, WAIT)
    assert rig.fake.start_count("b") == 0


@scenario()
async def test_a_trigger_stopping_another_task_does_not_abort_a_start(rig: Rig) -> None:
    tasks = [
        TaskDef("a", triggers={"on_start": ("stop", "x")}),
        TaskDef("b", attrs={"after": "a"}),
        TaskDef("x"),
    ]
    starting = rig.starting(tasks)
    await rig.fake.started("x")
    rig.fake.ready(key("x"))
    rig.fake.auto_ready = True  # b, once launched
    rig.fake.ready(key("a"))  # fires: stop x
    await asyncio.wait_for(starting, WAIT)
    assert state_of(rig.task("b")) == ACTIVE and state_of(rig.task("x")) == STOPPED


# --------------------------------------------------------------------------- stop


@scenario()
async def test_stop_goes_in_reverse_order_wave_by_wave(rig: Rig) -> None:
    await up(rig, [TaskDef("a"), TaskDef("b", attrs={"after": "a"}), TaskDef("c")])
    rig.fake.on_stop("b", HOLD)  # b takes its time to stop
    stopping = rig.stopping()
    await rig.fake.stopped("b")
    assert rig.fake.order("stop") == ["b"]  # a (and c, of a's wave) wait for b
    b = rig.task("b")
    assert (b["state"], b["sub_state"]) == ("deactivating", "stop-sigterm")
    assert rig.stored()["b"].sub_state == "stop-sigterm"
    assert rig.status()["state"] == "stopping"
    assert rig.stored_transactions() == [(TX, True)]  # committed: a successor finishes the stop
    rig.fake.exit(key("b"), ExitInfo(Result.SUCCESS, signal=15))
    view = await asyncio.wait_for(stopping, WAIT)
    assert rig.fake.order("stop") == ["b", "a", "c"]
    assert view["state"] == "stopped"
    for task in view["tasks"]:
        assert state_of(task) == STOPPED and task["pid"] is None
        assert task["last_exit"] == "killed by SIGTERM (success)"
    assert {row.state for row in rig.stored().values()} == {"inactive"}
    assert rig.published.events("a") == ["started", "stopped"]
    assert rig.published.last_event("a").status["state"] == "inactive"


@scenario()
async def test_stop_of_named_tasks_only(rig: Rig) -> None:
    await up(rig, [TaskDef("a"), TaskDef("b"), TaskDef("c")])
    await rig.manager.stop(TX, ["c", "a"], 3.0)
    assert sorted(rig.fake.order("stop")) == ["a", "c"]
    assert [call[2] for call in rig.fake.calls if call[0] == "stop"] == [3.0, 3.0]  # --timeout
    assert state_of(rig.task("b")) == ACTIVE
    assert rig.status()["state"] == "running"
    with pytest.raises(UnknownTask):
        await rig.manager.stop(TX, ["nope"], None)
    with pytest.raises(UnknownTransaction):
        await rig.manager.stop("nope", [], None)


@scenario()
async def test_stop_that_times_out_fails_the_task(rig: Rig) -> None:
    await up(rig, [TaskDef("a", attrs={"restart": "always", "restart_sec": "0"})])
    rig.fake.on_stop("a", STOP_TIMED_OUT)
    await rig.manager.stop(TX, [], None)
    a = rig.task("a")
    assert state_of(a) == ("failed", "failed", "timeout", "stopped")
    assert a["last_exit"] == "killed by SIGKILL (timeout)"
    await settle()
    assert rig.fake.start_count("a") == 1  # a stop is never undone by the restart policy
    assert rig.published.last_event("a").status["result"] == "failure"


@scenario()
async def test_stop_of_tasks_already_down_does_nothing(rig: Rig) -> None:
    await up(rig, [TaskDef("a"), TaskDef("w", entry="on_exit")])
    rig.fake.exit(key("a"), EXITED)
    before = len(rig.published)
    view = await rig.manager.stop(TX, [], None)
    assert rig.fake.order("stop") == []
    assert state_of(view["tasks"][0]) == ("inactive", "exited", "success", "exited")
    assert view["tasks"][1]["sub_state"] == "waiting"
    assert rig.published.events("a") == ["started", "exited"]
    assert len([m for m in rig.published[before:] if m.action in {"stopped"}]) == 0


# --------------------------------------------------------------------------- restart


@scenario(auto_ready=True)
async def test_restart_of_the_whole_transaction(rig: Rig) -> None:
    tasks = [TaskDef("a"), TaskDef("b", attrs={"after": "a"}), TaskDef("w", entry="on_fail")]
    await rig.start(tasks)
    old = {t: rig.task(t)["pid"] for t in "ab"}
    view = await rig.manager.restart(TX, [], None)
    assert rig.fake.order("stop") == ["b", "a"]
    assert rig.fake.order("start") == ["a", "b", "a", "b"]
    assert view["state"] == "running"
    for task_id in "ab":
        task = rig.task(task_id)
        assert state_of(task) == ACTIVE and task["restarts"] == 1 and task["pid"] != old[task_id]
    assert rig.task("w")["sub_state"] == "waiting"  # neither up nor an entry task
    assert rig.published.events("a") == ["started", "stopped", "started"]


@scenario(auto_ready=True)
async def test_restart_of_one_service(rig: Rig) -> None:
    await rig.start([TaskDef("a"), TaskDef("b", attrs={"after": "a"})])
    await rig.manager.restart(TX, ["b"], None)
    assert rig.fake.order("stop") == ["b"] and rig.fake.order("start") == ["a", "b", "b"]
    assert rig.task("a")["restarts"] == 0 and rig.task("b")["restarts"] == 1


@scenario(auto_ready=True)
async def test_restart_starts_a_failed_entry_task(rig: Rig) -> None:
    await rig.start([TaskDef("a"), TaskDef("b")])
    rig.fake.exit(key("a"), CRASHED)
    await rig.manager.restart(TX, [], None)
    assert rig.fake.order("stop") == ["b"]  # a is down already
    assert state_of(rig.task("a")) == ACTIVE and rig.status()["state"] == "running"


@scenario()
async def test_restart_waits_for_readiness_and_fails_like_a_start(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    restarting = asyncio.create_task(rig.manager.restart(TX, [], 0.05))
    await rig.fake.started("a", count=2)  # stopped, launched again, never ready
    with pytest.raises(OperationFailed, match="task a is not ready within the --timeout"):
        await asyncio.wait_for(restarting, WAIT)
    assert state_of(rig.task("a")) == STOPPED


# --------------------------------------------------------------------------- reads


@scenario()
async def test_status_follows_every_change(rig: Rig) -> None:
    await up(rig, [TaskDef("a")], transaction="T1")
    await up(rig, [TaskDef("b")], transaction="T2")
    listing = json.loads(rig.manager.status(None))
    assert [t["transaction"] for t in listing["transactions"]] == ["T1", "T2"]
    assert rig.status("T1")["context_id"] == "ctx"
    rig.fake.status(key("a", "T1"), "serving")  # the cached view is dropped on change
    assert rig.task("a", "T1")["status_text"] == "serving"
    await rig.manager.stop("T1", [], None)
    assert rig.status("T1")["state"] == "stopped"
    listing = json.loads(rig.manager.status(None))
    assert [t["state"] for t in listing["transactions"]] == ["stopped", "running"]
    with pytest.raises(UnknownTransaction):
        rig.manager.status("nope")


@scenario(threaded=True)
async def test_log_paths_and_live_logs(rig: Rig) -> None:
    rig.fake.auto_ready = True
    tasks = [TaskDef("p"), TaskDef("t1"), TaskDef("t2"), TaskDef("w", entry="on_fail")]
    starting = rig.starting(tasks, thread_ids=["t1", "t2"])
    await rig.fake.started(THREAD_HOST_ID)
    for task_id in ("t1", "t2"):
        await rig.published.wait_for(lambda t=task_id: bool(rig.published.orders(t, ORDER_START)))
        rig.runner.on_bus_message(report(rig, task_id, Event.STARTED))
    await asyncio.wait_for(starting, WAIT)
    log = rig.state.task_log
    assert rig.manager.log_paths(TX, []) == [
        {"task": "p", "path": str(log(TX, "p"))},
        {"task": THREAD_HOST_ID, "path": str(log(TX, THREAD_HOST_ID))},  # shared, listed once
        {"task": "w", "path": str(log(TX, "w"))},
    ]
    assert rig.manager.log_paths(TX, ["t2"]) == [
        {"task": THREAD_HOST_ID, "path": str(log(TX, THREAD_HOST_ID))}
    ]
    assert rig.manager.live_logs() == [log(TX, "p"), log(TX, THREAD_HOST_ID)]  # w is down
    with pytest.raises(UnknownTask):
        rig.manager.log_paths(TX, ["nope"])


# --------------------------------------------------------------------------- forget, stop_all


@scenario(auto_ready=True)
async def test_forget_is_refused_while_tasks_run(rig: Rig) -> None:
    await rig.start([TaskDef("a"), TaskDef("b")])
    await rig.manager.stop(TX, ["a"], None)
    with pytest.raises(OperationFailed, match=f"transaction {TX} still has running tasks"):
        await rig.manager.forget(TX)
    assert rig.fake.forgotten == [] and rig.stored_transactions() == [(TX, False)]
    await rig.manager.stop(TX, [], None)
    assert await rig.manager.forget(TX) == {"transaction": TX, "forgotten": True}
    assert rig.fake.forgotten == [TX]
    assert rig.stored_transactions() == [] and rig.stored() == {}
    assert TX not in rig.manager.transactions
    with pytest.raises(UnknownTransaction):
        rig.manager.status(TX)
    with pytest.raises(UnknownTransaction):
        await rig.manager.forget(TX)
    await rig.start([TaskDef("a")])  # the id is free again
    assert rig.task("a")["restarts"] == 0


@scenario(auto_ready=True)
async def test_stop_all_stops_every_transaction(rig: Rig) -> None:
    tasks = [TaskDef("a"), TaskDef("b", attrs={"after": "a"})]
    for transaction in ("T1", "T2", "T3"):
        await rig.start(tasks, transaction=transaction)
    await rig.manager.stop("T3", [], None)
    assert rig.fake.order("stop", "T3") == ["b", "a"]
    await rig.manager.stop_all()
    assert rig.fake.order("stop", "T3") == ["b", "a"]  # stopped already: not again
    for transaction in ("T1", "T2"):
        assert rig.fake.order("stop", transaction) == ["b", "a"]
        assert rig.status(transaction)["state"] == "stopped"
        assert {row.state for row in rig.stored(transaction).values()} == {"inactive"}


# --------------------------------------------------------------------------- runner events


@scenario()
async def test_on_ready_counts_once_and_only_while_activating(rig: Rig) -> None:
    await up(
        rig, [TaskDef("a", triggers={"on_start": ("start", "w")}), TaskDef("w", entry="on_exit")]
    )
    await rig.fake.started("w")
    rig.fake.ready(key("a"))  # a second READY=1: nothing changes, nothing fires again
    rig.fake.ready(key("w"))
    await settle()
    assert rig.published.events("a") == ["started"]
    assert rig.fake.start_count("w") == 1
    rig.fake.exit(key("a"), EXITED)
    rig.fake.ready(key("a"))  # from a run that ended: ignored
    assert state_of(rig.task("a")) == ("inactive", "exited", "success", "exited")


@scenario()
async def test_on_status(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    rig.fake.status(key("a"), "42 requests served")
    assert rig.task("a")["status_text"] == "42 requests served"
    assert rig.stored()["a"].status_text == "42 requests served"
    # The transaction's record goes out on the bus (coalesced, at most every 0.1 s).
    await rig.published.wait_for(
        lambda: any(
            m.status.get("device_action") == "context_info"
            and m.status["data"]["tasks"][0]["status_text"] == "42 requests served"
            for m in rig.published
        )
    )
    assert rig.published.events("a") == ["started"]  # a status line is no task event


@scenario()
async def test_on_stopping_then_exit_is_an_exit(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    rig.fake.stopping(key("a"))  # STOPPING=1: the task stops on its own
    a = rig.task("a")
    assert (a["state"], a["sub_state"], a["last_action"]) == (
        "deactivating",
        "stop-sigterm",
        "started",
    )
    assert rig.stored()["a"].state == "deactivating"
    rig.fake.exit(key("a"), EXITED)
    assert state_of(rig.task("a")) == ("inactive", "exited", "success", "exited")
    assert rig.published.events("a") == ["started", "exited"]


@scenario()
async def test_on_stopping_is_ignored_unless_active(rig: Rig) -> None:
    starting = rig.starting([TaskDef("a")])
    await rig.fake.started("a")
    rig.fake.stopping(key("a"))  # still activating
    assert rig.task("a")["state"] == "activating"
    rig.fake.ready(key("a"))
    await asyncio.wait_for(starting, WAIT)


@scenario()
async def test_on_main_pid(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    new = fake_pid()
    rig.fake.main_pid(key("a"), new, {"start_time": 12.5})
    assert rig.task("a")["pid"] == new
    row = rig.stored()["a"]
    assert row.pid == new and row.runner_data["pid"] == new
    assert row.runner_data["start_time"] == 12.5 and row.runner_data["invocation"]
    rig.fake.exit(key("a"), CRASHED)
    assert rig.published.last_event("a").status["pid"] == new  # the run's last pid
    rig.fake.main_pid(key("a"), fake_pid())  # no run: ignored
    assert rig.task("a")["pid"] is None


@scenario()
async def test_on_exit_of_a_run(rig: Rig) -> None:
    await up(rig, [TaskDef("a"), TaskDef("b"), TaskDef("c")])
    pid = rig.task("a")["pid"]
    rig.fake.status(key("a"), "last words")
    rig.fake.exit(key("a"), CRASHED)
    rig.fake.exit(key("b"), EXITED)
    rig.fake.exit(key("c"), ExitInfo(Result.WATCHDOG, signal=6, detail="no WATCHDOG=1"))
    a, b, c = (rig.task(t) for t in "abc")
    assert state_of(a) == ("failed", "failed", "exit-code", "failed") and a["pid"] is None
    assert a["last_exit"].startswith("exited with status 1 (exit-code)")
    assert state_of(b) == ("inactive", "exited", "success", "exited")
    assert state_of(c) == ("failed", "failed", "watchdog", "failed")
    assert c["last_exit"] == "killed by SIGABRT (watchdog): no WATCHDOG=1"
    rows = rig.stored()
    assert (rows["a"].state, rows["a"].result, rows["a"].pid) == ("failed", "exit-code", None)
    assert rows["b"].sub_state == "exited"
    failed = rig.published.last_event("a")
    assert failed.action == "failed" and failed.status["result"] == "failure"
    assert failed.status["pid"] == pid
    assert failed.status["reason"] == "exited with status 1 (exit-code)"
    assert rig.published.last_event("b").action == "exited"
    assert rig.status()["state"] == "failed"


@scenario()
async def test_events_about_unknown_tasks_are_ignored(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    before = (rig.status(), len(rig.published))
    for transaction, task_id in (("nope", "a"), (TX, "nope")):
        unknown = (transaction, task_id)
        rig.manager.on_ready(unknown)
        rig.manager.on_status(unknown, "x")
        rig.manager.on_stopping(unknown)
        rig.manager.on_main_pid(unknown, 1, {})
        rig.manager.on_exit(unknown, CRASHED)
    assert (rig.status(), len(rig.published)) == before


# --------------------------------------------------------------------------- the bus


def updated(task_id: str, transaction: str = TX) -> protocol.Message:
    """A task's own ``control``/``updated`` message, as it publishes it."""
    return protocol.control_message(
        LastAction.UPDATED, transaction=transaction, service_id=task_id, service_name=task_id
    )


@scenario()
async def test_updated_message_sets_last_action(rig: Rig) -> None:
    await up(rig, [TaskDef("a"), TaskDef("b")])
    rig.manager.on_bus_message(updated("a"))
    a = rig.task("a")
    assert (a["state"], a["last_action"]) == ("active", "updated")
    assert rig.stored()["a"].last_action == "updated"
    rig.fake.exit(key("b"), EXITED)
    rig.manager.on_bus_message(updated("b"))  # not up: ignored
    rig.manager.on_bus_message(updated("a", "nope"))
    assert rig.task("b")["last_action"] == "exited"


@scenario()
async def test_an_update_speaks_for_a_members_task_only_from_it_its_owner_or_root(
    rig: Rig,
) -> None:
    """An ``updated`` report fires triggers (control of the transaction): another member of
    group zsvc, who reaches the same bus, must not fire those of alice's transaction."""
    await up(rig, [TaskDef("a", triggers={"on_update": ("stop", "b")}), TaskDef("b")])
    rig.manager.transactions[TX].owner = Principal(4242, 4242, "alice")
    pid = rig.task("a")["pid"]
    for stranger in ((4343, 1), (4343, None), None):  # another uid and pid, or TCP
        rig.manager.on_bus_message(dataclasses.replace(updated("a"), sender=stranger))
    await settle()
    assert (rig.task("a")["last_action"], rig.task("b")["state"]) == ("started", "active")
    rig.manager.on_bus_message(dataclasses.replace(updated("a"), sender=(4343, pid)))  # its own
    await settle()
    assert rig.task("b")["state"] == "inactive", "b stopped by a's on_update"
    for believed in ((4242, 7), (0, 7)):  # the owner, root
        rig.manager.on_bus_message(dataclasses.replace(updated("a"), sender=believed))
    assert rig.task("a")["last_action"] == "updated"


@scenario()
async def test_state_request_is_answered_with_the_record(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    for transaction in (TX, "nope"):
        rig.manager.on_bus_message(
            protocol.make_message(protocol.Topic.STATE, "request", transaction=transaction)
        )
    replies = [m for m in rig.published if m.topic == protocol.Topic.STATE]
    assert [m.action for m in replies] == ["reply_context", "reply_context"]
    assert replies[0].transaction == TX and replies[0].content["tasks"][0]["id"] == "a"
    assert replies[1].content == {"error": "unknown transaction 'nope'"}


# --------------------------------------------------------------------------- triggers


def waiting(task_id: str) -> TaskDef:
    """A task that does not start with its transaction: a trigger calls it."""
    return TaskDef(task_id, entry="on_exit")


@scenario(auto_ready=True)
async def test_on_start_starts_a_task_once(rig: Rig) -> None:
    await rig.start([TaskDef("a", triggers={"on_start": ("start", "w")}), waiting("w")])
    await rig.fake.started("w")
    await settle()
    assert rig.fake.start_count("w") == 1
    assert state_of(rig.task("w")) == ACTIVE
    await rig.manager.restart(TX, ["a"], None)  # started again: on_start fires, w is up
    await settle()
    assert rig.fake.start_count("w") == 1


@scenario(auto_ready=True)
async def test_on_exit_fires_for_an_exit_and_a_named_stop(rig: Rig) -> None:
    await rig.start(
        [TaskDef("a", triggers={"on_exit": ("start", "w")}), TaskDef("b"), waiting("w")]
    )
    rig.fake.exit(key("a"), EXITED)
    await rig.fake.started("w")
    await rig.manager.stop(TX, ["w"], None)
    await up(rig, None, services=["a"])
    await rig.manager.stop(TX, ["a"], None)  # a stop naming a: on_exit fires
    await rig.fake.started("w", count=2)
    await settle()
    assert rig.fake.start_count("w") == 2


@scenario(auto_ready=True)
async def test_no_trigger_fires_while_the_transaction_stops(rig: Rig) -> None:
    tasks = [
        TaskDef("a", triggers={"on_exit": ("start", "w")}),
        TaskDef("b", triggers={"on_fail": ("restart", "a")}),
        waiting("w"),
    ]
    await rig.start(tasks)
    rig.fake.on_stop("b", STOP_TIMED_OUT)  # b fails as it is stopped
    await rig.manager.stop(TX, [], None)
    await settle()
    assert rig.fake.start_count("w") == 0 and rig.fake.start_count("a") == 1
    assert rig.status()["state"] == "failed"  # b: failed/timeout
    assert rig.stored_transactions() == [(TX, False)]


@scenario(auto_ready=True)
async def test_no_trigger_fires_during_a_rollback(rig: Rig) -> None:
    tasks = [TaskDef("a", triggers={"on_exit": ("start", "w")}), TaskDef("b"), waiting("w")]
    rig.fake.fail_start("b")
    with pytest.raises(OperationFailed, match="stopped again: a"):
        await rig.start(tasks)
    await settle()
    assert rig.fake.start_count("w") == 0


@scenario(auto_ready=True)
async def test_on_fail_stops_a_task(rig: Rig) -> None:
    await rig.start([TaskDef("a", triggers={"on_fail": ("stop", "b")}), TaskDef("b")])
    rig.fake.exit(key("a"), EXITED)  # a clean exit is no failure
    await settle()
    assert rig.fake.order("stop") == []
    await up(rig, None, services=["a"])
    rig.fake.exit(key("a"), CRASHED)
    await rig.fake.stopped("b")
    await settle()
    assert state_of(rig.task("b")) == STOPPED and rig.fake.stop_count("b") == 1


@scenario(auto_ready=True)
async def test_on_fail_restarts_a_task_once_per_failure(rig: Rig) -> None:
    await rig.start([TaskDef("a", triggers={"on_fail": ("restart", "b")}), TaskDef("b")])
    rig.fake.exit(key("a"), CRASHED)
    await rig.fake.started("b", count=2)
    await settle()
    assert rig.fake.stop_count("b") == 1 and rig.fake.start_count("b") == 2
    assert state_of(rig.task("b")) == ACTIVE and rig.task("b")["restarts"] == 1
    assert rig.published.events("b") == ["started", "stopped", "started"]


@scenario(auto_ready=True)
async def test_on_update_restarts_a_task_once_per_update(rig: Rig) -> None:
    await rig.start([TaskDef("a", triggers={"on_update": ("restart", "b")}), TaskDef("b")])
    rig.manager.on_bus_message(updated("a"))
    await rig.fake.started("b", count=2)
    rig.manager.on_bus_message(updated("a"))
    await rig.fake.started("b", count=3)
    await settle()
    assert rig.fake.stop_count("b") == 2 and rig.fake.start_count("b") == 3
    assert state_of(rig.task("b")) == ACTIVE and rig.task("b")["restarts"] == 2
    assert rig.task("a")["last_action"] == "updated"


@scenario()
async def test_updates_before_ready_fire_after_on_start(rig: Rig) -> None:
    tasks = [
        TaskDef("a", triggers={"on_start": ("start", "s"), "on_update": ("start", "u")}),
        waiting("s"),
        waiting("u"),
    ]
    starting = rig.starting(tasks)
    await rig.fake.started("a")
    rig.manager.on_bus_message(updated("a"))  # before READY=1 (under systemd, it happens)
    await settle(starting)
    assert rig.fake.start_count("u") == 0 and rig.task("a")["last_action"] is None
    rig.fake.ready(key("a"))
    await asyncio.wait_for(starting, WAIT)
    await rig.fake.started("u")
    assert rig.fake.order("start") == ["a", "s", "u"]
    assert rig.task("a")["last_action"] == "updated"


@scenario()
async def test_trigger_start_of_a_task_without_module_fails_it(rig: Rig) -> None:
    tasks = [
        TaskDef("a", triggers={"on_exit": ("start", "w")}),
        TaskDef("w", instance="Gone", entry="on_exit"),
    ]
    await up(rig, tasks)
    rig.fake.exit(key("a"), EXITED)
    await settle()
    w = rig.task("w")
    assert state_of(w) == ("failed", "failed", "resources", "failed")
    assert "task module" in w["last_exit"] and "does not exist" in w["last_exit"]
    assert rig.fake.start_count("w") == 0


# --------------------------------------------------------------------------- restart policy


def restarting(task_id: str, mode: str = "on-failure", **attrs: str) -> TaskDef:
    """A task with a restart policy and no delay (``restart_sec=0``)."""
    return TaskDef(task_id, attrs={"restart": mode, "restart_sec": "0", **attrs})


@scenario(auto_ready=True)
async def test_on_failure_restarts_a_failed_task(rig: Rig) -> None:
    await rig.start([restarting("a")])
    first = rig.task("a")["pid"]
    rig.fake.exit(key("a"), CRASHED)
    a = rig.task("a")  # the restart is due: committed before it happens
    assert (a["state"], a["sub_state"], a["result"]) == ("activating", "auto-restart", "exit-code")
    assert a["status_text"].startswith("restarting in 0.00 s: exited with status 1")
    assert rig.stored()["a"].sub_state == "auto-restart"
    assert rig.status()["state"] == "degraded"
    await rig.fake.started("a", count=2)
    await settle()
    a = rig.task("a")
    assert state_of(a) == ACTIVE and a["restarts"] == 1 and a["pid"] not in (None, first)
    assert rig.published.events("a") == ["started", "failed", "started"]
    rig.fake.exit(key("a"), EXITED)  # on-failure: a clean exit stays down
    await settle()
    assert rig.fake.start_count("a") == 2
    assert state_of(rig.task("a")) == ("inactive", "exited", "success", "exited")


@scenario(auto_ready=True)
async def test_always_restarts_a_clean_exit(rig: Rig) -> None:
    await rig.start([restarting("a", "always"), TaskDef("n")])
    rig.fake.exit(key("a"), EXITED)
    await rig.fake.started("a", count=2)
    rig.fake.exit(key("n"), CRASHED)  # restart="no" (the default): stays down
    await settle()
    assert state_of(rig.task("a")) == ACTIVE and rig.task("a")["restarts"] == 1
    assert rig.fake.start_count("n") == 1 and rig.task("n")["state"] == "failed"


@scenario(auto_ready=True)
async def test_start_limit_ends_a_crash_loop(rig: Rig) -> None:
    await rig.start([restarting("a", start_limit_burst="2")])
    for run in (1, 2):
        rig.fake.exit(key("a"), CRASHED)
        await rig.fake.started("a", count=run + 1)
        await settle()
    rig.fake.exit(key("a"), CRASHED)  # the third automatic start would exceed the limit
    await settle()
    assert rig.fake.start_count("a") == 3
    a = rig.task("a")
    assert state_of(a) == ("failed", "failed", "start-limit-hit", "failed")
    assert a["status_text"].startswith("start limit hit: ")
    assert "'zsvc start' resets it" in a["status_text"]
    assert rig.stored()["a"].result == "start-limit-hit"
    assert rig.published.events("a") == ["started", "failed"] * 3 + ["failed"]
    limit = rig.published.last_event("a")
    assert limit.status["reason"].startswith("ended (start-limit-hit)")

    # A start by hand resets the limit: the policy restarts the task again.
    await rig.start(None, services=["a"])
    assert state_of(rig.task("a")) == ACTIVE and rig.fake.start_count("a") == 4
    rig.fake.exit(key("a"), CRASHED)
    await rig.fake.started("a", count=5)


@scenario(auto_ready=True)
async def test_start_limit_counts_trigger_starts_and_fires_no_trigger(rig: Rig) -> None:
    tasks = [
        TaskDef("a", triggers={"on_fail": ("start", "a")}, attrs={"start_limit_burst": "1"}),
        waiting("w"),
    ]
    await rig.start(tasks)
    rig.fake.exit(key("a"), CRASHED)  # on_fail starts a again: an automatic start
    await rig.fake.started("a", count=2)
    rig.fake.exit(key("a"), CRASHED)
    await settle()
    assert rig.fake.start_count("a") == 2
    assert rig.task("a")["result"] == "start-limit-hit"


@scenario()
async def test_stop_cancels_a_pending_restart(rig: Rig) -> None:
    await up(rig, [TaskDef("a", attrs={"restart": "always", "restart_sec": "60"})])
    rig.fake.exit(key("a"), CRASHED)
    assert rig.task("a")["sub_state"] == "auto-restart"
    await rig.manager.stop(TX, [], None)
    await settle()
    a = rig.task("a")
    assert (a["state"], a["sub_state"], a["last_action"]) == ("inactive", "dead", "stopped")
    assert rig.fake.order("stop") == [] and rig.fake.start_count("a") == 1
    assert rig.manager.transactions[TX].tasks["a"].restart_timer is None
    await up(rig, None)  # and a start launches it at once
    assert state_of(rig.task("a")) == ACTIVE and rig.fake.start_count("a") == 2


@scenario()
async def test_start_launches_a_task_whose_restart_is_pending(rig: Rig) -> None:
    await up(rig, [TaskDef("a", attrs={"restart": "always", "restart_sec": "60"})])
    rig.fake.exit(key("a"), CRASHED)
    await up(rig, None)
    assert state_of(rig.task("a")) == ACTIVE and rig.fake.start_count("a") == 2
    assert rig.manager.transactions[TX].tasks["a"].restart_timer is None


# --------------------------------------------------------------------------- refused writes


def refuse_task_writes(table: Table) -> None:
    """Make SQLite refuse every change of a task row (as a full disk would), nothing else."""
    table.db.execute(
        "CREATE TEMP TRIGGER refuse_task_writes BEFORE UPDATE ON main.tasks"
        " BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END"
    )


def allow_task_writes(table: Table) -> None:
    table.db.execute("DROP TRIGGER temp.refuse_task_writes")


@scenario()
async def test_a_launch_that_cannot_be_recorded_is_not_made(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    await rig.manager.stop(TX, [], None)
    refuse_task_writes(rig.table)
    with pytest.raises(StorageError, match="disk is full"):
        await up(rig, None)
    assert rig.fake.start_count("a") == 1  # nothing was started
    assert state_of(rig.task("a")) == STOPPED  # the record says so again
    assert rig.stored()["a"].state == "inactive"
    allow_task_writes(rig.table)
    await up(rig, None)
    assert state_of(rig.task("a")) == ACTIVE and rig.fake.start_count("a") == 2


@scenario()
async def test_a_launch_that_cannot_be_recorded_is_not_counted(rig: Rig) -> None:
    await up(rig, [TaskDef("a")])
    await rig.manager.stop(TX, [], None)
    refuse_task_writes(rig.table)
    with pytest.raises(StorageError):
        await up(rig, None)
    allow_task_writes(rig.table)
    assert rig.task("a")["restarts"] == 0
    await up(rig, None)
    assert rig.task("a")["restarts"] == 1  # one restart made, one counted


@scenario()
async def test_an_exit_is_kept_when_it_cannot_be_written(rig: Rig) -> None:
    await up(rig, [TaskDef("a"), TaskDef("b")])
    refuse_task_writes(rig.table)
    rig.fake.exit(key("a"), CRASHED)  # logged, not raised: the event is not lost
    assert rig.task("a")["state"] == "failed"
    assert rig.published.events("a") == ["started", "failed"]
    assert rig.stored()["a"].state == "active"
    allow_task_writes(rig.table)
    await up(rig, None, services=["a"])  # the next write of the task stores all it kept
    row = rig.stored()["a"]
    assert (row.state, row.restarts) == ("active", 1)
    assert row.last_exit.startswith("exited with status 1 (exit-code)")


@scenario()
async def test_stop_all_goes_on_past_a_transaction_it_cannot_stop(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    await up(rig, [TaskDef("a")], transaction="T1")
    refuse_task_writes(rig.table)
    with caplog.at_level(logging.ERROR, logger="zsvc.daemon.manager"):
        await rig.manager.stop_all()
    assert "shutdown: transaction T1 was not stopped" in caplog.text
    assert "disk is full" in caplog.text
    assert rig.fake.order("stop") == []  # never signalled: the successor re-adopts it
    assert rig.stored("T1")["a"].state == "active"


# --------------------------------------------------------------------------- restore


def load(text: str, path: str) -> Context:
    """How the daemon loads a stored context (zsvc.daemon.server.load_text)."""
    return load_context_text(text, path)


async def die(rig: Rig, *pending: asyncio.Task) -> None:
    """The daemon of *rig* dies (SIGKILL): what it was doing (*pending*, its jobs) ends.

    Its table is closed first, so that nothing it would do on the way out
    (a ``finally``) reaches SQLite: a killed daemon writes nothing more.
    """
    rig.table.close()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await rig.manager.jobs.cancel_all()


async def successor(rig: Rig, *alive: str, threaded: bool = False) -> tuple[Rig, list[str]]:
    """A new daemon on *rig*'s table whose runner finds the runs of *alive* (task ids) alive."""
    fake = FakeRunner()
    for transaction, record in rig.manager.transactions.items():
        for task_id in alive:
            handle = rig.fake.handles.get((transaction, task_id))
            if handle is not None and (task_id in record.tasks or task_id == THREAD_HOST_ID):
                fake.live[handle.pid] = handle.describe()
    new = await Rig.open(rig.tmp, threaded=threaded, fake=fake)
    new.contexts = rig.contexts
    lost = await new.manager.restore(load)
    return new, lost


@scenario(auto_ready=True)
async def test_restore_re_adopts_live_runs_and_records_lost_ones(rig: Rig) -> None:
    tasks = [TaskDef(t) for t in "abce"] + [waiting("d")]
    await rig.start(tasks)
    rig.fake.auto_ready = False
    await rig.start(None, services=["d"], block=False)
    await rig.fake.started("d")  # d is still activating when the daemon dies
    rig.fake.on_stop("c", HOLD)
    rig.fake.on_stop("e", HOLD)
    stopping = rig.stopping(["c", "e"])  # and c and e are being stopped
    await rig.fake.stopped("c")
    await rig.fake.stopped("e")
    pids = {t: rig.task(t)["pid"] for t in "abcde"}
    await die(rig, stopping)

    new, lost = await successor(rig, "a", "c", "d")  # b and e ended meanwhile
    try:
        assert lost == [
            f"{TX}/b: process {pids['b']} ended while the daemon was not running",
            f"{TX}/e: process {pids['e']} ended while the daemon was not running",
        ]
        adopted = {spec.task_id: description for spec, description in new.fake.adopts}
        assert sorted(adopted) == list("abcde")
        assert adopted["a"]["pid"] == pids["a"] and adopted["a"]["invocation"]
        a, d = new.task("a"), new.task("d")
        assert state_of(a) == ACTIVE and a["pid"] == pids["a"]
        assert state_of(d) == ACTIVE and d["pid"] == pids["d"]  # its READY=1 was lost
        b = new.task("b")
        assert state_of(b) == ("failed", "failed", "lost", "failed") and b["pid"] is None
        assert b["last_exit"] == "ended (lost): ended while the daemon was down"
        e = new.task("e")  # it was being stopped: the stop's end, unclean
        assert state_of(e) == ("failed", "failed", "lost", "stopped")
        await new.fake.stopped("c")  # the interrupted stop is finished
        await settle()
        assert state_of(new.task("c")) == STOPPED
        assert new.published.events("b") == ["failed"]
        assert new.published.events("c") == ["stopped"]
        assert new.published.events("a") == []  # re-adopted: nothing new to say
        rows = new.stored()
        assert (rows["a"].state, rows["a"].pid) == ("active", pids["a"])
        assert (rows["b"].state, rows["b"].result) == ("failed", "lost")
        assert (rows["c"].state, rows["d"].state) == ("inactive", "active")
        await new.manager.stop(TX, [], None)  # the new daemon commands what it adopted
        assert sorted(new.fake.order("stop")) == ["a", "c", "d"]
    finally:
        await new.close()


@scenario(auto_ready=True)
async def test_restore_finishes_an_interrupted_stop_of_a_transaction(rig: Rig) -> None:
    tasks = [
        TaskDef("a", triggers={"on_exit": ("start", "w")}),
        TaskDef("b", attrs={"after": "a"}),
        waiting("w"),
    ]
    await rig.start(tasks)
    rig.fake.on_stop("b", HOLD)
    stopping = rig.stopping()
    await rig.fake.stopped("b")
    assert rig.status()["state"] == "stopping"
    await die(rig, stopping)

    new, lost = await successor(rig, "a", "b")
    try:
        assert lost == []
        await new.fake.stopped("a")
        await settle()
        assert new.fake.order("stop")[-1] == "a"  # b first, as the stop was going
        assert "b" in new.fake.order("stop")
        for task_id in "ab":
            assert state_of(new.task(task_id)) == STOPPED
        assert new.fake.start_count("w") == 0  # still stopping: no trigger fired
        assert new.status()["state"] == "stopped"
        assert new.stored_transactions() == [(TX, False)]  # no longer stopping
    finally:
        await new.close()


@scenario(auto_ready=True)
async def test_restore_keeps_a_transaction_whose_context_no_longer_loads(rig: Rig) -> None:
    """Its tasks still run: tracked and stoppable, listed as broken, never started."""
    await rig.start([TaskDef("a")], transaction="T1")
    await rig.start([TaskDef("b")], transaction="T2")
    broken = str(rig.contexts[0])

    def load_some(text: str, path: str) -> Context:
        if path == broken:
            raise ZsvcError("the file changed")
        return load(text, path)

    fake = FakeRunner()
    alive = rig.task("a", "T1")["pid"]
    fake.live[alive] = {}
    new = await Rig.open(rig.tmp, fake=fake)
    try:
        assert await new.manager.restore(load_some) == [
            f"T2/b: process {rig.task('b', 'T2')['pid']} ended while the daemon was not running"
        ]
        assert sorted(new.manager.transactions) == ["T1", "T2"]
        t1 = new.status("T1")
        assert t1["state"] == "broken" and "the file changed" in t1["broken"]
        assert (t1["tasks"][0]["state"], t1["tasks"][0]["pid"]) == ("active", alive)
        with pytest.raises(OperationFailed, match="corrected context"):
            await new.manager.start("T1", None, None, [], True, None)
        await new.manager.stop("T1", [], None)
        assert new.fake.order("stop", "T1") == ["a"]
        assert new.task("a", "T1")["state"] == "inactive"
    finally:
        await new.close()


# --------------------------------------------------------------------------- Thread tasks


async def ordered(rig: Rig, task_id: str, action: str = ORDER_START, count: int = 1) -> None:
    """Wait until the thread runner ordered the host to *action* *task_id* (*count* times)."""
    await rig.published.wait_for(lambda: len(rig.published.orders(task_id, action)) >= count)


@scenario(threaded=True)
async def test_thread_tasks_run_in_one_host_through_the_runner_contract(rig: Rig) -> None:
    tasks = [TaskDef("t1"), TaskDef("t2", attrs={"after": "t1"}), TaskDef("p")]
    starting = rig.starting(tasks, thread_ids=["t1", "t2"])
    host = await rig.fake.started(THREAD_HOST_ID)
    await rig.fake.started("p")
    assert sorted(rig.fake.order("start")) == [THREAD_HOST_ID, "p"]  # a thread is no process
    assert host.spec.argv[-2:] == ("-m", "zsvc.task") and host.spec.host_entry
    rig.fake.ready(key("p"))
    assert rig.published.orders("t1", ORDER_START) == []  # the host is not ready yet
    rig.fake.ready(key(THREAD_HOST_ID))  # the host joined the bus: the thread is ordered
    await ordered(rig, "t1")
    assert rig.task("t1")["status_text"] == f"thread in pid {host.pid}"
    assert rig.runner.on_bus_message(report(rig, "t1", Event.STARTED))
    await ordered(rig, "t2")  # the next wave: in the same host
    rig.runner.on_bus_message(report(rig, "t2", Event.STARTED))
    view = await asyncio.wait_for(starting, WAIT)
    assert view["state"] == "running"
    t1, t2 = rig.task("t1"), rig.task("t2")
    assert state_of(t1) == ACTIVE and state_of(t2) == ACTIVE
    assert t1["pid"] == t2["pid"] == host.pid != rig.task("p")["pid"]
    assert rig.fake.start_count(THREAD_HOST_ID) == 1
    rows = rig.stored()
    assert (
        rows["t1"].runner_data["host"]["pid"] == host.pid and rows["t1"].runner_data["thread_run"]
    )

    rig.runner.on_bus_message(report(rig, "t1", Event.STATUS, text="halfway"))
    assert rig.task("t1")["status_text"] == "halfway"

    stopping = rig.stopping()
    await ordered(rig, "t2", ORDER_STOP)  # t2 first: it runs after t1
    assert rig.published.orders("t1", ORDER_STOP) == []
    rig.runner.on_bus_message(report(rig, "t2", Event.STOPPED))
    await ordered(rig, "t1", ORDER_STOP)
    rig.runner.on_bus_message(report(rig, "t1", Event.STOPPED))
    view = await asyncio.wait_for(stopping, WAIT)
    assert all(state_of(task) == STOPPED for task in view["tasks"])
    assert rig.fake.order("stop") == ["p", THREAD_HOST_ID]  # the last thread down: its host
    assert rig.published.events("t1") == ["started", "stopped"]


@scenario(threaded=True)
async def test_a_failed_thread_fails_its_task_only(rig: Rig) -> None:
    rig.fake.auto_ready = True
    starting = rig.starting([TaskDef("t1"), TaskDef("t2")], thread_ids=["t1", "t2"])
    for task_id in ("t1", "t2"):
        await ordered(rig, task_id)
        rig.runner.on_bus_message(report(rig, task_id, Event.STARTED))
    await asyncio.wait_for(starting, WAIT)
    old_run = report(rig, "t1", Event.FAILED, reason="late")  # of this run: kept for later
    for forged in ((0, 1), None):  # another process (even root's), or TCP: not its host
        rig.runner.on_bus_message(dataclasses.replace(old_run, sender=forged))
    assert state_of(rig.task("t1")) == ACTIVE, "a thread's end is believed from its host only"
    rig.runner.on_bus_message(
        report(rig, "t1", Event.FAILED, reason="ValueError: boom", exit_code=3)
    )
    t1 = rig.task("t1")
    assert state_of(t1) == ("failed", "failed", "exit-code", "failed")
    assert t1["last_exit"].startswith(
        "exited with status 3 (exit-code): its thread called sys.exit()"
    )
    assert "ValueError: boom" in t1["last_exit"]
    assert state_of(rig.task("t2")) == ACTIVE
    assert rig.fake.order("stop") == []  # the host runs on for t2

    await rig.start(None, services=["t1"], block=False)  # again: a new run, the same host
    await ordered(rig, "t1", count=2)
    rig.runner.on_bus_message(old_run)  # a late report of the earlier run: ignored
    assert rig.task("t1")["state"] == "activating"
    rig.runner.on_bus_message(report(rig, "t1", Event.STARTED))
    assert state_of(rig.task("t1")) == ACTIVE and rig.fake.start_count(THREAD_HOST_ID) == 1


@scenario(threaded=True)
async def test_thread_host_that_cannot_start_fails_the_thread_tasks(rig: Rig) -> None:
    rig.fake.auto_ready = True
    rig.fake.fail_start(THREAD_HOST_ID, ExitInfo(Result.RESOURCES, detail="exec failed"))
    with pytest.raises(OperationFailed, match="task t1 ended \\(resources\\)") as failed:
        await rig.start([TaskDef("t1"), TaskDef("p")], thread_ids=["t1"])
    assert "its thread host failed" in failed.value.message
    assert state_of(rig.task("t1")) == ("failed", "failed", "resources", "failed")


@scenario(threaded=True)
async def test_thread_tasks_are_not_re_adopted(rig: Rig) -> None:
    rig.fake.auto_ready = True
    starting = rig.starting([TaskDef("t1"), TaskDef("p")], thread_ids=["t1"])
    await ordered(rig, "t1")
    rig.runner.on_bus_message(report(rig, "t1", Event.STARTED))
    await asyncio.wait_for(starting, WAIT)
    await die(rig)

    new, lost = await successor(rig, THREAD_HOST_ID, "p", threaded=True)
    try:
        assert lost == [
            f"{TX}/t1: a Thread task is not re-adopted after a daemon restart"
            f" (pid {rig.task('t1')['pid']} is stopped)"
        ]
        t1 = new.task("t1")
        assert state_of(t1) == ("failed", "failed", "lost", "failed")
        assert state_of(new.task("p")) == ACTIVE  # a process is re-adopted
        await new.fake.stopped(THREAD_HOST_ID)  # the old host goes
        assert new.fake.order("stop") == [THREAD_HOST_ID]
    finally:
        await new.close()
