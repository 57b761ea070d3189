"""The seed's context Monitor: samples of its transaction, published on its own endpoint.

Configured as in the seed (``docs/monitor.md``)::

    <service><endpoint>tcp://127.0.0.1:6558</endpoint><frequency_s>30.0</frequency_s>
             <type>pub</type></service>
    <monitor_options><opened_files>1</opened_files>…</monitor_options>

Every ``frequency_s`` seconds it asks the daemon for a one-shot sample of its
transaction (``state``/``top`` with its ``monitor_options``, answered with
``reply_top``) and publishes it on the PUB socket it bound at ``endpoint``,
on topic ``monitor``. The daemon reads processes only when asked, so a
Monitor at 30 s costs one pass every 30 s. Being a task, it has a state,
restarts and triggers like any other (the seed restarts it ``on_fail``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import zmq

from zsvc import Task, protocol
from zsvc.client import BusClient
from zsvc.monitor.options import MonitorSettings, bind_address, parse_settings

REPLY_TIMEOUT = 10.0
"""Longest wait for the daemon's answer; a pass over 100 tasks takes milliseconds."""
HANDSHAKE_TIMEOUT = 10.0


class ServiceMonitor(Task):
    """Relays its transaction's samples to the seed's Monitor endpoint."""

    def setup(self, **config: Any) -> None:
        self.settings: MonitorSettings = parse_settings(config)
        self.interval = self.settings.frequency_s
        self.published = 0
        self.context = zmq.Context()
        self.out = self.context.socket(zmq.PUB)
        self.out.setsockopt(zmq.LINGER, 0)
        self.out.bind(bind_address(self.settings.endpoint))
        spec = self._rt().spec
        self.bus = BusClient(spec.bus_pub, spec.bus_sub, topics=["state"], context=self.context)
        self.bus.handshake(HANDSHAKE_TIMEOUT)
        self.set_status(
            f"publishing on {self.settings.endpoint} every {self.settings.frequency_s:g} s"
        )

    def step(self) -> None:
        sample = self.ask()
        if sample is None:
            self.log.warning("no sample from the daemon within %g s", REPLY_TIMEOUT)
            return
        message = protocol.make_message(
            protocol.Topic.MONITOR,
            "sample",
            transaction=self.transaction,
            service_id=self.task_id,
            service_name=self.service_name,
            content=sample,
        )
        self.out.send_multipart(protocol.encode(message))
        self.published += 1

    def ask(self) -> dict[str, Any] | None:
        """One sample of this transaction from the daemon (``top``), or None in time."""
        request_id = uuid.uuid4().hex
        self.bus.publish(
            protocol.make_message(
                protocol.Topic.STATE,
                "top",
                transaction=self.transaction,
                service_id=self.task_id,
                service_name=self.service_name,
                content={"configuration": self.settings.options.to_dict()},
                request_id=request_id,
            )
        )
        deadline = time.monotonic() + min(REPLY_TIMEOUT, max(self.interval, 1.0))
        while (remaining := deadline - time.monotonic()) > 0:
            reply = self.bus.receive(remaining)
            if reply is None:
                return None
            if reply.action == "reply_top" and reply.header.get("request_id") == request_id:
                samples = reply.content.get("samples") or []
                return samples[0] if samples else None
        return None

    def teardown(self) -> None:
        for closer in (getattr(self, "bus", None), getattr(self, "out", None)):
            if closer is not None:
                closer.close()
        if hasattr(self, "context"):
            self.context.term()
