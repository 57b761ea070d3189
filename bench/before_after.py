"""A start of tasks without settings, by this checkout and by an earlier commit, in one run.

Issue 14 (execution settings) added work to every launch: a task without ``<exec>``
must start as fast as before. This bench checks out the earlier commit (default: the
last one before issue 14) in a git worktree, then, in alternating rounds, starts a
daemon of each side and measures the same ``zsvc start`` of N tasks that have no
settings, until every task is ready:

* ``start`` — wall time of the ``zsvc start`` CLI process (it returns once all are ready);
* ``daemon CPU`` — the daemon's CPU time (user + system) spent during that start.

Two workloads: N command tasks (``sleep``, type ``exec``) and N Python tasks (an idle
task class, forked from the zygote). The result is the ratio after/before of the
medians, per workload and measure::

    .venv/bin/python bench/before_after.py                  # 50 tasks, 5 rounds
    .venv/bin/python bench/before_after.py --before ac9a211 --tasks 100 --rounds 7

Every daemon is shut down whatever happens; the worktree is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from lib.daemon import ZsvcDaemon  # noqa: E402
from lib.report import machine_info, median, print_rows  # noqa: E402
from lib.taskpkg import IDLE, task_ids, write_context, write_task_package  # noqa: E402

BEFORE = "ac9a211"
"""The last commit before issue 14's execution settings."""
WORKLOADS = ("command", "python")


@contextlib.contextmanager
def worktree(ref: str, parent: Path) -> Iterator[Path]:
    """A detached checkout of *ref* under *parent*; removed again at the end."""
    path = parent / "before"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), ref],
        check=True,
        timeout=120,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
            check=False,
            timeout=120,
        )


def one_start(source: Path, home: Path, workload: str, tasks: int) -> tuple[float, float]:
    """A daemon of the checkout *source*, one start of *tasks*: (wall s, daemon CPU s)."""
    daemon = ZsvcDaemon(home)
    daemon.env["PYTHONPATH"] = str(source)  # before the editable install's path entry
    ids = task_ids(tasks)
    if workload == "command":
        context, _ = write_context(
            home / "Conf" / "Context-B.xml", "B", "Cmd", ids, command="sleep 600"
        )
    else:
        write_task_package(home, IDLE)
        context, _ = write_context(home / "Conf" / "Context-B.xml", "B", IDLE, ids)
    try:
        daemon.start()
        cpu = daemon.cpu()
        run = daemon.cli("start", "--context", str(context), "B", timeout=120)
        used = daemon.cpu() - cpu
        status = daemon.call("status", transaction="B")
        states = {task["state"] for task in status["tasks"]}
        if states != {"active"} or len(status["tasks"]) != tasks:
            raise RuntimeError(f"{source}: not every task is active: {states}")
        daemon.cli("stop", "B", timeout=120)
        return run.wall, used
    finally:
        daemon.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="the earlier commit (default %(default)s)")
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="zba-", dir="/tmp") as tmp,
        worktree(args.before, Path(tmp)) as before,
    ):
        sides = {"before": before, "after": REPO}
        for round_ in range(args.rounds):
            order = [(side, load) for side in sides for load in WORKLOADS]
            random.shuffle(order)
            for side, load in order:
                home = Path(tmp) / f"{side[0]}{load[0]}{round_}"
                home.mkdir()
                results.setdefault((side, load), []).append(
                    one_start(sides[side], home, load, args.tasks)
                )
    print(", ".join(f"{k}: {v}" for k, v in machine_info().items()))
    print(f"{args.tasks} tasks without settings, {args.rounds} rounds; before = {args.before}")
    rows = [("workload", "measure", "before", "after", "after/before")]
    for load in WORKLOADS:
        for index, measure in enumerate(("start (s)", "daemon CPU (s)")):
            old = median([r[index] for r in results[("before", load)]])
            new = median([r[index] for r in results[("after", load)]])
            rows.append((load, measure, f"{old:.3f}", f"{new:.3f}", f"{new / old:.2f}"))
    print_rows(rows)


if __name__ == "__main__":
    main()
