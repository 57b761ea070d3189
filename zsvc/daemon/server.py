"""The daemon: one asyncio loop owning the control socket, the bus, the table and the runner.

Start-up order matters and is the reverse of shutdown: take the runtime
directory's lock (one daemon per directory), open the table, bind the bus,
open the runner, re-adopt what an earlier daemon left running, and only
then bind the control socket and tell a supervisor READY=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import grp
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import zmq
import zmq.asyncio

from zsvc import __version__, commands, protocol
from zsvc.config.model import Context
from zsvc.daemon.bus import BindError, BusDevice
from zsvc.daemon.logs import CapSchedule, cap_logs
from zsvc.daemon.manager import Manager
from zsvc.daemon.model import THREAD_HOST_ID
from zsvc.daemon.monitor import MonitorService
from zsvc.daemon.table import Table
from zsvc.errors import BadRequest, ErrorCode, OperationFailed, ZsvcError
from zsvc.notify import sd_notify, watchdog_interval
from zsvc.paths import RuntimeLayout, StateLayout
from zsvc.runners.base import Runner, RunnerUnavailable
from zsvc.runners.choose import choose_runner
from zsvc.runners.local import LocalRunner

if TYPE_CHECKING:  # zmq.auth is imported only by a daemon that has keys
    from zsvc.curve import ServerKeys

log = logging.getLogger("zsvc.daemon")

LOG_CAP_BYTES = 8 << 20


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
    task_fd_limit: int | None = None
    """The soft open-files limit the local runner's tasks get (the one the daemon was
    started with, see :func:`raise_fd_limit`); None: they inherit the daemon's."""


class Daemon:
    """The zsvc daemon. ``await Daemon(options).run()`` serves until SIGTERM/SIGINT or shutdown."""

    def __init__(
        self, options: DaemonOptions, check_reload: Callable[[], str | None] | None = None
    ):
        self.options = options
        self.check_reload = check_reload
        """Why a reload would fail (the settings it would read), or None: see _reload."""
        self.runtime = RuntimeLayout(options.runtime_dir)
        self.state = StateLayout(options.state_dir)
        self.zmq = zmq.asyncio.Context()
        self.stopped = asyncio.Event()
        self.reexec = False
        """Set by SIGHUP: leave the tasks running and execute the daemon anew (a reload)."""
        self.started_at = time.time()
        self._lock_fd: int | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.table: Table | None = None
        self.bus: BusDevice | None = None
        self.manager: Manager | None = None
        self.monitor: MonitorService | None = None
        self.runner: Runner = LocalRunner(self.runtime)  # replaced in _open (--runner)
        self._fixed_endpoints: list[tuple[str, str]] = []
        """The bus pairs bound for the daemon's life: its own ipc:// pair and its contexts'."""
        self._authenticator: Any = None
        """pyzmq's ZAP handler, admitting the CURVE clients of the keys directory."""

    # --- life cycle ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._open()
            notify("READY=1", f"STATUS={self._status_line()}")
            log.info("zsvc %s ready on %s", __version__, self.runtime.root)
            await self.stopped.wait()
            assert self.manager is not None
            if self.reexec:
                # A reload (SIGHUP; 'systemctl reload zsvc', a package upgrade): the tasks
                # keep running, and the new daemon re-adopts them from the table.
                notify("RELOADING=1", "STATUS=executing anew; every task keeps running")
                log.info("reloading: the daemon executes anew, every task keeps running")
            else:
                notify("STOPPING=1", "STATUS=stopping every task")
                await self.manager.stop_all()
        finally:
            await self._close()

    async def _open(self) -> None:
        self._take_lock()
        contexts = [self._load_file(path) for path in self.options.contexts]
        self._fixed_endpoints = [(self.runtime.bus_pub_endpoint, self.runtime.bus_sub_endpoint)]
        self._fixed_endpoints += [(c.endpoints.pub_bind, c.endpoints.sub_bind) for c in contexts]
        self.table = Table(self.state.database, durable=self.options.durable)
        self.bus = BusDevice(
            self.zmq,
            self._on_bus_message,
            keys=self._start_authenticator(),
            open_commands=self.options.context_commands,
        )
        try:
            self.bus.bind(self.runtime.bus_pub_endpoint, self.runtime.bus_sub_endpoint)
            for context in contexts:
                self.bus.bind(context.endpoints.pub_bind, context.endpoints.sub_bind)
        except BindError as exc:
            raise DaemonError(str(exc)) from exc
        self.bus.start()
        try:
            self.runner = await choose_runner(
                self.options.runner, self.runtime, task_fd_limit=self.options.task_fd_limit
            )
        except RunnerUnavailable as exc:
            raise DaemonError(str(exc)) from exc
        self.manager = Manager(
            self.runner,
            self.table,
            self.bus.publish,
            self.runtime,
            self.state,
            listened=self.bus.subscribers,
        )
        await self.runner.open(self.manager)
        lost = await self.manager.restore(self._load_text)
        for note in lost:
            log.warning("lost: %s", note)
        for record in self.manager.transactions.values():
            try:
                self.bus.bind(record.context.endpoints.pub_bind, record.context.endpoints.sub_bind)
            except BindError as exc:
                log.warning("transaction %s: %s", record.id, exc)
        self.control = self.zmq.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(self.runtime.control_endpoint)
        os.chmod(self.runtime.control, 0o660)
        share_with_group(self.runtime.control)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self._spawn(self._serve_control(), "control")
        self._spawn(self._cap_logs(), "log-cap")
        self.monitor = MonitorService(self.manager, self.bus.publish, self.bus.subscribers)
        self.bus.on_subscription = self.monitor.subscriptions_changed
        self._spawn(self.monitor.run(), "monitor")
        if (interval := watchdog_interval()) is not None:
            self._spawn(self._ping_watchdog(interval), "watchdog")

    async def _close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if hasattr(self, "control"):
            self.control.close()
            with contextlib.suppress(FileNotFoundError):
                self.runtime.control.unlink()
        await self.runner.close()
        if self.monitor is not None:
            await self.monitor.close()
        if self.bus is not None:
            await self.bus.close()
            for path in (self.runtime.bus_pub, self.runtime.bus_sub):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if self._authenticator is not None:
            self._authenticator.stop()
        if self.table is not None:
            self.table.close()
        self.zmq.term()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def _start_authenticator(self) -> ServerKeys | None:
        """Load the CURVE keys, if any, and admit their clients (ZAP, in this loop)."""
        if self.options.curve_keys is None:
            return None
        from zsvc import curve

        if not curve.curve_available():
            raise DaemonError("curve_keys is set, but this libzmq has no CURVE support")
        try:
            keys = curve.load_server(self.options.curve_keys)
        except curve.KeysError as exc:
            raise DaemonError(f"the bus's CURVE keys: {exc}") from exc
        from zmq.auth.asyncio import AsyncioAuthenticator

        self._authenticator = AsyncioAuthenticator(self.zmq)
        self._authenticator.start()
        self._authenticator.configure_curve(domain="*", location=str(keys.clients))
        admitted = curve.admitted(self.options.curve_keys)
        log.info(
            "bus CURVE keys from %s; clients admitted: %s",
            keys.clients.parent,
            ", ".join(admitted) or "none",
        )
        return keys

    def _reload(self) -> None:
        """SIGHUP: execute anew, unless the new daemon would refuse to start.

        A reload re-reads the settings: an invalid file (or keys that do not
        load) would stop the new daemon, and with it every command, so it is
        checked first and a reload that would fail is refused and logged.
        """
        if self.stopped.is_set():
            return
        problem = self.check_reload() if self.check_reload is not None else None
        if problem:
            log.error("reload refused, the daemon goes on as it was: %s", problem)
            notify(f"STATUS=reload refused: {problem.splitlines()[0]}")
            return
        self.reexec = True
        self.stopped.set()

    def _take_lock(self) -> None:
        root = self.runtime.root
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o750)
            share_with_group(root)
        except OSError as exc:
            raise DaemonError(f"cannot create the runtime directory {root}: {exc}") from exc
        fd = os.open(self.runtime.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DaemonError(
                f"another zsvc daemon (pid {other}) already runs on {root};"
                " stop it with 'zsvc shutdown' or choose another --runtime-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _status_line(self) -> str:
        manager = self.manager
        if manager is None:
            return "starting"
        tasks = sum(
            task.is_up for record in manager.transactions.values() for task in record.tasks.values()
        )
        return f"{len(manager.transactions)} transactions, {tasks} tasks up"

    # --- loops ------------------------------------------------------------------

    async def _serve_control(self) -> None:
        while True:
            frames = await self.control.recv_multipart()
            if len(frames) != 2:
                log.warning("ignored a control message of %d frames", len(frames))
                continue
            identity, payload = frames
            self._spawn(self._answer(identity, payload), "request")

    async def _answer(self, identity: bytes, payload: bytes) -> None:
        request_id, command, args = commands.decode_request(payload)
        if isinstance(args, ZsvcError):
            log.warning("bad control request: %s", args)
            reply = commands.encode_reply(request_id or "", error=args.to_wire())
        else:
            assert command is not None
            try:
                result = await getattr(self, f"cmd_{command.name}")(**args)
                reply = commands.encode_reply(request_id or "", result=result)
            except ZsvcError as exc:
                reply = commands.encode_reply(request_id or "", error=exc.to_wire())
            except asyncio.CancelledError:
                # The daemon is closing: say so rather than leave the client waiting.
                error = OperationFailed("the daemon stopped before the command finished")
                with contextlib.suppress(zmq.ZMQError):
                    await self.control.send_multipart(
                        [identity, commands.encode_reply(request_id or "", error=error.to_wire())]
                    )
                raise
            except Exception as exc:  # a bug must not kill the daemon nor hang the client
                log.exception("internal error in %s", command.name)
                error = ZsvcError(f"internal error: {exc!r}", code=ErrorCode.INTERNAL)
                reply = commands.encode_reply(request_id or "", error=error.to_wire())
        with contextlib.suppress(zmq.ZMQError):
            await self.control.send_multipart([identity, reply])

    async def _cap_logs(self) -> None:
        schedule = CapSchedule()
        interval = schedule.next_interval({}, [], time.monotonic(), self.options.log_cap_bytes)
        while True:
            await asyncio.sleep(interval)
            assert self.manager is not None
            paths = [
                self.state.task_log(record.id, task.id)
                for record in self.manager.transactions.values()
                for task in record.tasks.values()
                if task.is_up and not task.is_thread
            ]
            paths += [  # the Thread tasks' shared host writes one log per transaction
                self.state.task_log(record.id, THREAD_HOST_ID)
                for record in self.manager.transactions.values()
                if record.thread_host is not None
            ]
            # In a thread: a rotation copies up to the cap; the loop keeps answering.
            checked = await asyncio.to_thread(cap_logs, paths, self.options.log_cap_bytes)
            interval = schedule.next_interval(
                checked.sizes, checked.rotated, time.monotonic(), self.options.log_cap_bytes
            )

    async def _ping_watchdog(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1", f"STATUS={self._status_line()}")
            await asyncio.sleep(interval)

    def _on_bus_message(self, message: Any) -> None:
        if message.topic == protocol.Topic.CONTEXT:
            self._on_context_command(message)
            return
        if self.monitor is not None and self.monitor.on_bus_message(message):
            return
        if self.manager is not None:
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
            log.warning(
                "ignored a '%s' command on the bus's context topic: commands go over the"
                " control socket (zsvc send --service-name context …), or set"
                " context_commands = yes in [bus] of the daemon's settings",
                message.action,
            )
            return
        self._spawn(self._run_context_command(message), "context-command")

    async def _run_context_command(self, message: protocol.Message) -> None:
        """Run a start/stop/restart from the bus; the outcome goes out on ``state``."""
        content: dict[str, Any]
        try:
            if message.action not in CONTEXT_COMMANDS:
                known = ", ".join(CONTEXT_COMMANDS)
                raise BadRequest(f"unknown context action {message.action!r}; known: {known}")
            if not message.transaction:
                raise BadRequest(f"context {message.action}: header.service_transaction is empty")
            services = [message.service_id] if message.service_id else []
            if message.action == "start":
                await self.cmd_start(message.transaction, None, None, services, True, None, False)
            elif message.action == "stop":
                await self.cmd_stop(message.transaction, services, None)
            else:
                await self.cmd_restart(message.transaction, services, None)
            content = {"result": "success"}
        except ZsvcError as exc:
            log.warning("context %s from the bus failed: %s", message.action, exc.message)
            content = {"result": "failure", "error": exc.to_wire()}
        except Exception as exc:  # a bug must not kill the daemon
            log.exception("internal error in a context %s from the bus", message.action)
            content = {"result": "failure", "error": {"message": f"internal error: {exc!r}"}}
        if self.bus is not None:
            header = dict(message.header, action=f"reply_{message.action}")
            self.bus.publish(protocol.Message(protocol.Topic.STATE, header, content))

    # --- contexts -------------------------------------------------------------------

    @staticmethod
    def _load_file(path: Path) -> Context:
        from zsvc.config.loader import load_context

        try:
            return load_context(path)
        except ZsvcError as exc:
            raise DaemonError(str(exc)) from exc

    @staticmethod
    def _load_text(text: str, path: str) -> Context:
        """A context from its text (a client's, or the table's); lxml on first use only."""
        from zsvc.config.loader import load_context_text

        return load_context_text(text, path)

    # --- commands (one per entry of zsvc.commands.COMMANDS) -----------------------------

    async def cmd_ping(self) -> dict[str, Any]:
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
    ) -> dict[str, Any]:
        assert self.manager is not None and self.bus is not None
        if self.stopped.is_set():
            raise OperationFailed("the daemon is shutting down: nothing more is started")
        context = None
        if context_text is not None:
            context = self._load_text(context_text, context_path or "<context>")
            try:
                self.bus.bind(context.endpoints.pub_bind, context.endpoints.sub_bind)
            except BindError as exc:
                raise OperationFailed(str(exc)) from exc
        elif context_path is not None:
            raise BadRequest("start: 'context_path' needs 'context_text'")
        try:
            return await self.manager.start(
                transaction, context, context_text, services, block, timeout, keep_going
            )
        except ZsvcError:
            if context is not None:  # refused before a transaction of it existed
                self._release_endpoints()
            raise

    async def cmd_stop(self, transaction: str, services: list[str], timeout: float | None) -> Any:
        assert self.manager is not None
        return await self.manager.stop(transaction, services, timeout)

    async def cmd_restart(
        self, transaction: str, services: list[str], timeout: float | None
    ) -> Any:
        assert self.manager is not None
        if self.stopped.is_set():
            raise OperationFailed("the daemon is shutting down: nothing more is started")
        return await self.manager.restart(transaction, services, timeout)

    async def cmd_status(self, transaction: str | None) -> Any:
        assert self.manager is not None
        return self.manager.status(transaction)

    async def cmd_logs(self, transaction: str, services: list[str]) -> Any:
        assert self.manager is not None
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

    async def cmd_forget(self, transaction: str) -> Any:
        assert self.manager is not None
        result = await self.manager.forget(transaction)
        self._release_endpoints()
        return result

    def _release_endpoints(self) -> None:
        """Unbind the bus pairs of contexts no transaction uses any more (no fd, no port kept).

        Synchronous, so no start can slip in between: a start binds its
        context's pair and creates its transaction without yielding.
        """
        assert self.manager is not None and self.bus is not None
        in_use = [
            (record.context.endpoints.pub_bind, record.context.endpoints.sub_bind)
            for record in self.manager.transactions.values()
        ]
        self.bus.release([*self._fixed_endpoints, *in_use])

    async def cmd_shutdown(self) -> dict[str, Any]:
        self.stopped.set()  # from now on nothing is started; run() stops every task
        return {"stopping": True}


CONTEXT_COMMANDS = ("start", "stop", "restart")
"""The seed's context actions the bus may carry (``exit`` stays on the control socket)."""

CONTROL_GROUP = "zsvc"
"""Members of this group may control a daemon run by root (DESIGN §2)."""


def share_with_group(path: Path) -> None:
    """Give *path* to group ``zsvc`` when we are root and the group exists.

    The runtime directory's mode (0750) and group decide who may reach the
    control socket: membership is the permission.
    """
    if os.geteuid() != 0:
        return
    try:
        gid = grp.getgrnam(CONTROL_GROUP).gr_gid
    except KeyError:
        return
    os.chown(path, 0, gid)


def notify(*assignments: str) -> None:
    """Tell our own supervisor (systemd, or a parent zsvc) how we are, if there is one."""
    try:
        sd_notify(*assignments, timeout=1.0)
    except (FileNotFoundError, ConnectionRefusedError):
        pass  # the supervisor went away (e.g. 'zsvc daemon --detach' returned): not our problem
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


FD_LIMIT_FALLBACK = 1 << 20
"""The soft open-files limit asked for when the hard one is unlimited (Linux's nr_open)."""


def raise_fd_limit() -> int | None:
    """Lift the soft limit on open files to the hard one, as a daemon of many tasks must.

    Every running task holds daemon fds (its pidfd; a Python task also its
    two bus connections): with Debian's default soft limit of 1024, for a
    shell and a systemd service alike, about 330 Python tasks exhausted it,
    and libzmq aborts the whole daemon on EMFILE. The daemon waits with epoll
    and poll only (never select(), which cannot go past 1024), so a high
    limit is safe here.

    Its tasks must not inherit it: a program that uses select() breaks on an
    fd of 1024 or more, which is why systemd raises its own limit but gives
    its services a soft limit of 1024. So the soft limit the daemon was
    started with is returned when it was raised (None when nothing changed):
    the local runner gives it back to every task (:mod:`zsvc.runners.local`),
    and the daemon sets it again before a reload executes it anew
    (:func:`run_daemon`), so the new daemon starts from the same limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, wanted, exc)
        return None
    return soft


def restore_fd_limit(soft: int) -> None:
    """Set the soft open-files limit back to *soft* (what :func:`raise_fd_limit` returned)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot set the open-files limit back to %d: %s", soft, exc)


def run_daemon(
    options: DaemonOptions,
    reexec: Callable[[], NoReturn] | None = None,
    check_reload: Callable[[], str | None] | None = None,
) -> int:
    """Run the daemon in this process until it is told to stop; returns the exit status.

    After a reload (SIGHUP) everything is closed but the tasks, and *reexec*
    replaces this process with a new daemon (same PID, so systemd and the
    tasks' parent stay the same), which re-adopts them. It does so under the
    open-files limit this daemon was started with: the new one raises it
    again, and knows what its tasks get back. *check_reload* says why a reload
    would fail (None: it would not); such a reload is refused.
    """
    started_with = raise_fd_limit()
    daemon = Daemon(dataclasses.replace(options, task_fd_limit=started_with), check_reload)
    try:
        asyncio.run(daemon.run())
    except DaemonError as exc:
        log.error("%s", exc)
        return 1
    if daemon.reexec and reexec is not None:
        logging.shutdown()
        if started_with is not None:
            restore_fd_limit(started_with)
        reexec()
    return 0
