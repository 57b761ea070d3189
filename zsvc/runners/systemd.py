"""The systemd runner: every task a transient unit, supervised by systemd itself.

A task becomes ``zsvc-<instance>-<transaction>-<task>.service`` in slice
``zsvc-<instance>-<transaction>.slice`` (escaped ids; the instance, a hash of
the daemon's state dir, keeps two daemons' tasks of the same ids apart:
:mod:`zsvc.naming`), started with
``StartTransientUnit``; systemd's cgroups, readiness (``Type=notify``),
watchdog, kill logic and journald do the supervision. What to send and what
the answers mean is in :mod:`zsvc.runners.transient` (pure, unit-tested);
one task's handle, fed by its unit's signals, is in :mod:`zsvc.runners.systemdtask`;
this module is the D-Bus I/O around them: starting units, listening, reconnecting.

**State comes from signals, never from polling.** One match rule per unit
(its ``PropertiesChanged``) plus one for the manager's ``JobRemoved`` and
``UnitRemoved``, after ``Subscribe()``. With ``CollectMode=inactive-or-failed``
a failed unit is gone the moment it fails, so the exit status is taken from
the Service ``PropertiesChanged`` that precedes the Unit's ``failed``: a
``Get`` afterwards would answer a stub's ``success``.

**Names are reused safely.** A handle stays registered under its unit's
object path until systemd says ``UnitRemoved``; a new run of the same task
waits (bounded) for that, so no late signal of the old run is taken for the
new one. A unit left ``failed`` is reset (``ResetFailedUnit``) before its
name is used again.

**Events are held until start()/adopt() returned**, so the daemon has the
handle before it hears that the task is ready or gone (the local runner
has the same order): :mod:`zsvc.runners.systemdtask`.

**Re-adoption.** ``describe()`` stores the unit name, its MainPID and
systemd's InvocationID; after a daemon crash :meth:`SystemdRunner.adopt`
looks the unit saved in the daemon's own table up in
``ListUnitsByPatterns(["zsvc-*"])``, checks it is the same run, and follows
it again. Only saved names are looked up, so a unit named before instances
existed (``zsvc-<tx>-<task>.service``) is adopted after an upgrade, and no
other daemon's unit ever is. The daemon's own events for a task go to
the journal with the task's fields (:mod:`zsvc.journal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType

from zsvc.jobs import Jobs
from zsvc.naming import INSTANCE_LENGTH, instance_slice, slice_name
from zsvc.runners import transient
from zsvc.runners.base import (
    ExitInfo,
    LaunchError,
    LaunchSpec,
    LogSource,
    Runner,
    RunnerEvents,
    RunnerUnavailable,
    TaskKey,
)
from zsvc.runners.exitcodes import EXIT_CHDIR, EXIT_EXEC
from zsvc.runners.localsettings import refused
from zsvc.runners.notifyflow import StatusFlow
from zsvc.runners.sdbus import (
    MANAGER,
    MANAGER_MATCH,
    NO_SUCH_UNIT,
    PROPERTIES,
    SERVICE,
    UNIT,
    UNIT_EXISTS,
    SystemdBus,
    SystemdError,
    marshals_unicode,
    unit_match,
    variant,
)
from zsvc.runners.systemdtask import SystemdTask, vanished
from zsvc.states import Result, State

log = logging.getLogger(__name__)

PID_WAIT = 10.0
"""How long start() waits for systemd to fork the task (it takes milliseconds)."""
REMOVAL_WAIT = 2.0
"""How long a new run waits for the previous run's unit to be unloaded."""
SLICE_GRACE = 1.0
"""How long a transaction's slice stays after its last task ended (a restart reuses it)."""
DESTRUCTIVE = "org.freedesktop.systemd1.TransactionIsDestructive"
NO_INSTANCE = "0" * INSTANCE_LENGTH
"""The instance of a runner made outside a daemon (tests): a valid slice name still."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
RECONNECT_WAIT = 5.0
"""How long to try to reach the bus again after losing it, before giving the tasks up."""


class SystemdRunner(Runner):
    """Runs tasks as transient units of systemd's manager (system for root, user otherwise)."""

    name = "systemd"

    def __init__(self, user: bool | None = None, instance: str | None = None):
        self.user = os.geteuid() != 0 if user is None else user
        self.instance = instance or NO_INSTANCE
        """The daemon's instance: the slices of its transactions are named for it."""
        self.log_source = LogSource.USER_JOURNAL if self.user else LogSource.SYSTEM_JOURNAL
        self.bus: SystemdBus | None = None
        self.events: RunnerEvents | None = None
        self.by_path: dict[str, SystemdTask] = {}
        self.unicode_ok = marshals_unicode()
        self.version = ""
        self.jobs = Jobs("systemd runner")
        self.flow = StatusFlow(self._deliver_status)
        """Status lines paced per task (coalesce.py): systemd signals each STATUS= of a
        task as a PropertiesChanged of its unit, a flood included."""
        """Background work: the bus connection's watch, resyncs after a daemon-reload."""
        self._transactions: set[str] = set()
        """Transactions whose units this runner started or adopted (their slices)."""
        self._starting: dict[str, int] = {}
        """Starts in progress per transaction: its slice must not be stopped meanwhile."""
        self.listed: dict[str, tuple[str, str]] | None = None
        """``zsvc-*`` units found at open: name → (ActiveState, SubState), for adoption."""
        self.controllers: frozenset[str] | None = None
        """The cgroup controllers systemd can use for the tasks (None: unknown), read at
        open: a cgroup limit it cannot enforce is refused (:func:`usable_controllers`)."""

    # --- connection -----------------------------------------------------------------

    async def connect(self) -> None:
        """Reach systemd's manager; :class:`RunnerUnavailable` when it is not there."""
        if not os.path.isdir("/run/systemd/system"):
            raise RunnerUnavailable("systemd is not the service manager here")
        try:
            self.bus = await asyncio.wait_for(SystemdBus.connect(self.user), 10.0)
            version = await self.bus.call("Get", "ss", [MANAGER, "Version"], interface=PROPERTIES)
            self.version = str(getattr(version[0], "value", version[0]))
        except SystemdError as exc:
            raise RunnerUnavailable(f"systemd does not answer: {exc}") from exc
        except (OSError, TimeoutError, EOFError, ValueError) as exc:
            raise RunnerUnavailable(f"cannot reach systemd's bus: {exc!r}") from exc

    async def open(self, events: RunnerEvents) -> None:
        if self.bus is None:
            await self.connect()
        self.events = events
        await self._listen()
        units = await self.call("ListUnitsByPatterns", "asas", [[], ["zsvc-*"]])
        self.listed = {str(u[0]): (str(u[3]), str(u[4])) for u in units[0]}
        assert self.bus is not None
        root = await self.bus.call("Get", "ss", [MANAGER, "ControlGroup"], interface=PROPERTIES)
        self.controllers = usable_controllers(str(getattr(root[0], "value", root[0])))
        manager = "user" if self.user else "system"
        log.info(
            "systemd runner on the %s manager (systemd %s): %d zsvc units loaded",
            manager,
            self.version,
            len(self.listed),
        )
        if not self.unicode_ok:
            log.info("this dbus-fast cannot send non-ASCII text: descriptions are escaped")

    async def _listen(self) -> None:
        """Signals on: the handler, the manager's match, each unit's, Subscribe()."""
        assert self.bus is not None
        bus = self.bus
        bus.on_message(self._on_message)
        await bus.add_match(MANAGER_MATCH)
        for path in self.by_path:
            bus.add_match_nowait(unit_match(path))
        await self.call("Subscribe")  # without it systemd may send no signal at all
        self.jobs.spawn(self._watch_connection(bus), "watch the bus connection")

    async def _watch_connection(self, bus: SystemdBus) -> None:
        """The bus went away (dbus restarted, shutdown): reconnect, or give the tasks up."""
        try:
            await bus.bus.wait_for_disconnect()
        except Exception as exc:  # noqa: BLE001 - whatever the reason, the bus is gone
            log.debug("bus disconnected: %r", exc)
        if self.bus is not bus:
            return  # closed on purpose
        log.error("lost the connection to systemd's bus: reconnecting")
        self.bus = None
        deadline = asyncio.get_running_loop().time() + RECONNECT_WAIT
        while asyncio.get_running_loop().time() < deadline:
            try:
                await self.connect()
                await self._listen()
            except (RunnerUnavailable, SystemdError) as exc:
                log.warning("reconnect: %s", exc)
                self.bus = None
                await asyncio.sleep(0.5)  # a bounded retry pace, not synchronisation
                continue
            await self._resync()
            log.info("reconnected to systemd's bus")
            return
        for task in list(self.by_path.values()):
            if task.exit_info is None:
                task._finish(ExitInfo(Result.LOST, detail="lost the connection to systemd"))
            self._forget(task)

    async def _resync(self) -> None:
        """After a reconnection or a daemon-reload: catch up on what each unit did."""
        for task in list(self.by_path.values()):
            await self.resync(task)

    async def resync(self, task: SystemdTask) -> None:
        """Read a unit's state anew; a unit systemd no longer has has vanished.

        GetUnit first: a Get on a collected unit's path would load a stub that
        answers "inactive, success" (research §3), a false verdict.
        """
        if task.exit_info is not None or self.bus is None:
            return
        try:
            await self.call("GetUnit", "s", [task.unit])
            service = await self.bus.get_all(task.path, SERVICE)
            unit = await self.bus.get_all(task.path, UNIT)
        except SystemdError as exc:
            if exc.name == NO_SUCH_UNIT and task.exit_info is None:
                task._finish(vanished())  # gone while we did not listen: its status is lost
                task.removed.set()
                self._forget(task)
            return
        task.on_properties(SERVICE, service)
        task.on_properties(UNIT, unit)

    # --- the transaction's slice ---------------------------------------------------------

    def _busy(self, transaction: str) -> bool:
        live = any(
            task.exit_info is None and task.spec.transaction == transaction
            for task in self.by_path.values()
        )
        return live or self._starting.get(transaction, 0) > 0

    def slice_maybe_idle(self, transaction: str) -> None:
        """The transaction's last task ended: stop its slice a moment later, if still idle.

        An empty slice stays loaded and active forever otherwise. Mode ``fail``: a
        start that needs the slice meanwhile wins; one that comes just after is
        retried by :meth:`start`.
        """
        if self.bus is None or self._busy(transaction):
            return

        def stop_if_idle() -> None:
            if self.bus is not None and not self._busy(transaction):
                self.bus.send("StopUnit", "ss", [slice_name(transaction, self.instance), "fail"])

        asyncio.get_running_loop().call_later(SLICE_GRACE, stop_if_idle)

    async def _stop_instance_slice(self) -> None:
        """The instance's slice (the parent systemd made for the transactions' slices) stays
        active once empty: stop it too when none of this runner's transactions is busy.
        Stopping a slice stops what is in it, so never while one of its tasks runs."""
        live = any(task.exit_info is None for task in self.by_path.values())
        if live or any(self._starting.values()):
            return
        with contextlib.suppress(SystemdError):
            await self.call("StopUnit", "ss", [instance_slice(self.instance), "fail"])

    def _deliver_status(self, key: TaskKey, text: str) -> None:
        if self.events is not None:
            self.events.on_status(key, text)

    async def close(self) -> None:
        self.flow.close()
        if self.bus is not None:  # leave no idle slice behind (tasks that run keep theirs)
            for transaction in sorted(self._transactions):
                if not self._busy(transaction):
                    with contextlib.suppress(SystemdError):
                        await self.call(
                            "StopUnit", "ss", [slice_name(transaction, self.instance), "fail"]
                        )
            await self._stop_instance_slice()
        bus, self.bus = self.bus, None
        if bus is not None:
            with contextlib.suppress(SystemdError):
                await bus.call("Unsubscribe")
            bus.disconnect()
        await self.jobs.cancel_all()

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        if self.bus is None:
            raise SystemdError("org.freedesktop.DBus.Error.Disconnected", "not connected")
        return await self.bus.call(member, signature, body)

    def bus_send(self, member: str, signature: str, body: list[Any]) -> None:
        if self.bus is not None:
            self.bus.send(member, signature, body)

    # --- starting ---------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> SystemdTask:
        program = transient.resolve_program(spec.argv[0] if spec.argv else "", spec.env, spec.cwd)
        if program is None:
            what = spec.argv[0] if spec.argv else "(no command)"
            raise LaunchError(
                f"cannot execute {what}: not found or not executable",
                ExitInfo(Result.EXIT_CODE, exit_code=EXIT_EXEC, detail=what),
            )
        if not os.path.isdir(spec.cwd):
            raise LaunchError(
                f"cannot change to {spec.cwd}: no such directory",
                ExitInfo(Result.EXIT_CODE, exit_code=EXIT_CHDIR, detail=spec.cwd),
            )
        if why := transient.controller_refusal(spec.task_id, spec.process, self.controllers):
            raise refused(why)
        service_name = spec.env.get("ZSVC_SERVICE_NAME", spec.task_id)
        props = transient.transient_properties(
            spec, program, slice_name(spec.transaction, self.instance), service_name
        )
        if not self.unicode_ok:
            props = transient.ascii_safe(props)
            if (bad := transient.wire_problem(props)) is not None:
                raise LaunchError(
                    f"{bad} holds non-ASCII text, which this dbus-fast (1.84) cannot send to"
                    " systemd; install dbus-fast >= 2 or use the local runner",
                    ExitInfo(Result.RESOURCES, detail=f"non-ASCII {bad}"),
                )
        self._starting[spec.transaction] = self._starting.get(spec.transaction, 0) + 1
        try:
            return await self._start(spec, service_name, props)
        finally:
            self._starting[spec.transaction] -= 1
            if not self._starting[spec.transaction]:
                del self._starting[spec.transaction]

    async def _start(self, spec: LaunchSpec, service_name: str, props: list[Any]) -> SystemdTask:
        task = await self._register(spec, service_name)
        body = [spec.unit, "fail", [[p.name, variant(p.signature, p.value)] for p in props], []]
        try:
            try:
                await self.call("StartTransientUnit", "ssa(sv)a(sa(sv))", body)
            except SystemdError as exc:
                if exc.name == DESTRUCTIVE:  # the idle slice's stop job is still queued
                    await asyncio.sleep(0.2)  # a bounded retry, once
                elif exc.name != UNIT_EXISTS or not await self._free_name(spec.unit):
                    raise
                await self.call("StartTransientUnit", "ssa(sv)a(sa(sv))", body)
        except SystemdError as exc:
            self._forget(task)
            raise LaunchError(
                f"systemd refused to start {spec.unit}: {exc.text}",
                ExitInfo(Result.RESOURCES, detail=exc.name),
            ) from exc
        # Its MainPID comes within milliseconds (systemd forks it right away); with it the
        # table can find the unit again after a crash.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task._pid_known.wait(), PID_WAIT)
        task._returned = True
        asyncio.get_running_loop().call_soon(task._release)
        return task

    async def _register(self, spec: LaunchSpec, service_name: str) -> SystemdTask:
        """A handle under the unit's path, listening, once the previous run's unit is gone."""
        path = transient.unit_path(spec.unit)
        old = self.by_path.get(path)
        if old is not None:
            if old.exit_info is None:
                raise LaunchError(
                    f"{spec.unit} is still running",
                    ExitInfo(Result.RESOURCES, detail="the unit is still running"),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(old.removed.wait(), REMOVAL_WAIT)
            if not old.removed.is_set():
                await self._free_name(spec.unit)
            self._forget(old)
        task = SystemdTask(
            spec=spec, pid=0, runner=self, unit=spec.unit, path=path, service_name=service_name
        )
        self._transactions.add(spec.transaction)
        self.by_path[path] = task
        assert self.bus is not None
        self.bus.add_match_nowait(unit_match(path))  # in place before the start request
        return task

    async def _free_name(self, unit: str) -> bool:
        """Unload a failed or inactive unit of that name (ResetFailedUnit); False if it runs."""
        try:
            path = (await self.call("GetUnit", "s", [unit]))[0]
            assert self.bus is not None
            state = transient.unwrap(await self.bus.get_all(path, UNIT)).get("ActiveState")
        except SystemdError as exc:
            return exc.name == NO_SUCH_UNIT
        if state in transient.ACTIVE_STATES:
            return False
        with contextlib.suppress(SystemdError):
            await self.call("ResetFailedUnit", "s", [unit])
        return True

    def _forget(self, task: SystemdTask) -> None:
        if self.by_path.get(task.path) is task:
            del self.by_path[task.path]
            if self.bus is not None:
                self.bus.remove_match_nowait(unit_match(task.path))

    # --- adoption --------------------------------------------------------------------

    async def adopt(self, spec: LaunchSpec, description: Mapping[str, Any]) -> SystemdTask | None:
        unit = str(description.get("unit") or spec.unit)
        if self.listed is not None and unit not in self.listed:
            return None
        if self.listed is not None and self.listed[unit][0] not in transient.ACTIVE_STATES:
            await self._free_name(unit)  # failed and kept: free the name for the next run
            return None
        spec = dataclasses.replace(spec, unit=unit)
        task = await self._register(spec, spec.env.get("ZSVC_SERVICE_NAME", spec.task_id))
        assert self.bus is not None
        try:
            service = await self.bus.get_all(task.path, SERVICE)
            unit_props = await self.bus.get_all(task.path, UNIT)
        except SystemdError as exc:
            log.warning("%s: cannot read its state: %s", unit, exc)
            self._forget(task)
            return None
        # Ready already unless still activating: its READY=1 is not news to report.
        task.ready = transient.unwrap(unit_props).get("ActiveState") != State.ACTIVATING
        task.on_properties(SERVICE, service)
        task.on_properties(UNIT, unit_props)
        view = task.view
        wanted = description.get("invocation_id")
        same = (wanted == view.invocation) if wanted else description.get("pid") == task.pid
        # task.pid: the main process, or a forking task's starter while it runs
        if task.exit_info is not None or not task.pid or not same:
            if not same and task.exit_info is None:
                log.warning("%s runs, but not the run the table knows: not adopted", unit)
            self._forget(task)
            return None
        task._returned = True
        asyncio.get_running_loop().call_soon(task._release)
        return task

    # --- signals -----------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        try:
            if message.member == "PropertiesChanged":
                task = self.by_path.get(message.path or "")
                if task is not None:
                    task.on_properties(str(message.body[0]), message.body[1])
            elif message.member == "JobRemoved":
                _, _, unit, result = message.body
                task = self.by_path.get(transient.unit_path(str(unit)))
                if task is not None:
                    task.on_job_removed(str(result))
            elif message.member == "Reloading" and not message.body[0]:
                # A daemon-reload ended: units may have changed.
                self.jobs.spawn(self._resync(), "resync after a daemon-reload")
            elif message.member == "UnitRemoved":
                task = self.by_path.get(str(message.body[1]))
                if task is not None and task.unit == message.body[0]:
                    task.on_removed()
                    if task.exit_info is not None:
                        self._forget(task)
        except Exception:  # a bad signal must not take the connection's reader down
            log.exception("while handling %s %s", message.member, message.path)


def usable_controllers(manager_cgroup: str, root: Path = CGROUP_ROOT) -> frozenset[str]:
    """The controllers systemd can use below its own cgroup *manager_cgroup* (its
    ``ControlGroup``: empty for the system manager, ``…/user@UID.service`` for a user's).

    On cgroup2 (``cgroup.controllers`` at the root) those its cgroup offers: all of
    them for the system manager, the delegated ones for a user manager (Debian 12:
    ``Delegate=pids memory cpu``). On a hybrid or cgroup1 host systemd puts these
    limits in the cgroup1 hierarchies, usable when writable: in a container on a
    cgroup1 host they are mounted read-only (the system tier's box), and systemd then
    accepts a limit and enforces nothing.
    """
    unified = root / "cgroup.controllers"
    if unified.exists():
        offered = root / manager_cgroup.lstrip("/") / "cgroup.controllers"
        try:
            return frozenset(offered.read_text().split())
        except OSError:
            return frozenset()
    found = set()
    for controller in ("memory", "cpu", "pids"):
        hierarchy = root / controller / manager_cgroup.lstrip("/")
        if hierarchy.is_dir() and os.access(hierarchy, os.W_OK):
            found.add(controller)
    return frozenset(found)
