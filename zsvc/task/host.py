"""The task host: the process a runner executes for a Python task (``python -m zsvc.task``).

It reads its launch description from ``$ZSVC_TASK`` (JSON written by the
daemon), imports the user's class, joins the bus, and only then reports
READY=1 — after :meth:`Task.setup` returned *and* its subscription was
confirmed through the device, so a task that says it is ready cannot miss
a message. SIGTERM becomes STOPPING=1 and a clean close. When user code
raises, the traceback goes to the task's log, the first line to STATUS=,
and the host exits 1.

When ``$ZSVC_TASK`` describes a group of ``serviceType="Thread"`` tasks
(``"kind": "threads"``), the process becomes their thread host instead
(:mod:`zsvc.task.threads`).

It imports nothing heavier than pyzmq: its start-up is part of every
task's start-up.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import zmq

from zsvc.client import BusClient
from zsvc.hostwire import SPEC_ENV, HostSpec, ThreadGroupSpec, is_group
from zsvc.notify import watchdog_interval
from zsvc.task.api import Task
from zsvc.task.runtime import (
    EXIT_SETUP_ERROR,
    EXIT_USER_ERROR,
    BusJoinError,
    Runtime,
    StopSignal,
    TaskLoadError,
    fail,
    join_bus,
    load_task_class,
    notify,
)

log = logging.getLogger("zsvc.task")


def run_loop(task: Task, runtime: Runtime, stop: StopSignal) -> None:
    """Drive a looped task: steps on time, messages as they come, watchdog pings."""
    bus = runtime.joined()
    poller = zmq.Poller()
    poller.register(bus.sub, zmq.POLLIN)
    poller.register(stop.read_fd, zmq.POLLIN)
    ping_every = watchdog_interval()
    now = time.monotonic()
    next_step = now
    next_ping = now + ping_every if ping_every else float("inf")
    while not stop.requested:
        now = time.monotonic()
        if now >= next_ping:
            notify("WATCHDOG=1")
            next_ping = now + ping_every  # type: ignore[operator]
        if now >= next_step:
            task.step()
            next_step = max(next_step + max(task.interval, 0.0), time.monotonic())
        # Poll even when the next step is already due: a step slower than its
        # interval must not starve the messages.
        timeout_ms = max(0, int((min(next_step, next_ping) - time.monotonic()) * 1000) + 1)
        events = dict(poller.poll(timeout_ms))
        if stop.read_fd in events:
            stop.drain()
        if bus.sub in events:
            _deliver(task, runtime)


def _deliver(task: Task, runtime: Runtime) -> None:
    bus = runtime.joined()
    while True:
        message = bus.receive(0.0)
        if message is None:
            return
        if runtime.addressed_to_me(message):
            task.on_message(message)


def host(spec: HostSpec) -> int:
    """Run one task to completion; the return value is the process exit status."""
    stop = StopSignal()
    try:
        cls = load_task_class(spec.instance, spec.location)
    except Exception as exc:  # noqa: BLE001 - user code: any import error is the task's failure
        return fail("cannot load the task class", exc, EXIT_SETUP_ERROR)
    bus: BusClient | None = None
    if not spec.join_after_setup:
        try:
            bus = join_bus(spec)
        except BusJoinError as exc:
            return fail(str(exc), exc.__cause__ or exc, EXIT_SETUP_ERROR)
    runtime = Runtime(spec, bus)
    stop.runtime = runtime
    runtime.stop_requested = stop.requested
    task: Task | None = None
    code = 0
    try:
        task = cls(**spec.configuration)
        task._runtime = runtime
        task.setup(**spec.configuration)
        if not stop.requested:  # asked to stop during set-up: a clean end, never ready
            runtime.joined()  # before READY=1: from then on, what is sent to the task arrives
            notify("READY=1", f"MAINPID={os.getpid()}")
            log.info("%s/%s ready (pid %d)", spec.transaction, spec.task_id, os.getpid())
            if task.single:
                task.run()  # type: ignore[attr-defined]
            else:
                run_loop(task, runtime, stop)
        notify("STOPPING=1")
        ending = "stopping" if stop.requested else "done"
        log.info("%s/%s %s", spec.transaction, spec.task_id, ending)
    except BusJoinError as exc:  # joined after setup(), or when setup() first published
        code = fail(str(exc), exc.__cause__ or exc, EXIT_SETUP_ERROR)
    except Exception as exc:  # noqa: BLE001 - user code: report any failure, never hide it
        code = fail(f"{cls.__name__} failed", exc, EXIT_USER_ERROR)
    finally:
        if task is not None:
            try:
                task.teardown()
            except Exception as exc:  # noqa: BLE001 - user code
                failure = fail("teardown failed", exc, EXIT_USER_ERROR)  # always reported
                code = code or failure
        if runtime.bus is not None:
            runtime.bus.close()
    return code


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
THREAD_LOG_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"
"""A thread host's log: every line names the thread, which is named after its task."""


def main() -> int:
    raw = os.environ.get(SPEC_ENV, "")
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    group = is_group(data)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format=THREAD_LOG_FORMAT if group else LOG_FORMAT
    )
    if group:
        # The JSON describes the Thread tasks of a transaction: be their thread host.
        from zsvc.task import threads

        try:
            group_spec = ThreadGroupSpec.from_dict(data)  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError) as exc:
            log.error("invalid thread group description: %s", exc)
            return EXIT_SETUP_ERROR
        return threads.serve(group_spec)
    try:
        spec = HostSpec.from_environ()
    except (TaskLoadError, ValueError, TypeError) as exc:
        log.error("invalid task description: %s", exc)
        return EXIT_SETUP_ERROR
    return host(spec)
