"""What ``zsvc monitor`` shows: the latest samples, a short history, and their rendering.

Pure: samples (``docs/monitor.md``) and the time come in, a rich renderable
goes out, so the view is tested in a fixed-size recording console without a
daemon. The layout adapts to the console: narrower consoles lose the least
important columns, shorter ones show each transaction's busiest tasks and
say how many were left out.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zsvc.cli.render import STATE_STYLES, format_duration, shown
from zsvc.states import HAS_PROCESS

HISTORY = 40
"""CPU readings kept per task for the sparkline."""
SPARK = "▁▂▃▄▅▆▇█"
STALE_AFTER = 5.0
"""A transaction not sampled for this many seconds beyond the interval is dropped from view."""


def sparkline(values: Sequence[float], width: int, top: float = 100.0) -> str:
    """The last *width* values as block characters; *top* (or the maximum seen) is full."""
    if width <= 0 or not values:
        return ""
    recent = list(values)[-width:]
    ceiling = max(top, *recent) or 1.0
    last = len(SPARK) - 1
    return "".join(SPARK[min(last, int(value / ceiling * last + 0.5))] for value in recent)


def format_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit in ("B", "K") else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


@dataclass
class MonitorModel:
    """The latest sample per transaction and each task's CPU history."""

    only: str | None = None
    """Show this transaction only (``zsvc monitor TX``)."""
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen_at: dict[str, float] = field(default_factory=dict)
    history: dict[tuple[str, str], collections.deque[float]] = field(default_factory=dict)

    def update(self, sample: dict[str, Any], now: float) -> bool:
        """Take one transaction's sample; False when it is not one to show."""
        transaction = sample.get("transaction")
        if not isinstance(transaction, str) or (self.only and transaction != self.only):
            return False
        self.samples[transaction] = sample
        self.seen_at[transaction] = now
        present = set()
        for task in sample.get("tasks", []):
            key = (transaction, task["id"])
            present.add(key)
            use = task.get("usage")
            if use is None:
                self.history.pop(key, None)  # a new run starts a new history
                continue
            history = self.history.setdefault(key, collections.deque(maxlen=HISTORY))
            history.append(float(use.get("cpu_percent") or 0.0))
        for key in [k for k in self.history if k[0] == transaction and k not in present]:
            del self.history[key]  # a task that left the context (a forgotten transaction)
        return True

    def prune(self, now: float, max_age: float) -> None:
        """Drop transactions no longer sampled (stopped or forgotten)."""
        for transaction in [t for t, at in self.seen_at.items() if now - at > max_age]:
            del self.samples[transaction], self.seen_at[transaction]
            for key in [k for k in self.history if k[0] == transaction]:
                del self.history[key]

    def ordered(self) -> list[dict[str, Any]]:
        return [self.samples[t] for t in sorted(self.samples)]


# --- rendering -----------------------------------------------------------------------

COLUMNS: tuple[tuple[str, int, str], ...] = (
    # (name, minimum console width to show it, justification)
    ("task", 0, "left"),
    ("pid", 0, "right"),
    ("state", 0, "left"),
    ("cpu%", 0, "right"),
    ("rss", 0, "right"),
    ("↺", 60, "right"),
    ("up", 60, "right"),
    ("thr", 80, "right"),
    ("chld", 80, "right"),
    ("fds", 90, "right"),
    ("status", 100, "left"),
    ("history", 120, "left"),
)
SPARK_WIDTH = 16


def _styled(word: str) -> str:
    style = STATE_STYLES.get(word)
    return f"[{style}]{word}[/]" if style else word


def _cells(
    task: dict[str, Any], history: Iterable[float], now: float, names: list[str]
) -> list[str]:
    use = task.get("usage") or {}
    up = task.get("state") in HAS_PROCESS and use
    state = f"{_styled(task['state'])}/{task['sub_state']}"
    if use.get("status") in ("zombie", "vanished", "stopped", "disk-sleep"):
        state += f" [red]{use['status']}[/]"
    values = {
        "task": shown(task["id"]) + (" [dim](thread)[/]" if task.get("shared") else ""),
        "pid": str(task.get("pid") or "-"),
        "state": state,
        "cpu%": f"{use['cpu_percent']:.1f}" if use else "-",
        "rss": format_bytes(use.get("rss")) if use else "-",
        "↺": str(task.get("restarts", 0)),
        "up": format_duration(now - task["since"]) if up else "-",
        "thr": str(use.get("threads", "-")) if use else "-",
        "chld": str(len(use.get("children", []))) if use else "-",
        "fds": str(use["fds"]) if use and use.get("fds") is not None else "-",
        "status": shown(task.get("status_text") or task.get("last_exit") or ""),
        "history": sparkline(list(history), SPARK_WIDTH),
    }
    return [values[name] for name in names]


def _total_cells(totals: dict[str, Any], names: list[str]) -> list[str]:
    values = {
        "task": "[bold]total[/]",
        "state": f"{totals.get('tasks_up', 0)} up",
        "cpu%": f"[bold]{totals.get('cpu_percent', 0):.1f}[/]",
        "rss": f"[bold]{format_bytes(totals.get('rss'))}[/]",
        "thr": str(totals.get("threads", "")),
        "chld": str(max(0, totals.get("processes", 0) - totals.get("tasks_up", 0))),
        "fds": str(totals.get("fds", "")),
    }
    return [values.get(name, "") for name in names]


def _shown_tasks(sample: dict[str, Any], limit: int | None) -> tuple[list[dict[str, Any]], int]:
    """The tasks to show: all, or the *limit* busiest (in context order) and how many are hidden."""
    tasks = list(sample.get("tasks", []))
    if limit is None or len(tasks) <= limit:
        return tasks, 0
    busiest = sorted(
        range(len(tasks)),
        key=lambda i: -((tasks[i].get("usage") or {}).get("cpu_percent") or 0.0),
    )[: max(limit, 1)]
    keep = sorted(busiest)
    return [tasks[i] for i in keep], len(tasks) - len(keep)


def transaction_view(
    sample: dict[str, Any],
    model: MonitorModel,
    now: float,
    width: int,
    limit: int | None = None,
) -> Any:
    """One transaction: a title with its state, a row per task, a totals row."""
    from rich.table import Table

    names = [name for name, min_width, _ in COLUMNS if width >= min_width]
    transaction = sample["transaction"]
    title = f"[bold]{shown(transaction)}[/]  {_styled(sample.get('state', ''))}"
    if width >= 60:
        title += f"  [dim]{shown(sample.get('context_id', ''))}[/]"
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False, box=None)
    for name, _, justify in COLUMNS:
        if name in names:
            no_wrap = name not in ("status", "task")
            table.add_column(name, justify=justify, no_wrap=no_wrap, overflow="fold")  # type: ignore[arg-type]
    tasks, hidden = _shown_tasks(sample, limit)
    for task in tasks:
        history = model.history.get((transaction, task["id"]), ())
        table.add_row(*_cells(task, history, now, names))
    if hidden:
        table.add_row(f"[dim]… {hidden} more[/]", *[""] * (len(names) - 1))
    table.add_row(*_total_cells(sample.get("totals", {}), names), style="on grey11")
    return table


def render(
    model: MonitorModel,
    now: float,
    width: int,
    height: int | None = None,
    status: str = "",
) -> Any:
    """The whole view; with a *height*, tasks are cut so that it fits."""
    from rich.console import Group
    from rich.text import Text

    samples = model.ordered()
    parts: list[Any] = []
    if status:
        parts.append(Text(status, style="yellow"))
    if not samples:
        parts.append(Text("no task is up" if not model.only else f"{model.only}: no sample yet"))
        return Group(*parts)
    limit = None
    if height is not None:
        # Per transaction: a title, a header, a totals row, a blank line; the rest are tasks.
        rows = sum(len(s.get("tasks", [])) for s in samples)
        room = height - len(parts) - 5 * len(samples) - 1
        if rows > room:
            limit = max(1, room // len(samples) - 1)
    for sample in samples:
        parts.append(transaction_view(sample, model, now, width, limit))
        parts.append(Text(""))
    return Group(*parts)
