"""Building the daemon whole, and the life of the process that runs it.

:func:`open_daemon` opens the parts in order, each on what the previous one
made: make and verify the state and runtime directories and take their
locks (one daemon per table, one per set of sockets: :func:`take_lock`), load
the contexts given on the command line, open the table, bind and start the
bus, choose and open the runner, make the manager and the monitor, and make
(not bind) the control socket. Whatever it opened is closed again in the
reverse order, by the :class:`~contextlib.AsyncExitStack` it hands to the
:class:`~zsvc.daemon.server.Daemon` (or closes itself when a step fails),
so a daemon is never half made: every part it holds exists.

:func:`run_daemon` is the process around it: the open-files limit, the
event loop, and the re-execution a reload asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import resource
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import zmq.asyncio

from zsvc.config.model import Context
from zsvc.daemon import fs
from zsvc.daemon.bus import BindError, BusDevice
from zsvc.daemon.control import ControlServer
from zsvc.daemon.launch import Launcher
from zsvc.daemon.manager import Manager
from zsvc.daemon.monitor import MonitorService
from zsvc.daemon.server import Daemon, DaemonError, DaemonOptions
from zsvc.daemon.table import Table
from zsvc.errors import ZsvcError
from zsvc.paths import Modes, RuntimeLayout, StateLayout, fallback_runtime_dir
from zsvc.runners.base import ExitInfo, LaunchError, Runner, RunnerUnavailable
from zsvc.runners.choose import choose_runner
from zsvc.runners.threads import ThreadRunner
from zsvc.states import Result

if TYPE_CHECKING:  # zmq.auth is imported only by a daemon that has keys
    from zsvc.curve import ServerKeys
    from zsvc.daemon.remote import ControlEndpoints

log = logging.getLogger("zsvc.daemon")

Endpoints = list[tuple[str, str]]
"""Bus pairs: (publishers' endpoint, subscribers' endpoint)."""


async def open_daemon(
    options: DaemonOptions, check_reload: Callable[[], str | None] | None = None
) -> Daemon:
    """A daemon with every part open, ready to :meth:`~zsvc.daemon.server.Daemon.run`.

    Raises :class:`DaemonError` (after closing what was opened) when a part
    cannot be had: another daemon holds the directory, a context does not
    load, an endpoint cannot be bound, the chosen runner is unavailable.
    """
    runtime = RuntimeLayout(options.runtime_dir)
    state = StateLayout(options.state_dir)
    modes = fs.daemon_modes()
    async with contextlib.AsyncExitStack() as parts:
        for fd in take_lock(runtime, state, modes):
            parts.callback(os.close, fd)
        contexts = [_load_file(path) for path in options.contexts]
        fixed = [(runtime.bus_pub_endpoint, runtime.bus_sub_endpoint)]
        fixed += [pair for c in contexts if (pair := c.endpoints.bind_pair) is not None]
        context = zmq.asyncio.Context()
        parts.callback(context.term)
        table = Table(state.database, durable=options.durable, mode=modes.file, group=modes.group)
        parts.callback(table.close)
        keys = _start_authenticator(context, options, parts)
        bus = BusDevice(
            context,
            keys=keys,
            open_commands=options.context_commands,
        )
        parts.push_async_callback(_close_bus, bus)
        _bind(bus, fixed)
        bus.start()
        # Thread tasks run in one host per transaction; every other task goes to the
        # process runner chosen here, which the thread runner wraps.
        runner = ThreadRunner(await _choose_runner(options, runtime, state), bus.publish)
        parts.push_async_callback(runner.close)
        user_bus = functools.partial(_user_bus, bus, runtime)
        launcher = Launcher.for_daemon(runtime, state, user_bus, options.access.may_run_as)
        manager = Manager(
            runner, table, bus.publish, runtime, state, bus.subscribers, launcher=launcher
        )
        await runner.open(manager)
        monitor = MonitorService(manager, bus.publish, bus.subscribers)
        parts.push_async_callback(monitor.close)
        control = ControlServer(context, runtime)
        parts.push_async_callback(control.close)
        _claim(control)
        endpoints = _open_remote(context, options, control, keys, parts)
        return Daemon(
            options,
            runner=runner,
            bus=bus,
            manager=manager,
            monitor=monitor,
            control=endpoints,  # type: ignore[arg-type]  # ControlEndpoints: start() alike
            fixed_endpoints=fixed,
            parts=parts.pop_all(),
            check_reload=check_reload,
        )


def take_lock(runtime: RuntimeLayout, state: StateLayout, modes: Modes) -> list[int]:
    """Make and verify both directories, then lock them for this daemon; returns the fds.

    The state directory's lock makes it one daemon per table, whatever its
    runtime directory: two daemons on one table both adopted its tasks (a
    task stopped through one was restarted by the other), also after the
    runtime directory, with its lock, was removed under a running daemon. The
    runtime directory's lock keeps a second daemon off the first one's
    sockets. Each lock file holds the pid and runtime directory of its
    holder, so that a refused daemon can say who is in its way; a lock lasts
    as long as its fd stays open.
    """
    _prepare_dirs(runtime, state, modes)
    fds: list[int] = []
    try:
        # The runtime directory's first: a daemon on both says so as it always did.
        for path, what, other in (
            (runtime.lock, f"{runtime.root}", "--runtime-dir"),
            (state.lock, f"the state directory {state.root}", "--state-dir"),
        ):
            fds.append(_lock(path, modes, what, other))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    holder = f"{os.getpid()}\n{runtime.root}\n".encode()
    for fd in fds:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder, 0)
    return fds


def _prepare_dirs(runtime: RuntimeLayout, state: StateLayout, modes: Modes) -> None:
    """Make (or verify) the state directory, its logs/ and the runtime directory, with
    the planned modes whatever the umask (:mod:`zsvc.daemon.fs`)."""
    fallback = runtime.root == fallback_runtime_dir(os.geteuid())
    if fallback:
        advice = (
            "if you did not make it, another user may be waiting there for your commands:"
            f" have it removed (rm -rf {runtime.root}, as root if need be), or set"
            " XDG_RUNTIME_DIR or --runtime-dir to a directory only you may write to"
        )
    else:
        advice = "give it to this user, writable by nobody else, or choose another --runtime-dir"
    state_advice = "give it to this user, writable by nobody else, or choose another --state-dir"
    runtime_modes = fs.runtime_modes()
    for path, private, why, planned in (
        (state.root, False, state_advice, modes),
        (state.logs, False, state_advice, modes),
        (runtime.root, fallback, advice, runtime_modes),  # reachable notify socket: fs.py
    ):
        try:
            fs.prepare_dir(path, planned, private=private, advice=why)
        except fs.UnsafePath as exc:
            raise DaemonError(str(exc)) from None
        except OSError as exc:
            raise DaemonError(f"cannot create the directory {path}: {exc}") from exc
    if modes.group is not None:
        # Set-group-ID: each transaction's directory and task log made under logs/ gets
        # the group too, so its members may read them (zsvc logs; issue 19, finding 15).
        # zsvc.service forbids the bit (RestrictSUIDSGID=yes): there the tasks' output goes
        # to the journal, not to logs/, and members read it with journalctl.
        try:
            os.chmod(state.logs, stat.S_ISGID | modes.dir)
        except PermissionError as exc:
            log.info("%s keeps its group bits as they are: %s", state.logs, exc)


def _lock(path: Path, modes: Modes, what: str, option: str) -> int:
    """Open and lock the lock file *path* (never through a symlink); DaemonError if held."""
    try:
        fd = fs.open_file(path, modes)
    except fs.UnsafePath as exc:
        raise DaemonError(str(exc)) from None
    except OSError as exc:
        raise DaemonError(f"cannot open the lock {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
        os.close(fd)
        pid = holder[0].strip() or "unknown"
        sockets = holder[1].strip() if len(holder) > 1 else ""
        stop = f"'zsvc --runtime-dir {sockets} shutdown'" if sockets else "'zsvc shutdown'"
        where = f" (its sockets are in {sockets})" if sockets and sockets != what else ""
        raise DaemonError(
            f"another zsvc daemon (pid {pid}) already runs on {what}{where};"
            f" stop it with {stop} or choose another {option}"
        ) from None
    return fd


def _claim(control: ControlServer) -> None:
    """The control socket's path must not be another process's live socket."""
    try:
        control.claim()
    except fs.SocketBusy as exc:
        raise DaemonError(f"cannot bind the control socket: {exc}") from None


def _load_file(path: Path) -> Context:
    """A context named on the command line (lxml is imported only here, on first use)."""
    from zsvc.config.loader import load_context

    try:
        return load_context(path)
    except ZsvcError as exc:
        raise DaemonError(str(exc)) from exc


def _start_authenticator(
    context: zmq.asyncio.Context, options: DaemonOptions, parts: contextlib.AsyncExitStack
) -> ServerKeys | None:
    """Load the CURVE keys, if any, and admit their clients (ZAP, in this loop)."""
    if options.curve_keys is None:
        return None
    from zsvc import curve

    if not curve.curve_available():
        raise DaemonError("curve_keys is set, but this libzmq has no CURVE support")
    try:
        keys = curve.load_server(options.curve_keys)
    except curve.KeysError as exc:
        raise DaemonError(f"the bus's CURVE keys: {exc}") from exc
    from zsvc.daemon.remote import NamingAuthenticator, key_names

    authenticator = NamingAuthenticator(context, key_names(keys.clients))
    authenticator.start()
    parts.callback(authenticator.stop)
    authenticator.configure_curve(domain="*", location=str(keys.clients))
    admitted = curve.admitted(options.curve_keys)
    log.info(
        "bus CURVE keys from %s; clients admitted: %s",
        keys.clients.parent,
        ", ".join(admitted) or "none",
    )
    return keys


def _open_remote(
    context: zmq.asyncio.Context,
    options: DaemonOptions,
    control: ControlServer,
    keys: ServerKeys | None,
    parts: contextlib.AsyncExitStack,
) -> ControlServer | ControlEndpoints:
    """*control* alone, or with the TCP control endpoint of ``[control] listen`` (bound,
    CURVE only): what the daemon starts once it can answer."""
    if options.control_listen is None:
        return control
    if keys is None or options.curve_keys is None:
        raise DaemonError("[control] listen is set, but a TCP control endpoint needs CURVE keys")
    from zsvc import curve
    from zsvc.daemon.remote import ControlEndpoints, RemoteControl
    from zsvc.daemon.remoteauth import KeyPrincipals, describe

    admitted = curve.admitted(options.curve_keys)
    try:
        principals = KeyPrincipals.resolve(admitted, options.control_act_as)
    except KeyError as exc:
        raise DaemonError(f"[control] {exc.args[0]}") from None
    remote = RemoteControl(context, control.runtime, options.control_listen, principals)
    parts.push_async_callback(remote.close)
    try:
        remote.bind(keys)
    except zmq.ZMQError as exc:
        raise DaemonError(
            f"cannot bind the control endpoint {options.control_listen}: {exc}"
        ) from None
    log.info(
        "control endpoint %s (CURVE); keys: %s",
        options.control_listen,
        ", ".join(describe(p) for p in principals.by_key.values()) or "none admitted",
    )
    return ControlEndpoints(control, remote)


def _bind(bus: BusDevice, pairs: Endpoints) -> None:
    """Bind the daemon's own bus pair and its contexts' (a port in use stops the daemon)."""
    try:
        for pub, sub in pairs:
            bus.bind(pub, sub)
    except BindError as exc:
        raise DaemonError(str(exc)) from exc


def _user_bus(bus: BusDevice, runtime: RuntimeLayout, uid: int) -> tuple[str, str]:
    """The bus pair of the Python tasks run as *uid*, bound on first use (a LaunchError
    when it cannot be: the task fails to start, the daemon goes on)."""
    pair = runtime.user_bus(uid)
    try:
        bus.bind_for_user(uid, *pair)
    except (BindError, OSError) as exc:
        raise LaunchError(
            f"cannot open the bus to the tasks of uid {uid}: {exc}",
            ExitInfo(Result.RESOURCES, detail=str(exc)),
        ) from exc
    return pair


async def _close_bus(bus: BusDevice) -> None:
    """Close the bus and remove the ipc:// socket files it bound, each only if it is
    still the file bound (a newer daemon's socket at the same path stays)."""
    await bus.close()
    bus.remove_socket_files()


async def _choose_runner(
    options: DaemonOptions, runtime: RuntimeLayout, state: StateLayout
) -> Runner:
    """The runner, named for *state*'s instance: its units and cgroups are its own."""
    try:
        return await choose_runner(
            options.runner, runtime, options.task_fd_limit, instance=state.instance
        )
    except RunnerUnavailable as exc:
        raise DaemonError(str(exc)) from exc


# --- the process ----------------------------------------------------------------------


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
    options = dataclasses.replace(options, task_fd_limit=started_with)
    try:
        reload = asyncio.run(_serve(options, check_reload))
    except DaemonError as exc:
        log.error("%s", exc)
        return 1
    if reload and reexec is not None:
        logging.shutdown()
        if started_with is not None:
            restore_fd_limit(started_with)
        reexec()
    return 0


async def _serve(options: DaemonOptions, check_reload: Callable[[], str | None] | None) -> bool:
    """Open a daemon and run it; True when it stopped for a reload."""
    daemon = await open_daemon(options, check_reload)
    await daemon.run()
    return daemon.reexec
