"""Whom the daemon believes on the bus, and what it says to whom (issue 19, finding 2).

The bus device (:mod:`zsvc.daemon.bus`) has two sides:

* the **trusted** side: the runtime directory's ``ipc://`` sockets (the
  directory's permissions say who may connect: the daemon's user, and the
  group ``zsvc`` of a root daemon) and TCP endpoints bound with CURVE (only
  clients whose key an administrator admitted get through the handshake);
* the **public** side: TCP endpoints bound without CURVE. They are bound on
  loopback only (:func:`zsvc.daemon.bus.plan_bind`), but every local user
  can reach loopback, so nothing that arrives there says who sent it.

The daemon reads only the trusted side: reports, questions and commands
published on plain TCP are never acted on nor answered. What the daemon
publishes goes to the trusted side, and to the public side only when
:func:`is_public` says so (a task's life events, the seed's protocol).
Messages published by anyone are forwarded both ways, so the seed's TCP
clients and the tasks still talk, with two exceptions from the public side
to the trusted one (:func:`admit_public`): the daemon's own topics, on which
a trusted reader must be able to believe what it reads, and the daemon's
orders to thread hosts, which a stranger must not be able to give.

Pure functions: the policy in one place, tested in ``tests/unit/test_trust.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from zsvc import protocol
from zsvc.hostwire import ORDER_KEY
from zsvc.states import LastAction

TRUSTED_TRANSPORTS = ("ipc://", "inproc://")
"""Transports the file system (or the process) guards: whoever connects was let in."""
DAEMON_TOPICS = ("control", "state", "context", "monitor")
"""Topics on which the daemon and its tasks speak: never fed from the public side."""
_ORDER_BYTES = ORDER_KEY.encode()
PUBLIC_EVENTS = frozenset(
    {LastAction.STARTED, LastAction.EXITED, LastAction.FAILED, LastAction.STOPPED}
)
"""The daemon's messages the public side gets: a task's life events, which the seed's
clients watch. Records, answers, samples and orders stay on the trusted side."""


def is_public(message: protocol.Message) -> bool:
    """Whether the daemon's own *message* may also go to plain-TCP subscribers.

    Private by default: a new kind of message is safe until someone decides
    it may be read by every local user.
    """
    return message.topic == protocol.Topic.CONTROL and message.action in PUBLIC_EVENTS


def admit_public(frames: Sequence[bytes]) -> bool:
    """Whether a message a plain-TCP publisher sent may reach trusted subscribers.

    Refused: anything on the daemon's topics (a forged report, a forged
    answer to a ``zsvc send``) and the daemon's orders to thread hosts (a
    ``process`` message carrying ``zsvc_order``). The topic is read as every
    zsvc reader reads it (:func:`zsvc.protocol.decode`: legacy frames split,
    whitespace stripped), so a spelling variant is no way round. Frames that
    no zsvc reader would accept pass: they are someone else's business.
    """
    topic = _topic(frames)
    if topic is None:
        return True
    if topic.startswith(DAEMON_TOPICS):
        return False
    if topic != protocol.Topic.PROCESS:
        return True
    if _ORDER_BYTES not in frames[-1] and b"\\u" not in frames[-1]:
        return True  # the key is neither written out nor escaped: no need to parse
    try:
        message = protocol.decode(frames)
    except protocol.ProtocolError:
        return True  # every reader drops it as well
    return not isinstance(message.content.get(ORDER_KEY), Mapping)


def _topic(frames: Sequence[bytes]) -> str | None:
    """The topic a zsvc reader would see in *frames* (None: it would see no message)."""
    if len(frames) == 2:
        raw = frames[0]
    elif len(frames) == 1:
        raw, marker, _ = frames[0].partition(protocol.LEGACY_SEPARATOR)
        if not marker:
            return None
    else:
        return None
    try:
        return raw.decode().strip()
    except UnicodeDecodeError:
        return None
