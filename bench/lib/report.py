"""What the benchmarks report: metrics, the tables they print, the JSON files they write
(``bench/results/<name>-<date>-<time>.json``, git-ignored) and the machine they ran on.

A run with :func:`run_and_report` records the machine before and after (CPU use, other
busy processes: the numbers are only meaningful on an idle machine), runs the
scenario, always shuts it down, prints the table and writes every sample.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psutil

from zsvc import __version__ as zsvc_version

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


@dataclass
class Metric:
    section: str
    label: str
    value: float
    unit: str
    target: float | None = None
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.value <= self.target

    @property
    def ratio(self) -> float | None:
        return None if not self.target else self.value / self.target

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["ratio"] = self.ratio
        return data


class Scenario(Protocol):
    """What :func:`run_and_report` runs: a benchmark's measurements and its clean-up."""

    metrics: list[Metric]
    meta: dict[str, Any]
    work: Path

    def main(self) -> None: ...

    def shutdown(self) -> None: ...


class Metrics:
    """A scenario's list of metrics and its meta data, with :meth:`add` to append a row."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []
        self.meta: dict[str, Any] = {}

    def add(self, section: str, label: str, value: float, unit: str, **kw: Any) -> Metric:
        metric = Metric(section, label, value, unit, **kw)
        self.metrics.append(metric)
        return metric


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms" and value < 10:
        return f"{value:.3f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:.1f} {unit}"


def print_rows(rows: list[tuple[str, ...]], left: int = 1) -> None:
    """A table: the first *left* columns left-aligned, the others right-aligned, the
    last column free text; a rule under the header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for number, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=False))
        cells = [cell.ljust(width) if i < left else cell.rjust(width) for i, (cell, width) in pairs]
        print("  ".join([*cells, row[-1]]).rstrip())
        if number == 0:
            print("-" * (sum(widths) + 2 * len(widths) + 20))


def print_table(metrics: list[Metric]) -> None:
    """metric | value | target | ratio | ok | note."""
    rows = [("metric", "value", "target", "ratio", "ok", "note")]
    for m in metrics:
        ok = "-" if m.ok is None else ("ok" if m.ok else "MISS")
        ratio = "-" if m.ratio is None else f"{m.ratio:.2f}"
        target = "-" if m.target is None else f"<= {fmt(m.target, m.unit)}"
        rows.append((f"[{m.section}] {m.label}", fmt(m.value, m.unit), target, ratio, ok, m.note))
    print_rows(rows)


def comparison(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """zsvc (and zsvc-py) over each peer, per metric measured for both."""
    rows = []
    for label, values in results.items():
        row: dict[str, Any] = {"metric": label, **values}
        for ours in ("zsvc", "zsvc-py"):
            for peer in ("circus", "supervisord"):
                if ours in values and peer in values and values[peer]:
                    row[f"{ours}/{peer}"] = values[ours] / values[peer]
        rows.append(row)
    return rows


def print_comparison(rows: list[dict[str, Any]], units: dict[str, str]) -> None:
    """metric | zsvc | zsvc-py | circus | supervisord | zsvc/circus | zsvc/supervisord."""
    head = ("metric", "zsvc", "zsvc-py", "circus", "supervisord", "zsvc/circus", "zsvc/superv.")
    table = [head]
    for row in rows:
        unit = units.get(row["metric"], "")
        cells = [row["metric"]]
        cells += [fmt(row[k], unit) if k in row else "-" for k in head[1:5]]
        cells += [f"{row[k]:.2f}" if k in row else "-" for k in ("zsvc/circus", "zsvc/supervisord")]
        table.append(tuple(cells))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for number, row in enumerate(table):
        print(
            "  ".join(
                [row[0].ljust(widths[0])]
                + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            )
        )
        if number == 0:
            print("-" * (sum(widths) + 2 * (len(head) - 1)))


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "zsvc": zsvc_version,
        "load_average": os.getloadavg(),
    }


def busy_processes(interval: float = 1.0) -> tuple[float, list[str]]:
    """Machine CPU use over *interval* (percent of all cores) and the other busy processes."""
    me = os.getpid()
    procs = []
    for proc in psutil.process_iter(["pid", "name"]):
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
            procs.append(proc)
    total = psutil.cpu_percent(interval=interval)
    busy = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            used = proc.cpu_percent(None)
            if used >= 5.0 and proc.pid != me:
                args = " ".join(proc.cmdline())[:70] or proc.info["name"]
                busy.append(f"pid {proc.pid} {used:.0f}% {args}")
    return total, busy


def add_run_options(parser: argparse.ArgumentParser, pyc_cache: bool = True) -> None:
    """The options every benchmark with :func:`run_and_report` takes (``--json``,
    ``--keep``) and, with *pyc_cache*, ``--no-pyc-cache`` for those that run zsvc with
    a private bytecode cache."""
    parser.add_argument("--json", type=Path, help="result file (default bench/results/…)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    if pyc_cache:
        parser.add_argument(
            "--no-pyc-cache",
            action="store_true",
            help="run zsvc with the inherited environment (no private bytecode cache)",
        )


def run_metadata(args: argparse.Namespace) -> tuple[datetime, dict[str, Any]]:
    """When the run started and what it ran on; warns when the machine is already busy.

    Every benchmark records the same facts, so that its JSON says how far
    its numbers can be trusted.
    """
    started = datetime.now()
    meta = machine_info()
    load, busy = busy_processes()
    meta["cpu_busy_before_percent"] = load
    meta["busy_processes_before"] = busy
    if hasattr(args, "no_pyc_cache"):
        meta["pyc_cache"] = not args.no_pyc_cache
    meta["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if load > 15 or busy:
        print(f"warning: the machine is {load:.0f}% busy before the run:", file=sys.stderr)
        for line in busy:
            print(f"  {line}", file=sys.stderr)
    return started, meta


def write_results(
    name: str, document: dict[str, Any], path: Path | None, started: datetime
) -> Path:
    """Write *document* to *path*, or to ``bench/results/<name>-<date>-<time>.json``."""
    path = path or RESULTS_DIR / f"{name}-{started:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _guarded(bench: Scenario) -> str | None:
    """Run *bench*, always shut it down; the error that ended it, if any."""
    error = None
    try:
        bench.main()
    except BaseException as exc:  # noqa: BLE001 - reported by the caller, after the clean-up
        error = "".join(traceback.format_exception_only(exc)).strip()
        traceback.print_exc()
    finally:
        bench.shutdown()
    return error


def run_and_report(
    bench: Scenario,
    args: argparse.Namespace,
    meta: dict[str, Any],
    started: datetime,
    name: str,
    kept: str,
) -> int:
    """Run *bench*, always shut it down, print the table and write the JSON (shared by benches)."""
    error = _guarded(bench)
    load, busy = busy_processes()
    meta["cpu_busy_after_percent"] = load
    meta["busy_processes_after"] = busy
    meta.update(bench.meta)
    meta["started"] = started.isoformat(timespec="seconds")
    meta["seconds"] = round((datetime.now() - started).total_seconds(), 1)
    print()
    print_table(bench.metrics)
    if busy:
        print(f"\nwarning: other processes were busy at the end: {'; '.join(busy)}")
    document = {"meta": meta, "error": error, "metrics": [m.to_json() for m in bench.metrics]}
    path = write_results(name, document, args.json, started)
    print(f"\nresults: {path}")
    if error is None and not args.keep:
        shutil.rmtree(bench.work, ignore_errors=True)
    else:
        print(f"work directory kept: {bench.work} ({kept})")
    if error is not None:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    return 0


def run_scenario(
    name: str,
    args: argparse.Namespace,
    make: Callable[[argparse.Namespace], Scenario],
    banner: str,
    kept: str,
    **meta: Any,
) -> tuple[int, Scenario]:
    """Describe the machine, make the scenario, say where it runs, run and report it.

    *banner* and *kept* (what a kept work directory holds) are formatted with
    ``version``, ``work``, ``cpus`` and *meta* (added to the JSON's meta). Returns
    the exit status and the scenario.
    """
    started, described = run_metadata(args)
    described.update(meta)
    bench = make(args)
    fields = {"version": zsvc_version, "work": bench.work, **described}
    print(banner.format(**fields), file=sys.stderr)
    return run_and_report(bench, args, described, started, name, kept.format(**fields)), bench
