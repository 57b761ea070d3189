"""What a task flooding ``STATUS=`` costs the daemon and its other clients (issue 19, finding 14).

A zsvc daemon of this checkout (``lib/daemon.py``) runs one command task
that sends ``STATUS=`` lines on its ``$NOTIFY_SOCKET`` in a tight loop, paced
to ``--rate`` datagrams a second (0: as fast as the daemon takes them; the
socket blocks when the daemon's queue is full), for ``--seconds``. The bench
measures, in the same run:

* the daemon's CPU (% of one core, psutil) while a client pings every
  ``--ping-every`` seconds, without the flood (baseline) and during it;
* the latency of ``ping`` on the bench's own control connection (median,
  p99, max), without and during the flood, and of a few ``zsvc ping`` CLIs;
* the rate the flooder actually achieved, and the status line shown at the end.

::

    .venv/bin/python bench/notify_flood.py                     # 30,000/s for 5 s
    .venv/bin/python bench/notify_flood.py --rate 0 --seconds 10

Targets (issue 19): daemon CPU <= 20 % of a core, ping <= 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from lib.daemon import ZsvcDaemon  # noqa: E402
from lib.procs import poll  # noqa: E402
from lib.report import machine_info, median, percentile, print_rows  # noqa: E402
from lib.taskpkg import write_context  # noqa: E402

CPU_TARGET = 20.0
PING_TARGET_MS = 10.0
TRANSACTION = "FLOOD"
LAST_LINE = "the flood is over"

FLOODER = """\
import json, os, signal, socket, sys, time
rate, seconds, go, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.connect(os.environ["NOTIFY_SOCKET"])
sock.send(b"READY=1")
with open(go) as fifo:
    fifo.read()
send, clock = sock.send, time.perf_counter
sent, start = 0, clock()
end = start + seconds
while (now := clock()) < end:
    due = int((now - start) * rate) if rate else sent + 1000
    while sent < due:
        send(b"STATUS=working on item %d" % sent)
        sent += 1
elapsed = clock() - start
sock.send(b"STATUS=%s" % sys.argv[5].encode())
with open(out + ".tmp", "w") as f:
    json.dump({"sent": sent, "seconds": elapsed}, f)
os.rename(out + ".tmp", out)
signal.pause()
"""


def pinged(daemon: ZsvcDaemon, until: Any, every: float) -> tuple[list[float], float, float]:
    """Ping every *every* seconds until *until()*; latencies (ms), daemon CPU (s), wall (s)."""
    latencies: list[float] = []
    cpu0, wall0 = daemon.cpu(), time.perf_counter()
    while not until():
        start = time.perf_counter()
        daemon.call("ping")
        latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(max(0.0, every - (time.perf_counter() - start)))  # pacing, not a wait
    return latencies, daemon.cpu() - cpu0, time.perf_counter() - wall0


def cli_pings(daemon: ZsvcDaemon, count: int) -> list[float]:
    """Wall time (ms) of *count* ``zsvc ping`` CLI processes (an interpreter start each)."""
    return [daemon.cli("ping", timeout=30).wall * 1000 for _ in range(count)]


def scenario(daemon: ZsvcDaemon, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    program, go, out = home / "flood.py", home / "go", home / "flood.json"
    program.write_text(FLOODER)
    os.mkfifo(go)
    command = f"{sys.executable} {program} {args.rate} {args.seconds} {go} {out} '{LAST_LINE}'"
    path, text = write_context(home / "Context-Flood.xml", "flood", "Flood", ["f"],
                               command=command, notify=True)  # fmt: skip
    daemon.call("start", wait=30, transaction=TRANSACTION, context_path=str(path),
                context_text=text)  # fmt: skip
    quiet_end = time.perf_counter() + args.seconds
    quiet, quiet_cpu, quiet_wall = pinged(
        daemon, lambda: time.perf_counter() >= quiet_end, args.ping_every
    )
    quiet_cli = cli_pings(daemon, args.cli_pings)
    fifo = poll(lambda: _writer(go), 10.0)
    if fifo is None:
        raise RuntimeError("the flooder is not waiting on its FIFO")
    os.close(fifo)  # the flooder reads the end of the FIFO: the flood begins
    flood_cli = cli_pings(daemon, args.cli_pings)  # the flood lasts longer than these
    flood, flood_cpu, flood_wall = pinged(daemon, out.exists, args.ping_every)
    sent = json.loads(out.read_text())
    shown = poll(lambda: _shown(daemon), 10.0)
    return {
        "rate_achieved": sent["sent"] / sent["seconds"],
        "sent": sent["sent"],
        "quiet": {"ping_ms": quiet, "cpu_pct": 100 * quiet_cpu / quiet_wall, "cli_ms": quiet_cli},
        "flood": {"ping_ms": flood, "cpu_pct": 100 * flood_cpu / flood_wall, "cli_ms": flood_cli},
        "last_line_shown": shown == LAST_LINE,
    }


def _writer(fifo: Path) -> int | None:
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None


def _shown(daemon: ZsvcDaemon) -> str | None:
    text = daemon.call("status", transaction=TRANSACTION)["tasks"][0]["status_text"]
    return text if text == LAST_LINE else None


def _rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("", "without flood", "during the flood", "target")]
    quiet, flood = result["quiet"], result["flood"]
    cpu_ok = "ok" if flood["cpu_pct"] <= CPU_TARGET else "MISS"
    rows.append(("daemon CPU, % of a core", f"{quiet['cpu_pct']:.1f}", f"{flood['cpu_pct']:.1f}",
                 f"<= {CPU_TARGET:g}: {cpu_ok}"))  # fmt: skip
    for label, pick in (("median", median), ("p99", lambda v: percentile(v, 99)), ("max", max)):
        value = pick(flood["ping_ms"])
        ok = "ok" if value <= PING_TARGET_MS else "MISS"
        rows.append((f"ping {label}, ms", f"{pick(quiet['ping_ms']):.2f}", f"{value:.2f}",
                     f"<= {PING_TARGET_MS:g}: {ok}"))  # fmt: skip
    rows.append(("pings", str(len(quiet["ping_ms"])), str(len(flood["ping_ms"])), ""))
    if quiet["cli_ms"] and flood["cli_ms"]:
        rows.append(("`zsvc ping` CLI median, ms", f"{median(quiet['cli_ms']):.0f}",
                     f"{median(flood['cli_ms']):.0f}", "(an interpreter start)"))  # fmt: skip
    rows.append(("flood achieved, datagrams/s", "", f"{result['rate_achieved']:,.0f}",
                 f"{result['sent']:,} sent"))  # fmt: skip
    rows.append(("last status line shown", "", str(result["last_line_shown"]), ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=30_000.0, help="datagrams/s, 0: unpaced")
    parser.add_argument("--seconds", type=float, default=5.0, help="flood (and baseline) length")
    parser.add_argument("--ping-every", type=float, default=0.05, help="seconds between pings")
    parser.add_argument("--cli-pings", type=int, default=5, help="zsvc ping CLIs per phase")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zn-", dir="/tmp") as home:
        daemon = ZsvcDaemon(Path(home))
        try:
            daemon.start()
            result = scenario(daemon, Path(home), args)
        finally:
            daemon.shutdown()
    print_rows(_rows(result))
    if args.json:
        document = {"meta": machine_info(), "args": vars(args), **result}
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
