"""The local runner's bookkeeping, with real processes and a real notify socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from zsvc.hostwire import INVOCATION_ENV
from zsvc.naming import instance_id, instance_slice
from zsvc.paths import RuntimeLayout
from zsvc.procs import children_of, descendants, process_start_time
from zsvc.runners.base import ExitInfo, LaunchError, LaunchSpec, TaskKey
from zsvc.runners.cgroup import cgroup_of, find_hierarchy
from zsvc.runners.exitcodes import EXIT_CGROUP, EXIT_LIMITS
from zsvc.runners.local import LocalRunner
from zsvc.runners.localexec import wrap_exec
from zsvc.runners.localtask import LocalTask
from zsvc.states import Result, StartType

REPO = Path(__file__).resolve().parents[2]
CGROUPS = find_hierarchy() if os.environ.get("ZSVC_CGROUPS", "1") != "0" else None
"""The runner's cgroups; ZSVC_CGROUPS=0 runs these tests (and their daemons) without."""
needs_cgroup2 = pytest.mark.skipif(
    CGROUPS is None,
    reason="no writable cgroup2 hierarchy (needs root and a cgroup2 mount) or ZSVC_CGROUPS=0",
)


class Recorder:
    def __init__(self) -> None:
        self.ready: list[TaskKey] = []
        self.exits: list[tuple[TaskKey, ExitInfo]] = []
        self.status: list[tuple[TaskKey, str]] = []
        self.ready_at: float | None = None
        self.got_status = asyncio.Event()

    def on_ready(self, key: TaskKey) -> None:
        self.ready.append(key)
        self.ready_at = asyncio.get_running_loop().time()

    def on_status(self, key: TaskKey, text: str) -> None:
        self.status.append((key, text))
        self.got_status.set()

    def on_stopping(self, key: TaskKey) -> None:
        pass

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None:
        self.exits.append((key, info))


def _spec(
    tmp: Path,
    argv: list[str],
    notify: bool = True,
    watchdog_sec: float | None = None,
    stop_timeout: float = 2.0,
) -> LaunchSpec:
    return LaunchSpec(
        transaction="TX",
        task_id="t1",
        unit=f"zsvc-TX-t1-{uuid.uuid4().hex[:8]}.service",  # a cgroup of its own per test
        argv=tuple(argv),
        env=dict(os.environ, PYTHONPATH=str(REPO), **{INVOCATION_ENV: uuid.uuid4().hex}),
        cwd=str(tmp),
        start_type=StartType.NOTIFY if notify else StartType.EXEC,
        start_timeout=10.0,
        stop_timeout=stop_timeout,
        log_path=tmp / "t1.log",
        watchdog_sec=watchdog_sec,
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
            runner.reader.read()  # the datagram is read while the pid is unknown
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


# --- leaving nothing behind ---------------------------------------------------------------

ORPHANER = textwrap.dedent(
    """
    import os, signal, socket, sys
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the intermediate: a new session, one child, and away
        os.close(read_end)
        os.setsid()
        if os.fork() == 0:  # the grandchild: only SIGKILL ends it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            os.execvp("sleep", ["sleep", "3600"])
        os._exit(0)
    os.close(write_end)
    grandchild = os.read(read_end, 64).decode()
    os.wait()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.sendto(f"READY=1\\nSTATUS={grandchild}".encode(), os.environ["NOTIFY_SOCKET"])
    if sys.argv[1] == "exit":
        sys.exit(0)
    signal.pause()
    """
)
"""A main process whose grandchild left its session and its parent; the grandchild's pid is
sent as STATUS= with READY=1. Argument: "exit" to end at once, anything else to wait."""


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_quietly(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@needs_cgroup2
@pytest.mark.parametrize("ending", ["stop", "exit"])
def test_everything_a_task_starts_shares_its_cgroup_and_dies_with_it(
    tmp_path: Path, ending: str
) -> None:
    assert CGROUPS is not None
    grandchild: int | None = None

    async def scenario() -> tuple[ExitInfo, Path, list[int]]:
        nonlocal grandchild
        events = Recorder()
        runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=False)
        await runner.open(events)
        try:
            task = await runner.start(_spec(tmp_path, [sys.executable, "-c", ORPHANER, ending]))
            path = Path(task.describe()["cgroup"])
            await asyncio.wait_for(events.got_status.wait(), 10)
            grandchild = int(events.status[0][1])
            members: list[int] = []
            if ending == "stop":
                assert task.cgroup is not None
                members = task.cgroup.procs()
                assert cgroup_of(grandchild) == task.cgroup.relative
                info = await asyncio.wait_for(task.stop(), 10)
            else:
                info = await asyncio.wait_for(task.wait(), 10)
            return info, path, members
        finally:
            await runner.close()

    try:
        info, path, members = asyncio.run(scenario())
        assert info.result is Result.SUCCESS
        assert grandchild is not None and not _alive(grandchild)  # dead when the end is reported
        assert path.parent == _runner_cgroups(tmp_path) and not path.exists()
        if ending == "stop":
            assert grandchild in members
    finally:
        _kill_quietly(grandchild)


def _runner_cgroups(runtime: Path) -> Path:
    """The cgroup directory of a runner made on *runtime* without an instance: its own."""
    assert CGROUPS is not None
    return CGROUPS.top / instance_slice(instance_id(runtime))


def test_a_missing_program_is_refused_before_the_start(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["/no/such/program"], notify=False)

    async def scenario() -> LaunchError:
        runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=False)
        await runner.open(Recorder())
        try:
            with pytest.raises(LaunchError) as caught:
                await runner.start(spec)
            return caught.value
        finally:
            await runner.close()

    error = asyncio.run(scenario())
    assert error.info.exit_code == 203 and error.info.result is Result.EXIT_CODE
    assert "cannot execute /no/such/program: No such file or directory" in str(error)
    if CGROUPS is not None:
        assert not (_runner_cgroups(tmp_path) / spec.unit).exists()


def _run_with_fd_limit(tmp: Path, fd_limit: int, use_cgroups: bool) -> tuple[ExitInfo, str]:
    """Run ``sh`` printing its soft and hard open-files limits under a runner that
    gives its tasks *fd_limit*; its end and its output."""
    spec = _spec(tmp, ["sh", "-c", "ulimit -S -n; ulimit -H -n"], notify=False)

    async def scenario() -> ExitInfo:
        runner = LocalRunner(
            RuntimeLayout(tmp), use_zygote=False, use_cgroups=use_cgroups, task_fd_limit=fd_limit
        )
        await runner.open(Recorder())
        try:
            task = await runner.start(spec)
            return await asyncio.wait_for(task.wait(), 10)
        finally:
            await runner.close()

    info = asyncio.run(scenario())
    return info, spec.log_path.read_text()


@pytest.mark.parametrize("use_cgroups", [True, False], ids=["cgroup", "no-cgroup"])
def test_an_executed_task_gets_the_runners_fd_limit(tmp_path: Path, use_cgroups: bool) -> None:
    """The daemon raised its own soft limit; the task gets the one it was started with."""
    if use_cgroups and CGROUPS is None:
        pytest.skip("no writable cgroup2 hierarchy")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 512:
        pytest.skip(f"the hard open-files limit is {hard}")
    info, output = _run_with_fd_limit(tmp_path, 512, use_cgroups)
    assert info.result is Result.SUCCESS, output
    shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert output.split() == ["512", shown_hard]


def test_an_fd_limit_that_cannot_be_set_ends_the_task_with_exit_limits(tmp_path: Path) -> None:
    """systemd's exit status 205 (EXIT_LIMITS), before the program runs."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-files limit to exceed")
    info, output = _run_with_fd_limit(tmp_path, hard + 1, use_cgroups=False)
    assert (info.result, info.exit_code) == (Result.EXIT_CODE, 205)
    assert f"zsvc: cannot set the open-files limit to {hard + 1}" in output


def test_the_wrapper_exits_with_systemds_statuses(tmp_path: Path) -> None:
    """The shell alone (no task started): a cgroup it cannot join is EXIT_CGROUP, a limit
    it cannot set EXIT_LIMITS, and on success the program runs with the arguments as given."""
    missing = str(tmp_path / "no-such-group")
    joined = subprocess.run(wrap_exec(["true"], missing, None), capture_output=True, text=True)
    assert joined.returncode == EXIT_CGROUP
    assert f"zsvc: cannot join the cgroup {missing}" in joined.stderr
    limited = subprocess.run(wrap_exec(["true"], None, -5), capture_output=True, text=True)
    assert limited.returncode == EXIT_LIMITS
    echoed = subprocess.run(
        wrap_exec(["printf", "%s|", "a b", "$HOME"], None, 64), capture_output=True, text=True
    )
    assert (echoed.returncode, echoed.stdout) == (0, "a b|$HOME|")


def test_a_run_whose_pid_never_reached_the_table_is_found_by_the_zygotes_marker(
    tmp_path: Path,
) -> None:
    """The runner, not the daemon, knows its marker: found once, then gone; and dropped
    when the daemon says it saved the run's description."""
    runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=False)
    invocation, me = uuid.uuid4().hex, os.getpid()
    marker = runner.layout.spawned(invocation)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{me}\n")
    found = runner.find_unsaved_run(invocation)
    assert found == {"pid": me, "pgid": me, "start_time": process_start_time(me)}
    assert not marker.exists()
    assert runner.find_unsaved_run("") is None
    marker.write_text(f"{me}\n")
    runner.run_saved(LocalTask(spec=_spec(tmp_path, ["unused"]), pid=me, invocation=invocation))
    assert not marker.exists()


class _PreviousDaemon:
    """A task started the way an earlier daemon did: its main process joined a cgroup
    through the runner's own wrapper; the grandchild's pid arrives on a notify socket.
    The group is in ``zsvc.slice`` itself, as a version without instances made it: the
    runner follows it (re-adoption after an upgrade) by the saved path or the pid."""

    def __init__(self, tmp: Path, unit: str):
        from zsvc.notify import NotifyServer

        assert CGROUPS is not None
        self.cgroup = CGROUPS.create(unit, f"{unit}-x")
        self.invocation = uuid.uuid4().hex
        self.server = NotifyServer(tmp / "previous.sock")
        argv = wrap_exec([sys.executable, "-c", ORPHANER, "stop"], str(self.cgroup.path), None)
        env = dict(os.environ, NOTIFY_SOCKET=self.server.path, ZSVC_INVOCATION=self.invocation)
        self.main = subprocess.Popen(argv, env=env, process_group=0)
        self.grandchild: int | None = None
        deadline = time.monotonic() + 10
        while self.grandchild is None and (remaining := deadline - time.monotonic()) > 0:
            select.select([self.server.fileno()], [], [], remaining)
            for note in self.server.drain():
                if not isinstance(note, Exception) and note.status:
                    self.grandchild = int(note.status)
        assert self.grandchild is not None, "the task did not report its grandchild"

    def description(self, saved: bool) -> dict[str, object]:
        found = {
            "pid": self.main.pid,
            "pgid": self.main.pid,
            "start_time": process_start_time(self.main.pid),
            "invocation": self.invocation,
        }
        return {**found, "cgroup": str(self.cgroup.path)} if saved else found

    def close(self) -> None:
        self.server.close()
        _kill_quietly(self.grandchild)
        with contextlib.suppress(ProcessLookupError):
            self.main.kill()
        self.main.wait(10)


@needs_cgroup2
@pytest.mark.parametrize("saved", [True, False], ids=["described", "found-by-pid"])
def test_an_adopted_task_is_still_stopped_as_a_whole(tmp_path: Path, saved: bool) -> None:
    spec = _spec(tmp_path, ["unused"])
    previous = _PreviousDaemon(tmp_path, spec.unit)

    async def scenario() -> ExitInfo:
        runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=False)
        await runner.open(Recorder())
        try:
            task = await runner.adopt(spec, previous.description(saved))
            assert task is not None and task.cgroup is not None
            assert task.cgroup.path == previous.cgroup.path
            assert task.describe()["cgroup"] == str(previous.cgroup.path)
            return await asyncio.wait_for(task.stop(), 10)
        finally:
            await runner.close()

    try:
        info = asyncio.run(scenario())
        assert info.result is Result.SUCCESS
        assert previous.grandchild is not None and not _alive(previous.grandchild)
        assert not previous.cgroup.path.exists()
    finally:
        previous.close()


@needs_cgroup2
def test_what_a_task_lost_while_the_daemon_was_down_left_behind_is_killed(
    tmp_path: Path,
) -> None:
    """KillMode=control-group, late: its main process ended, its grandchild did not."""
    spec = _spec(tmp_path, ["unused"])
    previous = _PreviousDaemon(tmp_path, spec.unit)
    try:
        description = previous.description(saved=True)
        previous.main.kill()
        previous.main.wait(10)
        assert previous.grandchild is not None and _alive(previous.grandchild)

        async def scenario() -> object:
            runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=False)
            await runner.open(Recorder())
            try:
                return await runner.adopt(spec, description)
            finally:
                await runner.close()

        assert asyncio.run(scenario()) is None
        assert not _alive(previous.grandchild)
        assert not previous.cgroup.path.exists()
    finally:
        previous.close()


FALLBACK = textwrap.dedent(
    """
    import asyncio, contextlib, json, os, select, signal, sys, uuid
    from pathlib import Path
    from zsvc.paths import RuntimeLayout
    from zsvc.hostwire import INVOCATION_ENV
    from zsvc.runners.base import LaunchSpec
    from zsvc.runners.local import LocalRunner
    from zsvc.states import StartType

    tmp, ending, orphaner = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Events:
        def __init__(self):
            self.status = asyncio.Queue()
        def on_ready(self, key): pass
        def on_status(self, key, text):  # watch it now: with "exit", it is killed very soon
            pid = int(text)
            try:
                self.status.put_nowait((pid, os.pidfd_open(pid)))
            except ProcessLookupError:  # killed and reaped already
                self.status.put_nowait((pid, None))
        def on_stopping(self, key): pass
        def on_main_pid(self, key, pid, description): pass
        def on_exit(self, key, info): pass

    async def main():
        events = Events()
        runner = LocalRunner(RuntimeLayout(tmp), use_zygote=False, use_cgroups=False)
        await runner.open(events)
        env = dict(os.environ, **{INVOCATION_ENV: uuid.uuid4().hex})
        spec = LaunchSpec("TX", "t1", "zsvc-TX-t1.service", (sys.executable, "-c", orphaner,
                          ending), env, str(tmp), StartType.NOTIFY, 10.0, 2.0, tmp / "t1.log")
        task = await runner.start(spec)
        grandchild, watch = await asyncio.wait_for(events.status.get(), 10)
        try:
            info = await asyncio.wait_for(task.stop() if ending == "stop" else task.wait(), 10)
            gone = True
            if watch is not None:  # waited for in a thread: the runner's second looks at an
                # orphan caught inside execve are timers of this loop, which select() would block
                gone = bool((await asyncio.to_thread(select.select, [watch], [], [], 5))[0])
            result = {"subreaper": runner.subreaper.active, "cgroup": task.describe()["cgroup"],
                      "result": str(info.result), "grandchild_gone": gone}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)
            await runner.close()
        print(json.dumps(result))

    asyncio.run(main())
    """
)
"""The runner without cgroups, in a process of its own: it becomes a child subreaper."""


@pytest.mark.parametrize("ending", ["stop", "exit"])
def test_without_cgroups_orphans_of_an_ended_task_are_killed(tmp_path: Path, ending: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK, str(tmp_path), ending, ORPHANER],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    import json

    outcome = json.loads(done.stdout.splitlines()[-1])
    assert outcome == {
        "subreaper": True,
        "cgroup": None,
        "result": "success",
        "grandchild_gone": True,
    }


# --- the watchdog ---------------------------------------------------------------------------

SILENT = "from zsvc.notify import sd_notify; import time; sd_notify('READY=1'); time.sleep(60)"
TRIGGER = (
    "from zsvc.notify import sd_notify; import time;"
    " sd_notify('READY=1'); sd_notify('WATCHDOG=trigger'); time.sleep(60)"
)
ABORT_PROOF = (
    "from zsvc.notify import sd_notify; import signal, time;"
    " signal.signal(signal.SIGABRT, signal.SIG_IGN); sd_notify('READY=1'); time.sleep(60)"
)
PINGER = textwrap.dedent(
    """
    import os, time
    from zsvc.notify import sd_notify, watchdog_interval
    every = watchdog_interval()
    assert every and "WATCHDOG_PID" not in os.environ, dict(os.environ)
    sd_notify("READY=1")
    while True:
        time.sleep(every)  # the task's own pace
        sd_notify("WATCHDOG=1")
    """
)


def _run_watchdog(tmp: Path, code: str, watchdog_sec: float, stop_timeout: float = 2.0):
    """Start *code* with a watchdog; (how it ended, seconds from READY=1 to the end)."""

    async def scenario() -> tuple[ExitInfo, float]:
        events = Recorder()
        runner = LocalRunner(RuntimeLayout(tmp), use_zygote=False)
        await runner.open(events)
        try:
            argv = [sys.executable, "-c", code]
            task = await runner.start(
                _spec(tmp, argv, watchdog_sec=watchdog_sec, stop_timeout=stop_timeout)
            )
            info = await asyncio.wait_for(task.wait(), 10 + watchdog_sec + 2 * stop_timeout)
            assert events.ready_at is not None
            return info, asyncio.get_running_loop().time() - events.ready_at
        finally:
            await runner.close()

    return asyncio.run(scenario())


def test_the_watchdog_aborts_a_task_that_sends_no_ping(tmp_path: Path) -> None:
    info, after = _run_watchdog(tmp_path, SILENT, watchdog_sec=0.5)
    assert (info.result, info.signal) == (Result.WATCHDOG, signal.SIGABRT)
    assert 0.45 <= after <= 0.5 + 1.5, after
    assert "(watchdog)" in info.describe()


def test_watchdog_trigger_aborts_at_once(tmp_path: Path) -> None:
    info, after = _run_watchdog(tmp_path, TRIGGER, watchdog_sec=30.0)
    assert (info.result, info.signal) == (Result.WATCHDOG, signal.SIGABRT)
    assert after < 5.0


def test_a_task_that_survives_sigabrt_gets_the_normal_stop(tmp_path: Path) -> None:
    info, after = _run_watchdog(tmp_path, ABORT_PROOF, watchdog_sec=0.3, stop_timeout=0.3)
    assert (info.result, info.signal) == (Result.WATCHDOG, signal.SIGTERM)
    assert after >= 0.3 + 0.3 - 0.05


def test_a_task_that_pings_keeps_running(tmp_path: Path) -> None:
    period = 0.4

    async def scenario() -> tuple[ExitInfo, float | None]:
        events = Recorder()
        runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=False)
        await runner.open(events)
        try:
            task = await runner.start(
                _spec(tmp_path, [sys.executable, "-c", PINGER], watchdog_sec=period)
            )
            # Five periods: it must still run (no end within the wait) and have pinged.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(task.wait(), 5 * period)
            assert events.ready and task.poll() is None
            last_ping = task.last_ping
            return await asyncio.wait_for(task.stop(), 10), last_ping
        finally:
            await runner.close()

    info, last_ping = asyncio.run(scenario())
    assert last_ping is not None
    assert info.result is Result.SUCCESS, info.describe()
