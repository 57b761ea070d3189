"""The runner contract: how a task becomes a process, whatever supervises it.

Modelled on jupyter_client's kernel provisioners: one small abstract class
whose methods mirror ``subprocess.Popen`` (start, poll, signal, stop, kill),
plus :meth:`TaskHandle.describe` and :meth:`Runner.adopt` to find a running
task again after a daemon restart. The local runner (the daemon's own
supervisor) and the systemd runner (transient units) implement it; nothing
above the runner knows which one is in use.

A runner reports what happens through :class:`RunnerEvents`, in systemd's
terms: a task is *ready* (READY=1, or exec for a task that does not
notify), shows a *status* line, is *stopping*, has *exited* with an
:class:`ExitInfo` whose ``result`` is systemd's service Result.
"""

from __future__ import annotations

import abc
import enum
import signal as signals
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from zsvc.config.model import ProcessSettings
from zsvc.hostwire import INVOCATION_ENV
from zsvc.procs import descendants, find_invocation
from zsvc.states import Result, StartType

TaskKey = tuple[str, str]
"""(transaction, task id): how runners and the daemon name one task."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a runner needs to start one task, already resolved by the daemon."""

    transaction: str
    task_id: str
    unit: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    start_type: StartType
    start_timeout: float
    stop_timeout: float
    log_path: Path
    description: str = ""
    host_entry: bool = False
    """True when argv runs zsvc's task host: a runner may fork it from a warm process."""
    watchdog_sec: float | None = None
    """Kill the task (result ``watchdog``) when it sends no WATCHDOG=1 for this long."""
    service_name: str = ""
    process: ProcessSettings = field(default_factory=ProcessSettings)
    """User, limits and sandboxing of the task's processes: the runner applies each one
    or refuses the start (:class:`LaunchError`) saying what it is missing."""
    pid_file: str | None = None
    """A ``forking`` task's ``PIDFile=``: where its main process is read from."""
    start_secs: float = 0.0
    """A ``simple``/``exec`` task is ready only once it has run this long (supervisord's
    ``startsecs``); ending before is a failed start (:mod:`zsvc.runners.ends`)."""
    kill_signal: int = signals.SIGTERM
    """What :meth:`TaskHandle.stop` sends first."""
    final_kill_signal: int = signals.SIGKILL
    """What :meth:`TaskHandle.stop` sends after the stop timeout."""
    thread_host: LaunchSpec | None = None
    """Set for a Thread task: the launch of the process that runs its transaction's Thread
    tasks (:mod:`zsvc.runners.threads`); the task itself is a thread in it."""

    @property
    def key(self) -> TaskKey:
        return (self.transaction, self.task_id)

    @property
    def notify(self) -> bool:
        """True when the task reports its own readiness (READY=1)."""
        return self.start_type is StartType.NOTIFY

    @property
    def invocation(self) -> str:
        """This run's unique id (also in its environment): finds a run whose pid was lost."""
        return self.env.get(INVOCATION_ENV, "")


@dataclass(frozen=True)
class ExitInfo:
    """How a task's process ended."""

    result: Result
    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""

    @property
    def clean(self) -> bool:
        return self.result is Result.SUCCESS

    def describe(self) -> str:
        """Words for ``zsvc status`` and error messages."""
        if self.exit_code is not None:
            how = f"exited with status {self.exit_code}"
        elif self.signal is not None:
            how = f"killed by {_signal_name(self.signal)}"
        else:
            how = "ended"
        if self.result is Result.TIMEOUT and self.detail:
            # zsvc ended it: its reason ("no READY=1 within 3 s") leads, not the status of
            # a process that merely obeyed the SIGTERM ("exited with status 0").
            return f"{self.detail} ({self.result})" + (f"; {how}" if how != "ended" else "")
        text = f"{how} ({self.result})"
        return f"{text}: {self.detail}" if self.detail else text


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


class RunnerEvents(Protocol):
    """What a runner tells the daemon. Each callback runs in the daemon's event loop."""

    def on_ready(self, key: TaskKey) -> None: ...

    def on_status(self, key: TaskKey, text: str) -> None: ...

    def on_stopping(self, key: TaskKey) -> None: ...

    def on_main_pid(self, key: TaskKey, pid: int, description: dict[str, Any]) -> None: ...

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None: ...


@dataclass
class TaskHandle(abc.ABC):
    """One launched task (Popen-like). ``on_exit`` is reported exactly once per handle."""

    spec: LaunchSpec
    pid: int
    exit_info: ExitInfo | None = field(default=None, init=False)
    shared: ClassVar[bool] = False
    """True when the task's process is shared with other tasks (a Thread task's host):
    the monitor then does not count its resources once per task."""

    @property
    def key(self) -> TaskKey:
        return self.spec.key

    def poll(self) -> ExitInfo | None:
        """How the task ended, or None while it runs."""
        return self.exit_info

    @abc.abstractmethod
    async def wait(self) -> ExitInfo:
        """Wait for the task to end."""

    @abc.abstractmethod
    def send_signal(self, signum: int) -> None:
        """Signal the task's main process."""

    @abc.abstractmethod
    async def stop(self, timeout: float | None = None) -> ExitInfo:
        """SIGTERM, wait up to the stop timeout, then SIGKILL everything the task started."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL everything the task started, now."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What must be persisted to find this task again (see :meth:`Runner.adopt`)."""

    def processes(self) -> list[int]:
        """Every process of the task now, main one first (what the monitor samples).

        This default walks the main process's descendants; a runner that knows
        better (a cgroup) overrides it. Called outside the event loop: it only reads.
        """
        return [self.pid, *sorted(descendants(self.pid))]


class LogSource(enum.Enum):
    """Where the output of a runner's tasks can be read (``zsvc logs``).

    The daemon asks the runner rather than testing its name: a wrapping runner
    (Thread tasks) answers for the one it wraps, and a new runner says where
    its tasks write without a change to the daemon.
    """

    FILES = "files"
    """Each task's own file, :attr:`LaunchSpec.log_path`, appended to by the task."""
    SYSTEM_JOURNAL = "system-journal"
    """journald, through the system manager (``journalctl``), with zsvc's fields."""
    USER_JOURNAL = "user-journal"
    """journald, through the user's own manager (``journalctl --user``), with zsvc's fields."""

    @property
    def journal(self) -> bool:
        """Whether the output is in the journal (read with ``journalctl``), not in files."""
        return self is not LogSource.FILES

    @property
    def user(self) -> bool:
        """Whether it is the user manager's journal (``journalctl --user``)."""
        return self is LogSource.USER_JOURNAL


class Runner(abc.ABC):
    """Turns launch specs into supervised processes."""

    name: str = "abstract"
    """The runner's word in ``zsvc ping`` and logs; never tested by the daemon (ask below)."""
    log_source: LogSource = LogSource.FILES
    """Where its tasks' output can be read: the daemon tells ``zsvc logs`` where to look."""

    @abc.abstractmethod
    async def open(self, events: RunnerEvents) -> None:
        """Prepare (bind sockets, connect to the bus of systemd, …)."""

    @abc.abstractmethod
    async def start(self, spec: LaunchSpec) -> TaskHandle:
        """Launch a task; raise :class:`LaunchError` when it could not even be started."""

    @abc.abstractmethod
    async def adopt(self, spec: LaunchSpec, description: Mapping[str, Any]) -> TaskHandle | None:
        """Find a task started by an earlier daemon; None when it is gone.

        Raises :class:`NotAdoptable` when the task cannot be taken over, alive or not.
        """

    def find_unsaved_run(self, invocation: str) -> dict[str, Any] | None:
        """A run whose description never reached the table (the daemon died between the
        start and the save), found by its invocation id: what :meth:`TaskHandle.describe`
        would have said, enough for :meth:`adopt`; None when it is not found.

        This default looks for the id in the processes' environments
        (:data:`~zsvc.hostwire.INVOCATION_ENV`), which every executed task carries; a
        runner that records its runs some other way looks there first.
        """
        return find_invocation(invocation) if invocation else None

    def run_saved(self, handle: TaskHandle) -> None:  # noqa: B027 - a hook: most keep nothing
        """The daemon has persisted ``handle.describe()``: whatever the runner kept so that
        a successor could find the run without it (:meth:`find_unsaved_run`) may go.
        Nothing, by default."""

    async def forget(self, transaction: str) -> None:  # noqa: B027 - a hook: most hold nothing
        """The daemon forgot *transaction* (its tasks are all down): release what the
        runner kept for it. Nothing, by default: a runner that keeps something per
        transaction (a thread host, say) overrides this."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the runner's resources (tasks are stopped by the daemon before)."""


class RunnerUnavailable(Exception):
    """A runner cannot work here (no systemd, no bus): ``--runner auto`` picks another."""


class LaunchError(Exception):
    """A task could not be started at all (exec failed, log not writable, …)."""

    def __init__(self, message: str, info: ExitInfo):
        super().__init__(message)
        self.info = info


class NotAdoptable(Exception):
    """:meth:`Runner.adopt` cannot take this task over, though it may be alive; says why.

    A Thread task's thread, say: its host of the last daemon is stopped, since
    nobody can know what became of its threads while no daemon listened.
    """
