"""zsvc.runners.transient: the properties sent to systemd and the meaning of its answers.

Expected values are the verified facts of shared/research/systemd-dbus.md
(systemd 252); the system tier (tests/system) checks them against a real one.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zsvc.config.model import ProcessSettings
from zsvc.naming import slice_name, systemd_escape, unit_name
from zsvc.runners.base import ExitInfo, LaunchSpec
from zsvc.runners.transient import (
    Prop,
    UnitView,
    ascii_safe,
    controller_refusal,
    cpu_quota_usec,
    exit_info,
    parse_unit_name,
    resolve_program,
    run_verdict,
    task_environment,
    transient_properties,
    unescape,
    unit_path,
    usec,
    wire_problem,
)
from zsvc.states import ID_PATTERN, Result, StartType


def spec(**changes: object) -> LaunchSpec:
    base: dict[str, object] = {
        "transaction": "a-b",
        "task_id": "t1",
        "unit": unit_name("a-b", "t1", "0123abcd"),
        "argv": ("python3", "-m", "zsvc.task"),
        "env": {"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/zsvc/notify", "INVOCATION_ID": "x"},
        "cwd": "/srv",
        "start_type": StartType.NOTIFY,
        "start_timeout": 20.0,
        "stop_timeout": 2.5,
        "log_path": Path("/dev/null"),
        "description": "test task",
    }
    base.update(changes)
    return LaunchSpec(**base)  # type: ignore[arg-type]


def by_name(props: list[Prop]) -> dict[str, Prop]:
    return {prop.name: prop for prop in props}


def test_properties_of_a_notifying_task() -> None:
    props = by_name(
        transient_properties(spec(), "/usr/bin/python3", slice_name("a-b", "0123abcd"), "svc")
    )
    expected = {
        "Description": ("s", "test task"),
        "Slice": ("s", r"zsvc-0123abcd-a\x2db.slice"),
        "Type": ("s", "notify"),
        "NotifyAccess": ("s", "main"),
        "ExecStart": ("a(sasb)", [["/usr/bin/python3", ["python3", "-m", "zsvc.task"], False]]),
        "WorkingDirectory": ("s", "/srv"),
        "Environment": ("as", ["PATH=/usr/bin"]),
        "TimeoutStartUSec": ("t", 20_000_000),
        "TimeoutStopUSec": ("t", 2_500_000),
        "KillMode": ("s", "control-group"),
        "Restart": ("s", "no"),
        "RemainAfterExit": ("b", False),
        "CollectMode": ("s", "inactive-or-failed"),
        "SyslogIdentifier": ("s", "a-b/t1"),
        "LogExtraFields": (
            "aay",
            [b"ZSVC_TRANSACTION=a-b", b"ZSVC_TASK=t1", b"ZSVC_SERVICE=svc"],
        ),
    }
    assert {name: (p.signature, p.value) for name, p in props.items()} == expected


def test_a_command_that_does_not_notify_is_type_exec_and_a_watchdog_is_in_usec() -> None:
    props = by_name(
        transient_properties(
            spec(start_type=StartType.EXEC, watchdog_sec=1.5), "/bin/sleep", "s.slice", "x"
        )
    )
    assert props["Type"].value == "exec"
    assert (props["WatchdogUSec"].signature, props["WatchdogUSec"].value) == ("t", 1_500_000)


ALL_SETTINGS = ProcessSettings(
    user="www-data",
    group="www-data",
    supplementary_groups=("adm", "audio"),
    umask=0o027,
    nice=5,
    limit_nofile=4096,
    memory_max=256 * 1024 * 1024,
    cpu_quota=50.0,
    tasks_max=64,
    no_new_privileges=True,
    private_tmp=True,
)
SETTING_PROPERTIES = {
    # Name and signature of each: accepted by systemd 252 and read back with `systemctl
    # show` from a running unit (docs/runners.md; tests/system/test_systemd_settings.py).
    "User": ("s", "www-data"),
    "Group": ("s", "www-data"),
    "SupplementaryGroups": ("as", ["adm", "audio"]),
    "UMask": ("u", 0o027),
    "Nice": ("i", 5),
    "LimitNOFILE": ("t", 4096),
    "LimitNOFILESoft": ("t", 4096),
    "MemoryMax": ("t", 268_435_456),
    "CPUQuotaPerSecUSec": ("t", 500_000),
    "TasksMax": ("t", 64),
    "NoNewPrivileges": ("b", True),
    "PrivateTmp": ("b", True),
    "KillSignal": ("i", 2),
    "FinalKillSignal": ("i", 3),
}


def test_every_process_setting_and_kill_signal_becomes_its_unit_property() -> None:
    launch = spec(process=ALL_SETTINGS, kill_signal=signal.SIGINT, final_kill_signal=signal.SIGQUIT)
    props = by_name(transient_properties(launch, "/bin/sleep", "s.slice", "x"))
    plain = by_name(transient_properties(spec(), "/bin/sleep", "s.slice", "x"))
    added = {name: (p.signature, p.value) for name, p in props.items() if name not in plain}
    assert added == SETTING_PROPERTIES
    assert all(isinstance(p.value, list) for p in props.values() if p.signature == "as")


def test_unset_settings_send_nothing_so_systemd_keeps_its_defaults() -> None:
    """No LimitNOFILE: systemd's soft 1024 stays, as the local runner gives back the
    daemon's starting soft limit; no KillSignal: SIGTERM, then SIGKILL."""
    props = by_name(transient_properties(spec(), "/bin/sleep", "s.slice", "x"))
    assert not set(SETTING_PROPERTIES) & set(props)
    assert "PIDFile" not in props


@pytest.mark.parametrize("start_type", list(StartType))
def test_the_start_type_is_systemds_type(start_type: StartType) -> None:
    launch = spec(start_type=start_type, pid_file="/run/app.pid")
    props = by_name(transient_properties(launch, "/bin/app", "s.slice", "x"))
    assert props["Type"] == Prop("Type", "s", start_type.value)
    forking = start_type is StartType.FORKING
    assert ("PIDFile" in props) is forking  # only a forking task's PID file means anything
    if forking:
        assert props["PIDFile"] == Prop("PIDFile", "s", "/run/app.pid")


def test_a_forking_task_without_a_pid_file_lets_systemd_guess_its_main_process() -> None:
    props = by_name(transient_properties(spec(start_type=StartType.FORKING), "/a", "s.slice", "x"))
    assert props["Type"].value == "forking" and "PIDFile" not in props


@given(st.floats(min_value=0.0001, max_value=100_000, allow_nan=False))
def test_cpu_quota_is_cpu_microseconds_per_second(percent: float) -> None:
    value = cpu_quota_usec(percent)
    assert value >= 1
    assert abs(value - percent * 10_000) <= 0.5 or (value == 1 and percent * 10_000 < 1)


def test_cpu_quota_examples() -> None:
    assert cpu_quota_usec(50) == 500_000  # systemctl show: CPUQuotaPerSecUSec=500ms
    assert cpu_quota_usec(200) == 2_000_000  # two CPUs
    assert cpu_quota_usec(0.00001) == 1  # 0 would mean no quota at all


def test_a_stop_by_the_tasks_own_kill_signal_is_clean() -> None:
    """systemd 252 says ``signal`` for a stop by KillSignal=SIGQUIT (not in its clean set)."""
    quit_spec = spec(start_type=StartType.EXEC, kill_signal=signal.SIGQUIT)
    by_quit = exit_info("signal", 2, signal.SIGQUIT)
    assert run_verdict(by_quit, quit_spec, stop_requested=True) == ExitInfo(
        Result.SUCCESS, signal=signal.SIGQUIT
    )
    assert run_verdict(by_quit, quit_spec, stop_requested=False) == by_quit  # not asked
    by_kill = exit_info("signal", 2, signal.SIGKILL)
    assert run_verdict(by_kill, quit_spec, stop_requested=True) == by_kill
    assert run_verdict(exit_info("success", 2, 2), spec(kill_signal=2), True).clean


def test_a_forking_starter_that_failed_says_so() -> None:
    forking = spec(start_type=StartType.FORKING, pid_file="/run/a.pid", start_timeout=2.0)
    failed = run_verdict(exit_info("exit-code", 0, 0), forking, stop_requested=False)
    assert failed.result is Result.EXIT_CODE and "starting process failed" in failed.detail
    late = run_verdict(exit_info("timeout", 0, 0), forking, stop_requested=False)
    assert late.detail == (
        "no main process within 2 s: the starter did not exit or wrote no PID file /run/a.pid"
    )
    ended = exit_info("exit-code", 1, 3)  # the daemonised main process exited 3
    assert run_verdict(ended, forking, stop_requested=False) == ended


def test_structs_are_lists_for_dbus_fast_184() -> None:
    """1.84 refuses a tuple for a struct inside a Variant."""
    props = by_name(transient_properties(spec(), "/usr/bin/python3", "s.slice", "x"))
    entry = props["ExecStart"].value[0]
    assert isinstance(entry, list) and isinstance(entry[1], list)


def test_usec_never_sends_zero_which_means_no_limit() -> None:
    assert usec(0) == 1
    assert usec(0.25) == 250_000


def test_the_environment_drops_what_systemd_sets_per_unit() -> None:
    env = {"B": "2", "A": "1", "JOURNAL_STREAM": "8:1", "WATCHDOG_USEC": "1", "MAINPID": "3"}
    assert task_environment(env) == ["A=1", "B=2"]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("zsvc-A-s1.service", "zsvc_2dA_2ds1_2eservice"),
        (r"zsvc-a\x2db-task.service", "zsvc_2da_5cx2db_2dtask_2eservice"),
        ("-.slice", "_2d_2eslice"),
        ("\u00fc.service", "_c3_bc_2eservice"),
    ],
)
def test_unit_path_is_computed_as_systemd_does(name: str, path: str) -> None:
    assert unit_path(name) == "/org/freedesktop/systemd1/unit/" + path


# systemd 252's verdicts (research §2): (Result, ExecMainCode, ExecMainStatus) → ExitInfo.
VERDICTS = [
    (("success", 1, 0), ExitInfo(Result.SUCCESS, exit_code=0)),
    (("exit-code", 1, 3), ExitInfo(Result.EXIT_CODE, exit_code=3)),
    (("protocol", 1, 0), ExitInfo(Result.PROTOCOL, exit_code=0, detail="exited before READY=1")),
    (("timeout", 2, 15), ExitInfo(Result.TIMEOUT, signal=15)),
    (("signal", 2, 9), ExitInfo(Result.SIGNAL, signal=9)),
    (("watchdog", 2, 6), ExitInfo(Result.WATCHDOG, signal=6)),
    (("success", 2, 15), ExitInfo(Result.SUCCESS, signal=15)),
    (("core-dump", 3, 11), ExitInfo(Result.CORE_DUMP, signal=11)),
    (("signal", 3, 11), ExitInfo(Result.CORE_DUMP, signal=11)),
    (
        ("oom-kill", 2, 9),
        ExitInfo(Result.SIGNAL, signal=9, detail="killed by the out-of-memory killer"),
    ),
    (("exit-code", 1, 203), ExitInfo(Result.EXIT_CODE, exit_code=203)),
    (
        ("resources", 0, 0),
        ExitInfo(Result.RESOURCES, detail="the main process never ran"),
    ),
    (("something-new", 1, 1), ExitInfo(Result.RESOURCES, 1, detail="systemd result something-new")),
]


@pytest.mark.parametrize(("answer", "expected"), VERDICTS)
def test_exit_info_speaks_like_the_local_runner(answer: tuple, expected: ExitInfo) -> None:
    assert exit_info(*answer) == expected


def test_the_stop_by_sigterm_reads_as_the_local_runner_says_it() -> None:
    assert exit_info("success", 2, 15).describe() == "killed by SIGTERM (success)"
    assert exit_info("exit-code", 1, 3).describe() == "exited with status 3 (exit-code)"


def test_wire_problem_finds_non_ascii_and_ascii_safe_escapes_only_the_description() -> None:
    props = [Prop("Description", "s", "t\u00e2che"), Prop("WorkingDirectory", "s", "/srv")]
    assert wire_problem(props) == "Description"
    safe = ascii_safe(props)
    assert safe[0].value == "t\\xe2che"
    assert wire_problem(safe) is None
    assert wire_problem([Prop("Environment", "as", ["X=\u00fc"])]) == "Environment"


def test_resolve_program_uses_the_tasks_path_and_working_directory(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "tool"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    env = {"PATH": str(program.parent)}
    assert resolve_program("tool", env, "/") == str(program)
    assert resolve_program("./bin/tool", env, str(tmp_path)) == str(program)
    assert resolve_program("missing", env, "/") is None
    program.chmod(0o644)
    assert resolve_program("tool", env, "/") is None
    assert resolve_program("", env, "/") is None


@given(st.from_regex(ID_PATTERN, fullmatch=True), st.from_regex(ID_PATTERN, fullmatch=True))
def test_unit_names_parse_back_to_their_ids(transaction: str, task: str) -> None:
    name = unit_name(transaction, task, "0123abcd")
    if len(name) < 200:  # not cut to fit (64 dashes escape to 256 characters)
        assert parse_unit_name(name) == ("0123abcd", transaction, task)


@given(st.text(max_size=20).filter(lambda s: "/" not in s))
def test_unescape_inverts_systemd_escape(value: str) -> None:
    assert unescape(systemd_escape(value)) == value


def test_parse_unit_name_refuses_other_units() -> None:
    assert parse_unit_name("zsvc.slice") is None
    assert parse_unit_name(r"zsvc-a\x2db.slice") is None
    assert parse_unit_name("sshd.service") is None
    assert parse_unit_name("zsvc-abc-T-t.service") is None  # not an instance


def test_a_name_from_before_instances_parses_with_none() -> None:
    """``zsvc-<tx>-<task>.service``, as an earlier version named units (upgrades)."""
    assert parse_unit_name(r"zsvc-a\x2db-t1.service") == ("", "a-b", "t1")


# --- UnitView: signal sequences as systemd 252 sends them (research §3) ---------------


def service(pid: int, result: str = "success", code: int = 0, status: int = 0, text: str = ""):
    return {
        "MainPID": pid,
        "Result": result,
        "ExecMainCode": code,
        "ExecMainStatus": status,
        "StatusText": text,
    }


def unit(active: str, sub: str, job: int = 0) -> dict:
    return {"ActiveState": active, "SubState": sub, "Job": [job, "/"], "InvocationID": b"\x01\x02"}


SVC, UNIT = "org.freedesktop.systemd1.Service", "org.freedesktop.systemd1.Unit"


def test_a_run_is_not_over_at_its_first_inactive_while_its_start_job_is_pending() -> None:
    view = UnitView()
    view.update(SVC, service(0))
    view.update(UNIT, unit("inactive", "dead", job=7))
    assert not view.ended
    view.update(UNIT, unit("activating", "start", job=7))
    assert view.seen_running and not view.ended and view.invocation == "0102"


def test_the_exit_status_comes_from_the_service_signal_before_failed() -> None:
    view = UnitView()
    view.update(UNIT, unit("activating", "start", job=7))
    view.update(SVC, service(42))
    view.update(UNIT, unit("active", "running"))
    assert view.update(SVC, service(42, text="phase-a")) == {"status_text"}
    assert view.update(SVC, service(42, text="phase-a")) == set()  # the re-sent pair
    view.update(SVC, service(0, "exit-code", 1, 3, "phase-a"))
    assert not view.ended
    view.update(UNIT, unit("failed", "failed"))
    assert view.ended
    assert view.exit() == ExitInfo(Result.EXIT_CODE, exit_code=3)


def test_a_forking_starter_is_the_control_pid_until_the_main_process_is_known() -> None:
    view = UnitView()
    view.update(SVC, {**service(0), "ControlPID": 49})
    assert (view.control_pid, view.main_pid) == (49, 0)
    assert view.update(SVC, {**service(51), "ControlPID": 0}) == {"main_pid", "control_pid"}


def test_a_start_that_fails_without_ever_running_is_over() -> None:
    view = UnitView()
    view.update(UNIT, unit("failed", "failed", job=0))
    assert view.ended


def test_marshals_unicode_tells_debians_dbus_fast_from_todays() -> None:
    from importlib.metadata import version

    from zsvc.runners.sdbus import marshals_unicode

    major = int(version("dbus-fast").split(".")[0])
    assert marshals_unicode() is (major >= 3)  # 1.84 writes characters, 5.x bytes


def test_a_cgroup_limit_systemd_cannot_enforce_is_refused() -> None:
    limits = ProcessSettings(memory_max=1 << 28, tasks_max=8)
    assert controller_refusal("t", limits, None) is None  # unknown: systemd decides
    assert controller_refusal("t", limits, frozenset({"memory", "pids"})) is None
    assert controller_refusal("t", ProcessSettings(user="x"), frozenset()) is None
    why = controller_refusal("t", limits, frozenset({"memory"}))
    assert why is not None and why.startswith(
        "task 't': tasks_max needs the pids controller, which systemd does not have here"
        " (it has: memory)"
    )
    why = controller_refusal("t", ProcessSettings(cpu_quota=50.0), frozenset())
    assert why is not None and "cpu_quota needs the cpu controller" in why and "none" in why
