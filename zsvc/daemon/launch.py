"""How a task of a transaction becomes a launch spec: the runner's whole instruction.

The daemon decides everything about a run here, before any runner sees it:
the program (the task's ``<command>``, or zsvc's task host for a Python
class), its environment, working directory, readiness protocol, timeouts and
log, and for a Thread task the launch of the process its thread runs in.
A runner only carries a :class:`~zsvc.runners.base.LaunchSpec` out.

These functions do no I/O but two ``stat`` calls (does the task's location
exist, does its module); they are tested without a daemon.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from zsvc.config.model import Context, TaskSpec
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
from zsvc.runners.base import LaunchSpec
from zsvc.states import ServiceType, StartType

HOST_STOP_MARGIN = 5.0
"""A thread host's stop timeout beyond its longest task's: time to tear down and report."""

SUPERVISOR_ENV = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
"""What systemd gave the daemon about itself; a task must not inherit it."""


@dataclass(frozen=True)
class Launcher:
    """What every launch needs from the daemon: its directories and its environment."""

    runtime: RuntimeLayout
    state: StateLayout
    inherited_env: Mapping[str, str]
    """The daemon's environment as every task inherits it (read once, not per launch)."""
    python: str = sys.executable

    @classmethod
    def for_daemon(cls, runtime: RuntimeLayout, state: StateLayout) -> Launcher:
        env = {k: v for k, v in os.environ.items() if k not in SUPERVISOR_ENV}
        return cls(runtime, state, env)

    def task(
        self, transaction: str, context: Context, spec: TaskSpec, invocation: str, crashing: bool
    ) -> LaunchSpec:
        """The launch of one run of *spec*; *crashing*: its last run failed early."""
        if spec.service_type is ServiceType.THREAD:
            return self._thread(transaction, context, spec, invocation)
        env = self._environment(transaction, spec.id, spec.service_name, invocation)
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
            kill_signal=spec.kill_signal,
            final_kill_signal=spec.final_kill_signal,
        )

    def host_spec(
        self, transaction: str, context: Context, spec: TaskSpec, join_after_setup: bool = False
    ) -> HostSpec:
        """What the task host is told about its task (``$ZSVC_TASK``)."""
        return HostSpec(
            transaction=transaction,
            task_id=spec.id,
            service_name=spec.service_name,
            instance=spec.instance,
            location=str(spec.location or context.path.parent),
            bus_pub=self.runtime.bus_pub_endpoint,
            bus_sub=self.runtime.bus_sub_endpoint,
            topic=spec.topic,
            device_action=spec.device_action,
            configuration=dict(spec.configuration),
            handshake_timeout=spec.start_timeout,
            join_after_setup=join_after_setup,
        )

    def _thread(
        self, transaction: str, context: Context, spec: TaskSpec, invocation: str
    ) -> LaunchSpec:
        """A Thread task: a thread in its transaction's host, whose launch it carries."""
        host = self.thread_host(transaction, context, invocation)
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

    def thread_host(self, transaction: str, context: Context, invocation: str) -> LaunchSpec:
        """The process that runs every Thread task of a transaction, one thread each."""
        specs = [spec for spec in context.tasks if spec.service_type is ServiceType.THREAD]
        env = self._environment(transaction, THREAD_HOST_ID, THREAD_HOST_ID, invocation)
        start_timeout = max(spec.start_timeout for spec in specs)
        stop_timeout = max(spec.stop_timeout for spec in specs)
        group = ThreadGroupSpec(
            transaction=transaction,
            bus_pub=self.runtime.bus_pub_endpoint,
            bus_sub=self.runtime.bus_sub_endpoint,
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
        )

    def _environment(
        self, transaction: str, task_id: str, service_name: str, invocation: str
    ) -> dict[str, str]:
        env = dict(self.inherited_env)
        env.update(
            ZSVC_TRANSACTION=transaction,
            ZSVC_TASK_ID=task_id,
            ZSVC_SERVICE_NAME=service_name,
            PYTHONUNBUFFERED="1",
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


def preflight(spec: TaskSpec) -> None:
    """Refuse to start what cannot possibly run, before anything is started."""
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
