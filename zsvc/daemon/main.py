"""The daemon's command line (``zsvc daemon`` executes this module).

Kept apart from the typer CLI so that the long-running daemon does not
carry the CLI's imports in its memory. ``--detach`` starts the daemon in the
background and returns only once it reported READY=1 over a private notify
socket — the same protocol systemd uses, so no polling and no sleep.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from zsvc import __version__
from zsvc.daemon.settings import LOG_LEVELS, RUNNERS, SYSTEM_SETTINGS
from zsvc.daemon.settings import load as load_settings
from zsvc.errors import ConfigError, ExitCode
from zsvc.notify import NotifyServer
from zsvc.paths import StateLayout, runtime_dir, state_dir

DETACH_TIMEOUT = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zsvc daemon", description="Run the zsvc daemon.")
    parser.add_argument("contexts", nargs="*", type=Path, help="context files whose bus to bind")
    parser.add_argument("--runtime-dir", help="sockets (default /run/zsvc or $XDG_RUNTIME_DIR)")
    parser.add_argument("--state-dir", help="table and logs (default /var/lib/zsvc or XDG)")
    parser.add_argument(
        "--config",
        type=Path,
        help=f"settings file (default {SYSTEM_SETTINGS} for root, when it exists)",
    )
    parser.add_argument(
        "--durable", action="store_true", default=None, help="fsync every change (FULL)"
    )
    parser.add_argument(
        "--runner",
        choices=RUNNERS,
        help="auto (default): systemd transient units when systemd runs here, else the"
        " embedded runner",
    )
    parser.add_argument("--detach", action="store_true", help="run in the background")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS)
    parser.add_argument("--version", action="version", version=f"zsvc {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        settings = load_settings(args.config, is_root=os.geteuid() == 0)
    except ConfigError as exc:
        print(f"zsvc daemon: invalid settings:\n{exc}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    runtime = runtime_dir(args.runtime_dir)
    state = state_dir(args.state_dir)
    if args.detach:
        return detach(runtime, state, argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level or settings.log_level or "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The daemon never speaks TLS, but asyncio imports ssl (and OpenSSL, ~4 MB of
    # resident memory) when it can; asyncio runs fine without it.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from zsvc.daemon.server import DaemonOptions
    from zsvc.daemon.startup import run_daemon

    contexts = [path.absolute() for path in args.contexts]
    options = DaemonOptions(
        runtime,
        state,
        contexts=contexts,
        durable=bool(args.durable if args.durable is not None else settings.durable),
        runner=args.runner or settings.runner or "auto",
        curve_keys=settings.curve_keys,
        context_commands=bool(settings.context_commands),
        access=settings.access,
        control_listen=settings.listen,
        control_act_as=settings.act_as or (),
    )
    return run_daemon(
        options, functools.partial(reexec, argv), functools.partial(reload_problem, args.config)
    )


def reexec(argv: list[str]) -> NoReturn:
    """A reload: this process becomes a new daemon with the same arguments (and code
    from disk, so a package upgrade takes effect without stopping any task)."""
    os.execv(sys.executable, [sys.executable, "-m", "zsvc.daemon", *argv])


def reload_problem(config: Path | None) -> str | None:
    """Why a new daemon would refuse to start: the settings it would read (None: no reason)."""
    try:
        new = load_settings(config, is_root=os.geteuid() == 0)
    except ConfigError as exc:
        return f"invalid settings:\n{exc}"
    if new.curve_keys is not None:
        from zsvc import curve

        try:
            curve.load_server(new.curve_keys)
        except curve.KeysError as exc:
            return f"the bus's CURVE keys: {exc}"
        from zsvc.daemon.remoteauth import KeyPrincipals

        try:  # each act_as user must exist, as the new daemon checks
            KeyPrincipals.resolve(curve.admitted(new.curve_keys), new.act_as or ())
        except KeyError as exc:
            return f"[control] {exc.args[0]}"
    return None


def detach(runtime: Path, state: Path, argv: list[str]) -> int:
    """Start the daemon in its own session; wait for its READY=1, or report why it died."""
    log_path = StateLayout(state).daemon_log
    try:
        log_fd = _open_log(state, log_path)
    except (OSError, ValueError) as exc:
        print(f"zsvc daemon: {exc}", file=sys.stderr)
        return 1
    child_argv = [a for a in argv if a != "--detach"]
    child_argv += ["--runtime-dir", str(runtime), "--state-dir", str(state)]
    with tempfile.TemporaryDirectory(prefix="zsvc-detach-") as tmp:
        server = NotifyServer(Path(tmp) / "notify")
        env = dict(os.environ, NOTIFY_SOCKET=server.path)
        with os.fdopen(log_fd, "ab") as log_file:
            child = subprocess.Popen(
                [sys.executable, "-m", "zsvc.daemon", *child_argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            return _await_ready(server, child, log_path)
        finally:
            server.close()


def _open_log(state: Path, log_path: Path) -> int:
    """Make the state directory and open ``daemon.log`` with the daemon's modes (not the
    shell's umask: under 0022 both were readable by every user), never through a symlink.

    Raises OSError, or ValueError with what is unsafe and what to do.
    """
    from zsvc.daemon import fs

    modes = fs.daemon_modes()
    try:
        fs.prepare_dir(
            state,
            modes,
            advice="give it to this user, writable by nobody else, or choose another --state-dir",
        )
        return fs.open_file(log_path, modes, os.O_WRONLY | os.O_APPEND)
    except fs.UnsafePath as exc:
        raise ValueError(str(exc)) from None


def _await_ready(server: NotifyServer, child: subprocess.Popen[bytes], log_path: Path) -> int:
    import select
    import time

    deadline = time.monotonic() + DETACH_TIMEOUT
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([server.fileno()], [], [], min(remaining, 0.1))
        if readable:
            for item in server.drain():
                if not isinstance(item, Exception) and item.pid == child.pid and item.ready:
                    print(f"zsvc daemon {child.pid} ready; its log: {log_path}")
                    return 0
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            print("zsvc daemon failed to start:\n  " + "\n  ".join(tail), file=sys.stderr)
            return 1
    print(
        f"zsvc daemon {child.pid} not ready after {DETACH_TIMEOUT:g} s; see {log_path}",
        file=sys.stderr,
    )
    return 1
