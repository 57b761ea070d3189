"""systemd's own CPU in the crash loop of issue 4, beside zsvc's, in one run.

    python bench/systemd_crashloop.py [--tasks 100] [--window 10] [--no-zsvc] [--json out.json]

Issue 4 asks that the daemon's CPU while 100 tasks crash-loop to their start
limits stay under 10 % of one core, and names systemd as the reference. This
measures what systemd itself spends on the same loop. Needs root and
systemd-nspawn (like tests/system): it boots a throwaway systemd box
(tests/system/box.py, torn down on every path) and, inside it, measures
PID 1 (psutil, user + system of the box's PID 1, read from the machine):

1. **to the limit**: ``--tasks`` transient services (``systemd-run
   --no-block``), each ``Type=notify``, ``Restart=on-failure``,
   ``RestartSec=100ms`` and systemd's default start limit (5 starts in
   10 s), whose program (``python3 -c 'raise SystemExit(1)'``) fails before
   READY=1, as bench/policy.py's tasks fail in ``setup()``. PID 1's CPU from
   the first ``systemd-run`` until the last "Start request repeated too
   quickly" in the journal (its own timestamp; the journal is read from its
   files, which costs PID 1 nothing), over that wall time;
2. **sustained**: the same services with ``Restart=always``,
   ``RestartSec=1`` and no start limit (bench/crashloop.py's pace); PID 1's
   CPU over ``--window`` seconds divided by the restarts systemd counted
   (``NRestarts``).

Then, unless ``--no-zsvc``, the box is gone and ``bench/policy.py
--no-exec-daemon`` runs zsvc's crash loop on the machine, so the two rows
come from one run. journald's CPU is reported beside PID 1's, not in it: zsvc
writes its tasks' output itself, so its figure includes that work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lib.managers import Systemd  # noqa: E402  (bench/, the script's directory)
from lib.procs import cpu_seconds, poll  # noqa: E402
from lib.report import write_results  # noqa: E402

from tests.system.box import SystemdBox  # noqa: E402

PROGRAM = "/usr/bin/python3 -c 'raise SystemExit(1)'"
LIMIT_UNITS = "crashloop-limit-"
ALWAYS_UNITS = "crashloop-always-"
"""Unit name prefixes of the two measurements."""
POLL = 0.2
"""How often the journal is read while waiting for the last start limit (bounded)."""


def to_the_limit(systemd: Systemd, tasks: int, deadline_s: float) -> dict[str, Any]:
    assert systemd.main is not None
    pid1, journald = systemd.main, systemd.journald()
    properties = "-p Type=notify -p Restart=on-failure -p RestartSec=100ms"
    cpu0, journal0 = cpu_seconds(pid1), cpu_seconds(journald)
    began = time.time()
    systemd.start_units(LIMIT_UNITS, tasks, PROGRAM, properties, timeout=300)
    launched = time.time() - began

    def all_hit() -> list[float]:
        times = systemd.limit_times(LIMIT_UNITS)
        return times if len(times) >= tasks else []

    # A bounded poll of a file no event announces: every unit's "Start request repeated".
    hits = poll(all_hit, deadline_s, POLL)
    cpu1, journal1 = cpu_seconds(pid1), cpu_seconds(journald)
    if not hits:
        got = len(systemd.limit_times(LIMIT_UNITS))
        raise RuntimeError(f"{got} of {tasks} units hit the start limit in {deadline_s} s")
    starts = systemd.restarts(LIMIT_UNITS) + tasks
    wall = max(hits) - began
    systemd.remove_units(LIMIT_UNITS)
    return {
        "pid1_cpu_s": cpu1 - cpu0,
        "journald_cpu_s": journal1 - journal0,
        "wall_s": wall,
        "launch_s": launched,
        "starts": starts,
        "pid1_percent": (cpu1 - cpu0) / wall * 100,
        "pid1_ms_per_start": (cpu1 - cpu0) / starts * 1e3,
    }


def sustained(systemd: Systemd, tasks: int, window: float) -> dict[str, Any]:
    properties = "-p Type=notify -p Restart=always -p RestartSec=1 -p StartLimitIntervalSec=0"
    systemd.start_units(ALWAYS_UNITS, tasks, PROGRAM, properties, timeout=300)
    # Settling: every unit restarted at least once (bounded).
    poll(lambda: systemd.restarts(ALWAYS_UNITS) >= tasks, 60, POLL)
    count0 = systemd.restarts(ALWAYS_UNITS)
    pid1 = systemd.manager_procs()[0]
    cpu0, began = cpu_seconds(pid1), time.monotonic()
    time.sleep(window)  # the measurement window itself
    cpu1, wall = cpu_seconds(pid1), time.monotonic() - began
    count = systemd.restarts(ALWAYS_UNITS) - count0
    systemd.remove_units(ALWAYS_UNITS)
    return {
        "pid1_cpu_s": cpu1 - cpu0,
        "wall_s": wall,
        "restarts": count,
        "pid1_percent": (cpu1 - cpu0) / wall * 100,
        "pid1_ms_per_restart": (cpu1 - cpu0) / max(1, count) * 1e3,
    }


def zsvc_crash_loop(tasks: int) -> list[dict[str, Any]]:
    """bench/policy.py's crash-loop rows (the default daemon), run now on the machine."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "policy.json"
        argv = [sys.executable, str(REPO / "bench" / "policy.py"), "--no-exec-daemon"]
        argv += ["--kills", "1", "--idle", "1", "--crash-tasks", str(tasks), "--json", str(out)]
        subprocess.run(argv, check=True, timeout=600, stdout=subprocess.DEVNULL)
        metrics = json.loads(out.read_text())["metrics"]
    wanted = ("crash-looping", "per task start", "wall time until")
    return [m for m in metrics if any(word in m["label"] for word in wanted)]


def print_results(results: dict[str, Any]) -> None:
    limit, always, n = results["to_the_limit"], results["sustained"], results["tasks"]
    print(f"{results['systemd']}; {n} units")
    print(
        f"systemd PID 1, {n} units crash-looping to the limit: {limit['pid1_percent']:.1f} %"
        f" of a core ({limit['pid1_cpu_s']:.2f} s in {limit['wall_s']:.2f} s,"
        f" {limit['starts']} starts: {limit['pid1_ms_per_start']:.2f} ms each;"
        f" journald {limit['journald_cpu_s']:.2f} s)"
    )
    print(
        f"systemd PID 1, restart=always every 1 s: {always['pid1_ms_per_restart']:.2f} ms"
        f" per restart ({always['restarts']} restarts, {always['pid1_percent']:.1f} %)"
    )
    for metric in results.get("zsvc", []):
        print(f"zsvc {metric['label']}: {metric['value']:.3f} {metric['unit']}  {metric['note']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=120.0, help="for the limit (s)")
    parser.add_argument("--no-zsvc", action="store_true", help="systemd only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = datetime.now()
    results: dict[str, Any] = {"tasks": args.tasks, "when": started.isoformat()}
    with Systemd(SystemdBox()) as systemd:
        results["systemd"] = systemd.box.run("systemctl", "--version").stdout.split("\n")[0]
        results["to_the_limit"] = to_the_limit(systemd, args.tasks, args.deadline)
        results["sustained"] = sustained(systemd, args.tasks, args.window)
    if not args.no_zsvc:
        results["zsvc"] = zsvc_crash_loop(args.tasks)
    print_results(results)
    print(f"results: {write_results('systemd-crashloop', results, args.json, started)}")
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/systemd_crashloop.py needs root (it boots a systemd box)")
    sys.exit(main())
