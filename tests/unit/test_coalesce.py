"""Notify traffic tamed (issue 19, finding 14): the coalescer, the budget and the flow.

The pure rules take time as an argument, so their properties are checked with
hypothesis over arbitrary schedules, without processes or clocks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import test_systemd_runner as recorded
from zsvc import journal
from zsvc.notify import NotifyProtocolError
from zsvc.runners.base import ExitInfo
from zsvc.runners.coalesce import Budget, Coalescer, TokenBucket, lone_status, names_state
from zsvc.runners.notifyflow import StatusFlow
from zsvc.runners.systemd import SystemdRunner
from zsvc.runners.systemdtask import SystemdTask
from zsvc.states import Result

INTERVAL = 0.1
KEYS = st.sampled_from(["a", "b", "c"])
# (key, seconds since the previous event, flush before it: a state event of that key)
EVENTS = st.lists(
    st.tuples(KEYS, st.floats(min_value=0.0, max_value=0.3), st.booleans()), max_size=200
)


def _run(events: list[tuple[str, float, bool]]) -> tuple[dict, dict, dict]:
    """Drive a Coalescer as a runner does: a timer per pending key, flushes before state
    events. Returns what was offered, and what was delivered (value, time, flushed), per key."""
    coalescer: Coalescer[str, int] = Coalescer(INTERVAL)
    offered: dict[str, list[int]] = {}
    delivered: dict[str, list[tuple[int, float, bool]]] = {}

    def fire_timers_until(now: float) -> None:
        while True:
            due = [(d, k) for k in coalescer.pending() if (d := coalescer.deadline(k)) is not None]
            due = [(d, k) for d, k in due if d <= now]
            if not due:
                return
            deadline, key = min(due)
            value = coalescer.due(key, deadline)
            assert value is not None
            delivered.setdefault(key, []).append((value, deadline, False))

    now = 0.0
    for number, (key, step, state_event) in enumerate(events):
        now += step
        fire_timers_until(now)
        if state_event:
            flushed = coalescer.flush(key, now)
            if flushed is not None:
                delivered.setdefault(key, []).append((flushed, now, True))
        offered.setdefault(key, []).append(number)
        sent = coalescer.offer(key, number, now)
        if sent is not None:
            delivered.setdefault(key, []).append((sent, now, False))
    fire_timers_until(float("inf"))
    return offered, delivered, {k: coalescer.deadline(k) for k in offered}


@given(EVENTS)
def test_the_latest_value_of_each_key_is_always_delivered(events: list) -> None:
    offered, delivered, deadlines = _run(events)
    for key, values in offered.items():
        assert delivered[key][-1][0] == values[-1]
        assert deadlines[key] is None  # nothing left pending


@given(EVENTS)
def test_values_are_never_reordered_and_never_invented(events: list) -> None:
    offered, delivered, _ = _run(events)
    for key, values in delivered.items():
        numbers = [value for value, _when, _flushed in values]
        assert numbers == sorted(set(numbers))
        assert set(numbers) <= set(offered[key])


@given(EVENTS)
def test_a_key_is_delivered_at_most_once_per_interval_but_for_flushes(events: list) -> None:
    _, delivered, _ = _run(events)
    for values in delivered.values():
        for (_, before, _), (_, after, flushed) in itertools.pairwise(values):
            assert flushed or after - before >= INTERVAL - 1e-9


def test_a_flood_is_delivered_ten_times_a_second() -> None:
    events = [("a", 0.0001, False)] * 30_000  # 30,000 lines in 3 s
    offered, delivered, _ = _run(events)
    assert len(delivered["a"]) <= 3 / INTERVAL + 2
    assert delivered["a"][-1][0] == offered["a"][-1]


def test_forget_drops_the_pending_value() -> None:
    coalescer: Coalescer[str, str] = Coalescer(INTERVAL)
    assert coalescer.offer("a", "one", 0.0) == "one"
    assert coalescer.offer("a", "two", 0.01) is None
    assert coalescer.forget("a") == "two"
    assert coalescer.deadline("a") is None
    assert coalescer.offer("a", "three", 0.02) == "three"  # a new run starts afresh


@given(
    st.floats(min_value=1.0, max_value=1000.0),
    st.floats(min_value=1.0, max_value=100.0),
    st.lists(st.floats(min_value=0.0, max_value=0.05), max_size=300),
)
def test_a_bucket_admits_no_more_than_its_burst_plus_its_rate(
    rate: float, burst: float, steps: list[float]
) -> None:
    bucket = TokenBucket.full(rate, burst, 0.0)
    now, admitted = 0.0, 0
    for step in steps:
        now += step
        admitted += bucket.take(now)
    assert admitted <= burst + rate * now + 1e-6


def test_a_bucket_refills_and_ignores_a_clock_going_back() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=2.0, now=100.0)
    assert bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(100.0)
    assert not bucket.take(50.0)
    assert bucket.take(100.2)


def test_the_budget_counts_the_excess_and_reports_it_once_per_interval() -> None:
    budget: Budget[str] = Budget(rate=0.001, burst=10.0, report_interval=10.0)
    admitted = sum(budget.admit("flood", 0.0) for _ in range(1000))
    assert admitted == 10
    assert budget.admit("quiet", 0.0)  # one key's flood costs another nothing
    assert budget.report("quiet", 0.0) == 0  # nothing beyond its budget
    assert budget.report("flood", 0.0) == 990  # the first excess is reported at once
    assert not budget.admit("flood", 0.0)
    assert budget.report("flood", 9.0) == 0  # then at most once per interval
    assert budget.report("flood", 10.0) == 1
    assert budget.report("flood", 25.0) == 0  # nothing new
    assert not budget.admit("flood", 25.0)
    assert budget.forget("flood") == 1  # unreported: the caller logs it at the run's end


@pytest.mark.parametrize(
    ("data", "lone", "state"),
    [
        (b"STATUS=working", True, False),
        (b"STATUS=working\n", True, False),
        (b"STATUS=", True, False),
        (b"STATUS=a\nREADY=1", False, True),
        (b"READY=1\nSTATUS=a", False, True),
        (b"WATCHDOG=1", False, True),
        (b"MAINPID=42", False, True),
        (b"FOO=bar", False, False),
        (b"X_STATUS=a", False, False),
    ],
)
def test_cheap_classification_of_a_datagram(data: bytes, lone: bool, state: bool) -> None:
    assert lone_status(data) is lone
    assert names_state(data) is state


# --------------------------------------------------------------------------- the flow


def test_the_flow_delivers_the_first_line_at_once_and_the_last_at_the_window_end() -> None:
    async def scenario() -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        second = asyncio.Event()

        def deliver(key: tuple[str, str], text: str) -> None:
            seen.append((key[1], text))
            if len(seen) == 2:
                second.set()

        flow = StatusFlow(deliver, interval=0.05)
        for number in range(1000):
            flow.status(("t", "x"), f"line {number}")
        assert seen == [("x", "line 0")]
        await asyncio.wait_for(second.wait(), 5)  # the window's end, bounded
        flow.close()
        return seen

    assert asyncio.run(scenario()) == [("x", "line 0"), ("x", "line 999")]


def test_the_flow_flushes_before_a_state_event_and_at_the_end() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        flow = StatusFlow(lambda key, text: seen.append(text), interval=60.0)
        flow.status(("t", "x"), "starting")
        flow.status(("t", "x"), "almost ready")
        flow.flush(("t", "x"))  # READY=1 follows
        seen.append("READY")
        flow.status(("t", "x"), "serving")
        flow.status(("t", "x"), "cannot open the port")
        flow.end(("t", "x"))  # the run ended: its last words go first
        seen.append("EXIT")
        flow.flush(("t", "x"))  # nothing is left
        return seen

    assert asyncio.run(scenario()) == [
        "starting",
        "almost ready",
        "READY",
        "cannot open the port",  # "serving" was replaced within the window
        "EXIT",
    ]


def test_beyond_its_budget_a_task_s_datagrams_are_handled_unparsed() -> None:
    async def scenario() -> tuple[list[str], list[bool]]:
        seen: list[str] = []
        flow = StatusFlow(lambda key, text: seen.append(text), interval=60.0, rate=1.0, burst=2)
        key = ("t", "x")
        verdicts = [flow.cheap(key, b"STATUS=a"), flow.cheap(key, b"STATUS=b")]  # within
        verdicts += [flow.cheap(key, b"STATUS=%d" % n) for n in range(100)]  # kept raw
        verdicts += [flow.cheap(key, b"READY=1"), flow.cheap(key, b"FOO=1")]
        flow.end(key)
        return seen, verdicts

    seen, verdicts = asyncio.run(scenario())
    assert verdicts[:2] == [False, False]  # parsed and applied by the runner
    assert all(verdicts[2:102])  # coalesced without parsing
    assert verdicts[102:] == [False, True]  # a state change is never dropped; FOO=1 is
    assert seen == ["0", "99"]  # the first at once, the last raw one parsed when it goes out


def test_invalid_datagrams_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        flow = StatusFlow(lambda key, text: None)
        for _ in range(1000):
            flow.invalid(NotifyProtocolError("line 1: no '=' in 'x'", pid=42))

    with caplog.at_level(logging.WARNING, logger="zsvc.runners.notifyflow"):
        asyncio.run(scenario())
    assert len(caplog.records) == 1


# --------------------------------------------------------------------------- systemd


def test_the_systemd_runner_paces_a_flood_of_status_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd, each STATUS= of a task arrives as a PropertiesChanged of its unit:
    the same flow paces them, flushed before readiness and at the end."""
    monkeypatch.setattr(journal, "send", lambda *args, **fields: True)

    async def scenario() -> list[tuple[str, object]]:
        events = recorded.Recorder()
        runner = SystemdRunner(user=False)
        runner.events = events
        task = SystemdTask(
            spec=recorded.launch_spec(), pid=42, runner=runner, unit=recorded.NAME,
            path=recorded.PATH,
        )  # fmt: skip
        task._returned = True
        task._release()
        runner.by_path[recorded.PATH] = task
        feed = runner._on_message
        feed(recorded.unit("activating", "start", job=9))
        for number in range(500):
            feed(recorded.svc(42, text=f"line {number}"))
        feed(recorded.unit("active", "running", job=9))
        for number in range(500, 1000):
            feed(recorded.svc(42, text=f"line {number}"))
        feed(recorded.svc(0, "exit-code", 1, 3, "line 999"))
        feed(recorded.unit("failed", "failed"))
        runner.flow.close()
        return events.seen

    seen = asyncio.run(scenario())
    assert seen == [
        ("status", "line 0"),
        ("status", "line 499"),  # flushed before READY
        ("ready", (recorded.TX, recorded.TASK)),
        ("status", "line 999"),  # the last words, before the end
        ("exit", ExitInfo(Result.EXIT_CODE, exit_code=3)),
    ]
