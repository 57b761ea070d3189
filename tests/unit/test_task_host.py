"""The task host's bus join: before setup(), or (in a crash streak) only after it;
and the task side's notifications (in process, against zsvc's own notify server).

Each host runs as a real ``python -m zsvc.task`` process against bus endpoints
nobody listens on: a host that tries to join waits for a handshake that cannot
complete, so whether and when it tries is visible in how it ends.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, TEST_SERVICES
from zsvc.hostwire import SPEC_ENV, HostSpec
from zsvc.notify import Notification, NotifyServer
from zsvc.task.runtime import EXIT_SETUP_ERROR, EXIT_USER_ERROR, notify

HOST_DEADLINE = 20.0
"""Bound on one host's life; longer than any handshake deadline these tests give it."""


def run_host(tmp_path: Path, instance: str, **fields: object) -> subprocess.CompletedProcess[str]:
    spec = HostSpec(
        transaction="T",
        task_id="t",
        service_name="t",
        instance=instance,
        location=str(TEST_SERVICES),
        bus_pub=f"ipc://{tmp_path}/nobody-pub",
        bus_sub=f"ipc://{tmp_path}/nobody-sub",
        **fields,  # type: ignore[arg-type]
    )
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update({SPEC_ENV: json.dumps(spec.__dict__), "PYTHONPATH": str(REPO)})
    return subprocess.run(
        [sys.executable, "-m", "zsvc.task"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HOST_DEADLINE,
    )


def test_a_host_joins_before_setup_by_default(tmp_path: Path) -> None:
    """The control: with nobody on the bus, the default host never reaches setup()."""
    done = run_host(tmp_path, "SetupFails", handshake_timeout=0.5)
    assert done.returncode == EXIT_SETUP_ERROR, done.stderr
    assert "cannot join the bus" in done.stderr
    assert "the database is on fire" not in done.stderr


def test_a_host_joining_after_setup_fails_in_setup_without_touching_the_bus(
    tmp_path: Path,
) -> None:
    # A join would wait for the whole handshake deadline, beyond HOST_DEADLINE.
    done = run_host(
        tmp_path, "SetupFails", handshake_timeout=HOST_DEADLINE * 2, join_after_setup=True
    )
    assert done.returncode == EXIT_USER_ERROR, done.stderr
    assert "the database is on fire" in done.stderr
    assert "cannot join the bus" not in done.stderr


def test_a_host_joining_after_setup_joins_before_ready(tmp_path: Path) -> None:
    """setup() succeeded: the host must join (and here cannot) before it says READY=1."""
    done = run_host(tmp_path, "Sleeper", handshake_timeout=0.5, join_after_setup=True)
    assert done.returncode == EXIT_SETUP_ERROR, done.stderr
    assert "cannot join the bus" in done.stderr
    assert "T/t ready" not in done.stderr  # the host logs "T/t ready (pid N)" at READY=1


# --- the task side's notifications: one sender, one error policy (zsvc.task.runtime.notify)


def test_a_status_in_any_script_reaches_the_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UTF-8 on the wire, as sd_notify(3) says: sdnotify's Latin-1 would make the server
    refuse the first datagram and could not encode the second one at all."""
    with NotifyServer(tmp_path / "notify") as server:
        monkeypatch.setenv("NOTIFY_SOCKET", server.path)
        notify("STATUS=20 °C")
        notify("READY=1", "STATUS=温度 20 °C")
        got = [n.fields for n in server.drain() if isinstance(n, Notification)]
    assert got == [{"STATUS": "20 °C"}, {"READY": "1", "STATUS": "温度 20 °C"}]


def test_a_notification_nobody_receives_never_fails_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No manager, or a manager gone (being restarted): the task goes on, a debug line says so."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.DEBUG, logger="zsvc.task"):
        notify("WATCHDOG=1")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_a_notification_the_protocol_cannot_carry_is_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with pytest.raises(ValueError, match="newline"):
        notify("STATUS=two\nlines")
