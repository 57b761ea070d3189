"""The local runner's bookkeeping, with real processes and a real notify socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import sys
from pathlib import Path

from zsvc.paths import RuntimeLayout
from zsvc.runners.base import ExitInfo, LaunchSpec, TaskKey
from zsvc.runners.local import LocalRunner, children_of, descendants
from zsvc.states import Result


class Recorder:
    def __init__(self) -> None:
        self.ready: list[TaskKey] = []
        self.exits: list[tuple[TaskKey, ExitInfo]] = []
        self.status: list[tuple[TaskKey, str]] = []

    def on_ready(self, key: TaskKey) -> None:
        self.ready.append(key)

    def on_status(self, key: TaskKey, text: str) -> None:
        self.status.append((key, text))

    def on_stopping(self, key: TaskKey) -> None:
        pass

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None:
        self.exits.append((key, info))


def _spec(tmp: Path, argv: list[str], notify: bool = True) -> LaunchSpec:
    return LaunchSpec(
        transaction="TX",
        task_id="t1",
        unit="zsvc-TX-t1.service",
        argv=tuple(argv),
        env=dict(os.environ),
        cwd=str(tmp),
        notify=notify,
        start_timeout=10.0,
        stop_timeout=2.0,
        log_path=tmp / "t1.log",
    )


def test_a_ready_that_arrives_before_the_pid_is_known_is_not_lost(tmp_path: Path) -> None:
    """With the zygote, READY=1 can be read before the answer that names the task's pid."""

    async def scenario() -> Recorder:
        events = Recorder()
        runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=False)
        await runner.open(events)
        assert runner.notify_server is not None
        env = dict(os.environ, NOTIFY_SOCKET=str(runner.layout.notify))
        code = "from zsvc.notify import sd_notify; sd_notify('READY=1', 'STATUS=early')"
        child = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            select.select([runner.notify_server.fileno()], [], [], 10)
            runner._on_notify()  # the datagram is read while the pid is unknown
            assert events.ready == []
            spec = _spec(tmp_path, ["unused"])
            runner._started(spec, child.pid)  # now the pid is registered
            assert events.ready == [("TX", "t1")]
            assert events.status == [(("TX", "t1"), "early")]
        finally:
            child.wait(10)
            child.returncode = 0
            await runner.close()
        return events

    asyncio.run(scenario())


def test_exit_status_and_classification(tmp_path: Path) -> None:
    async def scenario() -> list[ExitInfo]:
        events = Recorder()
        runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=False)
        await runner.open(events)
        infos = []
        try:
            for argv, notify in (
                (["sh", "-c", "exit 3"], False),
                (["sh", "-c", "exit 0"], True),  # exits before READY=1: protocol
                (["sh", "-c", "kill -SEGV $$"], False),
            ):
                task = await runner.start(_spec(tmp_path, argv, notify))
                infos.append(await asyncio.wait_for(task.wait(), 10))
        finally:
            await runner.close()
        return infos

    exit3, early, segv = asyncio.run(scenario())
    assert (exit3.result, exit3.exit_code) == (Result.EXIT_CODE, 3)
    assert early.result is Result.PROTOCOL
    assert segv.result in (Result.SIGNAL, Result.CORE_DUMP) and segv.signal == 11


def test_descendants_walks_the_process_tree(tmp_path: Path) -> None:
    child = subprocess.Popen(["sh", "-c", "sleep 30 & sh -c 'sleep 31 & wait' & wait"])
    try:
        found: set[int] = set()
        for _ in range(500):  # bounded: the shells fork within milliseconds
            found = descendants(child.pid)
            if len(found) >= 3:
                break
            select.select([], [], [], 0.01)
        assert len(found) >= 3
        assert child.pid in children_of("self")
    finally:
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        child.kill()
        child.wait(10)
