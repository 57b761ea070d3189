"""``zsvc status`` over the TCP control endpoint (CURVE, loopback) against the ipc one (issue 15).

One daemon of this checkout, with ``[control] listen`` on loopback and a keys directory
made for the run, holding a transaction of a few tasks (so that status has something to
say). Each round asks ``status`` once over each transport, in random order, with
:meth:`zsvc.client.ControlClient.call`:

* ``warm``: on a connection kept open (what a script that imports zsvc pays per call);
* ``cold``: a new client per call, so the connection, and over TCP the CURVE handshake
  (the daemon's ZAP check included), is part of each sample: what each ``zsvc status``
  command pays on top of its interpreter start::

    .venv/bin/python bench/remote_status.py                # 500 rounds
    .venv/bin/python bench/remote_status.py --rounds 2000 --tasks 20

Target (issue 15): the remote round trip within 5 ms of the local one over loopback.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from lib.report import machine_info, median, percentile, print_rows  # noqa: E402

from zsvc import curve  # noqa: E402
from zsvc.client import ControlClient, Remote  # noqa: E402

TARGET_MS = 5.0
TASK = """  <TaskService id="t{n}" instance="Sleeper" serviceType="Process" topic="process">
    <Task><description>t{n}</description><command notify="false">sleep 600</command>
      <message><header><action>start</action><service_name>t{n}</service_name></header>
        <content><configuration></configuration></content></message>
      <state type="on_start"></state></Task>
  </TaskService>
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def context_xml(tasks: int) -> str:
    body = "".join(TASK.format(n=n) for n in range(tasks))
    return (
        '<?xml version="1.0"?>\n<Context>\n'
        f"  <FrontEndEndpoint>tcp://127.0.0.1:{free_port()}</FrontEndEndpoint>\n"
        f"  <BackendEndpoint>tcp://127.0.0.1:{free_port()}</BackendEndpoint>\n"
        f"  <ContextID>bench</ContextID>\n  <TaskLogName>bench</TaskLogName>\n{body}</Context>\n"
    )


def start_daemon(home: Path) -> tuple[str, Path]:
    """A detached daemon with a CURVE control endpoint; (its endpoint, the client's key)."""
    keys = home / "k"
    curve.create(keys, ["bench"], force=False)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = home / "zsvc.conf"
    # The key acts as nobody (no act_as): status is what it may ask.
    config.write_text(
        f"[daemon]\nrunner = local\n[bus]\ncurve_keys = {keys}\n[control]\nlisten = {endpoint}\n"
    )
    argv = [sys.executable, "-m", "zsvc.daemon", "--detach", "--config", str(config)]
    argv += ["--runtime-dir", str(home / "r"), "--state-dir", str(home / "s")]
    subprocess.run(argv, check=True, timeout=60, capture_output=True)
    return endpoint, keys / curve.CLIENTS / f"bench{curve.SECRET_SUFFIX}"


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def measure(home: Path, endpoint: str, key: Path, rounds: int) -> dict[str, list[float]]:
    """Interleaved samples (ms) of each way of asking ``status``."""
    runtime = home / "r"
    remote = Remote.load(endpoint, str(key))
    samples: dict[str, list[float]] = {}
    with ControlClient(runtime) as local, ControlClient(runtime, remote=remote) as far:
        for client in (local, far):  # connections made, CURVE handshake done, caches warm
            for _ in range(20):
                client.call("status")

        def cold(remote_: Remote | None) -> Callable[[], object]:
            def ask() -> object:
                with ControlClient(runtime, remote=remote_) as client:
                    return client.call("status")

            return ask

        cases = {
            "warm ipc": lambda: local.call("status"),
            "warm tcp+curve": lambda: far.call("status"),
            "cold ipc": cold(None),
            "cold tcp+curve": cold(remote),
        }
        order = list(cases)
        for _ in range(rounds):
            random.shuffle(order)
            for name in order:
                samples.setdefault(name, []).append(timed(cases[name]))
    return samples


def report(samples: dict[str, list[float]]) -> bool:
    rows = [("case", "median ms", "p90 ms", "samples")]
    for name, values in sorted(samples.items()):
        rows.append(
            (name, f"{median(values):.3f}", f"{percentile(values, 90):.3f}", str(len(values)))
        )
    print_rows(rows)
    met = True
    for kind in ("warm", "cold"):
        extra = median(samples[f"{kind} tcp+curve"]) - median(samples[f"{kind} ipc"])
        ratio = median(samples[f"{kind} tcp+curve"]) / median(samples[f"{kind} ipc"])
        ok = extra <= TARGET_MS
        met &= ok
        print(
            f"{kind}: tcp+curve - ipc = {extra:+.3f} ms (ratio {ratio:.2f}),"
            f" target +{TARGET_MS:g} ms: {'ok' if ok else 'MISS'}"
        )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=5, help="tasks in the status")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="zrs", dir="/tmp"))
    try:
        endpoint, key = start_daemon(home)
        context = home / "Context-Bench.xml"
        context.write_text(context_xml(args.tasks))
        with ControlClient(home / "r", timeout=60) as client:
            client.call("start", context_path=str(context), context_text=context.read_text())
        info = machine_info()
        print(f"{info.get('cpus', '?')} CPUs; {args.rounds} rounds, {args.tasks} tasks in status")
        report(measure(home, endpoint, key, args.rounds))
        return 0
    finally:
        with ControlClient(home / "r", timeout=60) as client:
            try:
                client.call("shutdown")
            except Exception as exc:  # noqa: BLE001 - the report says what was left
                print(f"shutdown: {exc}")
        deadline = time.monotonic() + 30
        while (home / "r" / "control").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # a poll of another process's exit, bounded
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
