"""How a task of a transaction becomes a launch spec: the runner's whole instruction.

The daemon decides everything about a run here, before any runner sees it:
the program (the task's ``<command>``, or zsvc's task host for a Python
class), its environment, working directory, readiness protocol, timeouts and
log, and for a Thread task the launch of the process its thread runs in.
A runner only carries a :class:`~zsvc.runners.base.LaunchSpec` out.

These functions do little I/O: ``stat`` calls (does the task's location exist,
does its module, its working directory), user and group look-ups, and reading
the task's environment files, which systemd too reads at each start; they are
tested without a daemon.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import resource
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from zsvc.config.envfile import EnvFileError, parse_environment_file
from zsvc.config.model import Context, EnvironmentFile, ProcessSettings, TaskSpec
from zsvc.daemon import identity
from zsvc.daemon.access import ROOT, Principal
from zsvc.daemon.asowner import Reader, reader_for
from zsvc.daemon.refusals import log_refusal
from zsvc.errors import OperationFailed
from zsvc.hostwire import (
    INVOCATION_ENV,
    SPEC_ENV,
    THREAD_HOST_ID,
    HostSpec,
    ThreadGroupSpec,
    task_module_path,
)
from zsvc.naming import unit_name
from zsvc.paths import RuntimeLayout, StateLayout
from zsvc.runners.base import ExitInfo, LaunchError, LaunchSpec
from zsvc.runners.exitcodes import EXIT_USER
from zsvc.states import Result, ServiceType, StartType

HOST_STOP_MARGIN = 5.0
"""A thread host's stop timeout beyond its longest task's: time to tear down and report."""

SUPERVISOR_ENV = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
"""What systemd gave the daemon about itself; a task must not inherit it."""


class MayRunAs(Protocol):
    """Whether the daemon's settings grant an owner an identity (a user name with *user*,
    else a group name): :meth:`zsvc.daemon.access.AccessRules.may_run_as`."""

    def __call__(self, principal: Principal, identity: str, *, user: bool = False) -> bool: ...


def grants_nothing(owner: Principal, identity: str, *, user: bool = False) -> bool:
    """The rule of a daemon whose settings grant no identity to anyone."""
    return False


@dataclass(frozen=True)
class Launcher:
    """What every launch needs from the daemon: its directories and its environment."""

    runtime: RuntimeLayout
    state: StateLayout
    inherited_env: Mapping[str, str]
    """The daemon's environment as every task inherits it (read once, not per launch)."""
    python: str = sys.executable
    user_bus: Callable[[int], tuple[str, str]] | None = None
    """Binds (once) and returns the bus pair of the Python tasks run as a uid
    (:meth:`~zsvc.daemon.bus.BusDevice.bind_for_user`); raises :class:`LaunchError`.
    None: the pair's names only (:meth:`RuntimeLayout.user_bus`), bound by nobody."""
    may_run_as: MayRunAs = grants_nothing
    """The ``[access]`` grants of identities: whom a non-root owner's tasks may run as
    besides the owner (:mod:`zsvc.daemon.identity`)."""
    hard_nofile: int | None = None
    """The daemon's hard open-files limit: the most ``limit_nofile`` a non-root owner may
    set (None: no ceiling)."""
    daemon_uid: int = dataclasses.field(default_factory=os.geteuid)
    """The daemon's own user: its transactions run as written, as root's do (a user's
    daemon has its user's rights only, and its runner refuses what needs more)."""

    @classmethod
    def for_daemon(
        cls,
        runtime: RuntimeLayout,
        state: StateLayout,
        user_bus: Callable[[int], tuple[str, str]] | None = None,
        may_run_as: MayRunAs = grants_nothing,
    ) -> Launcher:
        env = {k: v for k, v in os.environ.items() if k not in SUPERVISOR_ENV}
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard_nofile = None if hard == resource.RLIM_INFINITY else hard
        return cls(runtime, state, env, user_bus=user_bus, may_run_as=may_run_as,
                   hard_nofile=hard_nofile)  # fmt: skip

    def owned(self, transaction: str, spec: TaskSpec, owner: Principal) -> TaskSpec:
        """*spec* as *owner*'s transaction runs it: its process settings rewritten so
        that it has no more privilege than *owner* (:func:`identity.effective_process`);
        :class:`~zsvc.daemon.identity.IdentityRefused` when they ask for more."""
        try:
            process = self._owned_process(transaction, spec.id, spec.exec.process, owner)
        except identity.IdentityRefused as exc:
            what = f"to start transaction {transaction or '(new)'}: {exc.message}"
            log_refusal(owner, "start", what, transaction or None)
            raise
        if process is spec.exec.process:
            return spec
        return dataclasses.replace(spec, exec=dataclasses.replace(spec.exec, process=process))

    def _owned_process(
        self, transaction: str, task: str, process: ProcessSettings, owner: Principal
    ) -> ProcessSettings:
        if owner.is_root or (owner.key is None and owner.uid == self.daemon_uid):
            return process
        return identity.effective_process(
            owner,
            process,
            lambda identity, user: self.may_run_as(owner, identity, user=user),
            task=task,
            transaction=transaction,
            hard_nofile=self.hard_nofile,
        )

    def _owned_at_launch(self, transaction: str, spec: TaskSpec, owner: Principal) -> TaskSpec:
        """:meth:`owned`, its refusal a failed run (result ``resources``) as at a start."""
        try:
            return self.owned(transaction, spec, owner)
        except identity.IdentityRefused as exc:
            raise LaunchError(exc.message, ExitInfo(Result.RESOURCES, detail=exc.message)) from exc

    def preflight(self, transaction: str, spec: TaskSpec, owner: Principal = ROOT) -> None:
        """:func:`preflight` of *spec* as *owner*'s transaction would run it."""
        preflight(self.owned(transaction, spec, owner), reader_for(owner))

    def task(
        self,
        transaction: str,
        context: Context,
        spec: TaskSpec,
        invocation: str,
        crashing: bool,
        *,
        read_files: bool = True,
        owner: Principal = ROOT,
    ) -> LaunchSpec:
        """The launch of one run of *spec* in *owner*'s transaction; *crashing*: its last
        run failed early. Environment files are read now (as systemd does at each start):
        one gone wrong since :func:`preflight`, or settings beyond *owner*'s (grants change),
        raise :class:`LaunchError` (``resources``). A re-adopted run has its environment
        already: *read_files* False leaves them unread."""
        spec = self._owned_at_launch(transaction, spec, owner)
        if spec.service_type is ServiceType.THREAD:
            return self._thread(transaction, context, spec, invocation, owner)
        if read_files:
            own = _launch_environment(spec, reader_for(owner))
        else:
            own = {**user_environment(spec.exec.process.user), **dict(spec.exec.environment)}
        env = self._environment(transaction, spec.id, spec.service_name, invocation, own)
        context_dir = str(context.path.parent)
        if spec.is_command:
            argv, cwd, start_type = tuple(spec.command or ()), context_dir, spec.start_type
        else:
            location = str(spec.location or context_dir)
            # A task in a crash streak is likely to fail in setup() again: its host joins
            # the bus only once setup() returned, so a crash loop costs no bus connections.
            host = self.host_spec(transaction, context, spec, join_after_setup=crashing)
            env[SPEC_ENV] = host.to_json()
            argv = self._task_host_argv()
            cwd = location if os.path.isdir(location) else context_dir
            start_type = StartType.NOTIFY
        if spec.exec.working_directory is not None:
            cwd = str(spec.exec.working_directory)
        return LaunchSpec(
            transaction=transaction,
            task_id=spec.id,
            unit=unit_name(transaction, spec.id, self.state.instance),
            argv=argv,
            env=env,
            cwd=cwd,
            start_type=start_type,
            start_timeout=spec.start_timeout,
            stop_timeout=spec.stop_timeout,
            log_path=self.state.task_log(transaction, spec.id),
            description=spec.description,
            host_entry=not spec.is_command,
            watchdog_sec=spec.watchdog_sec,
            service_name=spec.service_name,
            process=spec.exec.process,
            pid_file=str(spec.pid_file) if spec.pid_file is not None else None,
            start_secs=spec.start_secs,
            kill_signal=spec.kill_signal,
            final_kill_signal=spec.final_kill_signal,
        )

    def host_spec(
        self, transaction: str, context: Context, spec: TaskSpec, join_after_setup: bool = False
    ) -> HostSpec:
        """What the task host is told about its task (``$ZSVC_TASK``)."""
        bus_pub, bus_sub = self._bus_pair(spec)
        return HostSpec(
            transaction=transaction,
            task_id=spec.id,
            service_name=spec.service_name,
            instance=spec.instance,
            location=str(spec.location or context.path.parent),
            bus_pub=bus_pub,
            bus_sub=bus_sub,
            topic=spec.topic,
            device_action=spec.device_action,
            configuration=dict(spec.configuration),
            handshake_timeout=spec.start_timeout,
            join_after_setup=join_after_setup,
        )

    def _bus_pair(self, spec: TaskSpec) -> tuple[str, str]:
        """Where a Python task joins the bus: the shared pair (group ``zsvc``'s), or, for a
        task run as another user (a non-root owner's included), that user's own pair."""
        return self._user_pair(spec.id, spec.exec.process.user)

    def _user_pair(self, task: str, user: str | None) -> tuple[str, str]:
        if user is None:
            return self.runtime.bus_pub_endpoint, self.runtime.bus_sub_endpoint
        uid = _uid(task, user)
        return self.user_bus(uid) if self.user_bus is not None else self.runtime.user_bus(uid)

    def _thread(
        self,
        transaction: str,
        context: Context,
        spec: TaskSpec,
        invocation: str,
        owner: Principal = ROOT,
    ) -> LaunchSpec:
        """A Thread task: a thread in its transaction's host, whose launch it carries."""
        host = self.thread_host(transaction, context, invocation, owner)
        return LaunchSpec(
            transaction=transaction,
            task_id=spec.id,
            unit=host.unit,
            argv=(),
            env={INVOCATION_ENV: invocation},
            cwd=host.cwd,
            start_type=StartType.NOTIFY,
            start_timeout=spec.start_timeout,
            stop_timeout=spec.stop_timeout,
            log_path=host.log_path,
            description=spec.description,
            watchdog_sec=spec.watchdog_sec,
            service_name=spec.service_name,
            thread_host=host,
        )

    def thread_host(
        self, transaction: str, context: Context, invocation: str, owner: Principal = ROOT
    ) -> LaunchSpec:
        """The process that runs every Thread task of a transaction, one thread each: as
        the owner, like the transaction's other tasks (Thread tasks have no ``<exec>``)."""
        specs = [
            self.owned(transaction, spec, owner)
            for spec in context.tasks
            if spec.service_type is ServiceType.THREAD
        ]
        process = self._owned_process(transaction, THREAD_HOST_ID, ProcessSettings(), owner)
        own = user_environment(process.user)
        env = self._environment(transaction, THREAD_HOST_ID, THREAD_HOST_ID, invocation, own)
        start_timeout = max(spec.start_timeout for spec in specs)
        stop_timeout = max(spec.stop_timeout for spec in specs)
        bus_pub, bus_sub = self._user_pair(THREAD_HOST_ID, process.user)
        group = ThreadGroupSpec(
            transaction=transaction,
            bus_pub=bus_pub,
            bus_sub=bus_sub,
            tasks=tuple(self.host_spec(transaction, context, spec) for spec in specs),
            handshake_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        env[SPEC_ENV] = group.to_json()
        return LaunchSpec(
            transaction=transaction,
            task_id=THREAD_HOST_ID,
            unit=unit_name(transaction, THREAD_HOST_ID, self.state.instance),
            argv=self._task_host_argv(),
            env=env,
            cwd=str(context.path.parent),
            start_type=StartType.NOTIFY,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout + HOST_STOP_MARGIN,
            log_path=self.state.task_log(transaction, THREAD_HOST_ID),
            description=f"zsvc thread host of transaction {transaction}",
            host_entry=True,
            service_name=THREAD_HOST_ID,
            process=process,
        )

    def _environment(
        self,
        transaction: str,
        task_id: str,
        service_name: str,
        invocation: str,
        own: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The daemon's environment, the task's *own* over it, zsvc's variables over both
        (the loader and :func:`task_environment` refuse a task's ZSVC_* names)."""
        env = dict(self.inherited_env)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(own or {})
        env.update(
            ZSVC_TRANSACTION=transaction,
            ZSVC_TASK_ID=task_id,
            ZSVC_SERVICE_NAME=service_name,
        )
        env[INVOCATION_ENV] = invocation
        return env

    def _task_host_argv(self) -> tuple[str, ...]:
        # -P: the working directory (the task location) must not shadow the stdlib.
        return (self.python, "-P", "-m", "zsvc.task")


def log_name(spec: TaskSpec) -> str:
    """The name of the log a task's output goes to: Thread tasks share their host's."""
    return THREAD_HOST_ID if spec.service_type is ServiceType.THREAD else spec.id


def chosen_specs(context: Context, services: list[str]) -> list[TaskSpec]:
    """The tasks a start of a new transaction runs: the named ones, or the entry tasks."""
    if services:
        return [spec for spec in context.tasks if spec.id in services]
    return [spec for spec in context.tasks if spec.starts_with_transaction]


def preflight(spec: TaskSpec, read: Reader = Path.read_bytes) -> None:
    """Refuse to start what cannot possibly run, before anything is started; *read*
    reads its environment files (as the owner: :meth:`Launcher.preflight`).

    Each message names the task; ``zsvc start`` prints it (OperationFailed, exit 1).
    """
    _check_exec(spec, read)
    if spec.is_command:
        return
    location = spec.location
    module = task_module_path(location, spec.instance) if location else None
    if module is None or not module.is_file():
        raise OperationFailed(
            f"task {spec.id}: task module {module} does not exist"
            f" (instance {spec.instance!r} is looked up as"
            f" <location>/{spec.instance}/Service{spec.instance}.py)"
        )


def _check_exec(spec: TaskSpec, read: Reader) -> None:
    """The user and groups exist here, the working directory too, the environment files read."""
    process = spec.exec.process
    if process.user is not None and not _known(process.user, pwd.getpwnam):
        raise OperationFailed(
            f"task {spec.id}: user {process.user!r} does not exist on this host (<exec user>)"
        )
    for group, attr in _groups(process.group, process.supplementary_groups):
        if not _known(group, grp.getgrnam):
            raise OperationFailed(
                f"task {spec.id}: group {group!r} does not exist on this host (<exec {attr}>)"
            )
    directory = spec.exec.working_directory
    if directory is not None and not directory.is_dir():
        why = "is not a directory" if directory.exists() else "does not exist"
        raise OperationFailed(
            f"task {spec.id}: working directory {directory} {why} (<exec working_directory>)"
        )
    task_environment(spec, read)


def _groups(group: str | None, supplementary: Iterable[str]) -> Iterable[tuple[str, str]]:
    if group is not None:
        yield group, "group"
    for name in supplementary:
        yield name, "supplementary_groups"


def _uid(task: str, user: str) -> int:
    """*user*'s uid (a number is one); :class:`LaunchError` when the name is unknown here."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise LaunchError(
            f"task {task}: user {user!r} does not exist on this host (<exec user>)",
            ExitInfo(Result.EXIT_CODE, exit_code=EXIT_USER, detail=f"unknown user {user!r}"),
        ) from None


def _known(name: str, lookup: Callable[[str], object]) -> bool:
    """A number needs no entry (as systemd: setuid takes any id); a name must have one."""
    if name.isdigit():
        return True
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def task_environment(spec: TaskSpec, read: Reader = Path.read_bytes) -> dict[str, str]:
    """The variables of a task's own settings: its user's (:func:`user_environment`), its
    ``<environment>`` over them, then its environment files in order, which override it
    (systemd's ``EnvironmentFile=`` over ``Environment=``).

    Raises :class:`OperationFailed` naming the task and the file (and its line).
    """
    env = user_environment(spec.exec.process.user)
    env.update(spec.exec.environment)
    for file in spec.exec.environment_files:
        env.update(_read_environment_file(spec.id, file, read))
    return env


def user_environment(user: str | None) -> dict[str, str]:
    """``USER``, ``LOGNAME``, ``HOME`` and ``SHELL`` of a task run as *user*, as systemd
    sets them for ``User=``: the daemon's own (root's ``HOME=/root``) would be wrong, and
    a program that writes under ``$HOME`` would fail there. A uid with no passwd entry
    gets ``USER`` (its number) and no other."""
    if user is None:
        return {}
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        return {"USER": user, "LOGNAME": user} if user.isdigit() else {}
    return {
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "HOME": entry.pw_dir,
        "SHELL": entry.pw_shell or "/bin/sh",
    }


def _launch_environment(spec: TaskSpec, read: Reader) -> dict[str, str]:
    """:func:`task_environment` at launch: a file gone wrong since :func:`preflight` ends the
    run (result ``resources``), as a program that cannot be executed does."""
    try:
        return task_environment(spec, read)
    except OperationFailed as exc:
        raise LaunchError(exc.message, ExitInfo(Result.RESOURCES, detail=exc.message)) from exc


def _read_environment_file(
    task_id: str, file: EnvironmentFile, read: Reader
) -> list[tuple[str, str]]:
    where = f"task {task_id}: environment file {file.path}"
    try:
        data = read(file.path)
    except FileNotFoundError:
        if file.optional:
            return []
        raise OperationFailed(
            f'{where} does not exist (<environment_file optional="true"> starts without it)'
        ) from None
    except OSError as exc:
        raise OperationFailed(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise OperationFailed(f"{where}:{line}: not UTF-8 text") from None
    try:
        return parse_environment_file(text, str(file.path))
    except EnvFileError as exc:
        raise OperationFailed(f"task {task_id}: environment file {exc}") from None
