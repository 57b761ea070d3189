"""zsvc.daemon.lifecycle and TaskRecord.change_state: the task state machine, against its page.

The Transitions table of ``docs/states.md`` is read here and driven row by
row through the guarded setter: every documented move is made, every other
move is refused. The page and the code cannot drift apart without a failure.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zsvc.config.model import TaskSpec
from zsvc.daemon import lifecycle
from zsvc.daemon.lifecycle import (
    AUTO_RESTART_PENDING,
    READY,
    START_LIMIT_HIT,
    STOPPED_BEFORE_RESTART,
    STOPPING,
    STRICT_ENV,
    TRANSITIONS,
    IllegalTransition,
    Move,
    Pair,
    RunEnd,
    classify_end,
    is_legal,
)
from zsvc.daemon.model import TaskRecord
from zsvc.runners.base import ExitInfo
from zsvc.states import DOWN, SIGNALLABLE, STATE_OF, LastAction, Result, State, SubState

DOCS = Path(__file__).resolve().parents[2] / "docs" / "states.md"

ALL_PAIRS: list[Pair] = [(state, sub) for state in State for sub in SubState]
PAIRS: list[Pair] = [lifecycle.pair(sub) for sub in SubState]
"""The pairs a task can be in: each sub-state with its own state."""
RESULTS: list[Result | None] = [None, *Result]
ACTIONS: list[LastAction | None] = [None, *LastAction]


# --------------------------------------------------------------------------- the page's tables


def _table(heading: str) -> list[dict[str, str]]:
    """The first markdown table after *heading* in docs/states.md, as dicts by column name."""
    lines = DOCS.read_text().splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, _rule, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def _words(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _pairs(cell: str) -> frozenset[Pair]:
    return frozenset((State(s), SubState(sub)) for s, sub in (w.split("/") for w in _words(cell)))


def _carried(cell: str, enum: type) -> frozenset | None:
    """``unchanged`` → None; ``not `x``` → every member but x; else the members named."""
    if cell == "unchanged":
        return None
    named = frozenset(enum(word) for word in _words(cell))
    return frozenset(enum) - named if cell.startswith("not ") else named


@dataclass(frozen=True)
class DocRow:
    sources: frozenset[Pair]
    target: Pair
    results: frozenset[Result] | None
    actions: frozenset[LastAction] | None
    event: str

    def allows(self, source: Pair, move: Move) -> bool:
        def carries(allowed: frozenset | None, value: object) -> bool:
            return value is None if allowed is None else value in allowed

        return (
            source in self.sources
            and (move.state, move.sub_state) == self.target
            and carries(self.results, move.result)
            and carries(self.actions, move.action)
        )


def _doc_rows() -> list[DocRow]:
    rows = []
    for row in _table("## Transitions"):
        (target,) = _pairs(row["to"])
        rows.append(
            DocRow(
                _pairs(row["from"]),
                target,
                _carried(row["result"], Result),
                _carried(row["last_action"], LastAction),
                row["event"],
            )
        )
    return rows


DOC_ROWS = _doc_rows()


def _documented(source: Pair, move: Move) -> bool:
    return any(row.allows(source, move) for row in DOC_ROWS)


def _key(row: DocRow | lifecycle.Transition) -> tuple[object, ...]:
    def ordered(values: frozenset | None) -> tuple[str, ...] | None:
        return None if values is None else tuple(sorted(map(str, values)))

    return (
        tuple(sorted(f"{s}/{sub}" for s, sub in row.sources)),
        row.target,
        ordered(row.results),
        ordered(row.actions),
    )


def test_the_page_has_the_tables_it_is_read_for() -> None:
    """The parser found the rows (a renamed heading must not make the checks vacuous)."""
    assert len(DOC_ROWS) == len(TRANSITIONS) >= 15
    assert all(row.sources for row in DOC_ROWS)


def test_the_page_and_the_code_have_one_table() -> None:
    """Row for row, docs/states.md's Transitions is lifecycle.TRANSITIONS."""
    assert Counter(map(_key, DOC_ROWS)) == Counter(map(_key, TRANSITIONS))


def test_every_named_move_is_named_on_the_page() -> None:
    """Each of lifecycle's named moves is in the event column of the row it makes."""
    named = {"STARTING", "READY", "STOPPING", "AUTO_RESTART_PENDING"}
    named |= {"STOPPED_BEFORE_RESTART", "START_LIMIT_HIT"}
    for name in named:
        move: Move = getattr(lifecycle, name)
        rows = [row for row in DOC_ROWS if f"`{name}`" in row.event]
        assert rows, name
        assert all(row.allows(next(iter(row.sources)), move) for row in rows), name


def test_the_sub_state_table_says_which_state_each_belongs_to() -> None:
    """The "with state" column of the sub_state table is STATE_OF, and lists every sub-state."""
    documented = {
        SubState(_words(row["value"])[0]): State(_words(row["with state"])[0])
        for row in _table("## `sub_state` (`SubState`)")
    }
    assert documented == STATE_OF


# --------------------------------------------------------------------------- the guarded setter


def task_in(source: Pair, **fields: object) -> TaskRecord:
    spec = TaskSpec(id="ts_1", instance="echo.Echo", service_name="svc_ts_1")
    task = TaskRecord(transaction="T1", spec=spec, since=1.0)
    task.state, task.sub_state = source
    for name, value in fields.items():
        setattr(task, name, value)
    return task


def _moves(row: DocRow) -> list[tuple[Pair, Move]]:
    """Every concrete move a documented row allows."""
    results = [None] if row.results is None else sorted(row.results)
    actions = [None] if row.actions is None else sorted(row.actions)
    return [
        (source, Move(*row.target, result, action))
        for source in sorted(row.sources)
        for result in results
        for action in actions
    ]


@pytest.mark.parametrize("row", DOC_ROWS, ids=[row.event[:50] for row in DOC_ROWS])
def test_every_documented_move_is_made(row: DocRow) -> None:
    """Each row of the page, each source, result and action: the setter makes the move."""
    for source, move in _moves(row):
        task = task_in(source, result=Result.EXIT_CODE, last_action=LastAction.FAILED)
        assert task.change_state(*move), (source, move)
        assert (task.state, task.sub_state) == row.target
        assert task.result is (move.result or Result.EXIT_CODE)
        assert task.last_action is (move.action or LastAction.FAILED)
        assert (task.since != 1.0) == (source != row.target)


def test_legal_is_exactly_what_the_page_documents() -> None:
    """Over every pair a task can be in, every target, result and action (or none)."""
    for source in PAIRS:
        for target in PAIRS:
            for result in RESULTS:
                for action in ACTIONS:
                    move = Move(*target, result, action)
                    assert is_legal(source, move) == _documented(source, move), (source, move)


@given(
    st.sampled_from(ALL_PAIRS),
    st.sampled_from(ALL_PAIRS),
    st.sampled_from(RESULTS),
    st.sampled_from(ACTIONS),
)
def test_the_setter_makes_a_documented_move_and_refuses_any_other(
    source: Pair, target: Pair, result: Result | None, action: LastAction | None
) -> None:
    """Any pair to any pair (nonsense ones included): made iff documented, else it raises."""
    move = Move(*target, result, action)
    task = task_in(source, status_text="x")
    before = task.to_row()
    with mock.patch.dict(os.environ, {STRICT_ENV: "1"}):
        if _documented(source, move):
            assert task.change_state(*move)
            assert (task.state, task.sub_state) == target
        else:
            with pytest.raises(IllegalTransition):
                task.change_state(*move)
            assert task.to_row() == before


def test_outside_strict_mode_an_illegal_move_is_logged_and_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In production a bug must not kill the daemon: ERROR naming task, from and to; False."""
    task = task_in(lifecycle.DEAD, status_text="kept")
    before = task.to_row()
    with mock.patch.dict(os.environ, {STRICT_ENV: "0"}), caplog.at_level(logging.ERROR):
        assert not task.change_state(*READY)
    assert task.to_row() == before
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert "T1/ts_1" in message and "inactive/dead -> active/running" in message
    assert "bug" in message


# --------------------------------------------------------------------------- the graph


def _reachable(starts: set[Pair]) -> set[Pair]:
    seen, todo = set(starts), list(starts)
    while todo:
        here = todo.pop()
        for row in TRANSITIONS:
            if here in row.sources and row.target not in seen:
                seen.add(row.target)
                todo.append(row.target)
    return seen


def test_every_pair_is_reached_from_a_new_task_and_can_go_down() -> None:
    """No pair is dead code, and none is a trap: from each, the task can be down again."""
    assert _reachable({lifecycle.DEAD, lifecycle.WAITING}) == set(PAIRS)
    for here in PAIRS:
        assert _reachable({here}) & lifecycle.DOWN_PAIRS, here


def test_only_a_run_ends_exited_or_stopped_by_a_request() -> None:
    """``exited`` needs a run that ended; ``stopped`` with a run's result, a stop of one."""
    assert {sub for _, sub in lifecycle.RUN_PAIRS} == SIGNALLABLE
    for row in TRANSITIONS:
        if row.actions == {LastAction.EXITED}:
            assert row.sources <= lifecycle.RUN_PAIRS, row.event
        if row.actions == {LastAction.STOPPED} and row.results is not None:
            assert row.sources == {lifecycle.STOP_SIGTERM}, row.event


# --------------------------------------------------------------------------- classify_end


@pytest.mark.parametrize("stop_requested", [False, True])
@pytest.mark.parametrize("result", list(Result))
def test_classify_end_exhaustively(stop_requested: bool, result: Result) -> None:
    """The four verdicts of Manager._ended, for every result, with and without a stop."""
    end = classify_end(stop_requested, ExitInfo(result))
    clean = result is Result.SUCCESS
    if stop_requested and clean:
        expected = RunEnd(State.INACTIVE, SubState.DEAD, Result.SUCCESS, LastAction.STOPPED)
    elif stop_requested:
        expected = RunEnd(State.FAILED, SubState.FAILED, result, LastAction.STOPPED)
    elif clean:
        expected = RunEnd(State.INACTIVE, SubState.EXITED, Result.SUCCESS, LastAction.EXITED)
    else:
        expected = RunEnd(State.FAILED, SubState.FAILED, result, LastAction.FAILED)
    assert end == expected
    assert end.move == Move(end.state, end.sub_state, end.result, end.action)
    # ...and the verdict is a legal move from where such an end comes from.
    sources = [lifecycle.STOP_SIGTERM] if stop_requested else sorted(lifecycle.RUN_PAIRS)
    assert all(is_legal(source, end.move) for source in sources)


@given(
    st.booleans(),
    st.sampled_from(list(Result)),
    st.none() | st.integers(-1, 255),
    st.none() | st.integers(1, 64),
    st.text(max_size=20),
)
def test_classify_end_looks_only_at_the_stop_and_the_result(
    stop: bool, result: Result, code: int | None, signal: int | None, detail: str
) -> None:
    """Exit code, signal and detail describe the end; they never change the verdict."""
    assert classify_end(stop, ExitInfo(result, code, signal, detail)) == classify_end(
        stop, ExitInfo(result)
    )


def test_run_end_is_frozen() -> None:
    end = classify_end(False, ExitInfo(Result.SUCCESS))
    with pytest.raises(AttributeError):
        end.state = State.FAILED  # type: ignore[misc]


# --------------------------------------------------------------------------- end_run and STATUS=


def test_a_stopped_task_no_longer_shows_its_runs_status() -> None:
    """STATUS= belongs to the run: kept while it stops, cleared when it has ended."""
    task = task_in(lifecycle.RUNNING, status_text="Ready to accept connections")
    assert task.change_state(*STOPPING)
    assert task.status_text == "Ready to accept connections"
    task.stop_requested = True
    end = task.end_run(ExitInfo(Result.SUCCESS, signal=15))
    assert end.action is LastAction.STOPPED
    assert (task.state, task.sub_state, task.result) == (
        State.INACTIVE,
        SubState.DEAD,
        Result.SUCCESS,
    )
    assert task.last_action is LastAction.STOPPED
    assert task.status_text == ""
    assert task.last_exit == "killed by SIGTERM (success)"


def test_a_failed_runs_last_status_moves_to_last_exit() -> None:
    """A failed run's last words say why: last_exit keeps them, status_text does not."""
    task = task_in(lifecycle.START, status_text="ServiceX failed: OSError: port in use")
    end = task.end_run(ExitInfo(Result.EXIT_CODE, exit_code=1))
    assert end == RunEnd(State.FAILED, SubState.FAILED, Result.EXIT_CODE, LastAction.FAILED)
    assert task.status_text == ""
    assert task.last_exit == (
        "exited with status 1 (exit-code) [status: ServiceX failed: OSError: port in use]"
    )


@pytest.mark.parametrize("source", sorted(lifecycle.RUN_PAIRS))
@pytest.mark.parametrize("result", [Result.SUCCESS, Result.SIGNAL])
def test_every_end_of_a_run_clears_its_status(source: Pair, result: Result) -> None:
    task = task_in(source, status_text="working", stop_requested=source == lifecycle.STOP_SIGTERM)
    task.end_run(ExitInfo(result))
    assert task.state in DOWN
    assert task.status_text == ""


def test_the_restart_policys_note_is_set_by_its_move_and_cleared_by_a_stop() -> None:
    """A note belongs to the move that set it: a stop while a restart is due clears it."""
    task = task_in(lifecycle.FAILED, status_text="")
    assert task.change_state(*AUTO_RESTART_PENDING, note="restarting in 0.10 s: ended (signal)")
    assert task.status_text == "restarting in 0.10 s: ended (signal)"
    assert task.change_state(*STOPPED_BEFORE_RESTART)
    assert (task.state, task.sub_state, task.last_action) == (
        State.INACTIVE,
        SubState.DEAD,
        LastAction.STOPPED,
    )
    assert task.status_text == ""


def test_the_start_limit_note_replaces_an_earlier_one() -> None:
    task = task_in(lifecycle.AUTO_RESTART, status_text="restarting in 1.00 s: …")
    assert task.change_state(*START_LIMIT_HIT, note="start limit hit: 5 in 10 s")
    assert task.status_text == "start limit hit: 5 in 10 s"
    assert (task.result, task.last_action) == (Result.START_LIMIT_HIT, LastAction.FAILED)


def test_a_lost_restart_keeps_no_note_in_last_exit() -> None:
    """The restart policy's note is no run's last words: it does not go to last_exit."""
    task = task_in(lifecycle.AUTO_RESTART, status_text="restarting in 1.00 s: …")
    task.end_run(ExitInfo(Result.LOST, detail="ended while the daemon was down"))
    assert (task.state, task.result, task.last_action) == (
        State.FAILED,
        Result.LOST,
        LastAction.FAILED,
    )
    assert task.last_exit == "ended (lost): ended while the daemon was down"
    assert task.status_text == ""


def test_a_stop_request_counts_only_while_a_run_exists() -> None:
    """A stale stop flag of a past run does not make a refused automatic start 'stopped'."""
    task = task_in(lifecycle.FAILED, stop_requested=True)
    end = task.end_run(ExitInfo(Result.RESOURCES, detail="task module missing"))
    assert end.action is LastAction.FAILED
    assert (task.state, task.result, task.last_action) == (
        State.FAILED,
        Result.RESOURCES,
        LastAction.FAILED,
    )


def test_updated_keeps_the_pair() -> None:
    task = task_in(lifecycle.RUNNING)
    assert task.change_state(*lifecycle.updated(lifecycle.RUNNING))
    assert (task.state, task.sub_state, task.since) == (State.ACTIVE, SubState.RUNNING, 1.0)
    assert task.last_action is LastAction.UPDATED


# --------------------------------------------------------------------------- purity


def test_lifecycle_is_pure() -> None:
    """Standard library, zsvc.states and the runner contract's ExitInfo: no asyncio, no I/O."""
    tree = ast.parse(Path(lifecycle.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
    }
    pure = {"__future__", "collections.abc", "dataclasses", "typing"}
    assert imported == pure | {"zsvc.states", "zsvc.runners.base"}
