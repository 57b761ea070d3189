"""``zsvc monitor``: subscribe to the bus topic ``monitor`` and show or print the samples.

Subscribing is what makes the daemon sample (it sees the subscription on
its XPUB socket); closing the subscription stops it. ``--once`` asks with a
one-shot ``state``/``top`` instead and needs no subscription. A daemon that
restarts is picked up again by ZeroMQ's reconnection (the subscription is
sent again); meanwhile the view says how long it has had no sample.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from zsvc import protocol
from zsvc.cli.monitor_view import STALE_AFTER, MonitorModel, render
from zsvc.cli.text import printable
from zsvc.client import BusClient, socket_listening
from zsvc.errors import DaemonForbidden, DaemonUnreachable, ExitCode
from zsvc.paths import RuntimeLayout, client_runtime_dir

HANDSHAKE_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0


def _bus(layout: RuntimeLayout, topic: str) -> BusClient:
    return BusClient(layout.bus_pub_endpoint, layout.bus_sub_endpoint, topics=[topic])


def _unreachable(layout: RuntimeLayout) -> int:
    print(
        f"zsvc: no zsvc daemon is listening on {layout.bus_sub}\n{DaemonUnreachable.hint}",
        file=sys.stderr,
    )
    return ExitCode.UNREACHABLE


def ask_top(layout: RuntimeLayout, transaction: str | None) -> dict[str, Any]:
    """One sample of every transaction (or one) through ``state``/``top``: the reply's content."""
    bus = _bus(layout, protocol.Topic.STATE)
    try:
        bus.handshake(HANDSHAKE_TIMEOUT)
        request_id = uuid.uuid4().hex
        bus.publish(
            protocol.make_message(
                protocol.Topic.STATE,
                "top",
                transaction=transaction or "",
                service_name="zsvc-monitor",
                request_id=request_id,
            )
        )
        deadline = time.monotonic() + REPLY_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            reply = bus.receive(remaining)
            if reply is None:
                break
            if reply.action == "reply_top" and reply.header.get("request_id") == request_id:
                return dict(reply.content)
        raise TimeoutError(f"no reply_top within {REPLY_TIMEOUT:g} s")
    finally:
        bus.close()


def run_monitor(
    runtime: Path | str | None,
    transaction: str | None,
    interval: float,
    once: bool,
    as_json: bool,
    count: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Run ``zsvc monitor``; returns the exit status."""
    layout = RuntimeLayout(client_runtime_dir(runtime))
    try:
        if not socket_listening(layout.bus_sub):
            return _unreachable(layout)
    except DaemonForbidden as exc:
        print(f"zsvc: {exc}\n{exc.hint}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    out = out or sys.stdout
    if once:
        return _once(layout, transaction, as_json, out)
    return _stream(layout, transaction, interval, as_json, count, out)


def _once(layout: RuntimeLayout, transaction: str | None, as_json: bool, out: TextIO) -> int:
    try:
        content = ask_top(layout, transaction)
    except TimeoutError as exc:
        print(f"zsvc: {exc}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    if "error" in content:
        print(f"zsvc: {printable(str(content['error']))}", file=sys.stderr)  # a bus peer's text
        return ExitCode.UNKNOWN if transaction else ExitCode.FAILED
    samples = content.get("samples", [])
    if as_json:
        for sample in samples:
            print(json.dumps(sample, separators=(",", ":")), file=out, flush=True)
        return ExitCode.OK
    from rich.console import Console

    model = MonitorModel(only=transaction)
    now = time.time()
    for sample in samples:
        model.update(sample, now)
    console = Console(file=out)
    console.print(render(model, now, console.width))
    return ExitCode.OK


def _stream(
    layout: RuntimeLayout,
    transaction: str | None,
    interval: float,
    as_json: bool,
    count: int | None,
    out: TextIO,
) -> int:
    bus = _bus(layout, protocol.Topic.MONITOR)
    try:
        try:
            bus.handshake(HANDSHAKE_TIMEOUT)
        except TimeoutError:
            return _unreachable(layout)
        if as_json:
            return _print_json(bus, transaction, interval, count, out)
        return _live(bus, transaction, interval, count, out)
    except KeyboardInterrupt:
        return ExitCode.OK
    finally:
        bus.close()


def _samples(bus: BusClient, transaction: str | None, timeout: float) -> list[dict[str, Any]]:
    """The samples received within *timeout* (at least one wait, then what is queued)."""
    found = []
    message = bus.receive(timeout)
    while message is not None:
        if (
            message.topic == protocol.Topic.MONITOR
            and message.action == "sample"
            and (not transaction or message.transaction == transaction)
        ):
            found.append(dict(message.content))
        message = bus.receive(0)
    return found


def _print_json(
    bus: BusClient, transaction: str | None, interval: float, count: int | None, out: TextIO
) -> int:
    """One compact JSON object per line and sample; at most one per transaction per interval."""
    printed = 0
    last: dict[str, float] = {}
    while count is None or printed < count:
        for sample in _samples(bus, transaction, 1.0):
            now = time.monotonic()
            name = sample.get("transaction", "")
            if now - last.get(name, -interval) < interval * 0.9:
                continue
            last[name] = now
            print(json.dumps(sample, separators=(",", ":")), file=out, flush=True)
            printed += 1
            if count is not None and printed >= count:
                break
    return ExitCode.OK


def _live(
    bus: BusClient, transaction: str | None, interval: float, count: int | None, out: TextIO
) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    model = MonitorModel(only=transaction)
    last_sample = time.monotonic()
    received = 0
    next_draw = 0.0

    def view() -> Any:
        silent = time.monotonic() - last_sample
        status = ""
        if silent > interval + 2.0:
            status = f"no sample for {silent:.0f} s: waiting for the daemon…"
        return render(model, time.time(), console.width, console.height - 1, status)

    with Live(view(), console=console, auto_refresh=False, vertical_overflow="crop") as live:
        while count is None or received < count:
            samples = _samples(bus, transaction, min(interval, 0.5))
            now = time.time()
            for sample in samples:
                if model.update(sample, now):
                    received += 1
                    last_sample = time.monotonic()
            if time.monotonic() - last_sample < interval + 2.0:  # the stream is alive:
                model.prune(now, interval + STALE_AFTER)  # what it no longer sends has ended
            if time.monotonic() >= next_draw or (count is not None and received >= count):
                live.update(view(), refresh=True)
                next_draw = time.monotonic() + interval
    return ExitCode.OK
