"""What both task hosts share: loading a task, its runtime, notifications, the stop signal.

:mod:`zsvc.task.host` runs one task in a process, :mod:`zsvc.task.threads`
runs a transaction's Thread tasks in one; both build on this module, which
imports neither of them (so they do not import each other), and the task
API (:mod:`zsvc.task.api`) only knows the shape of a :class:`Runtime`.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import traceback
import types
from typing import Any

from zsvc import protocol
from zsvc.client import BusClient
from zsvc.hostwire import HostSpec, task_module_path
from zsvc.notify import sd_notify
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
    """Tell the task's manager how it is (READY, STATUS, WATCHDOG, STOPPING): the one way
    the task side sends sd_notify, with its one error policy.

    * no ``$NOTIFY_SOCKET`` (run by hand): nothing is sent;
    * any failure to send (the daemon is being restarted, its queue stayed full
      past :data:`NOTIFY_TIMEOUT` in a stop of hundreds of tasks): a debug line,
      and the task goes on. A daemon being restarted is not the task's fault,
      and the one who can act on a lost notification is the manager, which sees
      it (no READY within start_timeout, no WATCHDOG=1): a warning in every
      task's log for the same event would only be noise;
    * an assignment the protocol cannot carry raises ValueError: a bug, not a state.

    The datagram is UTF-8, a fresh socket per call, connected, with a timeout
    (:func:`zsvc.notify.sd_notify`): why ``sdnotify.SystemdNotifier``, which
    encodes Latin-1, keeps one socket and has no timeout, does not serve here.
    """
    try:
        sd_notify(*assignments, timeout=NOTIFY_TIMEOUT)
    except OSError as exc:
        log.debug("sd_notify(%s) failed: %s", assignments, exc)


class StopSignal:
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


def failure_reason(what: str, exc: BaseException) -> str:
    """Log the traceback (the task's log) and return the one-line reason for its status."""
    log.error("%s:\n%s", what, "".join(traceback.format_exception(exc)).rstrip())
    return f"{what}: {type(exc).__name__}: {exc}".splitlines()[0]


def fail(what: str, exc: BaseException, code: int) -> int:
    """A failure of the whole host process: logged, its first line as STATUS=; returns *code*."""
    notify("STATUS=" + failure_reason(what, exc))
    return code
