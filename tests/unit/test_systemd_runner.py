"""The systemd runner's signal handling, fed a recorded D-Bus conversation (systemd 252).

The messages are real dbus-fast ``Message`` objects in the order systemd sent
them in the research runs (shared/research/systemd-dbus.md §3, §5): what the
runner makes of them is checked here without a bus; the system tier runs the
same code against a real systemd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant

from zsvc import journal
from zsvc.config.model import ProcessSettings
from zsvc.naming import unit_name
from zsvc.runners.base import (
    ExitInfo,
    LaunchError,
    LaunchSpec,
    LogSource,
    RunnerUnavailable,
    TaskKey,
)
from zsvc.runners.choose import choose_runner, systemd_booted
from zsvc.runners.systemd import NO_INSTANCE, SystemdRunner, usable_controllers
from zsvc.runners.systemdtask import SystemdTask
from zsvc.runners.transient import unit_path
from zsvc.states import Result, StartType

PROPS = "org.freedesktop.DBus.Properties"
SVC, UNIT = "org.freedesktop.systemd1.Service", "org.freedesktop.systemd1.Unit"
MANAGER = "org.freedesktop.systemd1.Manager"
TX, TASK = "a-b", "t1"
NAME = unit_name(TX, TASK, NO_INSTANCE)
PATH = unit_path(NAME)


class Recorder:
    """RunnerEvents that remember what they were told, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def on_ready(self, key: TaskKey) -> None:
        self.seen.append(("ready", key))

    def on_status(self, key: TaskKey, text: str) -> None:
        self.seen.append(("status", text))

    def on_stopping(self, key: TaskKey) -> None:
        self.seen.append(("stopping", key))

    def on_main_pid(self, key: TaskKey, pid: int, description: dict[str, Any]) -> None:
        self.seen.append(("main_pid", pid))

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None:
        self.seen.append(("exit", info))


def changed(interface: str, values: dict[str, tuple[str, Any]], path: str = PATH) -> Message:
    body = [interface, {k: Variant(sig, v) for k, (sig, v) in values.items()}, []]
    return Message(
        message_type=MessageType.SIGNAL,
        path=path,
        interface=PROPS,
        member="PropertiesChanged",
        signature="sa{sv}as",
        body=body,
    )


def manager_signal(member: str, signature: str, body: list[Any]) -> Message:
    return Message(
        message_type=MessageType.SIGNAL,
        path="/org/freedesktop/systemd1",
        interface=MANAGER,
        member=member,
        signature=signature,
        body=body,
    )


def svc(pid: int, result: str = "success", code: int = 0, status: int = 0, text: str = ""):
    return changed(
        SVC,
        {
            "MainPID": ("u", pid),
            "Result": ("s", result),
            "ExecMainCode": ("i", code),
            "ExecMainStatus": ("i", status),
            "StatusText": ("s", text),
        },
    )


def unit(active: str, sub: str, job: int = 0) -> Message:
    return changed(
        UNIT,
        {
            "ActiveState": ("s", active),
            "SubState": ("s", sub),
            "Job": ("(uo)", [job, f"/org/freedesktop/systemd1/job/{job}" if job else "/"]),
            "InvocationID": ("ay", b"\xab\xcd"),
        },
    )


def launch_spec() -> LaunchSpec:
    return LaunchSpec(
        transaction=TX,
        task_id=TASK,
        unit=NAME,
        argv=("/bin/true",),
        env={},
        cwd="/",
        start_type=StartType.NOTIFY,
        start_timeout=5.0,
        stop_timeout=5.0,
        log_path=Path("/dev/null"),
    )


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> tuple[SystemdRunner, Recorder, SystemdTask]:
    monkeypatch.setattr(journal, "send", lambda *args, **fields: True)  # no journal here
    events = Recorder()
    runner = SystemdRunner(user=False)
    runner.events = events
    # As start() returns it: with the MainPID it waited for, events released.
    task = SystemdTask(spec=launch_spec(), pid=42, runner=runner, unit=NAME, path=PATH)
    task._returned = True  # as start() does: the daemon has read the pid
    task._release()
    runner.by_path[PATH] = task
    return runner, events, task


def feed(runner: SystemdRunner, *messages: Message) -> None:
    for message in messages:
        runner._on_message(message)


def test_a_notify_task_that_becomes_ready_reports_status_then_fails(runner) -> None:
    runner, events, task = runner
    feed(
        runner,
        svc(42),
        unit("inactive", "dead", job=9),
        unit("activating", "start", job=9),
        svc(42, text="phase-a"),
        unit("active", "running", job=9),
        manager_signal("JobRemoved", "uoss", [9, "/org/freedesktop/systemd1/job/9", NAME, "done"]),
        svc(42, text="phase-a"),  # the re-sent pair changes nothing
        unit("active", "running"),
        svc(0, "exit-code", 1, 3, "phase-a"),
        unit("failed", "failed"),
        manager_signal("UnitRemoved", "so", [NAME, PATH]),
    )
    assert task.pid == 42
    assert events.seen == [
        ("status", "phase-a"),
        ("ready", (TX, TASK)),
        ("exit", ExitInfo(Result.EXIT_CODE, exit_code=3)),
    ]
    assert task.describe() == {"pid": 42, "unit": NAME, "invocation_id": "abcd"}
    assert task.removed.is_set()
    assert PATH not in runner.by_path  # forgotten once removed: the name is free


def test_no_ready_within_the_start_timeout_is_a_timeout(runner) -> None:
    runner, events, _task = runner
    feed(
        runner,
        svc(42),
        unit("activating", "start", job=9),
        unit("deactivating", "stop-sigterm", job=9),
        svc(0, "timeout", 2, 15),
        manager_signal("JobRemoved", "uoss", [9, "/job/9", NAME, "failed"]),
        unit("failed", "failed"),
    )
    said = "no READY=1 within 5 s"  # not "killed by SIGTERM (timeout)" alone (issue 14)
    assert events.seen == [("exit", ExitInfo(Result.TIMEOUT, signal=15, detail=said))]


def test_a_start_job_that_fails_before_the_unit_ever_ran_ends_the_run(runner) -> None:
    runner, events, _task = runner
    feed(
        runner,
        unit("inactive", "dead", job=9),
        manager_signal("JobRemoved", "uoss", [9, "/job/9", NAME, "dependency"]),
    )
    assert events.seen == [
        ("exit", ExitInfo(Result.RESOURCES, detail="systemd's start job ended: dependency"))
    ]


def test_the_previous_runs_late_removal_does_not_end_a_new_run(runner) -> None:
    runner, events, task = runner
    feed(runner, manager_signal("UnitRemoved", "so", [NAME, PATH]), unit("activating", "start"))
    assert events.seen == [] and not task.removed.is_set()


def test_stopping_and_a_new_main_pid_are_reported(runner) -> None:
    runner, events, _task = runner
    feed(
        runner,
        svc(42),
        unit("active", "running"),
        svc(43),  # MAINPID= from the task
        unit("deactivating", "stop-sigterm"),  # STOPPING=1, nobody asked
        svc(0, "success", 1, 0),
        unit("inactive", "dead"),
    )
    assert events.seen == [
        ("ready", (TX, TASK)),
        ("main_pid", 43),
        ("stopping", (TX, TASK)),
        ("exit", ExitInfo(Result.SUCCESS, exit_code=0)),
    ]


def test_events_wait_until_the_daemon_has_the_handle(monkeypatch) -> None:
    monkeypatch.setattr(journal, "send", lambda *args, **fields: True)
    events = Recorder()
    runner = SystemdRunner(user=False)
    runner.events = events
    task = SystemdTask(spec=launch_spec(), pid=0, runner=runner, unit=NAME, path=PATH)
    runner.by_path[PATH] = task
    feed(
        runner,
        svc(42),
        unit("active", "running"),
        svc(0, "exit-code", 1, 1),
        unit("failed", "failed"),
    )
    assert events.seen == [] and task.exit_info is not None  # wait() already works
    task._release()
    assert [kind for kind, _ in events.seen] == ["ready", "exit"]


def test_signals_of_other_units_are_ignored(runner) -> None:
    runner, events, _task = runner
    other = changed(UNIT, {"ActiveState": ("s", "failed")}, path=unit_path("sshd.service"))
    feed(runner, other, manager_signal("UnitRemoved", "so", ["sshd.service", "/x"]))
    assert events.seen == []


def test_choose_runner_local_and_auto_without_systemd() -> None:
    from zsvc.paths import RuntimeLayout

    layout = RuntimeLayout(Path("/nonexistent"))
    assert asyncio.run(choose_runner("local", layout)).name == "local"
    if not systemd_booted():
        assert asyncio.run(choose_runner("auto", layout)).name == "local"
        with pytest.raises(RunnerUnavailable, match="not the service manager"):
            asyncio.run(choose_runner("systemd", layout))
    with pytest.raises(RunnerUnavailable, match="unknown runner"):
        asyncio.run(choose_runner("docker", layout))


def test_a_command_that_ran_and_ended_at_once_was_ready_first(runner) -> None:
    """Type=exec, exit 4 within one systemd loop turn: "active" is never signalled."""
    runner, events, task = runner
    task.spec = LaunchSpec(**{**launch_spec().__dict__, "start_type": StartType.EXEC})
    feed(runner, unit("activating", "start", job=9), svc(0, "exit-code", 1, 4))
    feed(runner, unit("failed", "failed"))
    assert events.seen == [("ready", (TX, TASK)), ("exit", ExitInfo(Result.EXIT_CODE, exit_code=4))]


def test_a_program_that_could_not_be_executed_was_never_ready(runner) -> None:
    runner, events, task = runner
    task.spec = LaunchSpec(**{**launch_spec().__dict__, "start_type": StartType.EXEC})
    feed(runner, unit("activating", "start", job=9), svc(0, "exit-code", 1, 203))
    feed(runner, unit("failed", "failed"))
    assert events.seen == [("exit", ExitInfo(Result.EXIT_CODE, exit_code=203))]


def test_the_start_job_done_means_ready_even_unsignalled(runner) -> None:
    runner, events, _task = runner
    feed(
        runner,
        unit("activating", "start", job=9),
        manager_signal("JobRemoved", "uoss", [9, "/job/9", NAME, "done"]),
        manager_signal("JobRemoved", "uoss", [10, "/job/10", NAME, "done"]),  # a later job
    )
    assert events.seen == [("ready", (TX, TASK))]


def test_the_runner_says_which_journal_has_the_output() -> None:
    """zsvc logs asks the runner, not its name: the user manager's journal or the system's."""
    assert SystemdRunner(user=True).log_source is LogSource.USER_JOURNAL
    assert SystemdRunner(user=False).log_source is LogSource.SYSTEM_JOURNAL
    assert LogSource.USER_JOURNAL.journal and LogSource.USER_JOURNAL.user
    assert LogSource.SYSTEM_JOURNAL.journal and not LogSource.SYSTEM_JOURNAL.user
    assert not LogSource.FILES.journal


def forking_spec(**changes: Any) -> LaunchSpec:
    return dataclasses.replace(launch_spec(), start_type=StartType.FORKING, **changes)


def starter(control: int, main: int = 0, result: str = "success") -> Message:
    """A forking unit's Service signal: the starter is systemd's control process."""
    return changed(
        SVC,
        {
            "MainPID": ("u", main),
            "ControlPID": ("u", control),
            "Result": ("s", result),
            "ExecMainCode": ("i", 0),
            "ExecMainStatus": ("i", 0),
        },
    )


def test_a_forking_task_is_its_starter_then_reports_its_daemon(runner) -> None:
    """The sequence systemd 252 sent for Type=forking + PIDFile (a starter that forks a
    daemon, writes its pid, and exits 0 after 0.5 s): ControlPID, then MainPID."""
    runner, events, _ = runner
    task = SystemdTask(spec=forking_spec(), pid=0, runner=runner, unit=NAME, path=PATH)
    runner.by_path[PATH] = task
    feed(runner, starter(49), unit("inactive", "dead", job=84))
    assert task.pid == 49 and task._pid_known.is_set()  # start() returns with the starter
    task._returned = True
    task._release()
    feed(
        runner,
        starter(49),
        unit("activating", "start", job=84),
        starter(0, main=51),
        unit("active", "running"),
        manager_signal("JobRemoved", "uoss", [84, "/job/84", NAME, "done"]),
    )
    assert task.pid == 51
    assert events.seen == [("main_pid", 51), ("ready", (TX, TASK))]


def test_a_forking_starter_that_fails_is_never_ready(runner) -> None:
    runner, events, task = runner
    task.spec = forking_spec()
    feed(
        runner,
        starter(58),
        unit("activating", "start", job=9),
        starter(0, result="exit-code"),
        unit("failed", "failed"),
    )
    assert [kind for kind, _ in events.seen] == ["exit"]
    info = events.seen[0][1]
    assert info.result is Result.EXIT_CODE and "starting process failed" in info.detail


def test_a_stop_by_the_tasks_kill_signal_ends_in_success(runner) -> None:
    """KillSignal=SIGQUIT: systemd says Result=signal; zsvc asked for that stop."""
    runner, events, task = runner
    task.spec = dataclasses.replace(launch_spec(), kill_signal=signal.SIGQUIT)
    feed(runner, svc(42), unit("active", "running"))
    task.stop_requested = True  # as stop() does before StopUnit
    feed(
        runner,
        unit("deactivating", "stop-sigterm"),
        svc(0, "signal", 2, signal.SIGQUIT),
        unit("failed", "failed"),
    )
    assert events.seen[-1] == ("exit", ExitInfo(Result.SUCCESS, signal=signal.SIGQUIT))


def test_usable_controllers_on_cgroup2_are_those_the_managers_cgroup_offers(tmp_path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    user = tmp_path / "user.slice" / "user-1000.slice" / "user@1000.service"
    user.mkdir(parents=True)
    (user / "cgroup.controllers").write_text("cpu memory pids\n")
    everything = {"cpuset", "cpu", "io", "memory", "hugetlb", "pids"}
    assert usable_controllers("", tmp_path) == everything  # the system manager
    assert usable_controllers("/user.slice/user-1000.slice/user@1000.service", tmp_path) == {
        "cpu",
        "memory",
        "pids",
    }
    assert usable_controllers("/gone.slice", tmp_path) == frozenset()


def test_usable_controllers_on_cgroup1_are_the_hierarchies_present(tmp_path) -> None:
    """A hybrid host: systemd's limits go to the cgroup1 hierarchies (writable here; the
    box's read-only ones are checked by the system tier)."""
    (tmp_path / "unified").mkdir()  # cgroup2 without controllers: not the root
    for controller in ("memory", "pids"):
        (tmp_path / controller).mkdir()
    assert usable_controllers("", tmp_path) == {"memory", "pids"}


def test_start_refuses_a_limit_systemd_cannot_enforce_before_asking_it() -> None:
    runner = SystemdRunner(user=False)  # no bus: the refusal comes first
    runner.controllers = frozenset({"cpu"})
    spec = dataclasses.replace(launch_spec(), process=ProcessSettings(memory_max=1 << 28))
    with pytest.raises(LaunchError, match="task 't1': memory_max needs the memory") as raised:
        asyncio.run(runner.start(spec))
    assert raised.value.info.result is Result.RESOURCES
