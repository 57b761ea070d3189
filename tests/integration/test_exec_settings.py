"""Issue 14 with a real daemon: what <exec> resolves at launch (environment, files, working
directory), what `zsvc start` prints when a task cannot run here, and a context without
endpoints, which binds no TCP.
"""

from __future__ import annotations

import re
from pathlib import Path

import psutil

from tests.integration.conftest import TaskDef, render_context, wait_until

NO_SUCH = "zsvc-no-such-name"


def write_context(workdir: Path, tasks: list[TaskDef], name: str = "x") -> Path:
    """A context of *tasks* that writes no endpoints (render_context's two lines removed)."""
    text = re.sub(
        r"\s*<(FrontEndEndpoint|BackendEndpoint)>[^<]*</\1>", "", render_context(tasks, 1, 2)
    )
    path = workdir / f"Context-{name}.xml"
    path.write_text(text)
    return path


def listening_tcp(pid: int) -> list[str]:
    process = psutil.Process(pid)
    connections = getattr(process, "net_connections", process.connections)(kind="tcp")
    return [f"{c.laddr.ip}:{c.laddr.port}" for c in connections if c.status == psutil.CONN_LISTEN]


def sleeper(task_id: str, **fields: object) -> TaskDef:
    return TaskDef(task_id, command="sleep 600", location=None, **fields)  # type: ignore[arg-type]


def test_a_context_without_endpoints_binds_no_tcp(daemon, workdir: Path) -> None:
    context = write_context(workdir, [sleeper("t")])
    result = daemon.cli("start", "--context", str(context), "NOTCP")
    assert result.code == 0, result.stderr
    assert listening_tcp(daemon.pid()) == []
    assert daemon.cli("stop", "NOTCP").code == 0


def test_environment_files_and_working_directory_reach_the_program(daemon, workdir: Path) -> None:
    env_file = workdir / "app.env"
    env_file.write_text('# settings\nFROM_FILE="a b"\nBOTH=file\n')
    out = workdir / "out"
    script = f'echo "$INLINE|$FROM_FILE|$BOTH|$(pwd)" > {out}; exec sleep 600'
    task = TaskDef(
        "t",
        command=f"sh -c '{script}'",
        location=None,
        environment={"INLINE": "x y", "BOTH": "inline"},
        environment_files=[str(env_file), f"-{workdir / 'absent.env'}"],
        exec_attrs={"working_directory": str(workdir)},
    )
    result = daemon.cli("start", "--context", str(write_context(workdir, [task])), "ENV")
    assert result.code == 0, result.stderr
    wait_until(out.exists, what="the task wrote its environment", log=daemon.log)
    wait_until(lambda: out.read_text().endswith("\n"), what="a whole line", log=daemon.log)
    assert out.read_text() == f"x y|a b|file|{workdir}\n"
    assert daemon.cli("stop", "ENV").code == 0


def refused(daemon, workdir: Path, task: TaskDef) -> str:
    """What `zsvc start` prints for *task*, which must not start (exit 1, nothing created)."""
    result = daemon.cli("start", "--context", str(write_context(workdir, [task])), "BAD")
    assert result.code == 1, (result.stdout, result.stderr)
    assert daemon.call("status", transaction=None)["transactions"] == []
    return result.stderr


def test_an_unknown_user_is_refused_naming_the_task(daemon, workdir: Path) -> None:
    stderr = refused(daemon, workdir, sleeper("web", exec_attrs={"user": NO_SUCH}))
    assert f"task web: user '{NO_SUCH}' does not exist on this host (<exec user>)" in stderr


def test_a_missing_working_directory_is_refused(daemon, workdir: Path) -> None:
    missing = workdir / "nowhere"
    stderr = refused(
        daemon, workdir, sleeper("web", exec_attrs={"working_directory": str(missing)})
    )
    assert f"task web: working directory {missing} does not exist" in stderr


def test_a_missing_or_invalid_environment_file_is_refused(daemon, workdir: Path) -> None:
    missing = workdir / "missing.env"
    stderr = refused(daemon, workdir, sleeper("web", environment_files=[str(missing)]))
    assert f"task web: environment file {missing} does not exist" in stderr
    invalid = workdir / "invalid.env"
    invalid.write_text("A=1\nexport B=2\n")
    stderr = refused(daemon, workdir, sleeper("web", environment_files=[str(invalid)]))
    assert f"task web: environment file {invalid}:2: 'export' is shell syntax" in stderr
