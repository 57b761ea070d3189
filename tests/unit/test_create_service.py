"""``zsvc create-service`` end to end on disk: the seed's command line, refusals, all or nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_scaffold import SEED_FLAGS, echo_request, seed_metaconf
from zsvc.scaffold import write
from zsvc.scaffold.plan import make_plan
from zsvc.scaffold.write import WriteError, apply, read_file

REPO = Path(__file__).resolve().parents[2]

SEED_LINE = [
    "--service_path={root}",
    "--task_service=EchoAction",
    "--task_file=EchoAction",
    "--task_class=EchoShouting",
    "--task_desc=An echo action is for shouting the time after counting 10s",
    "--context_name=EchoAction",
    "--service_name=echo_action",
    "--server_ip=127.0.0.1",
    "--sub_port=5556",
    "--pub_port=5557",
    "--task_id=ts_100",
    "--device_action=shout",
]


def zsvc_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "zsvc", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
    )  # fmt: skip


def tree(root: Path) -> dict[str, bytes]:
    """Every file under *root*, relative, with its content."""
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return {str(path.relative_to(root)): path.read_bytes() for path in files}


def test_the_seeds_command_line_works(tmp_path: Path) -> None:
    line = [arg.format(root=tmp_path) for arg in SEED_LINE]
    result = zsvc_cli("create-service", *line, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(tree(tmp_path)) == [
        "Conf/Context-EchoAction.xml",
        "Services/EchoAction/EchoAction.py",
        "Services/EchoAction/ServiceEchoAction.py",
        "Services/EchoAction/__init__.py",
    ]
    assert result.stdout.splitlines()[0] == "created    Services/EchoAction/__init__.py"
    valid = zsvc_cli("validate", str(tmp_path / "Conf" / "Context-EchoAction.xml"))
    assert valid.returncode == 0, valid.stderr
    before = tree(tmp_path)
    again = zsvc_cli("create-service", *line, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 4
    assert tree(tmp_path) == before


def test_the_dash_spellings_and_dry_run(tmp_path: Path) -> None:
    result = zsvc_cli(
        "create-service", "--service-path", str(tmp_path), "--task-service", "Echo",
        "--context-name", "Echo", "--service-name", "echo", "--task-id", "ts_1",
        "--task-type", "Single", "--entry-action", "on_update", "--dry-run", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "would create     Conf/Context-Echo.xml" in result.stdout
    assert tree(tmp_path) == {}


def test_missing_flags_exit_2_and_write_nothing(tmp_path: Path) -> None:
    result = zsvc_cli("create-service", "--task_service=EchoAction", cwd=tmp_path)
    assert result.returncode == 2
    assert "--task-id: is required (or give --xml-file)" in result.stderr
    assert "create-service wrote nothing" in result.stderr
    assert tree(tmp_path) == {}


def test_path_traversal_in_names_is_refused(tmp_path: Path) -> None:
    line = [arg.format(root=tmp_path / "sp") for arg in SEED_LINE]
    result = zsvc_cli(
        "create-service", *line, "--task_service=../../escape", "--context_name=../x", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "--task-service: '../../escape' is not a valid task service name" in result.stderr
    assert "--context-name: '../x' is not a valid context name" in result.stderr
    assert tree(tmp_path) == {}


def test_the_seeds_metaconf_sample_exits_2_at_its_stray_tag(tmp_path: Path) -> None:
    conf = tmp_path / "Conf"
    conf.mkdir()
    (conf / "Services-StateMachine.xml").write_bytes(seed_metaconf())
    result = zsvc_cli(
        "create-service", "--xml_file=Conf/Services-StateMachine.xml", f"--service_path={tmp_path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "Conf/Services-StateMachine.xml:69:1: XML syntax: closing tag </Service> does not close"
    )
    assert sorted(tree(tmp_path)) == ["Conf/Services-StateMachine.xml"]


def test_xml_file_takes_no_service_flags(tmp_path: Path) -> None:
    result = zsvc_cli("create-service", "--xml-file=x.xml", "--task-id=ts_1", cwd=tmp_path)
    assert result.returncode == 2
    assert "--xml-file: --xml-file gives the services; leave out --task-id" in result.stderr


def test_an_unwritable_service_path_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = [arg.format(root=blocker / "services") for arg in SEED_LINE]
    result = zsvc_cli("create-service", *line, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"zsvc: cannot write {blocker}/services: Not a directory; nothing was written\n"
    )
    assert tree(tmp_path) == {"file": b"not a directory"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_service_path_exits_1(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    line = [arg.format(root=read_only) for arg in SEED_LINE]
    result = zsvc_cli("create-service", *line, cwd=tmp_path)
    assert result.returncode == 1 and "Permission denied; nothing was written" in result.stderr
    assert list(read_only.iterdir()) == []


# --------------------------------------------------------------------------- all or nothing


def test_a_failing_rename_restores_every_file(tmp_path: Path, monkeypatch) -> None:
    """The third rename fails: the two files already renamed are undone, dirs removed."""
    apply(make_plan(echo_request(tmp_path), read_file))
    task_file = tmp_path / "Services" / "EchoAction" / "EchoAction.py"
    task_file.write_text("# edited\n")
    before = tree(tmp_path)
    request = echo_request(tmp_path, task_service="Two", task_id="ts_2", task_class="Two")
    plan = make_plan(request, read_file)
    assert len(plan.writes) == 4  # three new files, the context updated
    real_replace = os.replace
    calls = []

    def flaky_replace(source, target):
        calls.append(target)
        if len(calls) == 4:
            raise PermissionError(13, "Permission denied", str(target))
        real_replace(source, target)

    monkeypatch.setattr(write.os, "replace", flaky_replace)
    with pytest.raises(WriteError, match="Permission denied; nothing was written"):
        apply(plan)
    monkeypatch.undo()
    assert tree(tmp_path) == before


def test_a_failing_temporary_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    plan = make_plan(echo_request(tmp_path), read_file)
    real = write._write_temporary
    count = iter(range(10))

    def flaky(change):
        if next(count) == 2:
            raise OSError(28, "No space left on device", str(change.path))
        return real(change)

    monkeypatch.setattr(write, "_write_temporary", flaky)
    with pytest.raises(WriteError, match="No space left on device; nothing was written"):
        apply(plan)
    assert list(tmp_path.iterdir()) == []


def test_force_overwrites_an_edited_file_and_keeps_its_mode(tmp_path: Path) -> None:
    apply(make_plan(echo_request(tmp_path), read_file))
    task_file = tmp_path / "Services" / "EchoAction" / "EchoAction.py"
    generated = task_file.read_bytes()
    task_file.write_text("# edited\n")
    task_file.chmod(0o600)
    written = apply(make_plan(echo_request(tmp_path), read_file, force=True))
    assert [change.path for change in written] == [task_file]
    assert task_file.read_bytes() == generated
    assert task_file.stat().st_mode & 0o777 == 0o600
    assert not [p for p in task_file.parent.iterdir() if p.name.startswith(".")]


def test_seed_flags_are_the_tutorials() -> None:
    """The tutorial's command is the seed's (this module's SEED_LINE): keep them one."""
    text = (REPO / "docs" / "tutorial.md").read_text()
    for name, value in SEED_FLAGS.items():
        assert f"--{name}='{value}'" in text, name
