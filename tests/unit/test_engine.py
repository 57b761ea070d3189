"""zsvc.daemon.engine: triggers, the restart policy and start/stop order, all pure.

The examples pin each rule; the hypothesis properties check the promises the
original broke (spec/original-behaviour.md §3.5-3.9): triggers that fire
once per stored copy or across transactions, unbounded restart loops, and
tasks started before what they run after.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.config.model import RestartPolicy, TaskSpec, Trigger
from zsvc.daemon import engine
from zsvc.daemon.engine import (
    RestartDecision,
    RestartState,
    TaskEvent,
    TriggeredAction,
    Verdict,
    backoff_delay,
    blocked_by,
    fire,
    limit_reached,
    note_start,
    on_exit,
    start_waves,
    stop_order,
)
from zsvc.states import (
    TRIGGER_FOR_ACTION,
    LastAction,
    RestartMode,
    Result,
    TaskAction,
    TriggerEvent,
)

FAST = settings(max_examples=150, deadline=None)

# --------------------------------------------------------------------------- purity


def test_engine_imports_no_io_clock_or_randomness() -> None:
    """The core is pure: stdlib only (no clocks, randomness, sockets, processes) and the
    two zsvc modules that hold its vocabulary."""
    forbidden = {"time", "random", "secrets", "os", "socket", "asyncio", "subprocess"}
    forbidden |= {"threading", "multiprocessing", "datetime", "logging"}
    tree = ast.parse(Path(engine.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            root = module.split(".")[0]
            if root == "zsvc":
                assert module in {"zsvc.states", "zsvc.config.model"}, module
            else:
                assert root in sys.stdlib_module_names or root == "__future__", module
                assert root not in forbidden, module


# --------------------------------------------------------------------------- triggers

ALL_FOUR = {
    TriggerEvent.ON_START: Trigger(TaskAction.START, "ts_101"),
    TriggerEvent.ON_UPDATE: Trigger(TaskAction.STOP, "ts_102"),
    TriggerEvent.ON_FAIL: Trigger(TaskAction.RESTART, "ts_101"),
    TriggerEvent.ON_EXIT: Trigger(TaskAction.START, "ts_103"),
}
TABLE: dict[str, Mapping[TriggerEvent, Trigger]] = {"ts_100": ALL_FOUR, "ts_101": {}}


@pytest.mark.parametrize(
    ("action", "trigger_event", "expected_action", "target"),
    [
        (LastAction.STARTED, TriggerEvent.ON_START, TaskAction.START, "ts_101"),
        (LastAction.UPDATED, TriggerEvent.ON_UPDATE, TaskAction.STOP, "ts_102"),
        (LastAction.FAILED, TriggerEvent.ON_FAIL, TaskAction.RESTART, "ts_101"),
        (LastAction.STOPPED, TriggerEvent.ON_EXIT, TaskAction.START, "ts_103"),
        (LastAction.EXITED, TriggerEvent.ON_EXIT, TaskAction.START, "ts_103"),
    ],
)
def test_each_event_fires_its_trigger_once(
    action: LastAction, trigger_event: TriggerEvent, expected_action: TaskAction, target: str
) -> None:
    """started→on_start, updated→on_update, failed→on_fail, stopped and exited→on_exit
    (the original never fired on_start or on_exit), exactly one action each."""
    fired = fire(TaskEvent("T1", "ts_100", action), TABLE, stopping=False)
    assert fired == (TriggeredAction("T1", target, expected_action, "ts_100", trigger_event),)


def test_the_same_event_again_fires_once_again() -> None:
    """Nothing accumulates between events: the original fired once per stored copy."""
    event = TaskEvent("T1", "ts_100", LastAction.FAILED)
    for _ in range(3):
        assert len(fire(event, TABLE, stopping=False)) == 1


def test_describe_names_event_source_action_and_target() -> None:
    action = TriggeredAction("T1", "ts_101", TaskAction.RESTART, "ts_100", TriggerEvent.ON_FAIL)
    assert action.describe() == "on_fail of ts_100: restart ts_101"


def test_nothing_fires_while_the_transaction_stops() -> None:
    """A stop must not restart what it stops: stopped/exited during a stop fire nothing."""
    for action in LastAction:
        assert fire(TaskEvent("T1", "ts_100", action), TABLE, stopping=True) == ()


def test_unknown_source_fires_nothing() -> None:
    assert fire(TaskEvent("T1", "ts_999", LastAction.FAILED), TABLE, stopping=False) == ()


def test_empty_triggers_fire_nothing() -> None:
    """No table at all, or a task without triggers (or without this one)."""
    for action in LastAction:
        assert fire(TaskEvent("T1", "ts_100", action), {}, stopping=False) == ()
        assert fire(TaskEvent("T1", "ts_101", action), TABLE, stopping=False) == ()
    only_fail = {"ts_100": {TriggerEvent.ON_FAIL: Trigger(TaskAction.STOP, "ts_101")}}
    assert fire(TaskEvent("T1", "ts_100", LastAction.STARTED), only_fail, stopping=False) == ()


def test_the_action_belongs_to_the_events_transaction() -> None:
    for transaction in ("T1", "OTHER", "ABCDEFGHIJ0123456789"):
        (fired,) = fire(TaskEvent(transaction, "ts_100", LastAction.FAILED), TABLE, False)
        assert fired.transaction == transaction


TRANSACTIONS = ["TA", "TB", "TC"]
TASK_IDS = ["a", "b", "c", "d"]
trigger_st = st.builds(Trigger, st.sampled_from(list(TaskAction)), st.sampled_from(TASK_IDS))
table_st = st.dictionaries(
    st.sampled_from(TASK_IDS),
    st.dictionaries(st.sampled_from(list(TriggerEvent)), trigger_st),
)
event_st = st.builds(
    TaskEvent,
    st.sampled_from(TRANSACTIONS),
    st.sampled_from([*TASK_IDS, "unknown"]),
    st.sampled_from(list(LastAction)),
)


@FAST
@given(
    tables=st.fixed_dictionaries({t: table_st for t in TRANSACTIONS}),
    events=st.lists(st.tuples(event_st, st.booleans()), max_size=40),
)
def test_fire_stays_in_its_transaction_and_fires_at_most_once(
    tables: dict[str, dict[str, dict[TriggerEvent, Trigger]]],
    events: list[tuple[TaskEvent, bool]],
) -> None:
    """For any events over any transactions' tables: never an action for another
    transaction, nothing while stopping, at most one action per event, and exactly
    the configured one otherwise."""
    total = expected_total = 0
    for event, stopping in events:
        table = tables[event.transaction]
        fired = fire(event, table, stopping)
        assert len(fired) <= 1
        assert all(action.transaction == event.transaction for action in fired)
        assert all(action.source == event.task_id for action in fired)
        if stopping:
            assert fired == ()
        configured = table.get(event.task_id, {}).get(TRIGGER_FOR_ACTION[event.action])
        if not stopping and configured is not None:
            (action,) = fired
            assert (action.action, action.target) == (configured.action, configured.call)
            assert action.event is TRIGGER_FOR_ACTION[event.action]
            expected_total += 1
        else:
            assert fired == ()
        total += len(fired)
    assert total == expected_total


# --------------------------------------------------------------------------- restart policy


def policy(**changes: Any) -> RestartPolicy:
    """Restart=always without jitter (so that delays are exact), changed by *changes*."""
    return replace(RestartPolicy(mode=RestartMode.ALWAYS, jitter=0.0), **changes)


RUNNING = RestartState(starts=(), crashes=0, last_start=100.0)
"""A task that started at 100 s; exits at 101 s are unstable (stable_sec is 10)."""


def exit_at(
    state: RestartState,
    pol: RestartPolicy,
    result: Result = Result.EXIT_CODE,
    now: float = 101.0,
    rand: float = 0.5,
    stop_requested: bool = False,
) -> RestartDecision:
    return on_exit(state, pol, result, stop_requested=stop_requested, now=now, rand=rand)


@pytest.mark.parametrize(
    ("mode", "result", "verdict"),
    [
        (RestartMode.NO, Result.SUCCESS, Verdict.NONE),
        (RestartMode.NO, Result.EXIT_CODE, Verdict.NONE),
        (RestartMode.NO, Result.SIGNAL, Verdict.NONE),
        (RestartMode.ON_FAILURE, Result.SUCCESS, Verdict.NONE),
        (RestartMode.ON_FAILURE, Result.EXIT_CODE, Verdict.RESTART),
        (RestartMode.ON_FAILURE, Result.SIGNAL, Verdict.RESTART),
        (RestartMode.ON_FAILURE, Result.WATCHDOG, Verdict.RESTART),
        (RestartMode.ALWAYS, Result.SUCCESS, Verdict.RESTART),
        (RestartMode.ALWAYS, Result.EXIT_CODE, Verdict.RESTART),
    ],
)
def test_restart_mode(mode: RestartMode, result: Result, verdict: Verdict) -> None:
    """systemd's Restart=: no never, on-failure unless success, always always."""
    decision = exit_at(RUNNING, policy(mode=mode), result)
    assert decision.verdict is verdict
    if verdict is Verdict.NONE:
        assert decision.delay == 0.0
    assert decision.state.crashes == (0 if result is Result.SUCCESS else 1)


def test_a_requested_stop_is_never_undone() -> None:
    for result in (Result.SUCCESS, Result.SIGNAL, Result.TIMEOUT):
        decision = exit_at(RUNNING, policy(mode=RestartMode.ALWAYS), result, stop_requested=True)
        assert decision.verdict is Verdict.NONE


def test_backoff_doubles_and_caps() -> None:
    """1, 2, 4, 8, then the cap of 10: each quick crash doubles the delay."""
    pol = policy(delay_min=1.0, delay_max=10.0, limit_burst=100)
    state, now, delays = RUNNING, 100.0, []
    for _ in range(6):
        now += 1.0  # every run lasts a second: never stable
        decision = exit_at(state, pol, now=now)
        assert decision.verdict is Verdict.RESTART
        delays.append(decision.delay)
        now += decision.delay
        allowed, state = note_start(decision.state, now, True, pol)
        assert allowed
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert state.crashes == 6


def test_backoff_survives_huge_failure_counts() -> None:
    """No OverflowError for a task that failed thousands of times: the cap holds."""
    pol = policy(delay_min=0.1, delay_max=30.0)
    assert backoff_delay(10_000, pol, 0.5) == 30.0


def test_delay_min_zero_means_no_delay() -> None:
    pol = policy(delay_min=0.0, delay_max=30.0, jitter=0.5)
    for crashes in (0, 3, 50):
        assert backoff_delay(crashes, pol, 0.9) == 0.0


def test_jitter_spreads_both_ways_within_bounds() -> None:
    """rand 0 shortens by the jitter fraction, rand 0.5 keeps, rand near 1 lengthens."""
    pol = policy(delay_min=4.0, delay_max=30.0, jitter=0.25)
    assert backoff_delay(1, pol, 0.0) == pytest.approx(3.0)
    assert backoff_delay(1, pol, 0.5) == pytest.approx(4.0)
    assert backoff_delay(1, pol, 0.999999) == pytest.approx(5.0, rel=1e-5)
    capped = [backoff_delay(20, pol, rand) for rand in (0.0, 0.5, 0.999999)]
    assert capped == pytest.approx([22.5, 30.0, 37.5], rel=1e-5)
    assert max(capped) <= 30.0 * 1.25


def test_jitter_above_one_is_clamped_at_zero() -> None:
    pol = policy(delay_min=2.0, delay_max=30.0, jitter=1.5)
    assert backoff_delay(0, pol, 0.0) == 0.0
    assert backoff_delay(0, pol, 0.999999) <= 30.0 * 2.5


def test_stable_run_resets_the_backoff() -> None:
    """A run that lasted stable_sec starts the back-off over from delay_min."""
    pol = policy(delay_min=1.0, delay_max=60.0, stable_sec=10.0, limit_burst=10)
    flapping = RestartState(crashes=4, last_start=100.0)
    stable = exit_at(flapping, pol, now=110.0)
    assert (stable.delay, stable.state.crashes) == (1.0, 0)
    unstable = exit_at(flapping, pol, now=109.9)
    assert (unstable.delay, unstable.state.crashes) == (16.0, 5)


def test_unknown_run_length_is_not_stable() -> None:
    pol = policy(delay_min=1.0, delay_max=60.0)
    decision = exit_at(RestartState(crashes=3, last_start=None), pol, now=1e9)
    assert (decision.delay, decision.state.crashes) == (8.0, 4)


def test_start_limit_refuses_the_sixth_automatic_start_and_a_manual_start_resets() -> None:
    """Burst 5 in 10 s: five automatic starts pass, the sixth is refused; a start by
    hand is always allowed and clears the count (reset-failed + start)."""
    pol = policy(limit_burst=5, limit_interval=10.0)
    state = RestartState()
    for now in (0.0, 1.0, 2.0, 3.0, 4.0):
        allowed, state = note_start(state, now, automatic=True, policy=pol)
        assert allowed
        assert state.last_start == now
    refused, after = note_start(state, 5.0, automatic=True, policy=pol)
    assert not refused
    assert after.starts == state.starts and after.last_start == 4.0
    allowed, manual = note_start(after, 5.0, automatic=False, policy=pol)
    assert allowed
    assert manual == RestartState(starts=(), crashes=0, last_start=5.0)
    for now in (5.0, 5.5, 6.0, 6.5, 7.0):
        allowed, manual = note_start(manual, now, automatic=True, policy=pol)
        assert allowed
    assert not note_start(manual, 7.5, automatic=True, policy=pol)[0]


def test_starts_leave_the_window_after_limit_interval() -> None:
    """A start exactly limit_interval seconds old no longer counts; older ones are dropped."""
    pol = policy(limit_burst=2, limit_interval=10.0)
    _, state = note_start(RestartState(), 0.0, True, pol)
    _, state = note_start(state, 1.0, True, pol)
    assert not note_start(state, 9.99, True, pol)[0]
    allowed, state = note_start(state, 10.0, True, pol)
    assert allowed
    assert state.starts == (1.0, 10.0)


def test_manual_start_resets_the_crash_streak() -> None:
    _, state = note_start(RestartState(crashes=7, starts=(1.0,)), 2.0, False, policy())
    assert state.crashes == 0


def test_limit_verdict_when_the_restart_would_exceed_the_start_limit() -> None:
    pol = policy(limit_burst=5, limit_interval=10.0, delay_min=0.5)
    state = RestartState(starts=(0.0, 1.0, 2.0, 3.0, 4.0), last_start=4.0)
    decision = exit_at(state, pol, now=5.0)
    assert decision.verdict is Verdict.LIMIT
    assert decision.state.starts == state.starts


def test_the_limit_is_counted_when_the_restart_would_happen() -> None:
    """A delay that carries the restart past old starts lets it through."""
    pol = policy(limit_burst=5, limit_interval=10.0, delay_min=6.0, delay_max=6.0)
    state = RestartState(starts=(0.0, 1.0, 2.0, 3.0, 4.0), last_start=4.0)
    decision = exit_at(state, pol, now=5.0)
    assert (decision.verdict, decision.delay) == (Verdict.RESTART, 6.0)
    assert decision.state.starts == state.starts  # note_start records the start itself
    assert note_start(decision.state, 11.0, True, pol)[0]


def test_burst_zero_refuses_every_automatic_start() -> None:
    pol = policy(limit_burst=0)
    assert not note_start(RestartState(), 0.0, True, pol)[0]
    assert exit_at(RUNNING, pol).verdict is Verdict.LIMIT
    assert note_start(RestartState(), 0.0, False, pol)[0]


def policies(min_stable_sec: float = 0.0) -> st.SearchStrategy[RestartPolicy]:
    """Any restart policy whose stable_sec is at least *min_stable_sec*."""
    return st.builds(
        RestartPolicy,
        mode=st.sampled_from(list(RestartMode)),
        delay_min=st.floats(0.0, 5.0),
        delay_max=st.floats(0.0, 60.0),
        jitter=st.floats(0.0, 1.0),
        stable_sec=st.floats(min_stable_sec, 20.0),
        limit_burst=st.integers(0, 8),
        limit_interval=st.floats(0.0, 30.0),
    )


def test_a_slow_crash_loop_ends_after_burst_restarts() -> None:
    """Runs of 5 s with a growing back-off never put 6 starts in 10 s, yet the loop ends:
    after more than limit_burst quick crashes in a row the task gives up (pm2's
    max_restarts with min_uptime), naming the streak."""
    pol = policy(delay_min=1.0, delay_max=30.0, limit_burst=5, limit_interval=10.0)
    _, state = note_start(RestartState(), 0.0, automatic=False, policy=pol)
    now, restarts = 0.0, 0
    while True:
        now += 5.0
        decision = exit_at(state, pol, now=now)
        if decision.verdict is Verdict.LIMIT:
            break
        now += decision.delay
        allowed, state = note_start(decision.state, now, True, pol)
        assert allowed
        restarts += 1
    assert restarts == 5
    assert decision.state.crashes == 6
    assert decision.limit == "6 runs in a row failed within restart_stable_sec (10 s)"


def test_the_rate_limit_names_itself() -> None:
    pol = policy(limit_burst=2, limit_interval=10.0)
    state = RestartState(starts=(0.0, 1.0), last_start=1.0)
    assert limit_reached(state, 2.0, pol) == "more than 2 automatic starts in 10 s"
    assert limit_reached(state, 10.5, pol) == ""


def test_a_clean_exit_or_a_stable_run_ends_the_streak_and_a_requested_stop_keeps_it() -> None:
    pol = policy(stable_sec=10.0)
    crashing = RestartState(crashes=3, last_start=100.0)
    assert exit_at(crashing, pol, Result.SUCCESS).state.crashes == 0
    assert exit_at(crashing, pol, Result.SIGNAL, now=111.0).state.crashes == 0
    assert exit_at(crashing, pol, Result.SUCCESS, stop_requested=True).state.crashes == 3
    assert exit_at(crashing, pol, Result.SIGNAL, stop_requested=True).state.crashes == 3
    assert exit_at(crashing, policy(mode=RestartMode.NO), Result.SIGNAL).state.crashes == 4


@FAST
@given(
    pol=policies(min_stable_sec=0.1),  # runs shorter than it are quick crashes
    runs=st.lists(
        st.tuples(st.floats(0.0, 0.999), st.booleans(), st.floats(0.0, 1.0, exclude_max=True)),
        max_size=40,
    ),
)
def test_a_task_that_always_crashes_quickly_gets_at_most_burst_automatic_starts(
    pol: RestartPolicy, runs: list[tuple[float, bool, float]]
) -> None:
    """Whoever restarts it (its policy, or a trigger such as on_fail of another task in a
    ping-pong), at whatever pace, a task whose every run fails before stable_sec is
    started automatically at most limit_burst times after a start by hand."""
    _, state = note_start(RestartState(), 0.0, automatic=False, policy=pol)
    now, automatic_starts = 0.0, 0
    for fraction, by_trigger, rand in runs:
        now += fraction * pol.stable_sec  # the run fails before lasting stable_sec
        decision = on_exit(state, pol, Result.EXIT_CODE, stop_requested=False, now=now, rand=rand)
        state = decision.state
        if by_trigger:
            allowed, state = note_start(state, now, automatic=True, policy=pol)
        elif decision.verdict is Verdict.RESTART:
            now += decision.delay
            allowed, state = note_start(state, now, automatic=True, policy=pol)
        else:
            allowed = False
        if not allowed:
            break
        automatic_starts += 1
    assert automatic_starts <= pol.limit_burst


policy_st = policies()
step_st = st.tuples(
    st.floats(0.0, 15.0),  # how long the run lasted, or how long until a trigger
    st.sampled_from([Result.SUCCESS, Result.EXIT_CODE, Result.SIGNAL]),
    st.floats(0.0, 1.0, exclude_max=True),
)


@FAST
@given(pol=policy_st, steps=st.lists(step_st, max_size=60))
def test_automatic_starts_never_exceed_the_burst_and_delays_stay_bounded(
    pol: RestartPolicy, steps: list[tuple[float, Result, float]]
) -> None:
    """A task that exits (and is restarted by policy) or sits down (and is started by a
    trigger) at random times: in every window of limit_interval seconds at most
    limit_burst automatic starts are allowed, every delay lies in
    [0, delay_max * (1 + jitter)], and on_exit's LIMIT/RESTART agrees with note_start."""
    _, state = note_start(RestartState(), 0.0, automatic=False, policy=pol)
    now, up, allowed_at = 0.0, True, []
    for gap, result, rand in steps:
        now += gap
        if not up:  # a trigger tries to start it
            up, state = note_start(state, now, automatic=True, policy=pol)
            if up:
                allowed_at.append(now)
            continue
        decision = on_exit(state, pol, result, stop_requested=False, now=now, rand=rand)
        assert 0.0 <= decision.delay <= pol.delay_max * (1.0 + pol.jitter)
        state, up = decision.state, False
        if decision.verdict is Verdict.RESTART:
            now += decision.delay
            up, state = note_start(state, now, automatic=True, policy=pol)
            assert up, "on_exit promised a restart that the start limit refuses"
            allowed_at.append(now)
        elif decision.verdict is Verdict.LIMIT:
            at = now + backoff_delay(state.crashes, pol, rand)
            assert not note_start(state, at, automatic=True, policy=pol)[0]
    for i, t in enumerate(allowed_at):
        in_window = [s for s in allowed_at[: i + 1] if t - s < pol.limit_interval]
        assert len(in_window) <= pol.limit_burst


@FAST
@given(pol=policy_st, failures=st.integers(0, 2000), rand=st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_delay_bounds(pol: RestartPolicy, failures: int, rand: float) -> None:
    delay = backoff_delay(failures, pol, rand)
    assert 0.0 <= delay <= pol.delay_max * (1.0 + pol.jitter)


# --------------------------------------------------------------------------- ordering


def task(task_id: str, *after: str) -> TaskSpec:
    return TaskSpec(id=task_id, instance="echo.Echo", service_name=task_id, after=after)


def test_chain() -> None:
    tasks = [task("c", "b"), task("b", "a"), task("a")]
    assert start_waves(tasks, ["a", "b", "c"]) == [["a"], ["b"], ["c"]]
    assert stop_order(tasks, ["a", "b", "c"]) == [["c"], ["b"], ["a"]]
    assert blocked_by("a", tasks, ["a", "b", "c"]) == {"b", "c"}
    assert blocked_by("b", tasks, ["a", "b", "c"]) == {"c"}
    assert blocked_by("c", tasks, ["a", "b", "c"]) == set()


def test_diamond_keeps_context_order_inside_a_wave() -> None:
    tasks = [
        task("top"),
        task("right", "top"),
        task("left", "top"),
        task("bottom", "left", "right"),
    ]
    chosen = ["bottom", "left", "right", "top"]
    assert start_waves(tasks, chosen) == [["top"], ["right", "left"], ["bottom"]]
    assert stop_order(tasks, chosen) == [["bottom"], ["right", "left"], ["top"]]
    assert blocked_by("left", tasks, chosen) == {"bottom"}
    assert blocked_by("top", tasks, chosen) == {"left", "right", "bottom"}


def test_dependencies_not_chosen_are_satisfied() -> None:
    """Only chosen tasks are ordered; an `after` on a task not being started is met."""
    tasks = [task("a"), task("b", "a"), task("c", "b", "elsewhere")]
    assert start_waves(tasks, ["c", "b"]) == [["b"], ["c"]]
    assert start_waves(tasks, ["c", "a"]) == [["a", "c"]]
    assert start_waves(tasks, ["c"]) == [["c"]]
    assert start_waves(tasks, []) == []
    assert blocked_by("a", tasks, ["a", "c"]) == set()  # b is not being started


def test_chosen_ids_must_be_known() -> None:
    with pytest.raises(ValueError, match="unknown task ids: zz"):
        start_waves([task("a")], ["a", "zz"])


@pytest.mark.parametrize(
    ("tasks", "cycle"),
    [
        ([task("a", "a")], "a after a"),
        ([task("a", "b"), task("b", "a")], "a after b after a"),
        ([task("x"), task("a", "c"), task("b", "a", "x"), task("c", "b")], "a after c after b"),
    ],
)
def test_a_cycle_is_named(tasks: list[TaskSpec], cycle: str) -> None:
    with pytest.raises(ValueError, match=f"cycle in 'after': {cycle}"):
        start_waves(tasks, [t.id for t in tasks])
    with pytest.raises(ValueError, match="cycle"):
        stop_order(tasks, [t.id for t in tasks])


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[TaskSpec], list[str]]:
    """Tasks whose `after` points only at lower-numbered tasks (so: acyclic), listed in a
    shuffled context order, some of them chosen."""
    n = draw(st.integers(0, 10))
    ids = [f"t{i}" for i in range(n)]
    tasks = [
        task(ids[i], *draw(st.lists(st.sampled_from(ids[:i]), max_size=3)) if i else ())
        for i in range(n)
    ]
    order = draw(st.permutations(tasks))
    chosen = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    return list(order), chosen


@FAST
@given(dags())
def test_waves_respect_after_and_stop_order_reverses_them(
    dag: tuple[list[TaskSpec], list[str]],
) -> None:
    tasks, chosen = dag
    waves = start_waves(tasks, chosen)
    flat = [tid for wave in waves for tid in wave]
    assert sorted(flat) == sorted(chosen)
    wave_of = {tid: n for n, wave in enumerate(waves) for tid in wave}
    position = {spec.id: n for n, spec in enumerate(tasks)}
    for spec in tasks:
        if spec.id in wave_of:
            preds = [d for d in spec.after if d in wave_of]
            assert all(wave_of[d] < wave_of[spec.id] for d in preds)
            if wave_of[spec.id] > 0:  # in the earliest wave possible
                assert any(wave_of[d] == wave_of[spec.id] - 1 for d in preds)
    for wave in waves:
        assert wave == sorted(wave, key=position.__getitem__)
    assert stop_order(tasks, chosen) == list(reversed(waves))
    after = {spec.id: set(spec.after) for spec in tasks}
    for failed in chosen:
        blocked = blocked_by(failed, tasks, chosen)
        assert blocked <= set(chosen) - {failed}
        assert all(wave_of[b] > wave_of[failed] for b in blocked)
        # closed: whatever runs after a blocked (or the failed) task is blocked too
        for tid in set(chosen) - blocked - {failed}:
            assert not after[tid] & (blocked | {failed})
