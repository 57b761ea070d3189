"""The ``zsvc monitor`` view, rendered into fixed-size recording consoles (no daemon)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from zsvc.cli.monitor_view import MonitorModel, format_bytes, render, sparkline

NOW = 1_800_000_000.0


def task(index: int, cpu: float = 1.0, up: bool = True) -> dict[str, Any]:
    return {
        "id": f"ts_{index:03d}",
        "service_name": f"svc{index}",
        "instance": "Sleeper",
        "pid": 1000 + index if up else None,
        "state": "active" if up else "inactive",
        "sub_state": "running" if up else "dead",
        "result": "success",
        "status_text": f"working on item {index}",
        "last_action": "started",
        "last_exit": "",
        "restarts": index % 3,
        "since": NOW - 125,
        "shared": False,
        "usage": {
            "pid": 1000 + index,
            "status": "sleeping",
            "cpu_percent": cpu,
            "rss": 20 << 20,
            "vms": 100 << 20,
            "threads": 3,
            "processes": 1,
            "fds": 14,
            "files": 2,
            "sockets": 4,
            "children": [],
        }
        if up
        else None,
    }


def sample(transaction: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    up = [t for t in tasks if t["usage"]]
    return {
        "transaction": transaction,
        "state": "running",
        "context_id": "ctx",
        "timestamp": NOW,
        "interval": 1.0,
        "tasks": tasks,
        "totals": {
            "cpu_percent": round(sum(t["usage"]["cpu_percent"] for t in up), 1),
            "rss": sum(t["usage"]["rss"] for t in up),
            "threads": 3 * len(up),
            "processes": len(up),
            "fds": 14 * len(up),
            "tasks_up": len(up),
        },
    }


def record(width: int, height: int, model: MonitorModel, cut: bool = True) -> str:
    console = Console(
        record=True, width=width, height=height, color_system=None, file=io.StringIO()
    )
    console.print(render(model, NOW, width, height if cut else None))
    return console.export_text()


def hundred_tasks() -> MonitorModel:
    model = MonitorModel()
    tasks = [task(i, cpu=float(i % 7)) for i in range(99)] + [task(99, up=False)]
    model.update(sample("TX100", tasks), NOW)
    return model


def test_100_tasks_all_shown_with_totals() -> None:
    text = record(160, 200, hundred_tasks(), cut=False)
    for index in range(100):
        assert f"ts_{index:03d}" in text
    total_line = next(line for line in text.splitlines() if line.lstrip().startswith("total"))
    assert "99 up" in total_line
    assert "1.9G" in total_line  # 99 tasks of 20 MiB
    assert "working on item 42" in text
    assert "2m05s" in text  # uptime
    assert "TX100" in text


def test_100_tasks_fit_a_short_terminal() -> None:
    text = record(120, 40, hundred_tasks())
    lines = text.splitlines()
    assert len(lines) <= 40
    assert "more" in text  # says what it left out
    assert "ts_006" in text  # one of the busiest (6 %) is shown
    assert "total" in text


def test_a_narrow_terminal_drops_columns_not_rows() -> None:
    model = MonitorModel()
    model.update(sample("TX", [task(1, cpu=12.5), task(2)]), NOW)
    text = record(50, 30, model)
    assert all(len(line) <= 50 for line in text.splitlines())
    assert "ts_001" in text and "12.5" in text
    assert "history" not in text and "status" not in text


def test_history_and_vanishing_tasks() -> None:
    model = MonitorModel()
    for cpu in (0.0, 50.0, 100.0):
        model.update(sample("TX", [task(1, cpu=cpu), task(2)]), NOW)
    assert list(model.history[("TX", "ts_001")]) == [0.0, 50.0, 100.0]
    model.update(sample("TX", [task(1, up=False), task(2)]), NOW + 1)  # stopped: history ends
    assert ("TX", "ts_001") not in model.history
    model.update(sample("OTHER", [task(3)]), NOW + 10)
    model.prune(NOW + 10, max_age=5)
    assert [s["transaction"] for s in model.ordered()] == ["OTHER"]
    assert ("TX", "ts_002") not in model.history


def test_filter_by_transaction() -> None:
    model = MonitorModel(only="A")
    assert model.update(sample("A", [task(1)]), NOW)
    assert not model.update(sample("B", [task(1)]), NOW)


def test_empty_view_says_so() -> None:
    assert "no task is up" in record(80, 10, MonitorModel())


def test_sparkline_and_sizes() -> None:
    assert sparkline([0, 50, 100], 10) == "▁▅█"
    assert sparkline([0, 200], 10) == "▁█"  # more than one core: scaled to the maximum
    assert len(sparkline(list(range(100)), 16)) == 16
    assert format_bytes(512) == "512B" and format_bytes(3 << 20) == "3.0M"
    assert format_bytes(None) == "-"
