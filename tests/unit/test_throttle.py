"""Invalid input is logged at most once per interval, with the count of what was left out."""

from __future__ import annotations

import logging

import pytest

from zsvc.throttle import ThrottledLog


def test_one_line_per_interval_and_the_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttled = ThrottledLog(logging.getLogger("t"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        assert throttled.warning("bad message: %s", "first")
        for _ in range(199_999):
            assert not throttled.warning("bad message: %s", "again")
        now[0] += 10.0
        assert throttled.warning("bad message: %s", "later")
        now[0] += 10.0
        assert throttled.warning("bad message: %s", "alone")
    assert [record.getMessage() for record in caplog.records] == [
        "bad message: first",
        "bad message: later (199999 more like it in the last 10 s were not logged)",
        "bad message: alone",
    ]
