"""The bus device: the seed's ZMQ forwarder, owned by the daemon.

Publishers connect to the XSUB side, subscribers to the XPUB side. Unlike
``zmq.proxy`` in a thread, this device runs in the daemon's event loop, so
the daemon can (a) bind more endpoints whenever a context names them, (b)
observe the ``control``, ``state`` and ``context`` traffic it must act on,
(c) publish its own messages without a socket of its own, and (d) see
subscriptions come and go (the monitor samples only while someone listens).

One device binds every endpoint: the runtime directory's ``ipc://`` pair,
which the tasks and the CLI use, and every TCP pair a loaded context names.
They are views of one bus; messages are scoped by their transaction.
Binds failing (a port in use) raise, so the error reaches the user instead
of being lost as in the original's fire-and-forget forwarder.

Who may use the bus (:func:`plan_bind`): the ``ipc://`` pair is guarded by
the runtime directory's permissions. Without CURVE keys, TCP is bound on
loopback only; with them (``[bus] curve_keys``, :mod:`zsvc.curve`), every
TCP endpoint is bound as written and admits only the clients whose public
keys are in the keys directory, checked by a ZAP handler in the daemon's
loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from zsvc import protocol
from zsvc.curve import ServerKeys

log = logging.getLogger(__name__)

OBSERVED_TOPICS = (b"control", b"state", b"context")
HIGH_WATER_MARK = 10_000
"""Per-peer queue bound: a subscriber that never reads costs at most this many messages."""

MessageHandler = Callable[[protocol.Message], None]


class BindError(Exception):
    """An endpoint of the bus could not be bound."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("*", "0.0.0.0", "[::]")


@dataclass(frozen=True)
class BindPlan:
    """How one endpoint is bound: where, and whether CURVE guards it."""

    endpoint: str
    curve: bool


def plan_bind(endpoint: str, *, curve: bool, open_commands: bool = False) -> BindPlan:
    """Where and how to bind the bus endpoint *endpoint* (pure: the policy in one place).

    * ``ipc://`` and ``inproc://``: as written; the file system guards them.
    * TCP with CURVE keys (*curve*): as written, wildcard included, CURVE.
    * TCP without keys: loopback only (the seed's ``tcp://*:5557`` binds
      127.0.0.1), and not at all when the bus carries commands
      (*open_commands*, ``[bus] context_commands``): every local user can
      reach loopback.
    """
    if not endpoint.startswith("tcp://"):
        return BindPlan(endpoint, curve=False)
    if curve:
        return BindPlan(endpoint, curve=True)
    hint = "create keys with 'zsvc keys' and set curve_keys in [bus] of /etc/zsvc/zsvc.conf"
    if open_commands:
        raise BindError(
            f"refusing to bind the bus on {endpoint} without CURVE keys: context_commands"
            f" is on, so anyone reaching the port could command zsvc; {hint}"
        )
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if host in WILDCARD_HOSTS:
        return BindPlan(f"tcp://127.0.0.1:{port}", curve=False)
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return BindPlan(endpoint, curve=False)
    raise BindError(
        f"refusing to bind the bus on {endpoint}: without CURVE keys TCP endpoints are"
        f" bound on loopback (127.0.0.1) only; {hint}"
    )


class BusDevice:
    """An XSUB/XPUB forwarder in the event loop, observing what the daemon needs."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        on_message: MessageHandler,
        keys: ServerKeys | None = None,
        open_commands: bool = False,
    ):
        self.on_message = on_message
        self.keys = keys
        self.open_commands = open_commands
        self.xsub = context.socket(zmq.XSUB)
        self.xpub = context.socket(zmq.XPUB)
        for sock in (self.xsub, self.xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
            sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        self.pub_endpoints: set[str] = set()
        self.sub_endpoints: set[str] = set()
        self.subscriptions: collections.Counter[bytes] = collections.Counter()
        self.on_subscription: Callable[[bytes], None] | None = None
        """Called with the prefix after each (un)subscription (the monitor wakes on it)."""
        self._tasks: list[asyncio.Task[None]] = []

    def bind(self, pub_endpoint: str, sub_endpoint: str) -> None:
        """Bind a publishers' endpoint and a subscribers' endpoint (idempotent)."""
        pub, sub = self._plan(pub_endpoint), self._plan(sub_endpoint)
        if pub.endpoint in self.sub_endpoints or sub.endpoint in self.pub_endpoints:
            raise BindError(
                f"bus endpoints {pub.endpoint} and {sub.endpoint} clash with the other side"
            )
        for sock, plan, bound in (
            (self.xsub, pub, self.pub_endpoints),
            (self.xpub, sub, self.sub_endpoints),
        ):
            if plan.endpoint in bound:
                continue
            try:
                self._bind(sock, plan)
            except zmq.ZMQError as exc:
                raise BindError(f"cannot bind the bus endpoint {plan.endpoint}: {exc}") from exc
            bound.add(plan.endpoint)
            log.info("bus bound %s%s", plan.endpoint, " (CURVE)" if plan.curve else "")

    def _plan(self, endpoint: str) -> BindPlan:
        return plan_bind(endpoint, curve=self.keys is not None, open_commands=self.open_commands)

    def _bind(self, sock: zmq.Socket, plan: BindPlan) -> None:
        """Bind with CURVE only where planned: libzmq copies the options at each bind."""
        if not plan.curve:
            sock.bind(plan.endpoint)
            return
        assert self.keys is not None
        self.keys.apply(sock)
        try:
            sock.bind(plan.endpoint)
        finally:
            sock.setsockopt(zmq.CURVE_SERVER, 0)  # the next bind (an ipc://) is plain again

    def release(self, keep: Iterable[tuple[str, str]]) -> None:
        """Unbind every endpoint but the (publishers', subscribers') pairs in *keep*.

        A context's TCP pair is bound when a transaction of it starts; without
        this, each context ever started would hold two listening sockets (two
        daemon fds, and its ports) until the daemon exits, long after its last
        transaction was forgotten, and a restarted daemon would not bind them.
        """
        pubs = {self._plan(pub).endpoint for pub, _ in keep}
        subs = {self._plan(sub).endpoint for _, sub in keep}
        for sock, bound, wanted in (
            (self.xsub, self.pub_endpoints, pubs),
            (self.xpub, self.sub_endpoints, subs),
        ):
            for endpoint in sorted(bound - wanted):
                try:
                    sock.unbind(endpoint)
                except zmq.ZMQError as exc:  # not bound as spelled: nothing to release
                    log.warning("cannot unbind the bus endpoint %s: %s", endpoint, exc)
                bound.discard(endpoint)
                log.info("bus released %s", endpoint)

    def start(self) -> None:
        # Publishers filter on their side by the subscriptions XSUB sends them:
        # subscribe to everything so that every message reaches the device.
        self.xsub.send(b"\x01")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._forward(), name="bus-forward"),
            loop.create_task(self._watch_subscriptions(), name="bus-subscriptions"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.xsub.close()
        self.xpub.close()

    def publish(self, message: protocol.Message) -> None:
        """Publish the daemon's own message to every subscriber."""
        self._send(protocol.encode(message))

    def _send(self, frames: list[bytes]) -> None:
        with contextlib.suppress(zmq.Again):
            self.xpub.send_multipart(frames, flags=zmq.NOBLOCK)

    async def _forward(self) -> None:
        while True:
            frames = await self.xsub.recv_multipart()
            self._send(frames)
            if frames[0].startswith(OBSERVED_TOPICS):
                self._observe(frames)

    def _observe(self, frames: list[bytes]) -> None:
        try:
            message = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            log.warning("ignored a bus message: %s", exc)
            return
        try:
            self.on_message(message)
        except Exception:  # the daemon never dies from input; the bug is logged
            log.exception("error while handling a bus message on %r", message.topic)

    async def _watch_subscriptions(self) -> None:
        while True:
            frame = await self.xpub.recv()
            if not frame:
                continue
            topic = frame[1:]
            if frame[0] == 1:
                self.subscriptions[topic] += 1
            elif frame[0] == 0 and topic in self.subscriptions:
                # Forget a topic nobody wants any more: every task host's handshake
                # subscribes to a topic of its own, so keeping zeros would grow
                # without bound and slow down every subscribers() call.
                self.subscriptions[topic] -= 1
                if self.subscriptions[topic] <= 0:
                    del self.subscriptions[topic]
            else:
                continue
            if self.on_subscription is not None:
                self.on_subscription(topic)

    def subscribers(self, topic: bytes) -> int:
        """How many subscriptions would receive *topic* (prefix match, as ZMQ does)."""
        return sum(
            count for prefix, count in self.subscriptions.items() if topic.startswith(prefix)
        )
