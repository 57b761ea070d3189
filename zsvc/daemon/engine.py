"""The pure core of the daemon: triggers, the restart policy and start/stop order.

Everything here is a function from (state, event) to (new state, actions):
no sockets, no processes, no clocks and no randomness inside. Time and
random numbers are arguments, so every rule can be tested exhaustively;
the daemon (:mod:`zsvc.daemon.manager`) feeds events in and carries the
returned actions out.

It replaces the original's trigger table and restart path, whose defects
(spec/original-behaviour.md §3.5-3.9) are designed out here:

* the trigger table was appended to on every start/stop/restart message, so
  a trigger fired once per copy: here each event fires each configured
  trigger exactly once;
* the table was not keyed by transaction: here the caller passes one
  transaction's table and every action carries the event's transaction;
* on_start and on_exit never fired: here ``started`` fires on_start, and
  ``stopped`` and ``exited`` both fire on_exit;
* an on_fail→restart loop had no bound and restart had no back-off: here
  every automatic start counts against a start limit (a rate, and a streak
  of quick failures), and restarts wait an exponentially growing, jittered
  delay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from zsvc.config.model import RestartPolicy, TaskSpec, Trigger
from zsvc.states import (
    TRIGGER_FOR_ACTION,
    LastAction,
    RestartMode,
    Result,
    TaskAction,
    TriggerEvent,
)

# --------------------------------------------------------------------------- triggers


@dataclass(frozen=True)
class TaskEvent:
    """A task of a transaction reported one of the seed's actions."""

    transaction: str
    task_id: str
    action: LastAction


@dataclass(frozen=True)
class TriggeredAction:
    """What a trigger asks the daemon to do: *action* on task *target*.

    ``source`` and ``event`` say which task's which trigger asked for it,
    so that logs and status texts can name the cause.
    """

    transaction: str
    target: str
    action: TaskAction
    source: str
    event: TriggerEvent

    def describe(self) -> str:
        """A log line such as ``on_fail of ts_100: restart ts_101``."""
        return f"{self.event} of {self.source}: {self.action} {self.target}"


def fire(
    event: TaskEvent,
    triggers: Mapping[str, Mapping[TriggerEvent, Trigger]],
    stopping: bool,
) -> tuple[TriggeredAction, ...]:
    """The actions one event fires: at most one, never while the transaction stops.

    *triggers* is the table of the event's own transaction (task id → its
    triggers), so an event can only ever act inside its transaction. A
    transaction that is stopping fires nothing: a stop must not start
    (or restart) what it is stopping.
    """
    if stopping:
        return ()
    trigger_event = TRIGGER_FOR_ACTION[event.action]
    trigger = triggers.get(event.task_id, {}).get(trigger_event)
    if trigger is None:
        return ()
    return (
        TriggeredAction(
            transaction=event.transaction,
            target=trigger.call,
            action=trigger.action,
            source=event.task_id,
            event=trigger_event,
        ),
    )


# --------------------------------------------------------------------------- restart policy


@dataclass(frozen=True)
class RestartState:
    """What the restart policy remembers about one task between its runs."""

    starts: tuple[float, ...] = ()
    """Times of the automatic starts still inside the start-limit window."""
    crashes: int = 0
    """Consecutive runs that failed before lasting ``stable_sec``.

    It is the back-off's exponent and the crash limit's count. A run that
    lasted ``stable_sec``, a clean exit or a start by hand sets it back to 0;
    a stop that someone asked for leaves it as it is.
    """
    last_start: float | None = None
    """When the current (or last) run started; None when unknown."""


class Verdict(StrEnum):
    """What happens after a task ended on its own."""

    NONE = "none"
    """It stays down."""
    RESTART = "restart"
    """It starts again after ``RestartDecision.delay`` seconds."""
    LIMIT = "limit"
    """It should restart but the start limit is hit: it ends ``failed/start-limit-hit``."""


@dataclass(frozen=True)
class RestartDecision:
    """The verdict on an exit, the delay before a restart, and the policy's new state.

    ``limit`` says which limit refused the restart (for ``Verdict.LIMIT``).
    """

    verdict: Verdict
    state: RestartState
    delay: float = 0.0
    limit: str = ""


def _recent_starts(starts: Iterable[float], now: float, interval: float) -> tuple[float, ...]:
    """The starts that still count at *now*: those less than *interval* seconds old.

    The window is half-open, ``(now - interval, now]``, so that a start
    exactly *interval* seconds old has left it, and an interval of 0
    disables the rate limit (systemd's ``StartLimitIntervalSec=0``).
    """
    return tuple(t for t in starts if now - t < interval)


def limit_reached(state: RestartState, now: float, policy: RestartPolicy) -> str:
    """Why one more automatic start at *now* is refused, or ``""`` when it is allowed.

    Two limits, both counted against ``start_limit_burst``:

    * the rate (systemd's ``StartLimitBurst=`` in ``StartLimitIntervalSec=``):
      at most *burst* automatic starts in any *interval* seconds, which stops
      a loop of quick runs, failing or clean;
    * the crash streak (pm2's ``max_restarts`` with ``min_uptime``,
      supervisord's ``startretries`` with ``startsecs``): no automatic start
      after more than *burst* runs in a row failed before lasting
      ``stable_sec``. Without it a loop whose runs or back-off are longer
      than *interval* / *burst* would never reach the rate limit and would
      go on for ever, however hopeless.
    """
    if len(_recent_starts(state.starts, now, policy.limit_interval)) >= policy.limit_burst:
        return f"more than {policy.limit_burst} automatic starts in {policy.limit_interval:g} s"
    if state.crashes > policy.limit_burst:
        return (
            f"{state.crashes} runs in a row failed"
            f" within restart_stable_sec ({policy.stable_sec:g} s)"
        )
    return ""


def note_start(
    state: RestartState, now: float, automatic: bool, policy: RestartPolicy
) -> tuple[bool, RestartState]:
    """Whether a start at *now* may happen, and the state that records it.

    An automatic start (a restart by policy, or a trigger) is what the
    original let loop forever, so it is refused beyond the limits of
    :func:`limit_reached`. A start by hand is always allowed and clears the
    count and the streak, like ``systemctl reset-failed`` followed by
    ``systemctl start``: the user has looked at the task and asks for a
    fresh go.
    """
    if not automatic:
        return True, RestartState(starts=(), crashes=0, last_start=now)
    recent = replace(state, starts=_recent_starts(state.starts, now, policy.limit_interval))
    if limit_reached(recent, now, policy):
        return False, recent
    return True, replace(recent, starts=(*recent.starts, now), last_start=now)


def _wants_restart(mode: RestartMode, result: Result) -> bool:
    """systemd's ``Restart=``: never, only after a failure, or after any exit."""
    if mode is RestartMode.ALWAYS:
        return True
    if mode is RestartMode.ON_FAILURE:
        return result is not Result.SUCCESS
    return False


def _was_stable(state: RestartState, now: float, policy: RestartPolicy) -> bool:
    """True when the run that just ended lasted ``stable_sec``: the streak starts over.

    A run of unknown length (no recorded start) is not taken as stable, so
    that a crash loop cannot escape the back-off by losing its start time.
    """
    return state.last_start is not None and now - state.last_start >= policy.stable_sec


def _streak_after(
    state: RestartState, policy: RestartPolicy, result: Result, stop_requested: bool, now: float
) -> RestartState:
    """The crash streak once a run ended at *now* (see :attr:`RestartState.crashes`)."""
    if _was_stable(state, now, policy):
        return replace(state, crashes=0)
    if stop_requested:
        return state
    if result is Result.SUCCESS:
        return replace(state, crashes=0)
    return replace(state, crashes=state.crashes + 1)


_MAX_EXPONENT = 1000
"""2.0**1000 is still a finite float: beyond it the cap applies anyway."""


def backoff_delay(crashes: int, policy: RestartPolicy, rand: float) -> float:
    """The delay before restarting a task whose last *crashes* runs failed quickly.

    ``delay_min`` after a clean exit or the first crash, then doubling per
    crash of the streak up to ``delay_max`` (like Kubernetes'
    CrashLoopBackOff), spread by ``jitter`` both ways, with *rand* in
    [0, 1), so that tasks failing together do not restart in lockstep. The
    result always lies in ``[0, delay_max * (1 + jitter)]``.
    """
    if policy.delay_min <= 0:
        return 0.0
    exponent = min(max(crashes - 1, 0), _MAX_EXPONENT)
    base = min(policy.delay_max, policy.delay_min * 2.0**exponent)
    spread = base * (1.0 + policy.jitter * (2.0 * rand - 1.0))
    return min(max(spread, 0.0), policy.delay_max * (1.0 + policy.jitter))


def on_exit(
    state: RestartState,
    policy: RestartPolicy,
    result: Result,
    stop_requested: bool,
    now: float,
    rand: float,
) -> RestartDecision:
    """What the restart policy decides when a task's run ended at *now*.

    Called for every end of a run, whoever started it, so that the crash
    streak also counts runs started by triggers. A stop that someone asked
    for is never undone. Otherwise the policy's mode decides whether to
    restart, the back-off gives the delay, and the limits (the rate counted
    at the moment the restart would happen) can turn the restart into
    ``LIMIT`` so that a crash loop ends instead of spinning. The returned
    state does not record the restart itself: :func:`note_start` does, when
    the delayed start really happens.
    """
    state = _streak_after(state, policy, result, stop_requested, now)
    if stop_requested or not _wants_restart(policy.mode, result):
        return RestartDecision(Verdict.NONE, state)
    delay = backoff_delay(state.crashes, policy, rand)
    limit = limit_reached(state, now + delay, policy)
    if limit:
        return RestartDecision(Verdict.LIMIT, state, limit=limit)
    return RestartDecision(Verdict.RESTART, state, delay)


# --------------------------------------------------------------------------- ordering


def _predecessors(tasks: Sequence[TaskSpec], chosen: Iterable[str]) -> dict[str, list[str]]:
    """Each chosen task (in context order) with its chosen ``after`` entries.

    An ``after`` entry that is not chosen is not being started or stopped
    now, so it is taken as already satisfied and dropped.
    """
    wanted = set(chosen)
    known = {spec.id for spec in tasks}
    unknown = wanted - known
    if unknown:
        raise ValueError(f"unknown task ids: {', '.join(sorted(unknown))}")
    return {
        spec.id: [dep for dep in dict.fromkeys(spec.after) if dep in wanted]
        for spec in tasks
        if spec.id in wanted
    }


def _cycle(remaining: Mapping[str, list[str]]) -> list[str]:
    """One cycle among tasks that could not be placed, as a closed path.

    Every such task waits for another such task, so walking from any of
    them along ``after`` edges must come back to a task already seen.
    """
    path: list[str] = []
    seen: dict[str, int] = {}
    node = next(iter(remaining))
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(dep for dep in remaining[node] if dep in remaining)
    return [*path[seen[node] :], node]


def start_waves(tasks: Sequence[TaskSpec], chosen: Iterable[str]) -> list[list[str]]:
    """The chosen tasks in waves: each wave starts once the previous ones are ready.

    A task goes in the first wave after all of its chosen ``after``
    predecessors; inside a wave the context's order is kept, so the result
    is deterministic. The loader rejects cycles; should one get here
    anyway, a ValueError names it rather than some tasks silently never
    starting.
    """
    waiting = _predecessors(tasks, chosen)
    placed: set[str] = set()
    waves: list[list[str]] = []
    while waiting:
        wave = [tid for tid, deps in waiting.items() if all(d in placed for d in deps)]
        if not wave:
            raise ValueError(f"cycle in 'after': {' after '.join(_cycle(waiting))}")
        waves.append(wave)
        placed.update(wave)
        waiting = {tid: deps for tid, deps in waiting.items() if tid not in placed}
    return waves


def stop_order(tasks: Sequence[TaskSpec], chosen: Iterable[str]) -> list[list[str]]:
    """The start waves in reverse: a task stops before anything it runs ``after``.

    Dependents go first so that nothing loses what it needs while it still
    runs; inside a wave the context's order is kept.
    """
    return list(reversed(start_waves(tasks, chosen)))


def blocked_by(failed: str, tasks: Sequence[TaskSpec], chosen: Iterable[str]) -> set[str]:
    """The chosen tasks that cannot start because *failed* did not.

    These are the tasks that need *failed* through ``after``, directly or
    through other chosen tasks; *failed* itself is not included. Tasks that
    are not chosen are not being started, so the chain does not pass
    through them.
    """
    wanted = set(chosen)
    dependents: dict[str, list[str]] = {}
    for spec in tasks:
        if spec.id in wanted:
            for dep in spec.after:
                dependents.setdefault(dep, []).append(spec.id)
    blocked: set[str] = set()
    frontier = [failed]
    while frontier:
        for dependent in dependents.get(frontier.pop(), []):
            if dependent not in blocked and dependent != failed:
                blocked.add(dependent)
                frontier.append(dependent)
    return blocked
