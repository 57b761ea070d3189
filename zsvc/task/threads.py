"""The thread host: one process that runs every ``serviceType="Thread"`` task of a transaction.

The daemon starts it as ``python -m zsvc.task`` (or forks it from the
zygote) with a :class:`ThreadGroupSpec` in ``$ZSVC_TASK`` the first time one
of the transaction's Thread tasks must start. The host joins the bus and
reports READY=1: from then on it takes orders. Orders come from the daemon on
topic ``process``, addressed to one task (``header.service_id``), with action
``start`` or ``stop`` and ``content.zsvc_order = {"run": <run id>}``
(:data:`ORDER_KEY`); any other message is the task's own mail.

Each started task runs in its own thread (named after the task id): load the
class, construct it, ``setup()``, report ``started``, then ``run()`` or the
loop, ``teardown()``, and a final report. Reports go to the daemon on topic
``control`` with action ``thread`` (:data:`REPORT_ACTION`) and
``content.status = {"event": started|status|exited|stopped|failed, "run": …}``;
the daemon turns them into the task's state and the seed's own ``control``
reports, exactly as it does for a task process. An exception in a thread
fails that task only.

Threads never touch a ZMQ socket (sockets are not thread-safe): what they
publish goes through an outbox that the main thread empties, and the main
thread hands each thread the messages addressed to it through its inbox.

Limits (the price of sharing one process): no per-task kill — a thread is
asked to stop and ends when its code checks the flag; no per-task resources;
and an end of the host process ends every thread task of the transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import zmq

from zsvc import protocol
from zsvc.client import BusClient
from zsvc.hostwire import (
    ORDER_KEY,
    ORDER_START,
    ORDER_STOP,
    REPORT_ACTION,
    Event,
    HostSpec,
    ThreadGroupSpec,
)
from zsvc.task.api import Task
from zsvc.task.runtime import (
    EXIT_SETUP_ERROR,
    Runtime,
    StopSignal,
    fail,
    failure_reason,
    load_task_class,
    notify,
)

log = logging.getLogger("zsvc.task")


class Outbox:
    """Messages from any thread, published by the main thread (woken through a pipe)."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[protocol.Message] = queue.SimpleQueue()
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def publish(self, message: protocol.Message) -> None:
        self.queue.put(message)
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes the reader
            os.write(self._write_fd, b"\0")

    def flush(self, bus: BusClient) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 512):
                pass
        while True:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                return
            bus.publish(message)


class ThreadRuntime(Runtime):
    """One thread's side of :class:`Runtime`: its own identity, stop flag and run id."""

    def __init__(self, spec: HostSpec, outbox: Outbox, run: str):
        self.spec = spec
        self.bus = outbox  # type: ignore[assignment]  # publish() is all a Runtime uses
        self.stop_requested = False
        self.run = run

    def set_status(self, text: str) -> None:
        """STATUS= is per process: a thread's status line goes to the daemon over the bus."""
        self.report(Event.STATUS, text=" ".join(text.splitlines()))

    def report(self, event: str, result: str = "success", **items: Any) -> None:
        self.publish_control(REPORT_ACTION, result, {"event": event, "run": self.run, **items})


_WAKE = object()
_LOAD_LOCK = threading.Lock()
"""load_task_class sets up a shared package and sys.path: one thread at a time."""


class Worker:
    """One run of one task in its own thread."""

    def __init__(self, spec: HostSpec, run: str, outbox: Outbox):
        self.spec = spec
        self.run = run
        self.runtime = ThreadRuntime(spec, outbox, run)
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.single = False
        self.finished = False
        """Set just before the final report: nothing of the task's code runs any more."""
        self.thread = threading.Thread(target=self._main, name=spec.task_id, daemon=True)

    def stop(self) -> None:
        self.runtime.stop_requested = True
        self.inbox.put(_WAKE)

    def deliver(self, message: protocol.Message) -> None:
        if not self.single and not self.finished:
            self.inbox.put(message)

    def _main(self) -> None:
        spec = self.spec
        task: Task | None = None
        items: dict[str, Any] = {}
        try:
            with _LOAD_LOCK:
                cls = load_task_class(spec.instance, spec.location)
        except BaseException as exc:  # noqa: BLE001 - user code: any import error is the task's
            self._end(Event.FAILED, reason=failure_reason("cannot load the task class", exc))
            return
        event = Event.EXITED
        try:
            task = cls(**spec.configuration)
            task._runtime = self.runtime
            self.single = task.single
            task.setup(**spec.configuration)
            if not self.runtime.stop_requested:  # asked to stop during set-up: never started
                self.runtime.report(Event.STARTED)
                log.info("%s/%s started (thread in pid %d)", *self._name(), os.getpid())
                if task.single:
                    task.run()  # type: ignore[attr-defined]
                else:
                    self._loop(task)
        except SystemExit as exc:  # sys.exit() in a thread ends the task, not the host
            if exc.code not in (None, 0):
                event = Event.FAILED
                code = exc.code if isinstance(exc.code, int) else 1
                items = {"exit_code": code, "reason": f"sys.exit({exc.code!r})"}
        except BaseException as exc:  # noqa: BLE001 - user code: report any failure
            event = Event.FAILED
            items = {"reason": failure_reason(f"{cls.__name__} failed", exc)}
        finally:
            if task is not None:
                try:
                    task.teardown()
                except BaseException as exc:  # noqa: BLE001 - user code
                    reason = failure_reason("teardown failed", exc)
                    if event != Event.FAILED:
                        event, items = Event.FAILED, {"reason": reason}
        if event == Event.EXITED and self.runtime.stop_requested:
            event = Event.STOPPED
        log.info("%s/%s %s", *self._name(), event)
        self._end(event, **items)

    def _loop(self, task: Task) -> None:
        """Steps on time, messages as they come, until the stop flag is set (as run_loop)."""
        runtime = self.runtime
        next_step = time.monotonic()
        while not runtime.stop_requested:
            if time.monotonic() >= next_step:
                task.step()
                next_step = max(next_step + max(task.interval, 0.0), time.monotonic())
            try:
                item = self.inbox.get(timeout=max(0.0, next_step - time.monotonic()))
            except queue.Empty:
                continue
            while not runtime.stop_requested:
                if item is not _WAKE:
                    task.on_message(item)
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break

    def _end(self, event: str, **items: Any) -> None:
        self.finished = True
        result = "failure" if event == Event.FAILED else "success"
        self.runtime.report(event, result=result, **items)

    def _name(self) -> tuple[str, str]:
        return self.spec.transaction, self.spec.task_id


class GroupHost:
    """The main thread: bus, orders, mail delivery, and the threads' outbox."""

    def __init__(self, group: ThreadGroupSpec, bus: BusClient):
        self.group = group
        self.bus = bus
        self.outbox = Outbox()
        self.specs = {spec.task_id: spec for spec in group.tasks}
        self.workers: dict[str, Worker] = {}

    def serve(self, stop: StopSignal) -> None:
        poller = zmq.Poller()
        poller.register(self.bus.sub, zmq.POLLIN)
        poller.register(stop.read_fd, zmq.POLLIN)
        poller.register(self.outbox.read_fd, zmq.POLLIN)
        while not stop.requested:
            events = dict(poller.poll())
            if stop.read_fd in events:
                stop.drain()
            if self.bus.sub in events:
                self._receive()
            self.outbox.flush(self.bus)
        self._stop_all()

    def _stop_all(self) -> None:
        """The host is asked to stop: stop every thread, wait for them up to the stop timeout."""
        notify("STOPPING=1")
        running = [worker for worker in self.workers.values() if not worker.finished]
        for worker in running:
            worker.stop()
        deadline = time.monotonic() + self.group.stop_timeout
        poller = zmq.Poller()
        poller.register(self.outbox.read_fd, zmq.POLLIN)
        while any(not w.finished for w in running) and time.monotonic() < deadline:
            poller.poll(max(1, int((deadline - time.monotonic()) * 1000)))
            self.outbox.flush(self.bus)
        for worker in running:
            worker.thread.join(max(0.0, min(0.5, deadline - time.monotonic())))
        self.outbox.flush(self.bus)
        stuck = [worker.spec.task_id for worker in running if not worker.finished]
        if stuck:
            log.warning("threads still running at exit: %s", ", ".join(stuck))

    def _receive(self) -> None:
        while (message := self.bus.receive(0.0)) is not None:
            order = message.content.get(ORDER_KEY)
            if (
                isinstance(order, Mapping)
                and message.topic == protocol.Topic.PROCESS
                and message.transaction == self.group.transaction
                and message.action in (ORDER_START, ORDER_STOP)
            ):
                self._order(message.action, message.service_id, str(order.get("run", "")))
                continue
            for worker in self.workers.values():
                if worker.runtime.addressed_to_me(message):
                    worker.deliver(message)

    def _order(self, action: str, task_id: str, run: str) -> None:
        spec = self.specs.get(task_id)
        if spec is None or not run:
            log.warning(
                "ignored a %s order for %r (run %r): not a task of this host", action, task_id, run
            )
            return
        current = self.workers.get(task_id)
        busy = current is not None and not current.finished
        if action == ORDER_START:
            if busy and current is not None and current.run != run:
                log.warning("%s: not started again: its previous thread still runs", task_id)
                ThreadRuntime(spec, self.outbox, run).report(
                    Event.FAILED,
                    result="failure",
                    reason="its previous thread is still running (it did not stop when asked);"
                    " it ends when the thread host stops",
                )
            elif not busy:
                worker = Worker(spec, run, self.outbox)
                self.workers[task_id] = worker
                worker.thread.start()
        elif busy and current is not None and current.run == run:
            log.info("%s/%s: stop requested", self.group.transaction, task_id)
            current.stop()
        elif current is None or current.run != run:
            ThreadRuntime(spec, self.outbox, run).report(
                Event.STOPPED, reason="no thread of this run is running"
            )


def serve(group: ThreadGroupSpec) -> int:
    """Run a thread host until it is asked to stop; the return value is the exit status."""
    stop = StopSignal()
    topics = sorted({protocol.Topic.PROCESS.value, *(task.topic for task in group.tasks)})
    bus = BusClient(group.bus_pub, group.bus_sub, topics=topics)
    try:
        bus.handshake(group.handshake_timeout)
    except TimeoutError as exc:
        bus.close()
        return fail(f"cannot join the bus at {group.bus_sub}", exc, EXIT_SETUP_ERROR)
    host = GroupHost(group, bus)
    if not stop.requested:
        notify("READY=1", f"MAINPID={os.getpid()}")
        ids = ", ".join(host.specs)
        log.info("%s: thread host ready (pid %d) for %s", group.transaction, os.getpid(), ids)
        host.serve(stop)
    stuck = any(not worker.finished for worker in host.workers.values())
    bus.close()
    if stuck:
        # A thread that ignores its stop flag must not keep the process alive.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(0)
    return 0
