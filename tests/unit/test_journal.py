"""zsvc.journal: the native protocol's encoding, a real datagram, and zsvc logs' journalctl."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from zsvc.journal import encode_entry, journal_argv, send


def test_plain_and_binary_fields() -> None:
    assert encode_entry({"MESSAGE": "hi", "ZSVC_TASK": "t1"}) == b"MESSAGE=hi\nZSVC_TASK=t1\n"
    two_lines = "a\nb"
    assert encode_entry({"MESSAGE": two_lines}) == (b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\n")


def test_send_writes_one_datagram_with_the_fields(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert send("t1 ready", 6, path=path, ZSVC_TRANSACTION="TX", ZSVC_TASK="t1")
        server.settimeout(5)
        lines = server.recv(65536).decode().splitlines()
    assert lines == [
        "MESSAGE=t1 ready",
        "PRIORITY=6",
        "SYSLOG_IDENTIFIER=zsvc",
        "ZSVC_TRANSACTION=TX",
        "ZSVC_TASK=t1",
    ]


def test_send_without_a_journal_is_not_an_error(tmp_path: Path) -> None:
    assert send("lost", path=str(tmp_path / "none")) is False


def test_journal_argv_for_zsvc_logs() -> None:
    assert journal_argv("TX") == [
        *("journalctl", "--no-pager", "-o", "short-precise", "-n", "20"),
        "ZSVC_TRANSACTION=TX",
    ]
    argv = journal_argv("TX", ["a", "b", "a"], lines=5, follow=True, user=True)
    assert argv[-5:] == ["--user", "--follow", "ZSVC_TRANSACTION=TX", "ZSVC_TASK=a", "ZSVC_TASK=b"]
    assert "5" in argv
