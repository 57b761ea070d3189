"""Issue 14 on the local runner, with real processes: start timeout, start_secs, leftovers,
type forking. Each end is read from the runner's own events (no sleep as a wait)."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_local_runner import Recorder, _alive, _kill_quietly, _spec
from zsvc.paths import RuntimeLayout
from zsvc.runners.base import ExitInfo, LaunchSpec
from zsvc.runners.ends import before_start_secs, leftover_detail, with_reason
from zsvc.runners.forking import NoMainProcess, parse_pid, top_level
from zsvc.runners.local import LocalRunner
from zsvc.runners.localtask import LocalTask
from zsvc.states import Result, StartType

WAIT = 20.0


class Events(Recorder):
    """The runner's events, MAINPID changes too."""

    def __init__(self) -> None:
        super().__init__()
        self.main_pids: list[int] = []

    def on_main_pid(self, key: object, pid: int, description: dict) -> None:
        self.main_pids.append(pid)


@dataclasses.dataclass
class Run:
    """What one run did: when it was ready (seconds after the start), how it ended."""

    ready_after: float | None
    info: ExitInfo | None
    pid: int
    """The task's main pid when it was ready (or ended)."""
    starter: int
    """The task's first pid (a forking task's starter)."""


async def _run(tmp: Path, spec: LaunchSpec, stop: bool = True) -> Run:
    """Start *spec*; wait for ready or the end (bounded); then *stop* it, or wait for
    its end."""
    events = Events()
    # A subreaper, as in the daemon (the zygote makes the runner one): a forking task's
    # daemonised process becomes the runner's child, its exit status collected.
    runner = LocalRunner(RuntimeLayout(tmp), use_zygote=True)
    await runner.open(events)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        task = await runner.start(spec)
        starter = task.pid
        assert isinstance(task, LocalTask)
        deadline = began + WAIT
        while not events.ready and task.exit_info is None and loop.time() < deadline:
            await asyncio.sleep(0.01)  # the runner's events, looked at (bounded above)
        ready_after = None if events.ready_at is None else events.ready_at - began
        pid = task.pid
        if stop and task.exit_info is None:
            await asyncio.wait_for(task.stop(), WAIT)
        await asyncio.wait_for(task.wait(), WAIT)  # not stopped: it ends by itself
        return Run(ready_after, task.exit_info, pid, starter)
    finally:
        await runner.close()


def _with(spec: LaunchSpec, **changes: object) -> LaunchSpec:
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def test_a_start_timeout_says_no_ready_within_not_exited_with_status_0(tmp_path: Path) -> None:
    spec = _with(_spec(tmp_path, ["sleep", "600"], notify=True), start_timeout=0.3)
    run = asyncio.run(_run(tmp_path, spec, stop=False))
    assert run.ready_after is None and run.info is not None
    assert run.info.result is Result.TIMEOUT
    assert run.info.describe().startswith("no READY=1 within 0.3 s (timeout)"), run.info


def test_a_task_that_dies_before_start_secs_is_a_failed_start(tmp_path: Path) -> None:
    spec = _with(_spec(tmp_path, ["sh", "-c", "exit 3"], notify=False), start_secs=5.0)
    run = asyncio.run(_run(tmp_path, spec))
    assert run.ready_after is None, "ready although it ended before start_secs"
    assert run.info is not None and run.info.result is Result.EXIT_CODE
    assert "before start_secs=5 s" in run.info.detail and "exited after 0." in run.info.detail


def test_an_exit_0_before_start_secs_is_not_a_success(tmp_path: Path) -> None:
    spec = _with(_spec(tmp_path, ["true"], notify=False), start_secs=5.0)
    run = asyncio.run(_run(tmp_path, spec))
    assert run.ready_after is None and run.info is not None
    assert run.info.result is Result.PROTOCOL, run.info


def test_a_task_that_stays_up_is_ready_after_start_secs_not_before(tmp_path: Path) -> None:
    spec = _with(_spec(tmp_path, ["sleep", "600"], notify=False), start_secs=0.5)
    run = asyncio.run(_run(tmp_path, spec))
    assert run.ready_after is not None and run.ready_after >= 0.5, run
    assert run.info is not None and run.info.clean, run.info


def test_leftovers_of_a_main_process_that_exited_are_named(tmp_path: Path) -> None:
    argv = ["sh", "-c", "sleep 600 & sleep 601 & exit 0"]
    spec = _spec(tmp_path, argv, notify=False)
    run = asyncio.run(_run(tmp_path, spec, stop=False))
    assert run.info is not None and run.info.result is Result.SUCCESS
    assert "main process exited; 2 leftover processes killed" in run.info.detail, run.info
    assert 'use <command type="forking">' in run.info.detail


FORKING_STARTER = 'sleep 600 & echo $! > "$0"; exit 0'
"""A daemon that puts itself in the background: its pid in the PID file given as $0."""


def _forking(tmp: Path, starter: str, *args: str, **changes: object) -> LaunchSpec:
    """A forking task whose starter is ``sh -c STARTER ARGS…``."""
    spec = _spec(tmp, ["sh", "-c", starter, *args], notify=False)
    return _with(spec, start_type=StartType.FORKING, **changes)


def test_a_forking_task_follows_the_pid_files_process_and_stops_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    spec = _forking(tmp_path, FORKING_STARTER, str(pid_file), pid_file=str(pid_file))
    run = asyncio.run(_run(tmp_path, spec))
    try:
        assert run.ready_after is not None, run
        assert run.pid == int(pid_file.read_text()), "the main process is the PID file's"
        assert run.pid != run.starter
        assert run.info is not None and run.info.clean, run.info  # stopped by SIGTERM
        assert not _alive(run.pid)
    finally:
        _kill_quietly(run.pid)


def test_a_forking_task_without_pid_file_follows_the_one_process_left(tmp_path: Path) -> None:
    noted = tmp_path / "noted.pid"  # where the starter notes it: not given as pid_file
    spec = _forking(tmp_path, FORKING_STARTER, str(noted))
    run = asyncio.run(_run(tmp_path, spec))
    try:
        assert run.ready_after is not None, run
        assert run.pid == int(noted.read_text()), "the main process is the one left"
        assert run.info is not None and run.info.clean, run.info
        assert not _alive(run.pid)
    finally:
        _kill_quietly(run.pid)


def test_a_forking_task_without_its_pid_file_fails_to_start(tmp_path: Path) -> None:
    never = str(tmp_path / "never.pid")
    spec = _forking(tmp_path, "sleep 600 & exit 0", pid_file=never, start_timeout=0.5)
    run = asyncio.run(_run(tmp_path, spec, stop=False))
    assert run.ready_after is None and run.info is not None
    assert run.info.result is Result.TIMEOUT  # as systemd, which waits for it as long
    assert f"no PID file {tmp_path / 'never.pid'} by the start timeout" in run.info.detail


def test_a_forking_starter_that_fails_is_a_failed_start(tmp_path: Path) -> None:
    spec = _forking(tmp_path, "exit 4")
    run = asyncio.run(_run(tmp_path, spec, stop=False))
    assert run.ready_after is None and run.info is not None
    assert (run.info.result, run.info.exit_code) == (Result.EXIT_CODE, 4)


# --- pure: the words and the PID file ------------------------------------------------


@given(st.integers(min_value=2, max_value=2**22), st.sampled_from(["", " ", "\n", " \n"]))
def test_a_pid_file_holds_one_number(pid: int, space: str) -> None:
    assert parse_pid(f"{space}{pid}{space}") == pid


@given(st.one_of(st.text(max_size=20), st.from_regex(r"\s*[0-9]{1,12}\s*", fullmatch=True)))
def test_anything_else_in_a_pid_file_is_refused(text: str) -> None:
    word = text.strip()
    if word.isascii() and word.isdigit() and len(word) <= 10 and int(word) > 1:
        assert parse_pid(text) == int(word)
    else:
        with pytest.raises(NoMainProcess):
            parse_pid(text)


def test_the_main_process_is_the_one_whose_parent_is_not_a_member() -> None:
    parents = {10: 1, 11: 10, 12: 11, 20: 1}
    assert top_level({10, 11, 12}, parents.get) == [10]
    assert top_level({10, 11, 12, 20}, parents.get) == [10, 20]


def test_the_words_of_an_end() -> None:
    assert leftover_detail(1) == (
        "main process exited; 1 leftover process killed — is this a forking program?"
        ' use <command type="forking">'
    )
    assert leftover_detail(3, forking=True) == "main process exited; 3 leftover processes killed"
    early = before_start_secs(ExitInfo(Result.SUCCESS, exit_code=0), 0.0031, 1.0)
    assert early.result is Result.PROTOCOL
    assert early.describe() == (
        "exited with status 0 (protocol): exited after 0.003 s, before start_secs=1 s"
    )
    timeout = with_reason(ExitInfo(Result.TIMEOUT, exit_code=0), "no READY=1 within 3 s")
    assert timeout.describe() == "no READY=1 within 3 s (timeout); exited with status 0"


def test_a_pid_file_naming_another_process_is_refused_and_it_is_left_alone(
    tmp_path: Path,
) -> None:
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        pid_file = tmp_path / "stranger.pid"
        starter = f"sleep 600 & echo {stranger.pid} > {pid_file}; exit 0"
        spec = _forking(
            tmp_path,
            starter,
            pid_file=str(pid_file),
            start_timeout=0.5,  # a stale pid may yet be replaced: refused at the timeout
        )
        run = asyncio.run(_run(tmp_path, spec, stop=False))
        assert run.ready_after is None and run.info is not None
        assert run.info.result is Result.PROTOCOL, run.info
        assert f"names {stranger.pid}, not a process of the task" in run.info.detail
        assert stranger.poll() is None, "a PID file made zsvc kill somebody else's process"
    finally:
        stranger.kill()
        stranger.wait(10)


def test_a_pid_file_the_daemon_writes_after_the_starter_exited_is_waited_for(
    tmp_path: Path,
) -> None:
    """nginx's master writes its PID file itself: empty (or stale) at the starter's exit."""
    pid_file = tmp_path / "late.pid"
    pid_file.write_text("")
    daemon = 'sleep 0.3; echo $$ > "$0"; exec sleep 600'
    starter = f"sh -c '{daemon}' \"$0\" & exit 0"
    spec = _forking(tmp_path, starter, str(pid_file), pid_file=str(pid_file))
    run = asyncio.run(_run(tmp_path, spec))
    try:
        assert run.ready_after is not None and run.ready_after >= 0.3, run
        assert run.pid == int(pid_file.read_text())
        assert run.info is not None and run.info.clean, run.info
    finally:
        _kill_quietly(run.pid)
