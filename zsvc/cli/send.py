"""``zsvc send`` on the bus: the seed's state request, and messages to tasks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from zsvc import protocol
from zsvc.client import BusClient, socket_listening
from zsvc.errors import DaemonUnreachable
from zsvc.paths import RuntimeLayout, client_runtime_dir


def send_on_bus(
    *,
    runtime: Path | None,
    endpoint: str | None,
    topic: str,
    action: str,
    service_name: str,
    service_id: str,
    transaction: str,
    device_action: str | None,
    timeout: float,
) -> dict[str, Any] | None:
    """Publish one message; for a ``state`` request, wait for and return the reply."""
    layout = RuntimeLayout(client_runtime_dir(runtime))
    if not socket_listening(layout.bus_sub):
        raise DaemonUnreachable(f"no zsvc bus on {layout.bus_sub}")
    content: dict[str, Any] = {}
    if device_action is not None:
        content = {"configuration": {"device_action": device_action}}
    message = protocol.make_message(
        topic,
        action,
        transaction=transaction,
        service_id=service_id,
        service_name=service_name,
        content=content,
    )
    if topic == protocol.Topic.STATE:
        # The daemon answers only what reaches it on the trusted side (docs/bus.md): a
        # question goes over the runtime directory's bus, where the answer is read anyway.
        endpoint = None
    bus = BusClient(endpoint or layout.bus_pub_endpoint, layout.bus_sub_endpoint, topics=[topic])
    try:
        bus.handshake(timeout)
        bus.publish(message)
        if topic != protocol.Topic.STATE or action != "request":
            return None
        wanted = "reply_context"
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            reply = bus.receive(remaining)
            if reply is None:
                break
            if reply.action == wanted and reply.transaction == transaction:
                return reply.to_dict()
        raise TimeoutError(f"no {wanted} for transaction {transaction!r} within {timeout:g} s")
    finally:
        bus.close()
