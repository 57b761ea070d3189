"""Somebody outside group zsvc is told why the daemon refuses them, not that it is gone."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from zsvc.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = Path("/usr/bin/python3")
"""An interpreter an unprivileged user can run (the test run's may live under /root)."""


def _unprivileged_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to run the CLI as another user"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "no user 'nobody'"
    probe = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import zmq, typer, rich"],
        user="nobody",
        cwd="/",
        capture_output=True,
        check=False,
        timeout=60,
    )
    return None if probe.returncode == 0 else "Debian's python3-zmq/typer/rich are not installed"


@pytest.fixture(scope="module")
def readable_zsvc() -> Iterator[Path]:
    """A copy of the zsvc package that user nobody can import, wherever the checkout is."""
    where = Path(tempfile.mkdtemp(prefix="zsvc-nobody.", dir="/var/tmp"))
    try:
        where.chmod(0o755)
        shutil.copytree(REPO / "zsvc", where / "zsvc", ignore=shutil.ignore_patterns("*.pyc"))
        for path in [where, *where.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def guarded_runtime() -> Iterator[Path]:
    """A runtime directory as the packaged daemon makes it: 0750, a listening control socket,
    in a directory everybody may enter (so that only the runtime directory's mode refuses)."""
    parent = Path(tempfile.mkdtemp(prefix="zsvc-guarded.", dir="/var/tmp"))
    parent.chmod(0o755)
    runtime = parent / "run"
    runtime.mkdir(mode=0o750)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(runtime / "control"))
    listener.listen()
    try:
        yield runtime
    finally:
        listener.close()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize("command", [["status"], ["ping"], ["stop", "TX"]])
def test_a_user_outside_the_group_is_refused_with_the_reason(
    guarded_runtime: Path, readable_zsvc: Path, command: list[str]
) -> None:
    why = _unprivileged_possible()
    if why:
        pytest.skip(why)
    done = subprocess.run(
        [str(DEBIAN_PYTHON), "-m", "zsvc", "--runtime-dir", str(guarded_runtime), *command],
        user="nobody",
        cwd="/",
        env={"PYTHONPATH": str(readable_zsvc), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == ExitCode.UNREACHABLE
    assert f"permission denied: {guarded_runtime / 'control'}" in done.stderr
    assert "members of group zsvc may control it" in done.stderr
    assert "start the daemon" not in done.stderr
