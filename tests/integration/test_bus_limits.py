"""What a flood on the bus costs the daemon (issue 19, finding 13).

Invalid messages and ignored context commands are logged at most once per
interval (``zsvc/daemon/throttle.py``), not once each. The answer to a
later request proves the device read the whole flood (one publisher, one
pipe, in order) before the log is counted: no waiting for nothing.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import Daemon, wait_message
from zsvc import protocol

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
