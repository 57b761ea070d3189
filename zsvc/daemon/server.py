"""The daemon: one asyncio loop owning the control socket, the bus, the table and the runner.

A :class:`Daemon` is handed every part open (:func:`zsvc.daemon.startup.open_daemon`
builds them, in order). :meth:`Daemon.run` then re-adopts what an earlier
daemon left running, and only then binds the control socket and tells a
supervisor READY=1; it serves until SIGTERM/SIGINT, ``zsvc shutdown`` or a
reload (SIGHUP), and closes the parts in the reverse order of their opening.

Here are the daemon's commands (``cmd_<name>``, one per entry of
:data:`zsvc.commands.COMMANDS`), whether they come over the control socket
(:mod:`zsvc.daemon.control`) or, as the seed's context commands, on the bus,
each with the :class:`~zsvc.daemon.access.Principal` who asked. Who may do what
(:class:`~zsvc.daemon.access.AccessRules`): anyone who reaches the socket may ping,
read the status of every transaction (owners included: as ``systemctl status`` shows
every unit) and create a transaction, which is theirs; stop, restart, start again and
forget are for its owner, root and ``[access] control`` grants; shutdown and reexec,
which reach every transaction, for root and the plain ``control`` grant. A refusal
is the error ``not-yours`` (exit 5), logged with who asked for what.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsvc import __version__, commands, protocol
from zsvc.config.model import Context
from zsvc.daemon.access import ROOT, AccessRules, Principal, refusal
from zsvc.daemon.bindplan import owner_refusal
from zsvc.daemon.bus import BindError, BusDevice
from zsvc.daemon.control import ControlServer
from zsvc.daemon.logs import CapSchedule, cap_logs
from zsvc.daemon.manager import Manager
from zsvc.daemon.monitor import MonitorService
from zsvc.daemon.refusals import log_refusal
from zsvc.errors import BadRequest, NotYours, OperationFailed, ZsvcError
from zsvc.jobs import Jobs
from zsvc.notify import tell_supervisor, watchdog_interval
from zsvc.paths import RuntimeLayout, StateLayout
from zsvc.runners.threads import ThreadRunner
from zsvc.throttle import ThrottledLog

log = logging.getLogger("zsvc.daemon")

LOG_CAP_BYTES = 8 << 20


BUS_NOT_ROOTS = (
    "transaction {} belongs to {}: context commands from the bus act on root's"
    " transactions only (the bus does not say who sent them); use zsvc as its owner"
)


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class DaemonOptions:
    runtime_dir: Path
    state_dir: Path
    contexts: Sequence[Path] = ()
    durable: bool = False
    log_cap_bytes: int = LOG_CAP_BYTES
    runner: str = "auto"
    """``auto``, ``local`` or ``systemd`` (:mod:`zsvc.runners.choose`)."""
    curve_keys: Path | None = None
    """A keys directory (``zsvc keys``): TCP bus endpoints then require CURVE clients."""
    context_commands: bool = False
    """Act on start/stop/restart published on the bus's ``context`` topic (off: logged)."""
    control_listen: str | None = None
    """``[control] listen``: a TCP control endpoint (CURVE only, :mod:`zsvc.daemon.remote`)."""
    control_act_as: tuple[tuple[str, str], ...] = ()
    """``[control] act_as``: (key, local user) pairs; other admitted keys act as nobody."""
    task_fd_limit: int | None = None
    """The soft open-files limit the local runner's tasks get (the one the daemon was
    started with, see :func:`raise_fd_limit`); None: they inherit the daemon's."""
    access: AccessRules = field(default_factory=AccessRules)
    """``[access]``: who may control whose transactions beyond root and the owner."""


class Daemon:
    """The zsvc daemon, built whole: ``await daemon.run()`` serves until it is told to stop.

    Every part is open when it is made (:func:`zsvc.daemon.startup.open_daemon`);
    *parts* closes them, in the reverse order of their opening, when
    :meth:`run` ends. *fixed_endpoints* are the bus pairs bound for the
    daemon's life (its own ipc:// pair, its command-line contexts');
    *check_reload* says why a reload would fail (:meth:`_reload`).
    """

    def __init__(
        self,
        options: DaemonOptions,
        *,
        runner: ThreadRunner,
        bus: BusDevice,
        manager: Manager,
        monitor: MonitorService,
        control: ControlServer,
        parts: contextlib.AsyncExitStack,
        fixed_endpoints: Sequence[tuple[str, str]] = (),
        check_reload: Callable[[], str | None] | None = None,
    ):
        self.options = options
        self.runtime = RuntimeLayout(options.runtime_dir)
        self.state = StateLayout(options.state_dir)
        self.runner = runner
        self.bus = bus
        self.manager = manager
        self.monitor = monitor
        self.control = control
        self._parts = parts
        self._fixed_endpoints = list(fixed_endpoints)
        self.check_reload = check_reload
        self.stopped = asyncio.Event()
        self.reexec = False
        """Set by SIGHUP: leave the tasks running and execute the daemon anew (a reload)."""
        self.started_at = time.time()
        self._jobs = Jobs("daemon")
        self._ignored_commands = ThrottledLog(log)
        """Ignored context commands are logged once per interval (a flood must not fill
        the log)."""
        bus.on_message = self._on_bus_message
        bus.on_subscription = monitor.subscriptions_changed

    # --- life cycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Start, serve until told to stop, stop every task (unless reloading), close."""
        try:
            await self._start()
            tell_supervisor("READY=1", f"STATUS={self._status_line()}")
            log.info("zsvc %s ready on %s", __version__, self.runtime.root)
            await self.stopped.wait()
            if self.reexec:
                # A reload (SIGHUP; 'systemctl reload zsvc', a package upgrade): the tasks
                # keep running, and the new daemon re-adopts them from the table.
                tell_supervisor("RELOADING=1", "STATUS=executing anew; every task keeps running")
                log.info("reloading: the daemon executes anew, every task keeps running")
            else:
                tell_supervisor("STOPPING=1", "STATUS=stopping every task")
                await self.manager.stop_all()
        finally:
            await self._jobs.cancel_all()
            await self._parts.aclose()

    async def _start(self) -> None:
        """Re-adopt the table's tasks, then open the control socket and the background work."""
        lost = await self.manager.restore(load_text)
        for note in lost:
            log.warning("lost: %s", note)
        for record in self.manager.transactions.values():
            pair = record.context.endpoints.bind_pair
            if record.broken or pair is None:
                continue  # a stand-in context, or a file that writes no endpoints
            try:
                self.bus.bind(*pair)
            except BindError as exc:
                log.warning("transaction %s: %s", record.id, exc)
        self.control.start(self.call)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self._jobs.spawn(self._cap_logs(), "log-cap")
        self._jobs.spawn(self.monitor.run(), "monitor")
        if (interval := watchdog_interval()) is not None:
            self._jobs.spawn(self._ping_watchdog(interval), "watchdog")

    def _reload(self) -> None:
        """SIGHUP: execute anew (:meth:`_reexec`), or log why not."""
        self._reexec()

    def _reexec(self) -> str | None:
        """Execute anew, unless the new daemon would refuse to start; returns why not.

        A reload re-reads the settings: an invalid file (or keys that do not
        load) would stop the new daemon, and with it every command, so it is
        checked first and a reload that would fail is refused and logged.
        """
        if self.stopped.is_set():
            return "the daemon is shutting down"
        problem = self.check_reload() if self.check_reload is not None else None
        if problem:
            log.error("reload refused, the daemon goes on as it was: %s", problem)
            tell_supervisor(f"STATUS=reload refused: {problem.splitlines()[0]}")
            return problem
        self.reexec = True
        self.stopped.set()
        return None

    def _status_line(self) -> str:
        transactions = self.manager.transactions
        tasks = sum(
            task.is_up for record in transactions.values() for task in record.tasks.values()
        )
        return f"{len(transactions)} transactions, {tasks} tasks up"

    async def call(self, name: str, args: dict[str, Any], principal: Principal) -> Any:
        """Run the command *name* with its checked *args* (:mod:`zsvc.commands`) for
        *principal*, who asked (a local user, or a remote client's key)."""
        return await getattr(self, f"cmd_{name}")(**args, principal=principal)

    def _check_control(self, principal: Principal, transaction: str | None, verb: str) -> None:
        """Refuse (``not-yours``, logged) *verb* on a transaction someone else owns; an
        unknown one passes: the manager names it unknown. Synchronous, so the record
        checked is the one the command then finds (nothing runs in between)."""
        record = self.manager.transactions.get(transaction or "")
        if record is None or self.options.access.may_control(principal, record.owner, record.id):
            return
        what = f"to {verb} transaction {record.id}, which belongs to {record.owner.name}"
        log_refusal(principal, verb, what, record.id)
        raise NotYours(refusal(record.owner, record.id, verb))

    def _check_administer(self, principal: Principal, verb: str) -> None:
        """Refuse (``not-yours``, logged) a command that reaches every transaction."""
        if self.options.access.may_administer(principal):
            return
        log_refusal(principal, verb.replace(" ", ""), f"to {verb} the daemon")
        raise NotYours(
            f"only root, or a plain 'control' grant in /etc/zsvc/zsvc.conf [access], may {verb}"
            " the daemon: it reaches every transaction"
        )

    # --- loops ------------------------------------------------------------------

    async def _cap_logs(self) -> None:
        schedule = CapSchedule()
        interval = schedule.next_interval({}, [], time.monotonic(), self.options.log_cap_bytes)
        while True:
            await asyncio.sleep(interval)
            # The daemon's own log too, when --detach sent it to a file: a flood of invalid
            # input must not fill the disk through it (issue 19, finding 13).
            paths = [*self.manager.live_logs(), self.state.daemon_log]
            # In a thread: a rotation copies up to the cap; the loop keeps answering.
            checked = await asyncio.to_thread(cap_logs, paths, self.options.log_cap_bytes)
            interval = schedule.next_interval(
                checked.sizes, checked.rotated, time.monotonic(), self.options.log_cap_bytes
            )

    async def _ping_watchdog(self, interval: float) -> None:
        while True:
            tell_supervisor("WATCHDOG=1", f"STATUS={self._status_line()}")
            await asyncio.sleep(interval)

    def _on_bus_message(self, message: protocol.Message) -> None:
        if message.topic == protocol.Topic.CONTEXT:
            self._on_context_command(message)
        elif not self.monitor.on_bus_message(message) and not self.runner.on_bus_message(message):
            self.manager.on_bus_message(message)

    # --- the seed's commands on the bus's context topic ---------------------------------

    def _on_context_command(self, message: protocol.Message) -> None:
        """The seed's command path: acted on only when ``context_commands`` is on.

        The control socket is the way to command zsvc (its permissions say
        who may); a bus is open to whoever reaches it, so commands on it are
        off unless an administrator turned them on (and then TCP needs CURVE,
        :func:`zsvc.daemon.bus.plan_bind`).
        """
        if not self.options.context_commands:
            self._ignored_commands.warning(
                "ignored a '%s' command on the bus's context topic: commands go over the"
                " control socket (zsvc send --service-name context …), or set"
                " context_commands = yes in [bus] of the daemon's settings",
                message.action,
            )
            return
        self._jobs.spawn(self._run_context_command(message), "context-command")

    async def _run_context_command(self, message: protocol.Message) -> None:
        """Run a start/stop/restart from the bus; the outcome goes out on ``state``.

        The action becomes the same control request ``zsvc send --service_name
        context`` makes (:func:`zsvc.commands.context_request`); a context is
        never loaded from the bus, so it names a known transaction. The bus does not
        say who published (members of group zsvc and tasks alike): its commands act as
        root on root's transactions only, never on a member's (another member could
        stop it that way), and never shut the daemon down.
        """
        content: dict[str, Any]
        try:
            command, args = commands.context_request(
                message.action,
                message.transaction,
                [message.service_id] if message.service_id else [],
                allowed=commands.BUS_CONTEXT_ACTIONS,
            )
            if not message.transaction:
                raise BadRequest(f"context {message.action}: header.service_transaction is empty")
            record = self.manager.transactions.get(message.transaction)
            if record is not None and not record.owner.is_root:
                raise NotYours(BUS_NOT_ROOTS.format(record.id, record.owner.name))
            await self.call(command.name, args, ROOT)
            content = {"result": "success"}
        except ZsvcError as exc:
            log.warning("context %s from the bus failed: %s", message.action, exc.message)
            content = {"result": "failure", "error": exc.to_wire()}
        except Exception as exc:  # a bug must not kill the daemon
            log.exception("internal error in a context %s from the bus", message.action)
            content = {"result": "failure", "error": {"message": f"internal error: {exc!r}"}}
        header = dict(message.header, action=f"reply_{message.action}")
        self.bus.publish(protocol.Message(protocol.Topic.STATE, header, content))

    # --- commands (one per entry of zsvc.commands.COMMANDS) -----------------------------

    async def cmd_ping(self, *, principal: Principal) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "runner": self.runner.name,
            "runtime_dir": str(self.runtime.root),
            "state_dir": str(self.state.root),
            "since": self.started_at,
            "status": self._status_line(),
        }

    async def cmd_start(
        self,
        transaction: str | None,
        context_path: str | None,
        context_text: str | None,
        services: list[str],
        block: bool,
        timeout: float | None,
        keep_going: bool,
        *,
        principal: Principal,
    ) -> dict[str, Any]:
        """Create a transaction (*principal*'s), or start a known one (theirs to control)
        again; a context for a known id replaces its transaction, which is then theirs."""
        if self.stopped.is_set():
            raise OperationFailed("the daemon is shutting down: nothing more is started")
        context = None
        if context_text is not None:
            size = len(context_text.encode("utf-8", "surrogatepass"))
            if size > protocol.MAX_CONTEXT_BYTES:  # as the CLI refuses the file (cli.actions)
                raise BadRequest(
                    f"{context_path or '<context>'}: too large: {size} bytes"
                    f" (limit {protocol.MAX_CONTEXT_BYTES} bytes)"
                )
            context = load_text(context_text, context_path or "<context>")
            try:
                if (pair := context.endpoints.bind_pair) is not None:
                    _check_endpoints(principal, pair)
                    self.bus.bind(*pair)
            except BindError as exc:
                raise OperationFailed(str(exc)) from exc
        elif context_path is not None:
            raise BadRequest("start: 'context_path' needs 'context_text'")
        try:
            self._check_control(principal, transaction, "start")
            return await self.manager.start(
                transaction,
                context,
                context_text,
                services,
                block,
                timeout,
                keep_going,
                owner=principal,
            )
        except ZsvcError:
            if context is not None:  # refused before a transaction of it existed
                self._release_endpoints()
            raise

    async def cmd_stop(
        self, transaction: str, services: list[str], timeout: float | None, *, principal: Principal
    ) -> Any:
        self._check_control(principal, transaction, "stop")
        return await self.manager.stop(transaction, services, timeout)

    async def cmd_restart(
        self, transaction: str, services: list[str], timeout: float | None, *, principal: Principal
    ) -> Any:
        self._check_control(principal, transaction, "restart")
        if self.stopped.is_set():
            raise OperationFailed("the daemon is shutting down: nothing more is started")
        return await self.manager.restart(transaction, services, timeout)

    async def cmd_status(self, transaction: str | None, *, principal: Principal) -> Any:
        return self.manager.status(transaction)  # every transaction, to anyone who may ask

    async def cmd_logs(self, transaction: str, services: list[str], *, principal: Principal) -> Any:
        # Where the logs are, to anyone: reading them is up to their files' modes (local
        # runner) or the journal's (systemd runner: journalctl runs as the caller).
        entries = self.manager.log_paths(transaction, services)
        source = self.runner.log_source
        if not source.journal:
            return {"logs": entries}
        # journald has the tasks' output (LogExtraFields): 'zsvc logs' runs journalctl.
        tasks = [entry["task"] for entry in entries] if services else []
        return {
            "logs": entries,
            "journal": {"transaction": transaction, "tasks": tasks, "user": source.user},
        }

    async def cmd_forget(self, transaction: str, *, principal: Principal) -> Any:
        self._check_control(principal, transaction, "forget")
        result = await self.manager.forget(transaction)
        self._release_endpoints()
        return result

    def _release_endpoints(self) -> None:
        """Unbind the bus pairs of contexts no transaction uses any more (no fd, no port kept).

        Synchronous, so no start can slip in between: a start binds its
        context's pair and creates its transaction without yielding.
        """
        in_use = [
            pair
            for record in self.manager.transactions.values()
            if not record.broken and (pair := record.context.endpoints.bind_pair) is not None
        ]
        self.bus.release([*self._fixed_endpoints, *in_use])

    async def cmd_reexec(self, *, principal: Principal) -> dict[str, Any]:
        self._check_administer(principal, "reexec")
        if problem := self._reexec():
            raise OperationFailed(f"reload refused, the daemon goes on as it was: {problem}")
        return {"reexecuting": True, "pid": os.getpid(), "since": self.started_at}

    async def cmd_shutdown(self, *, principal: Principal) -> dict[str, Any]:
        self._check_administer(principal, "shut down")
        self.stopped.set()  # from now on nothing is started; run() stops every task
        return {"stopping": True}


def _check_endpoints(principal: Principal, pair: tuple[str, str]) -> None:
    """A non-root user's context may have the daemon (root) bind only what that user could
    bind: :func:`~zsvc.daemon.bindplan.owner_refusal`."""
    if principal.uid == 0 or principal.uid is None:  # root, or a key that starts nothing
        return
    for endpoint in pair:
        if why := owner_refusal(endpoint, principal.uid):
            raise NotYours(f"bus endpoint {why}; only root's transactions may bind it")


def load_text(text: str, path: str) -> Context:
    """A context from its text (a client's, or the table's); lxml on first use only."""
    from zsvc.config.loader import load_context_text

    return load_context_text(text, path)
