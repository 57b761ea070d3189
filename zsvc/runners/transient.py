"""The pure half of the systemd runner: what to send to systemd, and what its answers mean.

No D-Bus, no clock, no process here: :mod:`zsvc.runners.systemd` does the
I/O and calls these functions, which the unit tests check against the facts
in ``shared/research/systemd-dbus.md`` (systemd 252):

* property names over D-Bus are the ``…USec`` ones, in µs (``t``);
  ``LogExtraFields`` is ``aay``; structs travel as lists (dbus-fast 1.84
  refuses tuples);
* with ``CollectMode=inactive-or-failed`` a failed unit is gone the moment
  it fails, so the exit status exists only in the ``PropertiesChanged``
  signal of its Service interface: :class:`UnitView` folds those signals;
* dbus-fast 1.84 (Debian 12) marshals a non-ASCII string with a wrong
  length and the bus drops the connection: :func:`wire_problem` finds what
  must not be sent with such a library;
* the execution settings (issue 14), verified the same way on 252 in the box
  (accepted by StartTransientUnit, read back with ``systemctl show``, and seen
  from inside the task in ``/proc/<pid>/status``, ``limits``, ``stat``,
  ``mountinfo``): ``User``/``Group`` ``s``, ``SupplementaryGroups`` ``as``,
  ``UMask`` ``u``, ``Nice`` ``i``, ``LimitNOFILE`` + ``LimitNOFILESoft`` ``t``,
  ``MemoryMax`` ``t`` (bytes), ``CPUQuotaPerSecUSec`` ``t`` (50 % → 500000,
  shown ``500ms``), ``TasksMax`` ``t``, ``NoNewPrivileges`` ``b``,
  ``PrivateTmp`` ``b``, ``KillSignal``/``FinalKillSignal`` ``i``, ``Type`` ``s``
  (simple, exec, notify, forking), ``PIDFile`` ``s``. A wrong signature fails
  the whole StartTransientUnit (``ENXIO … Unexpected message contents``), so
  each is pinned by a unit test; the table per setting is ``docs/runners.md``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zsvc.config.model import ProcessSettings
from zsvc.naming import INSTANCE_LENGTH
from zsvc.runners.base import ExitInfo, LaunchSpec
from zsvc.runners.exitcodes import SETUP_FAILURES
from zsvc.runners.localsettings import CONTROLLERS, SETTING_OF, cgroup_limits
from zsvc.states import DOWN, HAS_PROCESS, Result, StartType, State

UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"

LOG_FIELDS = ("ZSVC_TRANSACTION", "ZSVC_TASK", "ZSVC_SERVICE")
"""Journal fields on every line of a task (``journalctl ZSVC_TRANSACTION=<id>``)."""

MANAGER_ENV = frozenset(
    {
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "SYSTEMD_EXEC_PID",
        "MANAGERPID",
        "MAINPID",
        "RUNTIME_DIRECTORY",
        "STATE_DIRECTORY",
        "CACHE_DIRECTORY",
        "LOGS_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
        "CREDENTIALS_DIRECTORY",
    }
)
"""What systemd set for the daemon's own unit. ``Environment=`` overrides what systemd sets
for the task, so passing the daemon's values on would lie to the task (a wrong
``NOTIFY_SOCKET``, ``INVOCATION_ID`` or ``JOURNAL_STREAM``)."""

RELOADING = "reloading"
"""systemd's one ``ActiveState`` zsvc has no word for (a unit reloading its configuration)."""
ACTIVE_STATES = frozenset({*HAS_PROCESS, RELOADING})
"""``ActiveState`` values of a unit whose process may still run (zsvc's states are
systemd's words: :mod:`zsvc.states`)."""

# siginfo codes in ExecMainCode (waitid(2)).
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3

_RESULTS = {result.value: result for result in Result}
_RESULT_ALIASES = {
    "oom-kill": Result.SIGNAL,
    "exec-condition": Result.EXIT_CODE,
    "core-dump": Result.CORE_DUMP,
}


@dataclass(frozen=True)
class Prop:
    """One ``(sv)`` entry of StartTransientUnit: a name, a D-Bus signature, a value."""

    name: str
    signature: str
    value: Any


def usec(seconds: float) -> int:
    """Seconds as systemd's µs (``t``); at least 1 µs, since 0 means "no limit"."""
    return max(1, round(seconds * 1_000_000))


def unit_path(name: str) -> str:
    """The unit's object path, computed as sd_bus_path_encode does (no GetUnit round trip)."""
    encoded = "".join(
        chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else f"_{byte:02x}"
        for byte in name.encode()
    )
    return UNIT_PATH_PREFIX + (encoded or "_")


def task_environment(env: Mapping[str, str]) -> list[str]:
    """``Environment=`` for a task: the daemon's view minus what systemd sets per unit."""
    return [f"{key}={value}" for key, value in sorted(env.items()) if key not in MANAGER_ENV]


def resolve_program(program: str, env: Mapping[str, str], cwd: str) -> str | None:
    """*program* as an absolute path, looked up as the local runner's exec does, or None.

    systemd would search its own fixed path for a bare name; resolving it here
    with the task's ``PATH`` (and the working directory for a relative path)
    makes both runners run the same file, and refuses a missing program
    before anything is started (exit status 203, as the local runner).
    """
    if not program:
        return None
    if "/" in program:
        path = os.path.normpath(os.path.join(cwd, program))
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    for folder in os.get_exec_path(dict(env)):
        path = os.path.normpath(os.path.join(cwd, folder, program))
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def syslog_identifier(spec: LaunchSpec) -> str:
    """What ``journalctl`` shows before each line: ``<transaction>/<task>``."""
    return f"{spec.transaction}/{spec.task_id}"


def log_fields(spec: LaunchSpec, service_name: str) -> dict[str, str]:
    """The journal fields of a task's lines, shared by its unit and the daemon's own events."""
    return dict(zip(LOG_FIELDS, (spec.transaction, spec.task_id, service_name), strict=True))


def transient_properties(
    spec: LaunchSpec, program: str, slice_unit: str, service_name: str
) -> list[Prop]:
    """Every property of a task's transient unit (systemd 252 names and signatures).

    ``Restart=no``: zsvc's engine owns the restart policy and the triggers,
    which must see every end. ``KillMode=control-group``: whatever the task
    forked dies with it, as with the local runner.
    """
    fields = log_fields(spec, service_name)
    props = [
        Prop(
            "Description", "s", spec.description or f"zsvc task {spec.transaction}/{spec.task_id}"
        ),
        Prop("Slice", "s", slice_unit),
        *start_properties(spec),
        Prop("NotifyAccess", "s", "main"),
        Prop("ExecStart", "a(sasb)", [[program, list(spec.argv), False]]),
        Prop("WorkingDirectory", "s", spec.cwd),
        Prop("Environment", "as", task_environment(spec.env)),
        Prop("TimeoutStartUSec", "t", usec(spec.start_timeout)),
        Prop("TimeoutStopUSec", "t", usec(spec.stop_timeout)),
        Prop("KillMode", "s", "control-group"),
        Prop("Restart", "s", "no"),
        Prop("RemainAfterExit", "b", False),
        Prop("CollectMode", "s", "inactive-or-failed"),
        Prop("SyslogIdentifier", "s", syslog_identifier(spec)),
        Prop("LogExtraFields", "aay", [f"{k}={v}".encode() for k, v in fields.items()]),
    ]
    if spec.watchdog_sec is not None and spec.watchdog_sec > 0:
        props.append(Prop("WatchdogUSec", "t", usec(spec.watchdog_sec)))
    props += kill_properties(spec)
    props += process_properties(spec.process)
    return props


def start_properties(spec: LaunchSpec) -> list[Prop]:
    """``Type=`` (zsvc's start types are systemd's words) and a forking task's ``PIDFile=``.

    Without a PID file systemd guesses a forking task's main process (the one
    left in its cgroup: ``GuessMainPID=yes``), as the issue asks.
    """
    props = [Prop("Type", "s", spec.start_type.value)]
    if spec.start_type is StartType.FORKING and spec.pid_file:
        props.append(Prop("PIDFile", "s", spec.pid_file))
    return props


def kill_properties(spec: LaunchSpec) -> list[Prop]:
    """``KillSignal=``/``FinalKillSignal=``, sent only when not systemd's defaults.

    StopUnit sends KillSignal to the cgroup, and FinalKillSignal after
    ``TimeoutStopUSec`` (systemd.kill(5)): the runner never signals a stop itself.
    """
    props = []
    if spec.kill_signal != signal.SIGTERM:
        props.append(Prop("KillSignal", "i", int(spec.kill_signal)))
    if spec.final_kill_signal != signal.SIGKILL:
        props.append(Prop("FinalKillSignal", "i", int(spec.final_kill_signal)))
    return props


def process_properties(settings: ProcessSettings) -> list[Prop]:
    """The unit properties of a task's :class:`ProcessSettings` (each unset one: none).

    An unset ``limit_nofile`` sends nothing: systemd then gives the task its
    default soft limit of 1024, as the local runner gives back the daemon's
    starting soft limit (select() breaks past 1024). ``LimitNOFILE`` over D-Bus is
    the hard limit and ``LimitNOFILESoft`` the soft one; both get the value,
    as ``LimitNOFILE=N`` in a unit file does. ``CPUQuota=`` travels as
    ``CPUQuotaPerSecUSec``: CPU time per second of wall time, so 1 % is 10,000 µs.
    """
    props: list[Prop] = []
    if settings.user is not None:
        props.append(Prop("User", "s", settings.user))
    if settings.group is not None:
        props.append(Prop("Group", "s", settings.group))
    if settings.supplementary_groups:
        props.append(Prop("SupplementaryGroups", "as", list(settings.supplementary_groups)))
    if settings.umask is not None:
        props.append(Prop("UMask", "u", settings.umask))
    if settings.nice is not None:
        props.append(Prop("Nice", "i", settings.nice))
    if settings.limit_nofile is not None:
        props.append(Prop("LimitNOFILE", "t", settings.limit_nofile))
        props.append(Prop("LimitNOFILESoft", "t", settings.limit_nofile))
    if settings.memory_max is not None:
        props.append(Prop("MemoryMax", "t", settings.memory_max))
    if settings.cpu_quota is not None:
        props.append(Prop("CPUQuotaPerSecUSec", "t", cpu_quota_usec(settings.cpu_quota)))
    if settings.tasks_max is not None:
        props.append(Prop("TasksMax", "t", settings.tasks_max))
    if settings.no_new_privileges:
        props.append(Prop("NoNewPrivileges", "b", True))
    if settings.private_tmp:
        props.append(Prop("PrivateTmp", "b", True))
    return props


def controller_refusal(
    task: str, settings: ProcessSettings, usable: frozenset[str] | None
) -> str | None:
    """Why systemd cannot enforce *settings*' cgroup limits, having only the *usable*
    controllers; None when it can, or when what it has is unknown (*usable* None).

    systemd accepts ``MemoryMax=`` and the others where it has no controller for them
    and then enforces nothing (a container on a cgroup1 host gets those hierarchies
    read-only: verified in the box), so the runner refuses, as the local runner does.
    """
    if usable is None or not settings.needs_cgroup:
        return None
    for name in cgroup_limits(settings):
        controller = CONTROLLERS[name]
        if controller not in usable:
            return (
                f"task {task!r}: {SETTING_OF[name]} needs the {controller} controller, which"
                f" systemd does not have here (it has: {' '.join(sorted(usable)) or 'none'}),"
                " so the limit would not be enforced: run zsvc where systemd has it (cgroup2,"
                " or a writable cgroup1 hierarchy; a container on a cgroup1 host has neither)"
            )
    return None


def cpu_quota_usec(percent: float) -> int:
    """``CPUQuota=`` in percent of one CPU as systemd's µs of CPU per second (at least 1)."""
    return max(1, round(percent * 10_000))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def wire_problem(props: Iterable[Prop]) -> str | None:
    """The first property with a non-ASCII string (for a library that cannot send one)."""
    for prop in props:
        if any(not text.isascii() for text in _strings(prop.value)):
            return prop.name
    return None


def ascii_safe(props: list[Prop]) -> list[Prop]:
    """*props* with the free text (Description) escaped to ASCII; the rest unchanged."""
    return [
        Prop(p.name, p.signature, p.value.encode("ascii", "backslashreplace").decode())
        if p.name == "Description" and isinstance(p.value, str)
        else p
        for p in props
    ]


def exit_info(result: str, code: int, status: int) -> ExitInfo:
    """zsvc's :class:`ExitInfo` for a service's ``Result``/``ExecMainCode``/``ExecMainStatus``.

    The same words the local runner uses: a clean stop by SIGTERM is
    ``success`` with the signal, an exit is an exit status, a kill a signal.
    """
    verdict = _RESULTS.get(result) or _RESULT_ALIASES.get(result)
    detail = "" if verdict is not None else f"systemd result {result}"
    if verdict is None or verdict is Result.LOST:  # LOST is zsvc's word, never systemd's
        verdict = Result.RESOURCES
    if result == "oom-kill":
        detail = "killed by the out-of-memory killer"
    if code == CLD_EXITED:
        if verdict is Result.PROTOCOL:
            detail = detail or "exited before READY=1"
        return ExitInfo(verdict, exit_code=status, detail=detail)
    if code in (CLD_KILLED, CLD_DUMPED):
        if code == CLD_DUMPED and verdict is Result.SIGNAL:
            verdict = Result.CORE_DUMP
        return ExitInfo(verdict, signal=status, detail=detail)
    return ExitInfo(verdict, detail=detail or "the main process never ran")


def run_verdict(info: ExitInfo, spec: LaunchSpec, stop_requested: bool) -> ExitInfo:
    """systemd's verdict on a run (:func:`exit_info`) in the words both runners use.

    * A stop that ends the task by its own ``kill_signal`` is a clean stop: systemd
      counts only SIGHUP, SIGINT, SIGTERM and SIGPIPE as clean (systemd.service(5),
      ``SuccessExitStatus=``; SIGQUIT read ``signal``, verified on 252), but the task
      did what it was asked. Only a stop zsvc asked for: the same signal from
      elsewhere is still a failure.
    * A ``forking`` task whose starter failed: systemd keeps the exit status of the
      main process only (``ExecMainStatus``), and the starter is its control
      process, whose status is in the journal alone (the unit is collected).
    """
    if stop_requested and info.result is Result.SIGNAL and info.signal == spec.kill_signal:
        return ExitInfo(Result.SUCCESS, signal=info.signal, detail=info.detail)
    if spec.start_type is StartType.FORKING and info.exit_code is None and info.signal is None:
        return ExitInfo(info.result, detail=_forking_failure(info.result, spec))
    return info


def _forking_failure(result: Result, spec: LaunchSpec) -> str:
    """Why a forking task never had a main process, as far as systemd's signals tell."""
    if result is not Result.TIMEOUT:
        return "its starting process failed (Type=forking; its exit status: journalctl -u UNIT)"
    why = f"or wrote no PID file {spec.pid_file}" if spec.pid_file else "or left no process"
    return f"no main process within {spec.start_timeout:g} s: the starter did not exit {why}"


def unwrap(properties: Mapping[str, Any]) -> dict[str, Any]:
    """``a{sv}`` as plain values (dbus-fast gives Variants; 1.84 lists, 5.x tuples)."""
    return {name: getattr(value, "value", value) for name, value in properties.items()}


@dataclass
class UnitView:
    """What zsvc knows of one unit, folded from its PropertiesChanged signals.

    systemd sends every property of an interface in each signal, often
    twice in a row: :meth:`update` returns only what changed. The Service
    values (MainPID, Result, ExecMainCode, ExecMainStatus, StatusText) come
    *before* the Unit's ActiveState in each pair, so when the unit turns
    inactive or failed the exit status is already here.
    """

    active_state: str = ""
    sub_state: str = ""
    job: bool = False
    main_pid: int = 0
    control_pid: int = 0
    """A ``forking`` task's starter, until it exits (systemd's control process)."""
    result: str = "success"
    exec_code: int = 0
    exec_status: int = 0
    status_text: str = ""
    invocation: str = ""
    seen_running: bool = False
    """Seen activating/active/deactivating: a later inactive means the run ended."""
    changed: set[str] = field(default_factory=set)

    def update(self, interface: str, properties: Mapping[str, Any]) -> set[str]:
        """Fold one signal (or a GetAll) in; the names of the fields that changed."""
        values = unwrap(properties)
        changed: set[str] = set()

        def take(attribute: str, key: str, convert: Any) -> None:
            if key in values:
                new = convert(values[key])
                if new != getattr(self, attribute):
                    setattr(self, attribute, new)
                    changed.add(attribute)

        if interface.endswith(".Service"):
            take("main_pid", "MainPID", int)
            take("control_pid", "ControlPID", int)
            take("result", "Result", str)
            take("exec_code", "ExecMainCode", int)
            take("exec_status", "ExecMainStatus", int)
            take("status_text", "StatusText", str)
        elif interface.endswith(".Unit"):
            take("active_state", "ActiveState", str)
            take("sub_state", "SubState", str)
            take("job", "Job", _has_job)
            take("invocation", "InvocationID", _hex_id)
            if self.active_state in ACTIVE_STATES:
                self.seen_running = True
        return changed

    @property
    def ended(self) -> bool:
        """The run is over: inactive or failed after running, or with no start job pending."""
        if self.active_state not in DOWN:
            return False
        return self.seen_running or (self.active_state == State.FAILED and not self.job)

    def exit(self) -> ExitInfo:
        return exit_info(self.result, self.exec_code, self.exec_status)

    @property
    def exec_succeeded(self) -> bool:
        """The main process ran the program: it ended, but not with one of systemd's own
        set-up failures (exit statuses 200-243: chdir, exec, user, cgroup, …)."""
        if self.exec_code == CLD_EXITED:
            return not SETUP_FAILURES[0] <= self.exec_status <= SETUP_FAILURES[1]
        return self.exec_code in (CLD_KILLED, CLD_DUMPED)


def _has_job(value: Any) -> bool:
    """``Job`` is ``(uo)``: (0, "/") when no job is pending."""
    try:
        return int(value[0]) != 0
    except (TypeError, ValueError, IndexError):
        return False


def _hex_id(value: Any) -> str:
    return bytes(value).hex() if isinstance(value, bytes | bytearray | list) else str(value)


def parse_unit_name(name: str) -> tuple[str, str, str] | None:
    """(instance, transaction, task) of a ``zsvc-<instance>-<tx>-<task>.service`` name with
    escaped ids, or None; the instance is empty for a name made before instances existed
    (``zsvc-<tx>-<task>.service``). An id cut to fit the length limit reads back cut."""
    if not (name.startswith("zsvc-") and name.endswith(".service")):
        return None
    parts = name[len("zsvc-") : -len(".service")].split("-")
    if len(parts) == 2:
        parts.insert(0, "")
    elif len(parts) != 3 or len(parts[0]) != INSTANCE_LENGTH:
        return None
    try:
        return parts[0], unescape(parts[1]), unescape(parts[2])
    except ValueError:
        return None


def unescape(value: str) -> str:
    """The inverse of :func:`zsvc.naming.systemd_escape` (``systemd-escape --unescape``)."""
    out = bytearray()
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and value[index + 1 : index + 2] == "x":
            out.append(int(value[index + 2 : index + 4], 16))
            index += 4
        elif char == "-":
            out.append(ord("/"))
            index += 1
        else:
            out.extend(char.encode())
            index += 1
    return out.decode()
