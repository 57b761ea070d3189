"""A refused request is logged with who asked for what; under systemd, with journal fields.

A real datagram socket stands in for journald's (the native protocol is one datagram);
"under systemd" is ``JOURNAL_STREAM`` naming our stderr, as systemd sets it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from zsvc.daemon.access import Principal
from zsvc.daemon.refusals import log_refusal, stderr_is_journal

BOB = Principal(1002, 1002, "bob")
KEY_CI = Principal(None, None, "key:ci", key="ci")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "journal.socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield path, sock
    sock.close()


def under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    info = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")


def test_the_daemons_log_has_the_line_outside_systemd(
    journal: tuple[str, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not stderr_is_journal()
    log_refusal(BOB, "stop", "to stop transaction T1, which belongs to alice", "T1", journal[0])
    assert "refused: bob (uid 1002) asked to stop transaction T1, which belongs to alice" in (
        caplog.text
    )
    journal[1].setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing went to the journal
        journal[1].recv(65536)


def test_under_systemd_the_journal_gets_fields(
    journal: tuple[str, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    under_systemd(monkeypatch)
    assert stderr_is_journal()
    log_refusal(BOB, "stop", "to stop transaction T1, which belongs to alice", "T1", journal[0])
    entry = dict(line.split("=", 1) for line in journal[1].recv(65536).decode().splitlines())
    assert entry["MESSAGE"] == (
        "refused: bob (uid 1002) asked to stop transaction T1, which belongs to alice"
    )
    assert entry["PRIORITY"] == "4"
    assert {k: entry[k] for k in entry if k.startswith("ZSVC_")} == {
        "ZSVC_REFUSED": "1",
        "ZSVC_COMMAND": "stop",
        "ZSVC_PRINCIPAL": "bob",
        "ZSVC_UID": "1002",
        "ZSVC_TRANSACTION": "T1",
    }
    assert "refused" not in caplog.text  # once, not twice in journalctl -u zsvc

    log_refusal(KEY_CI, "shutdown", "to shut down the daemon", None, journal[0])
    entry = dict(line.split("=", 1) for line in journal[1].recv(65536).decode().splitlines())
    assert entry["MESSAGE"] == "refused: key ci (as nobody) asked to shut down the daemon"
    assert (entry["ZSVC_KEY"], "ZSVC_UID" in entry, "ZSVC_TRANSACTION" in entry) == (
        "ci",
        False,
        False,
    )


def test_a_journal_that_is_not_there_falls_back_to_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    under_systemd(monkeypatch)
    log_refusal(BOB, "forget", "to forget transaction T1", "T1", str(tmp_path / "none"))
    assert "refused: bob (uid 1002) asked to forget transaction T1" in caplog.text
