"""zsvc.states: ids, generated ids, state groups, and the rule that it owns the vocabulary."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import zsvc
from zsvc import states
from zsvc.states import (
    DOWN,
    GENERATED_ID_ALPHABET,
    GENERATED_ID_LENGTH,
    HAS_PROCESS,
    SIGNALLABLE,
    STATE_OF,
    TRIGGER_FOR_ACTION,
    LastAction,
    Result,
    State,
    SubState,
    TaskAction,
    TriggerEvent,
    is_valid_id,
    new_transaction_id,
)

PACKAGE = Path(zsvc.__file__).resolve().parent

# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "value", ["a", "A", "0", "_", "-", "ts_100", "a-b_C9", "x" * 64, "ABCDEFGHIJ0123456789"]
)
def test_valid_ids(value: str) -> None:
    """Ids are 1 to 64 characters of [A-Za-z0-9_-]."""
    assert is_valid_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 65,
        "a b",
        "a.b",
        "a/b",
        "über",
        "a\n",
        "\na",
        "a\x00",
        "a:b",
        " a",
        "\uff41",
        "\u0661",
    ],
)
def test_invalid_ids(value: str) -> None:
    """Anything else is refused: empty, too long, other ASCII, non-ASCII letters and
    digits, and a trailing newline (the pattern is anchored with \\Z, not $)."""
    assert not is_valid_id(value)


@given(st.text(max_size=70))
def test_is_valid_id_is_the_documented_character_rule(value: str) -> None:
    """is_valid_id() agrees with a plain character-set check for arbitrary text."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    assert is_valid_id(value) == (1 <= len(value) <= 64 and set(value) <= allowed)


def test_generated_ids() -> None:
    """Generated ids are 20 characters of [A-Z0-9], valid ids, and differ every time."""
    generated = [new_transaction_id() for _ in range(200)]
    for value in generated:
        assert len(value) == GENERATED_ID_LENGTH == 20
        assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        assert is_valid_id(value)
    assert len(set(generated)) == len(generated)
    assert set(GENERATED_ID_ALPHABET) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


# --------------------------------------------------------------------------- vocabulary and groups


def test_states_are_systemds_words() -> None:
    """State, SubState and Result spell what DESIGN §4 (and systemd) spell."""
    assert {str(s) for s in State} == {"inactive", "activating", "active", "deactivating", "failed"}
    assert {
        "waiting",
        "start",
        "running",
        "exited",
        "auto-restart",
        "stop-sigterm",
        "dead",
        "failed",
    } == {str(s) for s in SubState}
    assert {
        "success",
        "exit-code",
        "signal",
        "core-dump",
        "timeout",
        "watchdog",
        "start-limit-hit",
    } <= {str(r) for r in Result}
    assert {str(a) for a in LastAction} == {"started", "updated", "failed", "stopped", "exited"}


def test_state_groups_partition_the_states() -> None:
    """HAS_PROCESS and DOWN are disjoint and cover every State."""
    assert set(State) == HAS_PROCESS | DOWN
    assert not HAS_PROCESS & DOWN
    assert {State.ACTIVATING, State.ACTIVE, State.DEACTIVATING} == HAS_PROCESS


def test_every_sub_state_belongs_to_one_state() -> None:
    """STATE_OF covers every SubState, and every State has at least one sub-state."""
    assert set(STATE_OF) == set(SubState)
    assert set(STATE_OF.values()) == set(State)


def test_signallable_is_the_up_sub_states_with_a_run() -> None:
    """A run exists in start, running and stop-sigterm; auto-restart is up without one."""
    assert {STATE_OF[sub] for sub in SIGNALLABLE} == HAS_PROCESS
    assert SubState.AUTO_RESTART not in SIGNALLABLE
    assert STATE_OF[SubState.AUTO_RESTART] in HAS_PROCESS
    assert {sub for sub, state in STATE_OF.items() if state in HAS_PROCESS} == SIGNALLABLE | {
        SubState.AUTO_RESTART
    }


def test_every_reported_action_fires_a_trigger() -> None:
    """Each LastAction maps to the seed's trigger (stopped and exited both fire on_exit)."""
    assert set(TRIGGER_FOR_ACTION) == set(LastAction)
    assert TRIGGER_FOR_ACTION[LastAction.STARTED] is TriggerEvent.ON_START
    assert TRIGGER_FOR_ACTION[LastAction.UPDATED] is TriggerEvent.ON_UPDATE
    assert TRIGGER_FOR_ACTION[LastAction.FAILED] is TriggerEvent.ON_FAIL
    assert TRIGGER_FOR_ACTION[LastAction.STOPPED] is TriggerEvent.ON_EXIT
    assert TRIGGER_FOR_ACTION[LastAction.EXITED] is TriggerEvent.ON_EXIT


def test_states_imports_only_the_standard_library() -> None:
    """states.py is loaded by the task host, the CLI and the daemon: stdlib imports only."""
    tree = ast.parse(Path(states.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in sys.stdlib_module_names or root == "__future__", root


# --------------------------------------------------------------------------- the vocabulary's owner

# The words of a task's state. "start" is left out: it is also TaskAction.START,
# which the CLI legitimately compares against user input.
TASK_STATE_WORDS = frozenset({str(s) for s in State} | {str(s) for s in SubState}) - {
    str(a) for a in TaskAction
}
RESULT_WORDS = frozenset(str(r) for r in Result)


def _python_files(package: Path) -> Iterator[Path]:
    for path in sorted(package.rglob("*.py")):
        if path.resolve() != Path(states.__file__).resolve():
            yield path


def _literal_comparisons(words: Iterable[str], package: Path = PACKAGE) -> list[str]:
    """Places outside states.py that compare with (or match on) a string literal in *words*.

    Covers ``x == "w"``, ``"w" != x``, ``x in ("w", ...)`` and ``case "w":``.
    """
    words = frozenset(words)
    found = []
    for path in _python_files(package):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.MatchValue):
                operands = [node.value]
            else:
                continue
            for operand in operands:
                for leaf in ast.walk(operand):
                    if isinstance(leaf, ast.Constant) and leaf.value in words:
                        where = path.relative_to(package.parent)
                        found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_finder_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scan below really catches every comparison form it claims to."""
    package = tmp_path / "zsvc"
    package.mkdir()
    (package / "bad.py").write_text(
        "def f(x):\n"
        "    a = x == 'active'\n"
        "    b = 'failed' != x\n"
        "    c = x in ('inactive', 'other')\n"
        "    d = {'active': 1}  # not a comparison\n"
        "    match x:\n"
        "        case 'dead':\n"
        "            pass\n"
    )
    found = _literal_comparisons(TASK_STATE_WORDS, package)
    assert [line.split(":")[1] for line in found] == ["2", "3", "4", "7"]


def test_no_module_but_states_compares_with_a_task_state_literal() -> None:
    """Task states are compared through the enums; only states.py spells them."""
    assert _literal_comparisons(TASK_STATE_WORDS) == []


def test_no_module_but_states_compares_with_a_result_literal() -> None:
    """Results (systemd's Result words) are compared through states.Result, too."""
    assert _literal_comparisons(RESULT_WORDS) == []
