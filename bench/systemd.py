"""The systemd runner's speed targets, measured side by side in one throwaway systemd box.

    python bench/systemd.py [--tasks 50] [--rounds 3] [--status-calls 500] [--json out.json]

Needs root and systemd-nspawn (like tests/system): it boots a real systemd
252 from an overlay of this machine (tests/system/box.py, torn down on every
path), runs ``zsvc.service`` in it with the systemd runner and a second
daemon with ``--runner local`` next to it, and measures, each round:

1. ``zsvc start --context F TX`` of N notifying command tasks (a
   ``python3 -c`` that sends READY=1 at once) as a CLI process, until it
   returns (it blocks until every task is ready) -- systemd runner and local
   runner;
2. ``systemd-run --no-block -p Type=notify`` of the same N programs in a
   shell loop, until systemd reported the last start job done (a D-Bus
   watcher in the box counts ``JobRemoved``);
3. the ``status`` round trip with N tasks, in-process (ControlClient, median
   of many calls) and as a ``zsvc status --json`` CLI process, on both
   daemons.

Targets (issue 5): (1, systemd) ≤ (2); the status round trip under systemd
adds < 2 ms to the local runner's. Results go to bench/results/ (git-ignored)
and the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lib.managers import Systemd  # noqa: E402  (bench/, the script's directory)
from lib.report import write_results  # noqa: E402
from lib.taskpkg import context_xml, task_ids  # noqa: E402

from tests.system.box import (  # noqa: E402
    WORK,
    SystemdBox,
    checkout_binds,
    install_zsvc,
    start_zsvc,
)

READY_AT_ONCE = (
    "import os, socket, time;"
    " socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto("
    "b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(3600)"
)
LOCAL_ENV = {"ZSVC_RUNTIME_DIR": "/run/zsvc-local", "ZSVC_STATE_DIR": "/var/lib/zsvc-local"}

WATCHER = """
import asyncio, sys, time
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
COUNT, PREFIX = int(sys.argv[1]), sys.argv[2]
async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    done = asyncio.get_running_loop().create_future()
    seen = set()
    def on(msg):
        if msg.message_type == MessageType.SIGNAL and msg.member == "JobRemoved":
            unit, result = msg.body[2], msg.body[3]
            if unit.startswith(PREFIX) and result == "done":
                seen.add(unit)
                if len(seen) == COUNT and not done.done():
                    done.set_result(time.monotonic())
    bus.add_message_handler(on)
    rule = "type='signal',sender='org.freedesktop.systemd1',member='JobRemoved'"
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))
    await bus.call(Message(destination="org.freedesktop.systemd1",
        path="/org/freedesktop/systemd1", interface="org.freedesktop.systemd1.Manager",
        member="Subscribe"))
    print("subscribed", flush=True)
    sys.stdin.readline()  # the loop starts now
    began = time.monotonic()
    end = await asyncio.wait_for(done, 120)
    print(f"{end - began:.6f}", flush=True)
asyncio.run(main())
"""

STATUS_TIMER = """
import json, statistics, sys, time
from pathlib import Path
from zsvc.client import ControlClient
runtime, calls = Path(sys.argv[1]), int(sys.argv[2])
samples = []
with ControlClient(runtime) as client:
    for _ in range(20):
        client.call("status", transaction=None)
    for _ in range(calls):
        began = time.perf_counter()
        client.call("status", transaction=None)
        samples.append(time.perf_counter() - began)
print(json.dumps({"median_ms": statistics.median(samples) * 1e3,
                  "p90_ms": sorted(samples)[int(len(samples) * 0.9)] * 1e3}))
"""


START_TIMER = """
import sys, time
from pathlib import Path
from zsvc.client import ControlClient
runtime, path, tx = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
text = Path(path).read_text()
with ControlClient(runtime, timeout=120) as client:
    began = time.perf_counter()
    client.call("start", transaction=tx, context_path=path, context_text=text, services=[],
                block=True, timeout=None, keep_going=False)
    print(time.perf_counter() - began)
"""


def in_process_start(box: SystemdBox, runtime: str, context: str, tx: str) -> float:
    """The start request alone, from a client already running (no CLI start-up)."""
    box.host_path(f"{WORK}/start_timer.py").write_text(START_TIMER)
    done = box.run(
        sys.executable, f"{WORK}/start_timer.py", runtime, context, tx,
        env={"PYTHONPATH": str(REPO)}, timeout=180,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return float(done.stdout)


def timed(box: SystemdBox, *args: str, env: dict[str, str] | None = None) -> float:
    began = time.monotonic()
    done = box.run("zsvc", *args, env=env, timeout=180)
    took = time.monotonic() - began
    if done.returncode != 0:
        raise RuntimeError(f"zsvc {' '.join(args)}: {done.stdout}{done.stderr}")
    return took


def write_context(box: SystemdBox, name: str, tasks: int) -> str:
    """N notifying command tasks that are ready at once; the context's path in the box."""
    inside = f"{WORK}/Context-{name}.xml"
    command = f'/usr/bin/python3 -c "{READY_AT_ONCE}"'
    text = context_xml(name, "BenchReady", task_ids(tasks), command=command, notify=True)
    box.host_path(inside).write_text(text)
    return inside


def systemd_run_round(systemd: Systemd, tasks: int, tag: str) -> dict[str, float]:
    """``systemd-run --no-block`` of the same programs; until every start job is done."""
    box = systemd.box
    script = box.host_path(f"{WORK}/watcher.py")
    script.write_text(WATCHER)
    prefix = f"bench{tag}-"
    watcher = subprocess.Popen(
        box.command(sys.executable, str(f"{WORK}/watcher.py"), str(tasks), prefix),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None and watcher.stdin is not None
        if watcher.stdout.readline().strip() != "subscribed":
            raise RuntimeError("the JobRemoved watcher did not start")
        watcher.stdin.write("go\n")
        watcher.stdin.flush()
        began = time.monotonic()
        program = f'/usr/bin/python3 -c "{READY_AT_ONCE}"'
        systemd.start_units(prefix, tasks, program, "-p Type=notify")
        loop_s = time.monotonic() - began
        ready_s = float(watcher.stdout.readline())
        watcher.wait(30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    systemd.remove_units(prefix)
    return {"loop_s": loop_s, "all_ready_s": ready_s}


def status_round_trip(box: SystemdBox, runtime: str, calls: int) -> dict[str, float]:
    script = box.host_path(f"{WORK}/status_timer.py")
    script.write_text(STATUS_TIMER)
    done = box.run(
        sys.executable, f"{WORK}/status_timer.py", runtime, str(calls),
        env={"PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)


def cli_status(box: SystemdBox, samples: int, env: dict[str, str] | None) -> float:
    return statistics.median(timed(box, "status", "--json", env=env) for _ in range(samples))


def start_daemons(box: SystemdBox) -> list[str]:
    """zsvc.service (the systemd runner) and a second daemon with the local runner; their
    runners, as ``zsvc ping`` names them."""
    install_zsvc(box)
    start_zsvc(box)
    local = (
        "systemd-run --unit=zsvc-local-daemon -p Type=notify"
        + "".join(f" -E {k}={v}" for k, v in LOCAL_ENV.items())
        + " /usr/bin/zsvc daemon --runner local"
    )
    box.run("sh", "-c", local, check=True, timeout=60)
    pings = [box.run("zsvc", "ping"), box.run("zsvc", "ping", env=LOCAL_ENV)]
    return [json.loads(done.stdout)["runner"] for done in pings]


def one_round(systemd: Systemd, args: argparse.Namespace, tag: str, ctx: dict[str, str]) -> Any:
    box, local = systemd.box, LOCAL_ENV["ZSVC_RUNTIME_DIR"]
    row: dict[str, Any] = {}
    row["zsvc_systemd_start_s"] = timed(box, "start", "--context", ctx["sd"], f"SD{tag}")
    row["zsvc_local_start_s"] = timed(
        box, "start", "--context", ctx["local"], f"LO{tag}", env=LOCAL_ENV
    )
    row["systemd_run"] = systemd_run_round(systemd, args.tasks, tag)
    timed(box, "stop", f"SD{tag}")
    row["zsvc_systemd_start_inproc_s"] = in_process_start(box, "/run/zsvc", ctx["sd"], f"SD{tag}")
    row["status_systemd"] = status_round_trip(box, "/run/zsvc", args.status_calls)
    row["status_local"] = status_round_trip(box, local, args.status_calls)
    row["status_cli_systemd_s"] = cli_status(box, 5, None)
    row["status_cli_local_s"] = cli_status(box, 5, LOCAL_ENV)
    timed(box, "stop", f"SD{tag}")
    timed(box, "stop", f"LO{tag}", env=LOCAL_ENV)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"tasks": args.tasks, "rounds": []}
    with Systemd(SystemdBox(binds=checkout_binds())) as systemd:
        box = systemd.box
        results["runners"] = start_daemons(box)
        contexts = {name: write_context(box, name, args.tasks) for name in ("sd", "local")}
        for index in range(args.rounds):
            row = one_round(systemd, args, f"r{index}", contexts)
            results["rounds"].append(row)
            print(f"round {index + 1}: {json.dumps(row)}", flush=True)
        box.run("zsvc", "shutdown", "--wait", env=LOCAL_ENV, timeout=60)
    return results


def summarise(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    rounds = results["rounds"]

    def med(get: Any) -> float:
        return statistics.median(get(row) for row in rounds)

    sd_start = med(lambda r: r["zsvc_systemd_start_s"])
    sd_inproc = med(lambda r: r["zsvc_systemd_start_inproc_s"])
    run_ready = med(lambda r: r["systemd_run"]["all_ready_s"])
    st_sd = med(lambda r: r["status_systemd"]["median_ms"])
    st_lo = med(lambda r: r["status_local"]["median_ms"])
    n = results["tasks"]
    return [
        (
            f"zsvc start, {n} tasks, systemd runner (s)",
            sd_start,
            f"<= systemd-run: {run_ready:.3f}",
        ),
        ("same, in-process start request (s)", sd_inproc, f"<= systemd-run: {run_ready:.3f}"),
        (f"systemd-run --no-block x{n}, all ready (s)", run_ready, "baseline"),
        ("systemd-run loop alone (s)", med(lambda r: r["systemd_run"]["loop_s"]), ""),
        (f"zsvc start, {n} tasks, local runner (s)", med(lambda r: r["zsvc_local_start_s"]), ""),
        ("status round trip, systemd runner (ms)", st_sd, f"< local + 2: {st_lo + 2:.3f}"),
        ("status round trip, local runner (ms)", st_lo, "baseline"),
        ("zsvc status --json CLI, systemd (s)", med(lambda r: r["status_cli_systemd_s"]), ""),
        ("zsvc status --json CLI, local (s)", med(lambda r: r["status_cli_local_s"]), ""),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--status-calls", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = datetime.now()
    results = run(args)
    results["summary"] = summarise(results)
    results["when"] = datetime.now().isoformat(timespec="seconds")
    results["load"] = os.getloadavg()
    for name, value, note in results["summary"]:
        print(f"{name:<45} {value:10.4f}  {note}")
    print(f"results: {write_results('systemd', results, args.json, started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
