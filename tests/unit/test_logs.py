"""Task logs are capped in place (copytruncate) so that writers with O_APPEND keep writing."""

from __future__ import annotations

import os
from pathlib import Path

from zsvc.daemon.logs import cap_logs


def test_a_log_over_the_cap_moves_to_dot_1_and_the_writer_carries_on(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    writer = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(writer, b"old line\n" * 200)
        small = tmp_path / "small.log"
        small.write_text("short\n")
        assert cap_logs([log, small, tmp_path / "missing.log"], max_bytes=1000) == [log]
        # The last 1000 bytes, from the first whole line in them.
        assert (tmp_path / "t.log.1").read_bytes() == b"old line\n" * 111
        assert log.stat().st_size == 0
        os.write(writer, b"new line\n")  # the task's descriptor still works, at the new end
        assert log.read_bytes() == b"new line\n"
        assert small.read_text() == "short\n"
    finally:
        os.close(writer)


def test_rotation_replaces_the_previous_backup(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    (tmp_path / "t.log.1").write_text("ancient\n")
    log.write_text("x" * 50)
    cap_logs([log], max_bytes=10)
    assert (tmp_path / "t.log.1").read_text() == "x" * 10  # no line end: the raw tail


def test_only_the_tail_is_kept_however_far_the_writer_got(tmp_path: Path) -> None:
    """A flood past the cap costs one cap of I/O and leaves at most one cap behind."""
    log = tmp_path / "t.log"
    log.write_bytes(b"".join(b"line %07d\n" % n for n in range(100_000)))  # 1.3 MB
    assert cap_logs([log], max_bytes=1000) == [log]
    kept = (tmp_path / "t.log.1").read_bytes()
    assert len(kept) <= 1000 and kept.endswith(b"line 0099999\n")
    assert kept.startswith(b"line ") and log.stat().st_size == 0
