"""The house stays readable: small modules in the daemon and the runners, short functions.

The architecture issue split a 1,200-line manager and a 1,000-line runner
by concern; these limits keep the next feature from growing them back
unnoticed. A module that must grow past them is a sign it has a second job.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "zsvc"
MODULE_LIMIT = 550
"""Lines in one module of zsvc/daemon or zsvc/runners: about 500, and past 550 a module
has taken a second job."""
FUNCTION_LIMIT = 60
"""Lines in one function anywhere in zsvc/, its docstring included."""


def _modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("path", _modules("daemon", "runners"), ids=lambda p: p.name)
def test_daemon_and_runner_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MODULE_LIMIT, f"{path.relative_to(PACKAGE.parent)} has {lines} lines"


def test_no_function_is_long() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LIMIT:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert not long, f"functions over {FUNCTION_LIMIT} lines: {long}"
