"""Smoke test of bench/peers.py's own parts: no peers venv, no network, no timing asserted.

The full benchmark needs circus and supervisor installed and minutes of a quiet
machine; this only checks that the shared task program signals readiness the
way the bench observes it (bench/lib/watch.py), and that the ratio table is
computed and printed (bench/lib/report.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
from lib import report  # noqa: E402
from lib.watch import ReadyWatch  # noqa: E402


def test_task_program_sends_ready_to_the_bench_socket(tmp_path: Path) -> None:
    script = tmp_path / "task.py"
    script.write_text(peers.TASK_PROGRAM)
    watch = ReadyWatch(tmp_path / "n")
    env = {"NOTIFY_SOCKET": watch.path, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, str(script), "0"], env=env)
    try:
        assert watch.wait_pid(proc.pid, 30) > 0
        assert proc.poll() is None  # it idles after READY=1
    finally:
        proc.terminate()
        proc.wait(30)
        watch.close()


def test_ratios_compare_zsvc_with_each_peer(capsys: pytest.CaptureFixture[str]) -> None:
    results = {
        "start 50": {"zsvc": 0.5, "zsvc-py": 0.4, "circus": 1.0, "supervisord": 0.8},
        "manager CPU": {"zsvc": 1.0, "circus": 0.0},
    }
    rows = report.comparison(results)
    assert rows[0]["zsvc/circus"] == 0.5
    assert rows[0]["zsvc-py/supervisord"] == 0.5
    assert "zsvc/circus" not in rows[1]  # no ratio to a zero
    report.print_comparison(rows, {"start 50": "s", "manager CPU": "%"})
    out = capsys.readouterr().out
    assert "zsvc/circus" in out and "0.50" in out
