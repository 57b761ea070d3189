"""The "no manager" baseline: start N trivial Python tasks and wait for all their READY=1.

    python bench/plain.py [--tasks 50] [--delay 0.2] [--import-zmq] [--timeout 60]

Each task is a fresh interpreter that sleeps ``--delay`` seconds and then sends
``READY=1`` as an sd_notify datagram to a socket this script listens on (the
sender is identified by SO_PASSCRED, as a service manager would). With
``--import-zmq`` each task imports pyzmq first, which is the heaviest import a
zsvc task host makes. The script exits once every task said READY; it prints
one JSON line with the time it measured itself (from before the first spawn).

This is the floor a manager is compared with: the same processes, the same
readiness protocol, nothing else (no bus, no table, no CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

TASK = """\
import os, socket, time
{imports}
time.sleep(float(os.environ["BENCH_DELAY"]))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
"""
UCRED = struct.Struct("=iII")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--import-zmq", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    code = TASK.format(imports="import zmq" if args.import_zmq else "")
    with tempfile.TemporaryDirectory(prefix="zbp", dir="/tmp") as tmp:
        path = os.path.join(tmp, "notify")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        server.bind(path)
        env = dict(os.environ, NOTIFY_SOCKET=path, BENCH_DELAY=str(args.delay))
        start = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL)
            for _ in range(args.tasks)
        ]
        pids = {proc.pid for proc in procs}
        ready: set[int] = set()
        deadline = start + args.timeout
        try:
            while ready != pids:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                readable, _, _ = select.select([server], [], [], remaining)
                if not readable:
                    continue
                data, ancdata, _, _ = server.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
                for level, kind, payload in ancdata:
                    if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                        pid = UCRED.unpack_from(payload)[0]
                        if pid in pids and b"READY=1" in data.split(b"\n"):
                            ready.add(pid)
            elapsed = time.perf_counter() - start
        finally:
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            server.close()
    print(json.dumps({"tasks": args.tasks, "ready": len(ready), "seconds": elapsed}))
    return 0 if len(ready) == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
