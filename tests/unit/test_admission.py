"""The bus's TCP connection budget (:mod:`zsvc.daemon.admission`), as a pure policy.

Hypothesis drives random sequences of connections opened and closed and of
clock ticks; the properties: a side is shed exactly when its count reaches
the budget while it accepts, never holds more than the budget while it
accepts, stays shed for at least its back-off and until the count is at the
low-water mark, and the back-off doubles while floods recur (up to its cap)
and starts again after a quiet period.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.daemon.admission import (
    FIRST_BACKOFF,
    MAX_BACKOFF,
    MIN_BUDGET,
    QUIET,
    ConnectionBudget,
    budget_for,
)

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 60)),
        st.tuples(st.just("close"), st.integers(0, 60)),
        st.tuples(st.just("tick"), st.floats(0, 40)),
    ),
    max_size=300,
)


@given(budget=st.integers(2, 40), steps=STEPS)
@settings(max_examples=300, deadline=None)
def test_shedding_is_a_hysteresis_in_count_and_time(
    budget: int, steps: list[tuple[str, float]]
) -> None:
    policy = ConnectionBudget(budget)
    now = 0.0
    for kind, value in steps:
        if kind == "tick":
            now += value
            if policy.may_restore(now):
                assert now - (policy.shed_at or 0) >= policy.backoff
                assert len(policy.fds) <= policy.low_water < budget
                policy.restored()
            continue
        if kind == "close":
            policy.closed(int(value))
            continue
        accepting, before = policy.shed_at is None, len(policy.fds)
        must_shed = policy.opened(int(value))
        assert must_shed == (accepting and len(policy.fds) >= budget)
        if must_shed:
            assert before < budget
            backoff = policy.shed(now)
            assert FIRST_BACKOFF <= backoff <= MAX_BACKOFF
            assert not policy.fds and not policy.may_restore(now)
        if policy.shed_at is None:
            assert len(policy.fds) < budget


def test_the_backoff_doubles_while_floods_recur_and_resets_after_quiet() -> None:
    policy = ConnectionBudget(2)
    now, backoffs = 0.0, []
    for _ in range(8):
        policy.opened(1)
        assert policy.opened(2)
        backoffs.append(policy.shed(now))
        now += policy.backoff
        assert policy.may_restore(now)
        policy.restored()
    assert backoffs == [FIRST_BACKOFF, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    now += QUIET + MAX_BACKOFF + 1
    policy.opened(1)
    assert policy.opened(2)
    assert policy.shed(now) == FIRST_BACKOFF


def test_a_shed_side_waits_for_the_low_water_mark() -> None:
    policy = ConnectionBudget(10)
    for fd in range(10):
        policy.opened(fd)
    policy.shed(0.0)
    for fd in range(100, 106):  # accepted on an endpoint bound during the shed
        assert not policy.opened(fd)
    assert not policy.may_restore(FIRST_BACKOFF)
    policy.closed(100)
    assert policy.may_restore(FIRST_BACKOFF)


@given(st.integers(0, 1 << 22))
def test_the_budget_is_a_quarter_of_the_fd_limit(limit: int) -> None:
    assert budget_for(limit) == max(MIN_BUDGET, limit // 4)
    assert budget_for(20_000) == 5_000
