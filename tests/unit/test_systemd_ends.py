"""Issue 14 on the systemd runner, fed recorded signals (as test_systemd_runner.py):
start_secs holds "ready" back and an end before it is a failed start that says so."""

from __future__ import annotations

import asyncio
import dataclasses

from tests.unit.test_systemd_runner import (  # noqa: F401 - runner is a fixture
    TASK,
    TX,
    feed,
    launch_spec,
    runner,
    svc,
    unit,
)
from zsvc.runners.base import ExitInfo
from zsvc.states import Result, StartType

WAIT = 10.0


def _exec_with_start_secs(task, seconds: float) -> None:
    task.spec = dataclasses.replace(launch_spec(), start_type=StartType.EXEC, start_secs=seconds)


def test_an_exec_task_is_ready_only_after_start_secs(runner) -> None:  # noqa: F811
    runner, events, task = runner

    async def scenario() -> float:
        _exec_with_start_secs(task, 0.3)
        loop = asyncio.get_running_loop()
        began = loop.time()
        feed(runner, svc(42), unit("active", "running", job=9))
        assert events.seen == [], "ready before start_secs"
        while not events.seen and loop.time() < began + WAIT:
            await asyncio.sleep(0.01)  # the runner's timer, looked at (bounded)
        return loop.time() - began

    waited = asyncio.run(scenario())
    assert events.seen == [("ready", (TX, TASK))]
    assert waited >= 0.25, waited  # the handle was made a little before the feed


def test_an_exec_task_that_ends_before_start_secs_is_a_failed_start(runner) -> None:  # noqa: F811
    runner, events, task = runner

    async def scenario() -> None:
        _exec_with_start_secs(task, 5.0)
        feed(runner, svc(42), unit("active", "running", job=9))
        feed(runner, svc(0, "success", 1, 0), unit("inactive", "dead"))

    asyncio.run(scenario())
    assert len(events.seen) == 1 and events.seen[0][0] == "exit", events.seen
    info: ExitInfo = events.seen[0][1]
    assert info.result is Result.PROTOCOL, info
    assert "before start_secs=5 s" in info.detail, info


def test_processes_left_by_a_main_process_that_exited_are_said(runner) -> None:  # noqa: F811
    """The unit goes through stop-sigterm though nobody asked it to stop: systemd is
    killing what the main process left (it goes straight to dead when nothing is left)."""
    runner, events, task = runner
    task.spec = dataclasses.replace(launch_spec(), start_type=StartType.EXEC)
    feed(runner, svc(42), unit("active", "running", job=9))
    task._group = None  # pid 42 is somebody else's here: its cgroup is not counted
    feed(runner, svc(0, "success", 1, 0), unit("deactivating", "stop-sigterm"))
    feed(runner, unit("inactive", "dead"))
    assert events.seen[0] == ("ready", (TX, TASK))
    info: ExitInfo = events.seen[-1][1]
    assert info.result is Result.SUCCESS
    assert info.detail.startswith("main process exited; its leftover processes killed — is"), info


def test_a_stop_asked_for_is_no_leftover(runner) -> None:  # noqa: F811
    runner, events, task = runner
    task.spec = dataclasses.replace(launch_spec(), start_type=StartType.EXEC)
    feed(runner, svc(42), unit("active", "running", job=9))
    task.stop_requested = True
    feed(runner, svc(0, "success", 2, 15), unit("deactivating", "stop-sigterm"))
    feed(runner, unit("inactive", "dead"))
    assert "leftover" not in events.seen[-1][1].detail
