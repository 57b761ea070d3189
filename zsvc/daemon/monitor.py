"""The daemon's monitor: samples the tasks' processes, but only while someone wants samples.

Two things make it sample:

* a subscription to the bus topic ``monitor`` (the device's XPUB reports
  subscriptions, :meth:`MonitorService.subscriptions_changed`): while one
  exists, every transaction with a task up is sampled every ``interval``
  seconds and published on ``monitor``, one message per transaction;
* a ``state`` message with action ``top`` (the seed's one-shot request, which a
  context's Monitor task sends at its own frequency): one pass over the asked
  transaction, answered on ``state`` as ``reply_top``.

With neither, the loop waits on an event and costs nothing. Reading
processes happens in a worker thread, one pass at a time, so the event loop
keeps answering while 100 tasks are read; what to read is decided in the
loop, from the manager's records. The sample's shape is documented in
``docs/monitor.md``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zsvc import protocol
from zsvc.daemon.manager import Manager
from zsvc.daemon.model import TaskRecord, TransactionRecord
from zsvc.jobs import Jobs
from zsvc.monitor.aggregate import CpuTracker, totals, usage
from zsvc.monitor.options import (
    NO_OPTIONS,
    OPTION_NAMES,
    MonitorConfigError,
    MonitorOptions,
    parse_options,
)
from zsvc.monitor.sampler import read_processes
from zsvc.runners.base import TaskHandle

log = logging.getLogger(__name__)

STREAM_INTERVAL = 1.0
"""Seconds between two samples on the ``monitor`` topic while it has subscribers."""
MONITOR_TOPIC = protocol.Topic.MONITOR.encode()
SAMPLE_ACTION = "sample"
TOP_ACTION = "top"
REPLY_TOP_ACTION = "reply_top"


@dataclass
class _TaskTarget:
    """What to read for one task, decided in the event loop, read in the worker thread."""

    view: dict[str, Any]
    main_pid: int | None
    handle: TaskHandle | None
    shared: bool
    """Its processes are shared with other tasks (a Thread task's host): counted once."""

    def pids(self) -> list[int]:
        if self.handle is not None:
            return self.handle.processes()
        if self.main_pid is None:
            return []
        from zsvc.procs import descendants

        return [self.main_pid, *sorted(descendants(self.main_pid))]


@dataclass
class _Target:
    transaction: dict[str, Any]
    tasks: list[_TaskTarget] = field(default_factory=list)


def _task_target(task: TaskRecord) -> _TaskTarget:
    view = task.view()
    handle = task.handle if task.is_up else None
    if handle is None:
        return _TaskTarget(view, task.pid if task.is_up else None, None, False)
    return _TaskTarget(view, handle.pid, handle, handle.shared)


def _target(record: TransactionRecord) -> _Target:
    header = {
        "transaction": record.id,
        "state": str(record.state),
        "context_id": record.context.context_id,
    }
    return _Target(header, [_task_target(task) for task in record.tasks.values()])


class MonitorService:
    """Samples on demand and publishes; owned by the daemon, fed by the bus device."""

    def __init__(
        self,
        manager: Manager,
        publish: Callable[[protocol.Message], None],
        subscribers: Callable[[bytes], int],
        interval: float = STREAM_INTERVAL,
    ):
        self.manager = manager
        self.publish = publish
        self.subscribers = subscribers
        self.interval = interval
        self.passes = 0
        """Sampling passes so far (the benchmark and the tests read it)."""
        self._changed = asyncio.Event()
        self.idle = asyncio.Event()
        """Set while the loop waits for a subscriber (nothing is read meanwhile)."""
        self._pass_lock = asyncio.Lock()
        self._cpu = CpuTracker()
        self._streamed: set[str] = set()
        self._jobs = Jobs("monitor")
        """The answers to ``top`` requests in flight."""

    # --- demand ------------------------------------------------------------------

    def watched(self) -> bool:
        """True while some bus subscription would receive the ``monitor`` topic."""
        return self.subscribers(MONITOR_TOPIC) > 0

    def subscriptions_changed(self, prefix: bytes) -> None:
        """The device saw a (un)subscription of *prefix*: wake the loop if it concerns us."""
        if MONITOR_TOPIC.startswith(prefix):
            self._changed.set()

    async def run(self) -> None:
        """Publish samples while watched; otherwise sleep until a subscription arrives."""
        loop = asyncio.get_running_loop()
        while True:
            self._changed.clear()
            if not self.watched():
                self._streamed.clear()
                self.idle.set()
                await self._changed.wait()
                self.idle.clear()
                continue
            started = loop.time()
            try:
                await self.stream_once()
            except Exception:  # a bug in a pass must not end monitoring for good
                log.exception("monitor pass failed")
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def stream_once(self) -> None:
        """One pass over every transaction with a task up, published on ``monitor``."""
        records = [
            record
            for record in self.manager.transactions.values()
            if record.id in self._streamed or any(task.is_up for task in record.tasks.values())
        ]
        samples = await self.sample(records, NO_OPTIONS, self.interval)
        self._streamed = {
            sample["transaction"] for sample in samples if sample["totals"]["tasks_up"]
        }
        for sample in samples:
            self.publish(
                protocol.make_message(
                    protocol.Topic.MONITOR,
                    SAMPLE_ACTION,
                    transaction=sample["transaction"],
                    service_name="monitor",
                    content=sample,
                )
            )

    # --- sampling ------------------------------------------------------------------

    async def sample(
        self,
        records: list[TransactionRecord],
        options: MonitorOptions = NO_OPTIONS,
        interval: float | None = None,
    ) -> list[dict[str, Any]]:
        """One sample per record; processes are read in a worker thread, one pass at a time."""
        targets = [_target(record) for record in records]
        async with self._pass_lock:
            self.passes += 1
            return await asyncio.to_thread(self._read, targets, options, interval)

    def _read(
        self, targets: list[_Target], options: MonitorOptions, interval: float | None
    ) -> list[dict[str, Any]]:
        samples = []
        for target in targets:
            tasks = []
            for task in target.tasks:
                view = dict(task.view)
                view["shared"] = task.shared
                view["usage"] = self._usage(task, options)
                tasks.append(view)
            shared = [t["id"] for t in tasks if t["shared"]]
            samples.append(
                {
                    **target.transaction,
                    "timestamp": time.time(),
                    "interval": interval,
                    "options": options.to_dict(),
                    "tasks": tasks,
                    "totals": totals(tasks, shared),
                }
            )
        self._cpu.prune(time.time())
        return samples

    def _usage(self, task: _TaskTarget, options: MonitorOptions) -> dict[str, Any] | None:
        try:
            pids = task.pids()
        except OSError as exc:
            log.debug("cannot list the processes of %s: %s", task.view["id"], exc)
            return None
        if not pids:
            return None
        readings = read_processes(pids, options)
        if not readings:
            return None  # the task ended between the snapshot and the read
        now = time.time()
        cpu = {reading.pid: self._cpu.percent(reading, now) for reading in readings}
        return usage(readings, task.main_pid, cpu)

    # --- the state topic's top -----------------------------------------------------

    def on_bus_message(self, message: protocol.Message) -> bool:
        """Answer ``state``/``top``; True when the message was the monitor's."""
        if message.topic != protocol.Topic.STATE or message.action != TOP_ACTION:
            return False
        self._jobs.spawn(self._answer_top(message), "top")
        return True

    async def _answer_top(self, request: protocol.Message) -> None:
        header = dict(request.header, action=REPLY_TOP_ACTION)
        content: dict[str, Any]
        try:
            options = top_options(request.content)
        except MonitorConfigError as exc:
            content = {"error": str(exc)}
        else:
            if request.transaction:
                record = self.manager.transactions.get(request.transaction)
                records = [record] if record is not None else []
            else:
                records = list(self.manager.transactions.values())
            if request.transaction and not records:
                content = {"error": f"unknown transaction {request.transaction!r}"}
            else:
                content = {"samples": await self.sample(records, options)}
        self.publish(protocol.Message(protocol.Topic.STATE, header, content))

    async def close(self) -> None:
        """Drop the ``top`` answers in flight (the daemon is closing: nobody gets them)."""
        await self._jobs.cancel_all()


def top_options(content: Mapping[str, Any]) -> MonitorOptions:
    """The options of a ``top`` request: the seed's ``content.configuration`` flags.

    Other keys of ``configuration`` (``device_action``, the seed's ``service``)
    are not options and are left alone.
    """
    configuration = content.get("configuration")
    if configuration is None:
        return NO_OPTIONS
    if not isinstance(configuration, Mapping):
        raise MonitorConfigError([("configuration", "must be an object")])
    return parse_options(
        {key: value for key, value in configuration.items() if key in OPTION_NAMES},
        "configuration",
    )
