"""The daemon's side of <exec> at launch (zsvc.daemon.launch): the environment a task gets,
its working directory, and what preflight refuses before anything starts, each message
naming the task. Real files and the host's own passwd and group databases, no mocks.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from zsvc.config import load_context_text
from zsvc.config.model import Context, TaskSpec
from zsvc.daemon.launch import Launcher, preflight, task_environment
from zsvc.errors import OperationFailed
from zsvc.paths import RuntimeLayout, StateLayout
from zsvc.runners.base import LaunchError
from zsvc.states import Result

NO_SUCH = "zsvc-no-such-name"


def context_of(
    tmp_path: Path, exec_xml: str, command: str = "<command>/bin/true</command>"
) -> Context:
    """A context of one task "t": a command task, or with *command* "" a Python task."""
    instance = "" if command else ' instance="Echo"'
    text = (
        "<Context><ContextID>c</ContextID>"
        f'<TaskService id="t"{instance}><Task>{command}{exec_xml}'
        "<message><header><service_name>t</service_name></header></message>"
        "</Task></TaskService></Context>"
    )
    return load_context_text(text, tmp_path / "Context-c.xml")


def spec_of(tmp_path: Path, exec_xml: str) -> TaskSpec:
    return context_of(tmp_path, exec_xml).tasks[0]


def launcher(tmp_path: Path, env: dict[str, str] | None = None) -> Launcher:
    runtime, state = RuntimeLayout(tmp_path / "run"), StateLayout(tmp_path / "state")
    return Launcher(runtime, state, env if env is not None else {"PATH": "/bin", "KEEP": "daemon"})


def refusal(spec: TaskSpec) -> str:
    with pytest.raises(OperationFailed) as info:
        preflight(spec)
    return info.value.message


# --------------------------------------------------------------------------- preflight


def test_known_names_and_any_number_pass(tmp_path: Path) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    exec_xml = (
        f'<exec user="{user}" group="{group}" supplementary_groups="{group} 4000000000" '
        f'working_directory="{tmp_path}"/>'
    )
    preflight(spec_of(tmp_path, exec_xml))
    preflight(spec_of(tmp_path, '<exec user="4000000000" group="4000000001"/>'))


@pytest.mark.parametrize(
    ("exec_xml", "expected"),
    [
        (
            f'<exec user="{NO_SUCH}"/>',
            f"task t: user '{NO_SUCH}' does not exist on this host (<exec user>)",
        ),
        (
            f'<exec group="{NO_SUCH}"/>',
            f"task t: group '{NO_SUCH}' does not exist on this host (<exec group>)",
        ),
        (
            f'<exec supplementary_groups="root {NO_SUCH}"/>',
            f"task t: group '{NO_SUCH}' does not exist on this host (<exec supplementary_groups>)",
        ),
    ],
)
def test_unknown_users_and_groups(tmp_path: Path, exec_xml: str, expected: str) -> None:
    assert refusal(spec_of(tmp_path, exec_xml)) == expected


def test_a_missing_working_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert refusal(spec_of(tmp_path, f'<exec working_directory="{missing}"/>')) == (
        f"task t: working directory {missing} does not exist (<exec working_directory>)"
    )
    afile = tmp_path / "file"
    afile.write_text("")
    assert refusal(spec_of(tmp_path, f'<exec working_directory="{afile}"/>')) == (
        f"task t: working directory {afile} is not a directory (<exec working_directory>)"
    )


def env_file_exec(*files: str) -> str:
    elements = "".join(
        f'<environment_file optional="true">{f[1:]}</environment_file>'
        if f.startswith("-")
        else f"<environment_file>{f}</environment_file>"
        for f in files
    )
    return f"<exec>{elements}</exec>"


def test_a_missing_environment_file(tmp_path: Path) -> None:
    missing = tmp_path / "app.env"
    assert refusal(spec_of(tmp_path, env_file_exec(str(missing)))) == (
        f"task t: environment file {missing} does not exist "
        '(<environment_file optional="true"> starts without it)'
    )
    preflight(spec_of(tmp_path, env_file_exec(f"-{missing}")))


def test_an_unreadable_environment_file(tmp_path: Path) -> None:
    assert refusal(spec_of(tmp_path, env_file_exec(str(tmp_path)))) == (
        f"task t: environment file {tmp_path}: cannot read it: Is a directory"
    )


def test_an_optional_file_that_is_there_must_be_valid(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1\n\nexport B=2\n")
    assert refusal(spec_of(tmp_path, env_file_exec(f"-{path}"))) == (
        f"task t: environment file {path}:3: 'export' is shell syntax, which systemd does "
        "not read; expected NAME=value"
    )


def test_an_environment_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_bytes(b"A=1\nB=\xff\n")
    assert refusal(spec_of(tmp_path, env_file_exec(str(path)))) == (
        f"task t: environment file {path}:2: not UTF-8 text"
    )


# --------------------------------------------------------------------------- the launch


def test_environment_order_daemon_then_inline_then_files_then_zsvc(tmp_path: Path) -> None:
    first, second = tmp_path / "1.env", tmp_path / "2.env"
    first.write_text("FROM_FILE=1\nBOTH=file1\n")
    second.write_text('BOTH="file 2"\n')
    exec_xml = (
        '<exec><environment name="KEEP">inline</environment>'
        '<environment name="BOTH">inline</environment>'
        '<environment name="PYTHONUNBUFFERED">0</environment>'
        f"<environment_file>{first}</environment_file>"
        f"<environment_file>{second}</environment_file>"
        f"<environment_file optional='yes'>{tmp_path / 'absent'}</environment_file></exec>"
    )
    context = context_of(tmp_path, exec_xml)
    launch = launcher(tmp_path).task("tx", context, context.tasks[0], "inv1", crashing=False)
    env = launch.env
    assert env["PATH"] == "/bin"
    assert env["KEEP"] == "inline"
    assert env["FROM_FILE"] == "1"
    assert env["BOTH"] == "file 2"
    assert env["PYTHONUNBUFFERED"] == "0"
    assert (env["ZSVC_TASK_ID"], env["ZSVC_TRANSACTION"], env["ZSVC_INVOCATION"]) == (
        "t",
        "tx",
        "inv1",
    )


def test_a_task_run_as_a_user_gets_that_users_home_and_names(tmp_path: Path) -> None:
    """As systemd sets them for ``User=``: not the daemon's ``HOME=/root``; the task's own
    ``<environment>`` still wins."""
    nobody = pwd.getpwnam("nobody")
    context = context_of(tmp_path, '<exec user="nobody"/>')
    env = launcher(tmp_path).task("tx", context, context.tasks[0], "i", crashing=False).env
    assert (env["USER"], env["LOGNAME"], env["HOME"], env["SHELL"]) == (
        "nobody",
        "nobody",
        nobody.pw_dir,
        nobody.pw_shell,
    )
    context = context_of(
        tmp_path, f'<exec user="{nobody.pw_uid}"><environment name="HOME">/srv</environment></exec>'
    )
    env = launcher(tmp_path).task("tx", context, context.tasks[0], "i", crashing=False).env
    assert (env["USER"], env["HOME"]) == ("nobody", "/srv")


def test_no_exec_keeps_the_environment_as_before(tmp_path: Path) -> None:
    context = context_of(tmp_path, "")
    launch = launcher(tmp_path).task("tx", context, context.tasks[0], "inv1", crashing=False)
    assert dict(launch.env) == {
        "PATH": "/bin",
        "KEEP": "daemon",
        "PYTHONUNBUFFERED": "1",
        "ZSVC_TRANSACTION": "tx",
        "ZSVC_TASK_ID": "t",
        "ZSVC_SERVICE_NAME": "t",
        "ZSVC_INVOCATION": "inv1",
    }
    assert launch.cwd == str(tmp_path)


def test_working_directory_is_the_cwd_of_command_and_python_tasks(tmp_path: Path) -> None:
    context = context_of(tmp_path, '<exec working_directory="/srv/x" umask="077"/>')
    launch = launcher(tmp_path).task("tx", context, context.tasks[0], "i", crashing=False)
    assert launch.cwd == "/srv/x"
    assert launch.process.umask == 0o77
    python = context_of(tmp_path, '<exec working_directory="/srv/y"/>', command="")
    launch = launcher(tmp_path).task("tx", python, python.tasks[0], "i", crashing=False)
    assert launch.cwd == "/srv/y" and launch.host_entry


def test_a_file_gone_wrong_since_preflight_is_a_launch_error(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1\n")
    context = context_of(tmp_path, env_file_exec(str(path)))
    spec = context.tasks[0]
    preflight(spec)
    path.unlink()
    with pytest.raises(LaunchError) as info:
        launcher(tmp_path).task("tx", context, spec, "i", crashing=False)
    assert info.value.info.result is Result.RESOURCES
    assert f"environment file {path} does not exist" in info.value.info.detail
    adopted = launcher(tmp_path).task("tx", context, spec, "i", crashing=False, read_files=False)
    assert adopted.env["ZSVC_INVOCATION"] == "i"


def test_task_environment_alone(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, '<exec><environment name="A">x</environment></exec>')
    assert task_environment(spec) == {"A": "x"}
