"""The bus device's message throughput, per path through it (issue 19: what trust costs).

The device (``zsvc/daemon/bus.py`` ``BusDevice``) runs in an event loop of its
own thread, bound on an ``ipc://`` pair (the trusted side) and a loopback
TCP pair without CURVE (the public side since issue 19; the same sockets
before). One PUB and one SUB in the main thread send messages of about
200 bytes in windows of ``--window`` (below every high-water mark, so
nothing is dropped) and wait for each window to arrive: messages per second
for the whole run, per path.

``--device FILE`` measures another version of the device (for example the
one before a change, ``git show REV:zsvc/daemon/bus.py > /tmp/bus_before.py``)
in the same run, so both are compared on the same machine and load::

    .venv/bin/python bench/bus.py --device /tmp/bus_before.py --messages 200000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import zmq

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from lib.report import machine_info, print_rows  # noqa: E402

from zsvc import protocol  # noqa: E402

PATHS = {
    "ipc -> ipc, process (forwarded)": ("ipc", "ipc", "process"),
    "ipc -> ipc, control (observed)": ("ipc", "ipc", "control"),
    "ipc -> ipc, a TCP subscriber too": ("ipc", "ipc+tcp", "process"),
    "tcp -> ipc, process": ("tcp", "ipc", "process"),
    "tcp -> ipc, other topic": ("tcp", "ipc", "other"),
}


def load_device(path: Path | None) -> ModuleType:
    """The device module: this checkout's, or the file *path* (another version)."""
    if path is None:
        from zsvc.daemon import bus

        return bus
    spec = importlib.util.spec_from_file_location("bus_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Device:
    """A BusDevice serving in a process of its own (no GIL shared with the clients),
    bound on ipc:// and loopback TCP; the clients' context lives here."""

    def __init__(self, module: ModuleType, workdir: Path) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.ipc = (f"ipc://{workdir}/pub", f"ipc://{workdir}/sub")
        ports = [_free_port() for _ in range(2)]
        self.tcp = (f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}")
        forked = multiprocessing.get_context("fork")
        self._ready, ready = forked.Pipe()
        self.process = forked.Process(target=_serve, args=(module, self.ipc, self.tcp, ready))
        self.process.start()
        if not self._ready.poll(10):
            raise RuntimeError("the device did not start within 10 s")
        self._ready.recv()

    def close(self) -> None:
        self._ready.send("stop")
        self.process.join(10)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(10)
        self.context.term()


def _serve(module: ModuleType, ipc: tuple[str, str], tcp: tuple[str, str], pipe: Any) -> None:
    """The device's process: bind, serve until the parent says stop."""

    async def serve() -> None:
        context: zmq.Context[Any] = zmq.Context()
        device = module.BusDevice(context, on_message=lambda message: None)
        device.bind(*ipc)
        device.bind(*tcp)
        device.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(pipe.fileno(), stop.set)
        pipe.send("ready")
        await stop.wait()
        await device.close()
        context.term()

    asyncio.run(serve())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _message(topic: str, text: int) -> list[bytes]:
    content: dict[str, Any] = {"status": {"steps": 1, "text": "x" * text}}
    return protocol.encode(
        protocol.make_message(
            topic,
            "updated",
            transaction="BENCH",
            service_id="t1",
            service_name="t1",
            content=content,
        )
    )


def measure(device: Device, path: tuple[str, str, str], args: argparse.Namespace) -> float:
    """Messages per second along *path* (publisher side, subscriber side(s), topic)."""
    source, sinks, topic = path
    pub = _socket(device.context, zmq.PUB, device.ipc[0] if source == "ipc" else device.tcp[0])
    subs = [
        _socket(device.context, zmq.SUB, device.ipc[1] if sink == "ipc" else device.tcp[1], topic)
        for sink in sinks.split("+")
    ]
    try:
        frames = _message(topic, args.text)
        messages, window = args.messages, args.window
        _join(pub, subs, frames)
        started = time.perf_counter()
        for _ in range(messages // window):
            for _ in range(window):
                pub.send_multipart(frames)
            for sub in subs:
                for _ in range(window):
                    if not sub.poll(10_000):
                        raise RuntimeError(f"{path}: a message did not arrive within 10 s")
                    sub.recv_multipart()
        return (messages // window) * window / (time.perf_counter() - started)
    finally:
        for sock in (pub, *subs):
            sock.close()


def _socket(context: zmq.Context[Any], kind: int, endpoint: str, topic: str = "") -> Any:
    """A PUB or SUB whose queue holds a whole window (options before the connect)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM if kind == zmq.PUB else zmq.RCVHWM, 100_000)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)
    return sock


def _join(pub: zmq.Socket[Any], subs: list[zmq.Socket[Any]], frames: list[bytes]) -> None:
    """Send until every subscriber got one (the slow joiner), then drain the extras."""
    for sub in subs:
        deadline = time.monotonic() + 10
        while not sub.poll(10):
            if time.monotonic() > deadline:
                raise RuntimeError("the subscribers did not join within 10 s")
            pub.send_multipart(frames)
    for sub in subs:
        while sub.poll(100):
            sub.recv_multipart()


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The best rate per path and version; the versions take turns round by round, so a
    machine whose load drifts favours neither."""
    versions = {"this checkout": None, **({"--device": args.device} if args.device else {})}
    modules = {name: load_device(file) for name, file in versions.items()}
    results: dict[str, dict[str, float]] = {label: {} for label in PATHS}
    for _ in range(args.rounds):
        for name, module in modules.items():
            with tempfile.TemporaryDirectory(prefix="zb-") as workdir:
                device = Device(module, Path(workdir))
                try:
                    for label, path in PATHS.items():
                        rate = measure(device, path, args)
                        results[label][name] = max(rate, results[label].get(name, 0.0))
                finally:
                    device.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="per path and round")
    parser.add_argument("--window", type=int, default=1_000, help="messages in flight")
    parser.add_argument("--text", type=int, default=80, help="characters of text per message")
    parser.add_argument("--rounds", type=int, default=3, help="the best round is kept")
    parser.add_argument("--device", type=Path, help="another version of zsvc/daemon/bus.py")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = run(args)
    names = list(next(iter(results.values())))
    rows = [("path", *names, "")]
    for label, by_name in results.items():
        rows.append((label, *(f"{by_name[name]:,.0f}/s" for name in names), ""))
    print_rows(rows)
    if args.json:
        document = {"meta": machine_info(), "args": vars(args), "results": results}
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
