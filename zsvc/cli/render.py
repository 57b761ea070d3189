"""Human output of the CLI (rich), kept apart so ``--json`` never imports rich."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from zsvc.cli.text import printable
from zsvc.states import Result

STATE_STYLES = {
    "active": "green",
    "activating": "yellow",
    "deactivating": "yellow",
    "failed": "bold red",
    "inactive": "dim",
    "running": "green",
    "starting": "yellow",
    "stopping": "yellow",
    "degraded": "bold red",
    "stopped": "dim",
}


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _styled(word: str) -> str:
    style = STATE_STYLES.get(word)
    return f"[{style}]{word}[/]" if style else word


def shown(text: Any) -> str:
    """Text from a task or a peer as rich markup that prints as itself: control characters
    escaped (:func:`zsvc.cli.text.printable`) and any ``[tag]`` in it shown, not applied."""
    from rich.markup import escape

    return escape(printable(str(text)))


def transaction_table(record: dict[str, Any], now: float | None = None) -> Any:
    from rich.table import Table

    now = time.time() if now is None else now
    # The owner (issue 15): who may stop it besides root; a daemon before owners sends none.
    owner = f"  owner {shown(record['owner'])}" if record.get("owner") else ""
    title = (
        f"{record['transaction']}  {_styled(record['state'])}{owner}"
        f"  [dim]{shown(record.get('context_id', ''))} {shown(record.get('context', ''))}[/]"
    )
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("task", "pid", "state", "last", "↺", "since", "status"):
        table.add_column(column, overflow="fold")
    for task in record["tasks"]:
        state = f"{_styled(task['state'])}/{task['sub_state']}"
        if task["result"] != Result.SUCCESS:
            state += f" [red]({task['result']})[/]"
        table.add_row(
            shown(task["id"]),
            str(task["pid"] or "-"),
            state,
            shown(task["last_action"] or "-"),
            str(task["restarts"]),
            format_duration(now - task["since"]),
            shown(task["status_text"] or task.get("last_exit", "") or ""),
        )
    return table


def print_transactions(records: Iterable[dict[str, Any]]) -> None:
    from rich.console import Console

    console = Console()
    records = list(records)
    if not records:
        console.print("no transactions")
        return
    for record in records:
        console.print(transaction_table(record))


def stop_summary(record: dict[str, Any]) -> list[str]:
    """What ``zsvc stop`` prints: the transaction's state and its tasks counted by state,
    then one line per task that did not end cleanly.

    As ``systemctl stop`` is silent and ``circusctl stop`` says "ok", the
    table of every task is not repeated here (``zsvc status TX`` shows it):
    rendering it for 200 tasks took longer than stopping them.
    """
    counts: dict[str, int] = {}
    for task in record["tasks"]:
        key = f"{task['state']}/{task['sub_state']}"
        counts[key] = counts.get(key, 0) + 1
    shown = ", ".join(f"{count} {key}" for key, count in sorted(counts.items()))
    lines = [f"{record['transaction']} {record['state']}: {shown or 'no tasks'}"]
    for task in record["tasks"]:
        if task["result"] != Result.SUCCESS:
            detail = printable(task["status_text"] or task.get("last_exit", "") or "")
            state = f"{task['state']}/{task['sub_state']} ({task['result']})"
            lines.append(f"  {task['id']}: {state}" + (f": {detail}" if detail else ""))
    return lines
