"""zsvc.runners.localexec: the local runner's rules, checked without starting a process.

The command line a task's first process executes, what exec would say of a
program, the task's environment, and systemd's verdict on how a process
ended (systemd.service(5)); tests/unit/test_local_runner.py proves the same
with real processes.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zsvc.runners.base import ExitInfo
from zsvc.runners.exitcodes import EXIT_CHDIR, EXIT_EXEC
from zsvc.runners.localexec import (
    SETPRIV,
    SHELL,
    UNSHARE,
    adopted_exit,
    chdir_failure,
    classify_exit,
    exec_failure,
    executable_error,
    launch_environment,
    wrap_exec,
)
from zsvc.runners.procsettings import Resolved
from zsvc.states import Result

EXITED, KILLED, DUMPED = os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED


def verdict(
    code: int,
    status: int,
    reason: Result | None = None,
    notify: bool = True,
    ready: bool = True,
    stop_requested: bool = False,
    kill_signal: int = signal.SIGTERM,
) -> ExitInfo:
    return classify_exit(
        code,
        status,
        reason=reason,
        notify=notify,
        ready=ready,
        stop_requested=stop_requested,
        kill_signal=kill_signal,
    )


# --- wrap_exec --------------------------------------------------------------------------------


def test_wrap_exec_leaves_argv_alone_with_nothing_to_do() -> None:
    assert wrap_exec(["true"], None, None) == ["true"]


@pytest.mark.parametrize(
    ("cgroup", "fd_limit", "args"),
    [("/cg", None, ["/cg"]), (None, 1024, ["1024"]), ("/cg", 1024, ["/cg", "1024"])],
)
def test_wrap_exec_passes_its_values_as_arguments_then_the_program(
    cgroup: str | None, fd_limit: int | None, args: list[str]
) -> None:
    """Values travel as arguments, never inside the script: no quoting to get wrong."""
    wrapped = wrap_exec(["prog", "a b", "$HOME"], cgroup, fd_limit)
    assert wrapped[:2] == [SHELL, "-c"]
    assert wrapped[3:] == ["sh", *args, "prog", "a b", "$HOME"]
    script = wrapped[2]
    assert script.endswith('exec "$@"')
    assert ("cgroup.procs" in script) is (cgroup is not None)
    assert ("ulimit -S -n" in script) is (fd_limit is not None)


SETTINGS = {
    "nofile": (4096, "ulimit -n", "4096"),
    "umask": (0o27, "umask", "0027"),
    "nice": (-5, "renice -n", "-5"),
}
"""Each shell step of a setting: its value, the command in the script, its argument."""


@given(
    chosen=st.sets(st.sampled_from(sorted(SETTINGS))),
    cgroup=st.sampled_from([None, "/cg"]),
    fd_limit=st.sampled_from([None, 1024]),
    private_tmp=st.booleans(),
)
def test_wrap_exec_runs_each_setting_as_a_step_with_its_value_as_an_argument(
    chosen: set[str], cgroup: str | None, fd_limit: int | None, private_tmp: bool
) -> None:
    """Every combination: the steps in systemd's order (cgroup, limits, umask, nice, /tmp),
    each value an argument; LimitNOFILE= replaces the runner's soft limit."""
    values = {name: SETTINGS[name][0] for name in chosen}
    wrapped = wrap_exec(
        ["prog", "$1"], cgroup, fd_limit, Resolved(private_tmp=private_tmp, **values)
    )
    if not (chosen or cgroup or fd_limit or private_tmp):
        assert wrapped == ["prog", "$1"]
        return
    if private_tmp:
        assert wrapped[: len(UNSHARE)] == list(UNSHARE) and "--mount" in UNSHARE
        wrapped = wrapped[len(UNSHARE) :]
    assert wrapped[:2] == [SHELL, "-c"] and wrapped[3] == "sh"
    script, args = wrapped[2], wrapped[4:]
    expected = ([cgroup] if cgroup else []) + [SETTINGS[n][2] for n in SETTINGS if n in chosen]
    if fd_limit and "nofile" not in chosen:
        expected.insert(1 if cgroup else 0, "1024")
    assert args == [*expected, "prog", "$1"]
    steps = [
        ("cgroup.procs" if cgroup else None),
        *(SETTINGS[n][1] for n in SETTINGS if n in chosen),
    ]
    positions = [script.index(step) for step in steps if step]
    assert positions == sorted(positions)
    assert ("ulimit -S -n" in script) is (fd_limit is not None and "nofile" not in chosen)
    assert ("mount -t tmpfs" in script) is private_tmp
    assert script.endswith('exec "$@"')


@pytest.mark.parametrize(
    ("settings", "options"),
    [
        (Resolved(uid=7, gid=8, groups=(8, 9)), ["--reuid=7", "--regid=8", "--groups=8,9"]),
        (Resolved(uid=7, gid=8, groups=()), ["--reuid=7", "--regid=8", "--clear-groups"]),
        (Resolved(gid=8), ["--regid=8", "--clear-groups"]),
        (Resolved(no_new_privs=True), ["--no-new-privs"]),
        (
            Resolved(uid=0, gid=0, groups=(0,), no_new_privs=True),
            ["--reuid=0", "--regid=0", "--groups=0", "--no-new-privs"],
        ),
    ],
)
def test_the_user_is_set_last_by_setpriv_which_execs_the_program(
    settings: Resolved, options: list[str]
) -> None:
    """setpriv ends the chain (what needs root is done before); with nothing else to do,
    no shell at all."""
    assert wrap_exec(["prog"], None, None, settings) == [SETPRIV, *options, "--", "prog"]
    wrapped = wrap_exec(["prog"], "/cg", None, dataclasses.replace(settings, umask=0o22))
    assert wrapped[:2] == [SHELL, "-c"]
    assert wrapped[-len(options) - 3 :] == [SETPRIV, *options, "--", "prog"]


# --- executable_error ---------------------------------------------------------------------


def test_executable_error_looks_programs_up_like_exec(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (tmp_path / "data").write_text("")
    env = {"PATH": f"/nonexistent:{tmp_path}"}
    assert executable_error("run.sh", env, "/") is None  # found on PATH
    assert executable_error("./run.sh", {}, str(tmp_path)) is None  # relative to the cwd
    assert executable_error(str(script), {"PATH": ""}, "/") is None
    assert executable_error("sh", dict(os.environ), "/") is None
    for program, cwd, code in (
        ("no-such-zsvc-program", "/", errno.ENOENT),
        ("./data", str(tmp_path), errno.EACCES),  # not executable
        (str(tmp_path), "/", errno.EACCES),  # a directory
        ("./run.sh", "/", errno.ENOENT),  # relative to another cwd
        ("", "/", errno.ENOENT),
    ):
        error = executable_error(program, env, cwd)
        assert error is not None and error.errno == code, program


def test_start_failures_are_systemds_verdicts() -> None:
    missing = OSError(errno.ENOENT, os.strerror(errno.ENOENT), "prog")
    refused = exec_failure("prog", missing)
    assert str(refused) == "cannot execute prog: No such file or directory"
    assert (refused.info.result, refused.info.exit_code) == (Result.EXIT_CODE, EXIT_EXEC)
    nowhere = chdir_failure("/gone", OSError(errno.ENOENT, os.strerror(errno.ENOENT), "/gone"))
    assert str(nowhere) == "cannot change to /gone: No such file or directory"
    assert (nowhere.info.result, nowhere.info.exit_code) == (Result.EXIT_CODE, EXIT_CHDIR)


# --- launch_environment -----------------------------------------------------------------------


def test_the_environment_names_the_runners_socket_and_its_own_watchdog() -> None:
    inherited = {"PATH": "/bin", "WATCHDOG_PID": "1", "WATCHDOG_USEC": "5", "NOTIFY_SOCKET": "x"}
    env = launch_environment(inherited, Path("/run/zsvc/notify"), None)
    assert env == {"PATH": "/bin", "NOTIFY_SOCKET": "/run/zsvc/notify"}
    assert inherited["WATCHDOG_PID"] == "1"  # the spec's mapping is left as it was
    assert launch_environment({}, Path("/n"), 2.5)["WATCHDOG_USEC"] == "2500000"
    assert launch_environment({}, Path("/n"), 1e-9)["WATCHDOG_USEC"] == "1"  # never 0: "off"
    assert "WATCHDOG_USEC" not in launch_environment({}, Path("/n"), 0)


# --- classify_exit: systemd's verdict ---------------------------------------------------------


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (verdict(EXITED, 0), ExitInfo(Result.SUCCESS, exit_code=0)),
        (verdict(EXITED, 3), ExitInfo(Result.EXIT_CODE, exit_code=3)),
        (
            verdict(EXITED, 0, ready=False),
            ExitInfo(Result.PROTOCOL, exit_code=0, detail="exited before READY=1"),
        ),
        (verdict(EXITED, 0, ready=False, notify=False), ExitInfo(Result.SUCCESS, exit_code=0)),
        (verdict(EXITED, 0, ready=False, stop_requested=True), ExitInfo(Result.SUCCESS, 0)),
        (verdict(KILLED, signal.SIGTERM), ExitInfo(Result.SUCCESS, signal=signal.SIGTERM)),
        (verdict(KILLED, signal.SIGHUP), ExitInfo(Result.SUCCESS, signal=signal.SIGHUP)),
        (verdict(KILLED, signal.SIGPIPE), ExitInfo(Result.SIGNAL, signal=signal.SIGPIPE)),
        (
            verdict(KILLED, signal.SIGPIPE, stop_requested=True),
            ExitInfo(Result.SUCCESS, signal=signal.SIGPIPE),
        ),
        (verdict(KILLED, signal.SIGKILL), ExitInfo(Result.SIGNAL, signal=signal.SIGKILL)),
        (verdict(DUMPED, signal.SIGSEGV), ExitInfo(Result.CORE_DUMP, signal=signal.SIGSEGV)),
        (
            verdict(KILLED, signal.SIGKILL, reason=Result.TIMEOUT),
            ExitInfo(Result.TIMEOUT, signal=signal.SIGKILL),
        ),
        (
            verdict(EXITED, 0, reason=Result.WATCHDOG),
            ExitInfo(Result.WATCHDOG, exit_code=0),
        ),
    ],
)
def test_classify_exit(end: ExitInfo, expected: ExitInfo) -> None:
    assert end == expected


def test_a_task_killed_by_its_own_stop_signal_ended_cleanly() -> None:
    """KillSignal=SIGUSR1 (say): killed by it when asked to stop is a success, as SIGTERM
    is; the same signal from elsewhere, or another one, is a signal end."""
    usr1 = signal.SIGUSR1
    stopped = verdict(KILLED, usr1, stop_requested=True, kill_signal=usr1)
    assert stopped == ExitInfo(Result.SUCCESS, signal=usr1)
    assert verdict(KILLED, usr1, kill_signal=usr1).result is Result.SIGNAL
    assert verdict(KILLED, usr1, stop_requested=True).result is Result.SIGNAL
    assert verdict(DUMPED, signal.SIGQUIT, stop_requested=True).result is Result.CORE_DUMP


@given(
    code=st.sampled_from([EXITED, KILLED, DUMPED]),
    status=st.integers(0, 255),
    reason=st.sampled_from([None, Result.TIMEOUT, Result.WATCHDOG]),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_classify_exit_keeps_the_status_and_the_reason_zsvc_caused(
    code: int, status: int, reason: Result | None, flags: tuple[bool, bool, bool]
) -> None:
    """Whatever the flags: an exit keeps its status, a signal its number, and an end zsvc
    caused (a timeout, the watchdog) is reported as that cause."""
    notify, ready, stop_requested = flags
    info = verdict(code, status, reason, notify, ready, stop_requested)
    if code == EXITED:
        assert (info.exit_code, info.signal) == (status, None)
    else:
        assert (info.exit_code, info.signal) == (None, status)
    if reason is not None:
        assert info.result is reason
    assert info.clean is (info.result is Result.SUCCESS)


def test_an_adopted_tasks_end_is_known_only_when_zsvc_caused_it() -> None:
    assert adopted_exit(None, stop_requested=True).result is Result.SUCCESS
    assert adopted_exit(None, stop_requested=False).result is Result.LOST
    assert adopted_exit(Result.WATCHDOG, stop_requested=True).result is Result.WATCHDOG
    assert "cannot be collected" in adopted_exit(None, False).detail
