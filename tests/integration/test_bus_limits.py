"""What a flood on the bus costs the daemon (issue 19, findings 3 and 13).

Invalid messages and ignored context commands are logged at most once per
interval (``zsvc/daemon/throttle.py``), not once each. A subscriber that
never reads holds at most the device's budget of large messages
(``zsvc/daemon/budget.py``), and a frame over the device's cap is refused.
A marker sent after the flood on the same connection proves the device read
the whole flood (one publisher, one pipe, in order) before anything is
counted: no waiting for nothing.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest
import zmq

from tests.integration.conftest import Daemon, wait_message
from zsvc import protocol
from zsvc.daemon.bus import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.integration

FLOOD = 3_000
"""Two messages each: below the publisher's high-water mark (10,000), none is dropped."""


def test_a_flood_of_invalid_messages_costs_a_line_not_a_line_each(daemon: Daemon) -> None:
    bus = daemon.bus("state")
    before = daemon.log()
    for number in range(FLOOD):
        bus.pub.send_multipart([b"control", b"not json %d" % number])
        bus.publish(protocol.make_message("context", "stop", transaction=f"T{number}"))
    bus.publish(protocol.make_message("state", "request", transaction="NOPE"))
    wait_message(bus, lambda m: m.action == "reply_context")
    added = daemon.log()[len(before) :]
    assert 1 <= added.count("ignored a bus message") <= 2, added[-2000:]
    assert 1 <= added.count("command on the bus's context topic") <= 2, added[-2000:]
    assert len(added.splitlines()) < 20


MIB = 1 << 20


def _marked(pub: zmq.Socket[Any], sub: zmq.Socket[Any], topic: bytes) -> None:
    """Send ``[topic, {}]`` until *sub* gets one (bounded): what *pub* sent before is read."""
    deadline = time.monotonic() + 60.0
    wait = 2
    while time.monotonic() < deadline:
        pub.send_multipart([topic, b"{}"])
        if sub.poll(wait):
            while sub.poll(0):
                sub.recv_multipart()
            return
        wait = min(wait * 2, 100)
    pytest.fail(f"nothing came back on {topic!r} within 60 s")


def test_a_subscriber_that_never_reads_costs_a_bounded_amount(daemon: Daemon) -> None:
    """500 x 1 MiB for a stuck subscriber: the daemon grew by 1.4 GB per 1,000 before."""
    context: zmq.Context[Any] = zmq.Context()
    socks = [context.socket(kind) for kind in (zmq.PUB, zmq.SUB, zmq.SUB, zmq.PUB)]
    pub, marker, stuck, other = socks
    for sock in socks:
        sock.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)  # the publisher drops nothing: the daemon gets it all
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 65536)
    stuck.setsockopt(zmq.SUBSCRIBE, b"big")
    marker.setsockopt(zmq.SUBSCRIBE, b"mark")
    try:
        for sock, endpoint in ((pub, "bus-pub"), (other, "bus-pub"), (marker, "bus-sub")):
            sock.connect(f"ipc://{daemon.runtime / endpoint}")
        stuck.connect(f"ipc://{daemon.runtime / 'bus-sub'}")
        _marked(pub, marker, b"mark")
        _marked(pub, stuck, b"big")  # its one message: from now on it is stuck
        process = psutil.Process(daemon.pid())
        baseline = process.memory_info().rss
        body = b"x" * MIB
        for _ in range(500):
            pub.send_multipart([b"big", body])
        _marked(pub, marker, b"mark")
        grown = (process.memory_info().rss - baseline) / MIB
        assert grown <= 64, f"the daemon grew by {grown:.0f} MiB"
        assert "dropped a bus message of 1048576 bytes" in daemon.log()
        # A frame over the cap: its publisher is disconnected, nobody receives it.
        marker.setsockopt(zmq.SUBSCRIBE, b"huge")
        _marked(other, marker, b"mark")
        other.send_multipart([b"huge", b"x" * (MAX_MESSAGE_BYTES + 1)])
        _marked(other, marker, b"mark")  # on the same socket, reconnected
        while marker.poll(0):
            assert marker.recv_multipart()[0] != b"huge"
        assert daemon.call("ping")["pid"] == daemon.pid()
    finally:
        for sock in socks:
            sock.close()
        context.term()
