"""What a task's process settings cost the daemon to launch it on the local runner (issue 14).

The local runner runs in this process, as in the daemon; each round starts one command
task (``/bin/true``) and waits for its end, the cases in random order. What is measured
is the CPU time of this process (every thread: ``time.process_time``) spent in
``LocalRunner.start``: what the daemon pays per launch. The task's own wrapper (the
shell, ``renice``, ``setpriv``) runs in the child and is not the daemon's::

    sudo .venv/bin/python bench/settings_overhead.py              # 300 rounds per case
    sudo .venv/bin/python bench/settings_overhead.py --rounds 1000

Cases: ``none`` (no settings: the launch of every task without ``<exec>``) and
``user+env+limits`` (user, group, a supplementary group, umask, nice, limit_nofile,
no_new_privileges, and 20 environment variables); with a cgroup2 hierarchy that
offers the controllers, also ``+cgroup limits`` (memory_max, cpu_quota, tasks_max).
It also times :func:`~zsvc.runners.localsettings.prepare` for a task without settings,
the only step the change added to that launch.

Target (issue 14): a task with user, environment and limits costs at most 2 ms more of
daemon CPU to launch than one without. Needs root (setuid).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from lib.report import machine_info, median, percentile, print_rows  # noqa: E402

from zsvc.config.model import ProcessSettings  # noqa: E402
from zsvc.hostwire import INVOCATION_ENV  # noqa: E402
from zsvc.paths import RuntimeLayout  # noqa: E402
from zsvc.runners.base import ExitInfo, LaunchSpec, TaskKey  # noqa: E402
from zsvc.runners.local import LocalRunner  # noqa: E402
from zsvc.runners.localsettings import prepare  # noqa: E402
from zsvc.states import StartType  # noqa: E402

TARGET_MS = 2.0
WAIT = 10.0
USER_SETTINGS = ProcessSettings(
    user="nobody",
    group="nogroup",
    supplementary_groups=("users",),
    umask=0o027,
    nice=5,
    limit_nofile=4096,
    no_new_privileges=True,
)
CGROUP_SETTINGS = ProcessSettings(memory_max=256 << 20, cpu_quota=50.0, tasks_max=64)
ENVIRONMENT = {f"APP_SETTING_{n}": f"value-{n}" for n in range(20)}


class Events:
    """The runner's events, ignored: only the launch is measured."""

    def on_ready(self, key: TaskKey) -> None: ...

    def on_status(self, key: TaskKey, text: str) -> None: ...

    def on_stopping(self, key: TaskKey) -> None: ...

    def on_main_pid(self, key: TaskKey, pid: int, description: object) -> None: ...

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None: ...


def spec_for(tmp: Path, settings: ProcessSettings, env: dict[str, str]) -> LaunchSpec:
    return LaunchSpec(
        transaction="BENCH",
        task_id="t",
        unit=f"zsvc-BENCH-t-{uuid.uuid4().hex[:8]}.service",
        argv=("/bin/true",),
        env={**env, INVOCATION_ENV: uuid.uuid4().hex},
        cwd="/",
        start_type=StartType.EXEC,
        start_timeout=WAIT,
        stop_timeout=WAIT,
        log_path=tmp / "t.log",
        process=settings,
    )


async def measure(
    tmp: Path, rounds: int, cases: dict[str, tuple[ProcessSettings, dict[str, str]]]
) -> dict[str, list[float]]:
    """The CPU seconds of each start, per case (interleaved in random order)."""
    runner = LocalRunner(RuntimeLayout(tmp), use_zygote=False, task_fd_limit=1024)
    await runner.open(Events())
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    try:
        order = [name for name in cases for _ in range(rounds)]
        random.shuffle(order)
        for name in order:
            settings, env = cases[name]
            spec = spec_for(tmp, settings, env)
            before = time.process_time()
            task = await runner.start(spec)
            cpu[name].append(time.process_time() - before)
            info = await asyncio.wait_for(task.wait(), WAIT)
            if not info.clean:
                raise SystemExit(f"{name}: the task ended {info.describe()}: {spec.log_path}")
    finally:
        await runner.close()
    return cpu


def prepare_cost(calls: int = 100_000) -> float:
    """Seconds per :func:`prepare` of a task without settings (what every launch pays now)."""
    settings = ProcessSettings()
    start = time.perf_counter()
    for _ in range(calls):
        prepare("t", settings, None, None)
    return (time.perf_counter() - start) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="launches per case")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: the user case changes the uid", file=sys.stderr)
        return 2
    base_env = dict(os.environ)
    cases = {
        "none": (ProcessSettings(), base_env),
        "user+env+limits": (USER_SETTINGS, {**base_env, **ENVIRONMENT}),
    }
    from zsvc.runners.cgroup import find_hierarchy

    tree = find_hierarchy()
    if tree is not None and {"memory", "cpu", "pids"} <= tree.controllers():
        merged = ProcessSettings(**{**vars(USER_SETTINGS), **_set_fields(CGROUP_SETTINGS)})
        cases["+cgroup limits"] = (merged, {**base_env, **ENVIRONMENT})
    with tempfile.TemporaryDirectory(prefix="settings-bench-") as tmp:
        cpu = asyncio.run(measure(Path(tmp), args.rounds, cases))
    baseline = median(cpu["none"])
    rows = [("case", "median CPU", "p90 CPU", "over none")]
    for name, values in cpu.items():
        extra = median(values) - baseline
        rows.append(
            (
                name,
                f"{median(values) * 1e3:.3f} ms",
                f"{percentile(values, 90) * 1e3:.3f} ms",
                f"{extra * 1e3:+.3f} ms",
            )
        )
    info = machine_info()
    print(f"{args.rounds} launches per case; {info.get('cpus', '?')} CPUs")
    print_rows(rows)
    print(f"prepare() of a task without settings: {prepare_cost() * 1e6:.2f} µs per launch")
    worst = max(median(values) - baseline for values in cpu.values())
    verdict = "met" if worst <= TARGET_MS / 1e3 else "MISSED"
    print(f"target: at most {TARGET_MS:g} ms more than none: {verdict} ({worst * 1e3:+.3f} ms)")
    return 0 if verdict == "met" else 1


def _set_fields(settings: ProcessSettings) -> dict[str, object]:
    defaults = vars(ProcessSettings())
    return {key: value for key, value in vars(settings).items() if value != defaults[key]}


if __name__ == "__main__":
    sys.exit(main())
