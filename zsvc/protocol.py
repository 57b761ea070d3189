"""The bus message model: topics, the header/content shape, framing and validation.

Every message on the bus is a JSON object ``{"header": {...}, "content": {...}}``
sent as two ZMQ frames ``[topic, json]``. The seed's single frame
``"topic @@@ json"`` is accepted on input (split at the *first* ``@@@``, so a
payload may contain the marker, unlike the original). The header always
carries ``service_transaction``, ``service_id``, ``service_name`` and
``action``; the seed's ``transaction`` spelling is normalised on input.

Nothing else in zsvc builds or parses bus frames by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from zsvc.states import is_valid_id

LEGACY_SEPARATOR = b"@@@"

# --- size limits: every cap on what a peer may hand zsvc, in one place ---------------------
# Documented in docs/control-protocol.md ("Size limits") and docs/bus.md.

MAX_FRAME_BYTES = 1 << 20
"""Larger messages are refused: the bus carries control traffic, not bulk data."""
MAX_CONTEXT_BYTES = 1 << 20
"""A context file larger than this is refused by the CLI before it is read (1 MiB: the
largest shipped context is a few KiB, and one with hundreds of tasks stays far below)."""
MAX_REQUEST_BYTES = 4 << 20
"""A control request larger than this is refused, by the client before sending and by
the daemon (``bad-request`` with the request's id). Room for a context of
:data:`MAX_CONTEXT_BYTES` in JSON, where non-ASCII text costs up to three times its UTF-8."""
MAX_REQUEST_WIRE_BYTES = 2 * MAX_REQUEST_BYTES
"""The control socket drops, unread, a peer that sends a message larger than this (ZMQ's
``MAXMSGSIZE``): what one message can cost the daemon's memory stays bounded, while
anything up to it is still read and answered with a ``bad-request`` the client can match."""

PROBE_PREFIX = "_probe."
"""Private topics used by the subscription handshake (see :func:`probe_topic`)."""


class Topic(StrEnum):
    """The seed's topics."""

    CONTEXT = "context"
    PROCESS = "process"
    CONTROL = "control"
    STATE = "state"
    MONITOR = "monitor"


HEADER_FIELDS = ("action", "service_transaction", "service_id", "service_name")


class ProtocolError(ValueError):
    """A frame or message that does not follow the protocol; the text says why."""


@dataclass(frozen=True)
class Message:
    """One bus message. ``topic`` is a plain string: user tasks may listen on their own."""

    topic: str
    header: Mapping[str, Any]
    content: Mapping[str, Any] = field(default_factory=dict)
    sender: tuple[int, int] | None = field(default=None, compare=False)
    """(uid, pid) of the process that published it, as the kernel gave them for its
    ``ipc://`` connection: set by the daemon's bus on what it observes, never read from
    the message itself. None: not known (TCP, or not observed by the daemon)."""

    @property
    def action(self) -> str:
        return str(self.header.get("action", ""))

    @property
    def transaction(self) -> str:
        return str(self.header.get("service_transaction", ""))

    @property
    def service_id(self) -> str:
        return str(self.header.get("service_id", ""))

    @property
    def service_name(self) -> str:
        return str(self.header.get("service_name", ""))

    @property
    def status(self) -> Mapping[str, Any]:
        """``content.status`` of a control report ({} when there is none)."""
        status = self.content.get("status")
        return status if isinstance(status, Mapping) else {}

    def to_dict(self) -> dict[str, Any]:
        return {"header": dict(self.header), "content": dict(self.content)}


def make_message(
    topic: str,
    action: str,
    *,
    transaction: str = "",
    service_id: str = "",
    service_name: str = "",
    content: Mapping[str, Any] | None = None,
    **extra_header: Any,
) -> Message:
    """Build a message with a complete header (a new dict every time: no shared templates)."""
    header: dict[str, Any] = {
        "action": action,
        "service_transaction": transaction,
        "service_id": service_id,
        "service_name": service_name,
        **extra_header,
    }
    return Message(topic=topic, header=header, content=dict(content or {}))


RESERVED_STATUS_KEYS = frozenset({"result", "device_action", "pid"})
"""Keys of ``content.status`` that zsvc fills in; a task's own items may not use them."""


def control_message(
    action: str,
    *,
    transaction: str,
    service_id: str,
    service_name: str,
    result: str = "success",
    device_action: str = "",
    pid: int | None = None,
    status: Mapping[str, Any] | None = None,
) -> Message:
    """A ``control`` report in the seed's shape: ``content.status`` with ``result``.

    *status* items are merged in beside ``result``, ``device_action`` and
    ``pid``, which they may not replace (ValueError names the clash).
    """
    items = dict(status or {})
    clash = RESERVED_STATUS_KEYS.intersection(items)
    if clash:
        raise ValueError(f"status keys {sorted(clash)} are reserved for zsvc")
    body = {"result": result, "device_action": device_action, "pid": pid, **items}
    return make_message(
        Topic.CONTROL,
        action,
        transaction=transaction,
        service_id=service_id,
        service_name=service_name,
        content={"status": body},
    )


def encode(message: Message) -> list[bytes]:
    """Frames for *message*: ``[topic, compact JSON]``."""
    # ASCII JSON: any string a peer sent (a lone surrogate included) can be sent on.
    body = json.dumps(message.to_dict(), separators=(",", ":"))
    return [message.topic.encode(), body.encode()]


def decode(frames: Sequence[bytes], sender: tuple[int, int] | None = None) -> Message:
    """Parse and validate received frames; raise :class:`ProtocolError` saying why not.
    *sender*: the publisher as the kernel named it (:attr:`Message.sender`)."""
    if len(frames) == 2:
        topic_bytes, body = frames
    elif len(frames) == 1:
        topic_bytes, body = split_legacy(frames[0])
    else:
        raise ProtocolError(f"expected 1 or 2 frames, got {len(frames)}")
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        topic = topic_bytes.decode().strip()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"topic is not UTF-8: {exc}") from None
    if not topic:
        raise ProtocolError("empty topic")
    try:
        data = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limits
        raise ProtocolError(f"topic {topic!r}: body is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"topic {topic!r}: body is nested too deeply") from None
    return validate(topic, data, sender)


def split_legacy(frame: bytes) -> tuple[bytes, bytes]:
    """Split the seed's ``"topic @@@ json"`` at the first marker."""
    topic, marker, body = frame.partition(LEGACY_SEPARATOR)
    if not marker:
        raise ProtocolError("single frame without the '@@@' separator")
    return topic, body


def validate(topic: str, data: Any, sender: tuple[int, int] | None = None) -> Message:
    """Check the header/content shape and normalise the header."""
    if not isinstance(data, dict):
        raise ProtocolError(f"topic {topic!r}: message is {type(data).__name__}, not an object")
    unknown = set(data) - {"header", "content"}
    if unknown:
        raise ProtocolError(f"topic {topic!r}: unknown top-level keys {sorted(unknown)}")
    header = data.get("header")
    if not isinstance(header, dict):
        raise ProtocolError(f"topic {topic!r}: 'header' must be an object")
    content = data.get("content", {})
    if not isinstance(content, dict):
        raise ProtocolError(f"topic {topic!r}: 'content' must be an object")
    header = normalise_header(topic, header)
    return Message(topic=topic, header=header, content=content, sender=sender)


def normalise_header(topic: str, header: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the four header fields, accepting the seed's ``transaction`` spelling."""
    out = dict(header)
    if "transaction" in out:
        legacy = out.pop("transaction")
        if out.setdefault("service_transaction", legacy) != legacy:
            raise ProtocolError(
                f"topic {topic!r}: header has both 'transaction' and 'service_transaction'"
                " with different values"
            )
    for name in HEADER_FIELDS:
        value = out.setdefault(name, "")
        if not isinstance(value, str):
            raise ProtocolError(f"topic {topic!r}: header.{name} must be a string")
    if not out["action"]:
        raise ProtocolError(f"topic {topic!r}: header.action is missing or empty")
    transaction = out["service_transaction"]
    if transaction and not is_valid_id(transaction):
        raise ProtocolError(
            f"topic {topic!r}: header.service_transaction {transaction!r}"
            " is not an id ([A-Za-z0-9_-]{1,64})"
        )
    return out


def probe_topic(nonce: str) -> str:
    """A private topic for one subscription handshake.

    A subscriber proves its subscription has reached the device by
    publishing on this topic and receiving its own message back; only then
    can it be sure not to miss messages (ZMQ's slow-joiner problem), with no
    ``sleep()`` involved.
    """
    return PROBE_PREFIX + nonce
