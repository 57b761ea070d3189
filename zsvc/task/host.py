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

import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
import types
from typing import Any

import zmq

from zsvc import protocol
from zsvc.client import BusClient
from zsvc.hostwire import SPEC_ENV, HostSpec, ThreadGroupSpec, is_group, task_module_path
from zsvc.notify import sd_notify, watchdog_interval
from zsvc.states import LastAction
from zsvc.task.api import Task

log = logging.getLogger("zsvc.task")

EXIT_USER_ERROR = 1
"""The task's own code raised (setup, step, run, on_message, teardown)."""
EXIT_SETUP_ERROR = 2
"""The host could not even run the task: no such class, no bus."""
NOTIFY_TIMEOUT = 2.0


class TaskLoadError(Exception):
    """The user's task class could not be found or is not a task."""


SERVICES_PACKAGE = "zsvc_services"
"""The package task code is imported under, so that an instance named like any other
module (``json``, ``zmq``, …) cannot collide with it."""


def load_task_class(instance: str, location: str) -> type[Task]:
    """Import ``<location>/<instance>/Service<instance>.py`` and return ``Service<instance>``.

    This is the seed's layout (``Services/EchoAction/ServiceEchoAction.py``).
    The package is imported as ``zsvc_services.<instance>``, so relative
    imports inside it work; ``location`` is also appended to ``sys.path`` for
    code that imports its siblings by name. The error says which file and
    which name were looked for.
    """
    class_name = f"Service{instance}"
    expected = task_module_path(location, instance)
    if not expected.is_file():
        raise TaskLoadError(f"task module {expected} does not exist")
    if location not in sys.path:
        sys.path.append(location)  # last: a task package never shadows a real module
    parent = sys.modules.get(SERVICES_PACKAGE)
    if parent is None:
        parent = types.ModuleType(SERVICES_PACKAGE)
        parent.__path__ = []
        sys.modules[SERVICES_PACKAGE] = parent
    if location not in parent.__path__:
        parent.__path__.insert(0, location)
    module = importlib.import_module(f"{SERVICES_PACKAGE}.{instance}.{class_name}")
    cls = getattr(module, class_name, None)
    if cls is None:
        raise TaskLoadError(f"{expected} defines no class {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TaskLoadError(f"{expected}: {class_name} is not a subclass of zsvc.Task")
    return cls


class BusJoinError(Exception):
    """The subscription handshake did not complete within the task's start_timeout."""


def join_bus(spec: HostSpec) -> BusClient:
    """Connect to the runtime directory's bus pair, subscribed to the task's topic; return
    once the handshake proved that whatever is published from now on reaches the task."""
    bus = BusClient(spec.bus_pub, spec.bus_sub, topics=[spec.topic])
    try:
        bus.handshake(spec.handshake_timeout)
    except TimeoutError as exc:
        bus.close()
        raise BusJoinError(f"cannot join the bus at {spec.bus_sub}") from exc
    return bus


class Runtime:
    """The host side of a running task: what :class:`Task` methods call into.

    *bus* is None until the bus is joined (``HostSpec.join_after_setup``):
    :meth:`joined` joins it on first use.
    """

    def __init__(self, spec: HostSpec, bus: BusClient | None = None):
        self.spec = spec
        self.bus = bus
        self.stop_requested = False

    def joined(self) -> BusClient:
        """The bus, joined now if it was not yet (BusJoinError at the handshake's deadline)."""
        if self.bus is None:
            self.bus = join_bus(self.spec)
        return self.bus

    @property
    def transaction(self) -> str:
        return self.spec.transaction

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    @property
    def service_name(self) -> str:
        return self.spec.service_name

    def publish_update(self, result: str, items: dict[str, Any]) -> None:
        self.publish_control(LastAction.UPDATED, result, items)

    def publish_control(self, action: str, result: str, status: dict[str, Any]) -> None:
        """A control report about this task, with its header and device_action."""
        self.joined().publish(
            protocol.control_message(
                action,
                transaction=self.transaction,
                service_id=self.task_id,
                service_name=self.service_name,
                result=result,
                device_action=self.spec.device_action,
                pid=os.getpid(),
                status=status,
            )
        )

    def send(self, topic: str, action: str, content: dict[str, Any]) -> None:
        self.joined().publish(
            protocol.make_message(
                topic,
                action,
                transaction=self.transaction,
                service_id=self.task_id,
                service_name=self.service_name,
                content=content,
            )
        )

    def set_status(self, text: str) -> None:
        notify("STATUS=" + " ".join(text.splitlines()))

    def addressed_to_me(self, message: protocol.Message) -> bool:
        """A message on my topic for my transaction, naming me by id or by service name."""
        if message.topic != self.spec.topic or message.transaction != self.transaction:
            return False
        if message.service_id:
            return message.service_id == self.task_id
        return message.service_name == self.service_name


def notify(*assignments: str) -> None:
    """sd_notify that never kills a task: a daemon being restarted is not the task's fault."""
    try:
        sd_notify(*assignments, timeout=NOTIFY_TIMEOUT)
    except OSError as exc:
        log.debug("sd_notify(%s) failed: %s", assignments, exc)


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag plus a wake-up of the poll loop (self-pipe)."""

    def __init__(self, runtime: Runtime | None = None):
        self.runtime = runtime
        self.requested = False
        self.read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_fd)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if self.runtime is not None:
            self.runtime.stop_requested = True

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass


def run_loop(task: Task, runtime: Runtime, stop: _StopSignal) -> None:
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
    stop = _StopSignal()
    try:
        cls = load_task_class(spec.instance, spec.location)
    except Exception as exc:  # noqa: BLE001 - user code: any import error is the task's failure
        return _fail("cannot load the task class", exc, EXIT_SETUP_ERROR)
    bus: BusClient | None = None
    if not spec.join_after_setup:
        try:
            bus = join_bus(spec)
        except BusJoinError as exc:
            return _fail(str(exc), exc.__cause__ or exc, EXIT_SETUP_ERROR)
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
        code = _fail(str(exc), exc.__cause__ or exc, EXIT_SETUP_ERROR)
    except Exception as exc:  # noqa: BLE001 - user code: report any failure, never hide it
        code = _fail(f"{cls.__name__} failed", exc, EXIT_USER_ERROR)
    finally:
        if task is not None:
            try:
                task.teardown()
            except Exception as exc:  # noqa: BLE001 - user code
                failure = _fail("teardown failed", exc, EXIT_USER_ERROR)  # always reported
                code = code or failure
        if runtime.bus is not None:
            runtime.bus.close()
    return code


def _fail(what: str, exc: BaseException, code: int) -> int:
    log.error("%s:\n%s", what, "".join(traceback.format_exception(exc)).rstrip())
    notify(f"STATUS={what}: {type(exc).__name__}: {exc}".splitlines()[0])
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
