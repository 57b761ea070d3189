"""A task's life cycle as data: the legal moves of its state, and how a run's end is recorded.

In supervisor's manner (``supervisor/process.py``: every state change goes
through one ``change_state`` that checks the move is one it expects), the
moves a task may make are one table, :data:`TRANSITIONS`, over
(:class:`~zsvc.states.State`, :class:`~zsvc.states.SubState`) pairs, with the
``result`` and ``last_action`` each move may carry. The daemon changes a
task's state only through :meth:`zsvc.daemon.model.TaskRecord.change_state`,
which consults :func:`is_legal` and refuses anything else as a bug.

The same table is in ``docs/states.md`` (Transitions);
``tests/unit/test_lifecycle.py`` reads it there and checks that the two say
the same, row by row. A move is named here once (:data:`STARTING`,
:data:`READY`, ...) so that the manager makes one call per event instead of
setting four fields by hand, and the verdict on a run's end is one pure
function, :func:`classify_end`.

Pure on purpose: no asyncio, no clock, no I/O; the daemon feeds events in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from zsvc.runners.base import ExitInfo
from zsvc.states import DOWN, SIGNALLABLE, STATE_OF, LastAction, Result, State, SubState

Pair = tuple[State, SubState]
"""A task's (state, sub_state): the unit of the transition table."""

STRICT_ENV = "ZSVC_STRICT_STATES"
"""When ``1`` in the environment, an illegal move raises :class:`IllegalTransition` instead of
being logged (the test suite sets it, so that every tier catches one)."""


class IllegalTransition(RuntimeError):
    """A move the table does not allow: always a bug in zsvc, never a user's error."""


class Move(NamedTuple):
    """A move to make: the target pair, and the result and last action it sets (None: keep)."""

    state: State
    sub_state: SubState
    result: Result | None = None
    action: LastAction | None = None


@dataclass(frozen=True)
class Transition:
    """One row of the table: from any of *sources* to *target*, carrying what it may carry.

    ``results``/``actions`` None means the move leaves the field unchanged (it must carry
    None); otherwise it must carry one of the set.
    """

    sources: frozenset[Pair]
    target: Pair
    results: frozenset[Result] | None
    actions: frozenset[LastAction] | None
    event: str

    def carries(self, move: Move) -> bool:
        """True when *move*'s result and action are ones this row may carry."""
        return _carries(self.results, move.result) and _carries(self.actions, move.action)


def _carries(allowed: frozenset[Result] | frozenset[LastAction] | None, value: object) -> bool:
    return value is None if allowed is None else value in allowed


def pair(sub_state: SubState) -> Pair:
    """The pair of *sub_state* (each sub-state belongs to one state)."""
    return (STATE_OF[sub_state], sub_state)


WAITING = pair(SubState.WAITING)
DEAD = pair(SubState.DEAD)
EXITED = pair(SubState.EXITED)
FAILED = pair(SubState.FAILED)
START = pair(SubState.START)
AUTO_RESTART = pair(SubState.AUTO_RESTART)
RUNNING = pair(SubState.RUNNING)
STOP_SIGTERM = pair(SubState.STOP_SIGTERM)

DOWN_PAIRS: frozenset[Pair] = frozenset(pair(sub) for sub in SubState if STATE_OF[sub] in DOWN)
"""Every pair of a task that is down: no run, no restart due."""
RUN_PAIRS: frozenset[Pair] = frozenset(pair(sub) for sub in SIGNALLABLE)
"""Every pair in which a run exists: only a move from one of these ends a run."""

NOT_SUCCESS: frozenset[Result] = frozenset(Result) - {Result.SUCCESS}


def _row(
    sources: Iterable[Pair],
    target: Pair,
    results: Iterable[Result] | None,
    actions: Iterable[LastAction] | None,
    event: str,
) -> Transition:
    return Transition(
        frozenset(sources),
        target,
        None if results is None else frozenset(results),
        None if actions is None else frozenset(actions),
        event,
    )


_OK, _STARTED, _STOPPED = [Result.SUCCESS], [LastAction.STARTED], [LastAction.STOPPED]
_EXITED, _FAILED = [LastAction.EXITED], [LastAction.FAILED]

TRANSITIONS: tuple[Transition, ...] = (
    _row([*DOWN_PAIRS, AUTO_RESTART], START, _OK, None, "launch"),
    _row([START], RUNNING, _OK, _STARTED, "ready"),
    _row([START, RUNNING, STOP_SIGTERM], STOP_SIGTERM, None, None, "stop request"),
    _row([RUNNING], STOP_SIGTERM, None, None, "STOPPING=1"),
    _row([RUNNING], RUNNING, None, [LastAction.UPDATED], "updated"),
    _row([STOP_SIGTERM], STOP_SIGTERM, None, [LastAction.UPDATED], "updated"),
    _row([STOP_SIGTERM], DEAD, _OK, _STOPPED, "end after a stop request, clean"),
    _row([STOP_SIGTERM], FAILED, NOT_SUCCESS, _STOPPED, "end after a stop request, not clean"),
    _row(RUN_PAIRS, EXITED, _OK, _EXITED, "end without a stop request, clean"),
    _row(RUN_PAIRS, FAILED, NOT_SUCCESS, _FAILED, "end without a stop request, not clean"),
    _row([EXITED, FAILED], AUTO_RESTART, None, None, "restart due"),
    _row([AUTO_RESTART], DEAD, None, _STOPPED, "stop request while a restart is due"),
    _row([*DOWN_PAIRS, AUTO_RESTART], FAILED, [Result.START_LIMIT_HIT], _FAILED, "start limit hit"),
    _row([*DOWN_PAIRS, AUTO_RESTART], FAILED, [Result.RESOURCES], _FAILED, "no task module"),
    _row([AUTO_RESTART], FAILED, [Result.LOST], _FAILED, "daemon restart while a restart is due"),
)
"""Every legal move of a task (``docs/states.md``, Transitions). A move not here is a bug."""


_ROWS_BY_MOVE: dict[tuple[Pair, Pair], list[Transition]] = {}
for _transition in TRANSITIONS:
    for _source in _transition.sources:
        _ROWS_BY_MOVE.setdefault((_source, _transition.target), []).append(_transition)
"""(source, target) → its rows: a move is checked in one look-up (every start makes three)."""


def is_legal(source: Pair, move: Move) -> bool:
    """True when some row of :data:`TRANSITIONS` allows *move* from *source*."""
    rows = _ROWS_BY_MOVE.get((source, (move.state, move.sub_state)), ())
    return any(row.carries(move) for row in rows)


# --- the named moves: one per event, so that the manager sets no field by hand ----------

STARTING = Move(State.ACTIVATING, SubState.START, Result.SUCCESS)
"""A launch (a ``start``, a trigger, the restart policy): the run exists, not ready yet."""
READY = Move(State.ACTIVE, SubState.RUNNING, Result.SUCCESS, LastAction.STARTED)
"""The run is ready (READY=1, exec, a thread's ``started``), or was found alive at re-adoption."""
STOPPING = Move(State.DEACTIVATING, SubState.STOP_SIGTERM)
"""A stop request, or the run's own ``STOPPING=1``: the run is asked to end."""
AUTO_RESTART_PENDING = Move(State.ACTIVATING, SubState.AUTO_RESTART)
"""The restart policy will launch the task again after a delay; no run exists meanwhile."""
STOPPED_BEFORE_RESTART = Move(State.INACTIVE, SubState.DEAD, action=LastAction.STOPPED)
"""A stop request while a restart was due: the restart is cancelled, there is no run to end."""
START_LIMIT_HIT = Move(State.FAILED, SubState.FAILED, Result.START_LIMIT_HIT, LastAction.FAILED)
"""An automatic start refused by the start limit."""


def updated(source: Pair) -> Move:
    """An ``updated`` message of an up task: the pair stays, last_action becomes ``updated``."""
    return Move(*source, action=LastAction.UPDATED)


@dataclass(frozen=True)
class RunEnd:
    """How an end is recorded: the task's new pair, its result and the action reported."""

    state: State
    sub_state: SubState
    result: Result
    action: LastAction

    @property
    def move(self) -> Move:
        return Move(self.state, self.sub_state, self.result, self.action)


def classify_end(stop_requested: bool, info: ExitInfo) -> RunEnd:
    """The verdict on a run's end (``docs/states.md``, the four end rows).

    A stop request decides the action (``stopped``), the run's result decides
    the state: a clean end after a stop is ``inactive/dead``, one on its own
    ``inactive/exited``; an unclean end is ``failed/failed`` with the run's
    result either way, so that ``zsvc status`` shows why it failed.
    """
    if stop_requested:
        if info.clean:
            return RunEnd(State.INACTIVE, SubState.DEAD, Result.SUCCESS, LastAction.STOPPED)
        return RunEnd(State.FAILED, SubState.FAILED, info.result, LastAction.STOPPED)
    if info.clean:
        return RunEnd(State.INACTIVE, SubState.EXITED, Result.SUCCESS, LastAction.EXITED)
    return RunEnd(State.FAILED, SubState.FAILED, info.result, LastAction.FAILED)
