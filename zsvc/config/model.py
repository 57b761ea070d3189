"""The typed model of a context file (``Context-*.xml``).

The loader (:mod:`zsvc.config.loader`) builds these from XML; everything
else in zsvc reads only these objects, never raw XML, so the original's
converter quirks (a single TaskService being a dict instead of a list,
``bool("0")`` being true, every number a string) cannot come back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsvc.states import RestartMode, ServiceType, TaskAction, TriggerEvent

DEFAULT_SUB_ENDPOINT = "tcp://127.0.0.1:5556"
"""Where subscribers connect (the seed's ``FrontEndEndpoint``, ``sub_port``)."""
DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:5557"
"""Where publishers connect (the seed's ``BackendEndpoint``, ``pub_port``)."""

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Trigger:
    """What happens when a task reports one event: ``action`` on task ``call``."""

    action: TaskAction
    call: str


@dataclass(frozen=True)
class RestartPolicy:
    """How a task is restarted when it ends on its own, and how often at most.

    Delays grow exponentially from ``delay_min`` to ``delay_max`` (with
    ``jitter``, a fraction of the delay, randomised both ways) and go back
    to ``delay_min`` once a run lasted ``stable_sec``. More than
    ``limit_burst`` automatic starts within ``limit_interval`` seconds
    (restarts and trigger starts alike) end in ``failed/start-limit-hit``.
    """

    mode: RestartMode = RestartMode.NO
    delay_min: float = 0.1
    delay_max: float = 30.0
    jitter: float = 0.1
    stable_sec: float = 10.0
    limit_burst: int = 5
    limit_interval: float = 10.0


@dataclass(frozen=True)
class BusEndpoints:
    """The four endpoints of the seed's context, with their inverted names resolved.

    ``pub_connect``/``sub_connect`` are where clients connect;
    ``pub_bind``/``sub_bind`` are what the daemon's device binds (the
    seed's ``FrontBind`` and ``BackendBind``).
    """

    sub_connect: str = DEFAULT_SUB_ENDPOINT
    pub_connect: str = DEFAULT_PUB_ENDPOINT
    sub_bind: str = DEFAULT_SUB_ENDPOINT
    pub_bind: str = DEFAULT_PUB_ENDPOINT


@dataclass(frozen=True)
class TaskSpec:
    """One ``<TaskService>`` of a context.

    ``configuration`` holds the user's keyword arguments, already typed
    (ints, floats, bools, strings, nested dicts and lists). The keys with a
    meaning for zsvc (``device_action``, ``location``) are lifted out of it.
    """

    id: str
    instance: str
    service_name: str
    service_type: ServiceType = ServiceType.PROCESS
    topic: str = "process"
    description: str = ""
    device_action: str = ""
    entry: TriggerEvent = TriggerEvent.ON_START
    triggers: Mapping[TriggerEvent, Trigger] = field(default_factory=dict)
    configuration: Mapping[str, Any] = field(default_factory=dict)
    location: Path | None = None
    command: tuple[str, ...] | None = None
    notify: bool = False
    start_timeout: float = DEFAULT_START_TIMEOUT
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    after: tuple[str, ...] = ()
    """Task ids that must be ready before this task starts (and stop after it)."""
    watchdog_sec: float | None = None
    """A task that sends no WATCHDOG=1 for this long is killed (result ``watchdog``)."""
    line: int = 0

    @property
    def starts_with_transaction(self) -> bool:
        """True when the task starts with its transaction (entry trigger on_start)."""
        return self.entry is TriggerEvent.ON_START

    @property
    def is_command(self) -> bool:
        """True for a plain executable rather than a Python task class."""
        return self.command is not None


@dataclass(frozen=True)
class Context:
    """A parsed context file: the configuration of one transaction."""

    path: Path
    context_id: str
    log_name: str
    endpoints: BusEndpoints
    tasks: tuple[TaskSpec, ...]

    def task(self, task_id: str) -> TaskSpec:
        """The task named *task_id*; KeyError when there is none."""
        for spec in self.tasks:
            if spec.id == task_id:
                return spec
        raise KeyError(task_id)

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(spec.id for spec in self.tasks)
