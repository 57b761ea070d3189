"""What one subscriber that never reads costs the daemon (issue 19, finding 3).

A zsvc daemon of this checkout (``lib/daemon.py``); a subscriber on its
``ipc://`` bus subscribes to a topic and never reads (its own queue is one
message and its socket buffer small, so what it does not take stays in the
daemon); a publisher sends ``--count`` messages of ``--size`` bytes on that
topic. A reading subscriber's marker, sent after them on the same
connection, proves the device handled them all. The daemon's RSS is read
before, with the stuck subscriber, and after it disconnected::

    .venv/bin/python bench/stuck.py                      # 1,000 x 1 MiB
    .venv/bin/python bench/stuck.py --size 65536 --count 20000

Target (issue 19): at most 64 MiB over the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from lib.daemon import MIB, ZsvcDaemon  # noqa: E402
from lib.report import machine_info, print_rows  # noqa: E402

TOPIC = b"stuck"
MARK = b"stuck-mark"
TARGET_MIB = 64.0


def stuck_subscriber(context: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    """A SUB that holds one message and reads nothing: the rest stays with the sender."""
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 65536)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    sock.connect(endpoint)
    return sock


def joined(pub: zmq.Socket[Any], sub: zmq.Socket[Any], topic: bytes, deadline: float) -> None:
    """Send ``[topic, b"{}"]`` until *sub* gets one (the slow joiner; the marker)."""
    wait = 2
    while time.monotonic() < deadline:
        pub.send_multipart([topic, b"{}"])
        if sub.poll(wait):
            while sub.poll(0):
                sub.recv_multipart()
            return
        wait = min(wait * 2, 100)
    raise RuntimeError(f"nothing came back on {topic!r} before the deadline")


def scenario(daemon: ZsvcDaemon, size: int, count: int) -> dict[str, float]:
    """RSS (MiB) before, with the stuck subscriber, and after it left."""
    context: zmq.Context[Any] = zmq.Context()
    layout = daemon.layout
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)  # the publisher never drops: the daemon gets them all
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(layout.bus_pub_endpoint)
    marker = context.socket(zmq.SUB)
    marker.setsockopt(zmq.LINGER, 0)
    marker.setsockopt(zmq.SUBSCRIBE, MARK)
    marker.connect(layout.bus_sub_endpoint)
    stuck = stuck_subscriber(context, layout.bus_sub_endpoint)
    try:
        joined(pub, marker, MARK, time.monotonic() + 10)
        joined(pub, stuck, TOPIC, time.monotonic() + 10)  # its one message: now it is stuck
        rss = {"baseline_mib": daemon.rss()}
        body = b"x" * size
        for _ in range(count):
            pub.send_multipart([TOPIC, body])
        joined(pub, marker, MARK, time.monotonic() + 120)
        rss["stuck_mib"] = daemon.rss()
        stuck.close()
        daemon.call("ping")
        joined(pub, marker, MARK, time.monotonic() + 30)
        rss["after_mib"] = daemon.rss()
        return rss
    finally:
        for sock in (pub, marker, stuck):
            sock.close()
        context.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=MIB, help="bytes per message")
    parser.add_argument("--count", type=int, default=1_000, help="messages published")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zs-", dir="/tmp") as home:
        daemon = ZsvcDaemon(Path(home))
        try:
            daemon.start()
            rss = scenario(daemon, args.size, args.count)
        finally:
            daemon.shutdown()
    over = rss["stuck_mib"] - rss["baseline_mib"]
    ok = "ok" if over <= TARGET_MIB else "MISS"
    print_rows(
        [
            ("daemon RSS", "MiB", ""),
            ("baseline", f"{rss['baseline_mib']:.1f}", ""),
            (f"{args.count} x {args.size} B, one stuck subscriber", f"{rss['stuck_mib']:.1f}", ""),
            ("after it disconnected", f"{rss['after_mib']:.1f}", ""),
            ("over the baseline", f"{over:.1f}", f"target <= {TARGET_MIB:g} MiB: {ok}"),
        ]
    )
    if args.json:
        document = {"meta": machine_info(), "args": vars(args), "rss": rss, "over_mib": over}
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
