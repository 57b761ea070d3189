"""The typed model of a context file (``Context-*.xml``).

The loader (:mod:`zsvc.config.loader`) builds these from XML; everything
else in zsvc reads only these objects, never raw XML, so the original's
converter quirks (a single TaskService being a dict instead of a list,
``bool("0")`` being true, every number a string) cannot come back.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsvc.states import RestartMode, ServiceType, StartType, TaskAction, TriggerEvent

DEFAULT_SUB_ENDPOINT = "tcp://127.0.0.1:5556"
"""Where subscribers connect (the seed's ``FrontEndEndpoint``, ``sub_port``), when a context
writes only the publishers' side."""
DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:5557"
"""Where publishers connect (the seed's ``BackendEndpoint``, ``pub_port``), when a context
writes only the subscribers' side."""

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
    seed's ``FrontBind`` and ``BackendBind``). A context that writes none has
    none (every field None): zsvc's own processes use the runtime directory's
    ``ipc://`` pair, so nothing is bound for it. A context that writes some has
    all four (the loader derives the rest).
    """

    sub_connect: str | None = None
    pub_connect: str | None = None
    sub_bind: str | None = None
    pub_bind: str | None = None

    @property
    def bind_pair(self) -> tuple[str, str] | None:
        """(publishers', subscribers') endpoints the daemon binds for the context, or None."""
        if self.pub_bind is None or self.sub_bind is None:
            return None
        return (self.pub_bind, self.sub_bind)


@dataclass(frozen=True)
class ProcessSettings:
    """What a runner applies to every process of a task (systemd.exec(5),
    systemd.resource-control(5)); each ``None``/``False`` leaves what the daemon has.

    Names and meanings are systemd's (``User=``, ``UMask=``, ``MemoryMax=``, …), so
    that an operator who knows one knows the other; the runners carry each one out
    (the transient unit's property, or the local runner's own means) or refuse the
    start, saying what is missing: a setting is never silently ignored.
    """

    user: str | None = None
    """``User=``: a user name or uid; its primary group unless ``group`` is given."""
    group: str | None = None
    """``Group=``: a group name or gid."""
    supplementary_groups: tuple[str, ...] = ()
    """``SupplementaryGroups=``: besides the user's own groups (initgroups)."""
    umask: int | None = None
    """``UMask=``."""
    nice: int | None = None
    """``Nice=``: absolute, -20 … 19."""
    limit_nofile: int | None = None
    """``LimitNOFILE=``: soft and hard open-files limit. Unset: the soft limit the
    daemon was started with (the daemon raises its own)."""
    memory_max: int | None = None
    """``MemoryMax=``, in bytes: the task's processes together (a cgroup)."""
    cpu_quota: float | None = None
    """``CPUQuota=``, in percent of one CPU (``200`` is two CPUs): a cgroup."""
    tasks_max: int | None = None
    """``TasksMax=``: processes and threads of the task together (a cgroup)."""
    no_new_privileges: bool = False
    """``NoNewPrivileges=``: no set-uid, set-gid or file capability gains."""
    private_tmp: bool = False
    """``PrivateTmp=``: a /tmp and /var/tmp of the task's own, empty at each start."""

    @property
    def needs_cgroup(self) -> bool:
        """True when a setting is a cgroup limit (the local runner needs a cgroup)."""
        return any(v is not None for v in (self.memory_max, self.cpu_quota, self.tasks_max))


@dataclass(frozen=True)
class EnvironmentFile:
    """``EnvironmentFile=``: ``KEY=value`` lines read at each start."""

    path: Path
    optional: bool = False
    """systemd's ``-`` prefix: a missing file is no error."""


@dataclass(frozen=True)
class ExecSettings:
    """A task's execution settings as written in its context.

    The daemon resolves ``environment``, ``environment_files`` and
    ``working_directory`` into the launch's environment and directory
    (:mod:`zsvc.daemon.launch`); ``process`` goes to the runner as it is.
    """

    process: ProcessSettings = field(default_factory=ProcessSettings)
    environment: tuple[tuple[str, str], ...] = ()
    """``Environment=``, in the file's order, each name once; the environment files
    override it, as systemd's ``EnvironmentFile=`` overrides ``Environment=``."""
    environment_files: tuple[EnvironmentFile, ...] = ()
    working_directory: Path | None = None
    """``WorkingDirectory=``; unset: the task's location or the context file's directory."""


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
    start_type: StartType = StartType.EXEC
    """When the task counts as started; always ``notify`` for a Python task."""
    pid_file: Path | None = None
    """``PIDFile=`` of a ``forking`` task: where its daemon writes its pid."""
    start_secs: float = 0.0
    """Minimal uptime (supervisord's ``startsecs``): a ``simple``/``exec`` task is ready
    only once it has run this long, and a start fails when it ends before."""
    kill_signal: int = signal.SIGTERM
    """``KillSignal=``: what a stop sends first."""
    final_kill_signal: int = signal.SIGKILL
    """``FinalKillSignal=``: what a stop sends after ``stop_timeout``."""
    exec: ExecSettings = field(default_factory=ExecSettings)
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
    def notify(self) -> bool:
        """True when the task reports its own readiness (READY=1)."""
        return self.start_type is StartType.NOTIFY

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
