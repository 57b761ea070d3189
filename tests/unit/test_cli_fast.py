"""The fast path takes the command lines typer would, and means the same by them.

``zsvc status/start/stop/restart`` skip typer's import when the line is
plain (:mod:`zsvc.cli.fast`). Every line it accepts must end in exactly the
call typer would make; every other line must fall through to typer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from zsvc.cli import actions, fast
from zsvc.cli.app import app

RECORDED = ("start", "stop", "restart")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    return install_recorders(monkeypatch)


def install_recorders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Replace the actions by recorders: (name, bound arguments) per call."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def recorder(name: str, real: Callable[..., int]) -> Callable[..., int]:
        signature = inspect.signature(real)

        def record(*args: Any, **kwargs: Any) -> int:
            bound = signature.bind(*args, **kwargs)
            arguments = dict(bound.arguments)
            if arguments.get("context") is not None:
                arguments["context"] = str(arguments["context"])
            arguments["services"] = list(arguments["services"])
            if arguments["runtime"] is not None:
                arguments["runtime"] = str(arguments["runtime"])
            seen.append((name, arguments))
            return 0

        return record

    for name in RECORDED:
        monkeypatch.setattr(actions, name, recorder(name, getattr(actions, name)))

    def status(runtime: Any, transaction: str | None, as_json: bool) -> int:
        runtime = None if runtime is None else str(runtime)
        seen.append(("status", {"runtime": runtime, "transaction": transaction, "json": as_json}))
        return 0

    monkeypatch.setattr(fast, "show_status", status)
    monkeypatch.delenv("ZSVC_RUNTIME_DIR", raising=False)
    return seen


def through_typer(argv: list[str], calls: list[tuple[str, dict[str, Any]]]) -> Any:
    calls.clear()
    result = CliRunner().invoke(app, argv)
    if result.exit_code != 0 or len(calls) != 1:
        return None
    return calls[0]


def through_fast_path(argv: list[str], calls: list[tuple[str, dict[str, Any]]]) -> Any:
    calls.clear()
    if fast.fast_path(argv) is None:
        return None
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "TX", "--json"],
        ["--runtime-dir", "/run/x", "status"],
        ["--runtime-dir=/run/x", "start", "TX"],
        ["start", "--context", "Conf/C.xml", "DEMO"],
        ["start", "DEMO", "-c", "C.xml", "--no-block", "--timeout", "2.5", "--json"],
        ["start", "--context_file=C.xml", "--service_id", "a", "-s", "b", "--keep-going"],
        ["stop", "TX", "--service", "t1", "--timeout=3"],
        ["restart", "--json", "TX"],
    ],
)
def test_plain_lines_take_the_fast_path_to_the_same_call(
    argv: list[str], calls: list[tuple[str, dict[str, Any]]]
) -> None:
    fast_call = through_fast_path(argv, calls)
    assert fast_call is not None, f"{argv} fell through to typer"
    assert fast_call == through_typer(argv, calls)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["start", "--help"],
        ["stop"],
        ["stop", "A", "B"],
        ["start", "--timeout", "soon"],
        ["stop", "TX", "--timeout", "-1"],
        ["stop", "TX", "--timeout=nan"],
        ["restart", "TX", "--timeout", "inf"],
        ["start", "TX", "--timeout", "0"],
        ["start", "--context"],
        ["start", "--json=yes"],
        ["start", "--colour", "red"],
        ["start", "--", "-TX"],
        ["logs", "TX"],
        ["--runtime-dir"],
    ],
)
def test_anything_else_falls_through_to_typer(
    argv: list[str], calls: list[tuple[str, dict[str, Any]]]
) -> None:
    assert fast.fast_path(argv) is None
    assert calls == []


TOKENS = st.sampled_from(
    [
        "status", "start", "stop", "restart", "TX", "C.xml", "--context", "-c",
        "--context_file", "--service", "-s", "--service-id", "a", "--no-block",
        "--keep-going", "--timeout", "1", "2.5", "x", "--json", "--runtime-dir", "/r",
        "--timeout=4", "--service=b", "-h", "--", "-", "-1", "0", "nan", "inf",
        "--timeout=-1",
    ]
)  # fmt: skip


COMMAND_LINES = st.one_of(
    st.lists(TOKENS, max_size=8),
    st.builds(
        lambda command, rest: [command, *rest],
        st.sampled_from(["status", "start", "stop", "restart"]),
        st.lists(TOKENS, max_size=7),
    ),
)


@settings(max_examples=400, deadline=None)
@given(COMMAND_LINES)
def test_any_line_the_fast_path_takes_means_the_same_to_typer(argv: list[str]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = install_recorders(monkeypatch)
        fast_call = through_fast_path(argv, calls)
        if fast_call is not None:
            assert fast_call == through_typer(argv, calls), argv
