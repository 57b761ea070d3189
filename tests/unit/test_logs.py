"""Task logs are capped in place (copytruncate) so that writers with O_APPEND keep writing."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.daemon.logs import BUSY_INTERVAL, CHECK_INTERVAL, CapSchedule, cap_logs


def test_a_log_over_the_cap_moves_to_dot_1_and_the_writer_carries_on(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    writer = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(writer, b"old line\n" * 200)
        small = tmp_path / "small.log"
        small.write_text("short\n")
        checked = cap_logs([log, small, tmp_path / "missing.log"], max_bytes=1000)
        assert checked.rotated == [log]
        assert checked.sizes == {log: 1800, small: 6}
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
    assert cap_logs([log], max_bytes=1000).rotated == [log]
    kept = (tmp_path / "t.log.1").read_bytes()
    assert len(kept) <= 1000 and kept.endswith(b"line 0099999\n")
    assert kept.startswith(b"line ") and log.stat().st_size == 0


@settings(max_examples=300)
@given(
    rate=st.floats(min_value=0, max_value=4e9),
    cap=st.integers(min_value=1 << 10, max_value=1 << 30),
    start=st.floats(min_value=0, max_value=1e6),
)
def test_the_schedule_keeps_a_steady_writer_within_about_one_cap_past_the_cap(
    rate: float, cap: int, start: float
) -> None:
    """Simulated: a writer at *rate* bytes/s, the schedule's looks, the cut at each look.

    From the third look on (the first two learn the rate), a log seen at a look is at
    most the cap plus the larger of one cap and what BUSY_INTERVAL of writing adds."""
    log = Path("t.log")
    schedule = CapSchedule()
    now, size, seen = start, 0.0, []
    interval = schedule.next_interval({}, [], now, cap)
    for _ in range(40):
        now += interval
        size += rate * interval
        seen.append(size)
        rotated = [log] if size > cap else []
        interval = schedule.next_interval({log: int(size)}, rotated, now, cap)
        assert BUSY_INTERVAL <= interval <= CHECK_INTERVAL
        if rotated:
            size = 0.0
    bound = cap + max(cap, rate * BUSY_INTERVAL) * 1.01 + 2
    assert all(size <= bound for size in seen[2:]), (seen, bound)


def test_quiet_logs_are_looked_at_every_check_interval() -> None:
    schedule = CapSchedule()
    log = Path("t.log")
    assert schedule.next_interval({}, [], 0.0, 1000) == CHECK_INTERVAL
    assert schedule.next_interval({log: 10}, [], 2.0, 1000) == CHECK_INTERVAL
    # 500 bytes/s against a cap of 1000: two seconds to reach it, the relaxed pace.
    assert schedule.next_interval({log: 1010}, [], 4.0, 1000) == CHECK_INTERVAL
    # 2000 bytes/s: the cap fills in half a second, so look again then.
    assert schedule.next_interval({log: 3010}, [log], 5.0, 1000) == 0.5
    # 100 000 bytes/s since that cut (the log was left at 0): as soon as allowed.
    assert schedule.next_interval({log: 50_000}, [log], 5.5, 1000) == BUSY_INTERVAL
