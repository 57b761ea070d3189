"""The bytes of large messages an XPUB may hold for slow subscribers (issue 19, finding 3)."""

from __future__ import annotations

from zsvc.daemon.budget import SendBudget


class Tracker:
    """A stand-in for ``zmq.MessageTracker``: done once libzmq let go of the message."""

    def __init__(self) -> None:
        self.done = False


def test_large_messages_are_held_up_to_the_budget_small_ones_always_go() -> None:
    budget = SendBudget(limit=10_000, large=1_000, cost=0)
    trackers = []
    for _ in range(3):
        assert budget.admit(3_000)
        trackers.append(Tracker())
        budget.sent(trackers[-1], 3_000)  # type: ignore[arg-type]
    assert budget.held == 9_000
    assert not budget.admit(3_000) and budget.dropped == 1
    assert budget.admit(1_000)  # small: bounded by the high-water mark instead
    trackers[1].done = True  # delivered out of order: found by the full sweep
    assert budget.admit(3_000) and budget.held == 6_000
    for tracker in trackers:
        tracker.done = True
    assert budget.admit(3_000) and budget.held == 0


def test_each_held_message_also_costs_its_bookkeeping() -> None:
    budget = SendBudget(limit=10_000, large=1_000, cost=2_000)
    budget.sent(Tracker(), 3_000)  # type: ignore[arg-type]
    assert budget.held == 5_000
    assert budget.admit(3_000) and not budget.admit(3_001)
