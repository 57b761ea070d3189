"""``zsvc status`` shows each transaction's owner (issue 15) in its table's title."""

from __future__ import annotations

import io
from typing import Any

from zsvc.cli.render import transaction_table


def rendered(record: dict[str, Any]) -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=200, color_system=None, force_terminal=False).print(
        transaction_table(record, now=1.0)
    )
    return out.getvalue()


def test_the_title_names_the_owner() -> None:
    record = {"transaction": "web-1", "state": "running", "owner": "alice", "tasks": []}
    assert "web-1  running  owner alice" in rendered(record)


def test_a_record_without_an_owner_renders_as_before() -> None:
    """An older daemon's view has no owner: nothing is made up."""
    record = {"transaction": "web-1", "state": "running", "tasks": []}
    assert "owner" not in rendered(record)


def test_an_owner_name_is_shown_as_written_never_as_markup() -> None:
    record = {"transaction": "T", "state": "running", "owner": "key:[bold]ci", "tasks": []}
    assert "owner key:[bold]ci" in rendered(record)
