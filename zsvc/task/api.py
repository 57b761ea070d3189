"""The classes task authors subclass: :class:`Task` (looped) and :class:`SingleTask`.

A task is plain Python: the host (:mod:`zsvc.task.host`) creates it with the
context's configuration as typed keyword arguments, calls :meth:`Task.setup`,
reports readiness, then drives it. The task never touches sockets: it calls
:meth:`Task.publish` to report results (the seed's ``updated`` control
message) and :meth:`Task.set_status` to show a line in ``zsvc status``.

Example::

    from zsvc import Task

    class ServiceEchoAction(Task):
        def setup(self, period_s: float = 1.0, **config):
            self.interval = period_s

        def step(self):
            self.publish(time=time.time())
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from zsvc.protocol import Message


class Runtime(Protocol):
    """What a task needs from the host that runs it (:class:`zsvc.task.runtime.Runtime`).

    Described here rather than imported: the host imports this module to
    load and check task classes, so this module must not import the host.
    """

    stop_requested: bool

    @property
    def transaction(self) -> str: ...

    @property
    def task_id(self) -> str: ...

    @property
    def service_name(self) -> str: ...

    def publish_update(self, result: str, items: dict[str, Any]) -> None: ...

    def send(self, topic: str, action: str, content: dict[str, Any]) -> None: ...

    def set_status(self, text: str) -> None: ...


class Task:
    """A looped task: :meth:`step` runs every :attr:`interval` seconds until stopped."""

    interval: float = 1.0
    """Seconds between two calls of :meth:`step`; a task may change it at any time."""

    single: ClassVar[bool] = False

    def __init__(self, **config: Any):
        self.config: dict[str, Any] = dict(config)
        self._runtime: Runtime | None = None
        self.log = logging.getLogger(type(self).__name__)

    # --- what a task author overrides -----------------------------------

    def setup(self, **config: Any) -> None:
        """Prepare the task; receives the configuration. Readiness is reported after it returns."""

    def step(self) -> None:
        """One iteration of a looped task."""

    def on_message(self, message: Message) -> None:
        """A message addressed to this task arrived on its topic."""

    def teardown(self) -> None:
        """Release resources; called once when the task stops, also after an error."""

    # --- what a task author calls ----------------------------------------

    def publish(self, result: str = "success", **items: Any) -> None:
        """Report results as an ``updated`` control message (fires the on_update trigger)."""
        self._rt().publish_update(result, items)

    def send(self, topic: str, action: str, content: dict[str, Any] | None = None) -> None:
        """Publish any message on the bus, with this task's header."""
        self._rt().send(topic, action, content or {})

    def set_status(self, text: str) -> None:
        """Show *text* as the task's status line (sd_notify ``STATUS=``; a Thread task's
        goes to the daemon over the bus, since ``STATUS=`` would be its whole process's)."""
        self._rt().set_status(text)

    @property
    def stopping(self) -> bool:
        """True once the task has been asked to stop; long loops should check it.

        A Thread task cannot be killed on its own: checking this is the only way it stops.
        """
        return self._runtime is not None and self._runtime.stop_requested

    @property
    def transaction(self) -> str:
        return self._rt().transaction

    @property
    def task_id(self) -> str:
        return self._rt().task_id

    @property
    def service_name(self) -> str:
        return self._rt().service_name

    def _rt(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("this task is not running under a zsvc task host")
        return self._runtime


class SingleTask(Task):
    """A one-shot task: :meth:`run` runs once, then the task exits (``exited``)."""

    single: ClassVar[bool] = True

    def run(self) -> None:
        """The task's whole work."""
