"""The command line without a daemon: version, usage errors, validation, exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import zsvc

REPO = Path(__file__).resolve().parents[2]


def zsvc_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zsvc", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip


def test_version() -> None:
    result = zsvc_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"zsvc {zsvc.__version__}")


def test_usage_error_exits_2() -> None:
    assert zsvc_cli("start", "--no-such-flag").returncode == 2
    assert zsvc_cli("frobnicate").returncode == 2


def test_validate_reports_every_bad_file_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "Context-bad.xml"
    bad.write_text("<Context>\n<Nope/>\n</Context>\n")
    result = zsvc_cli("validate", "Conf/Context-EchoAction.xml", str(bad))
    assert result.returncode == 2
    assert "Conf/Context-EchoAction.xml: ok (1 tasks)" in result.stdout
    assert f"{bad}:2:1:" in result.stderr


def test_no_daemon_exits_3_with_a_hint(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, ZSVC_RUNTIME_DIR=str(tmp_path / "nothing-here"))
    for args in (("status",), ("status", "--json"), ("stop", "T"), ("ping",)):
        result = zsvc_cli(*args, env=env)
        assert result.returncode == 3, args
        assert "zsvc daemon --detach" in result.stderr


def test_stop_prints_a_summary_and_the_tasks_that_did_not_end_cleanly() -> None:
    from zsvc.cli.render import stop_summary

    def task(id_: str, state: str, sub: str, result: str, exit_: str) -> dict[str, str]:
        return {"id": id_, "state": state, "sub_state": sub, "result": result} | {
            "status_text": "",
            "last_exit": exit_,
        }

    record = {
        "transaction": "TX",
        "state": "failed",
        "tasks": [
            task("a", "inactive", "dead", "success", "exit 0"),
            task("b", "failed", "failed", "timeout", "killed by SIGKILL"),
            task("c", "inactive", "dead", "success", ""),
        ],
    }
    assert stop_summary(record) == [
        "TX failed: 1 failed/failed, 2 inactive/dead",
        "  b: failed/failed (timeout): killed by SIGKILL",
    ]
    assert stop_summary({"transaction": "E", "state": "stopped", "tasks": []}) == [
        "E stopped: no tasks"
    ]
