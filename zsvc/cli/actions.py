"""What ``zsvc start``, ``stop`` and ``restart`` do, without typer.

Both front ends call these: the typer commands (:mod:`zsvc.cli.app`, every
option and ``--help``) and the fast path (:mod:`zsvc.cli.fast`), which
parses the common command lines without importing typer. Each returns the
exit status and prints what the user sees, so the two cannot drift apart.

The context file is read and sent as it is: the daemon validates it (it
trusts no client) and its errors come back as ``file:line:column`` lines,
exit 2. ``zsvc validate`` checks files without a daemon.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zsvc.cli.text import printable
from zsvc.errors import DaemonUnreachable, ErrorCode, ExitCode, ZsvcError
from zsvc.protocol import MAX_CONTEXT_BYTES

CONTEXT_OPTION = ("--context", "-c", "--context_file", "--context-file")
SERVICE_OPTION = ("--service", "-s", "--service_id", "--service-id")
"""Option spellings shared by both front ends (the seed's underscore forms included)."""

DEFAULT_READY_WAIT = 300.0


class CommandFailed(Exception):
    """The command cannot go on; ``code`` is the exit status (the message is printed)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def wait_budget(timeout: float | None) -> float:
    """How long the client waits for the daemon: the readiness timeout plus a margin."""
    return (timeout if timeout is not None else DEFAULT_READY_WAIT) + 10.0


class FileRefused(Exception):
    """A file the CLI will not read: not a regular file, or over its size limit."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_limited(path: Path, limit: int = MAX_CONTEXT_BYTES) -> bytes:
    """The bytes of the regular file at *path*, at most *limit* of them.

    ``zsvc start -c /dev/zero`` once read until the OOM killer came, and a
    FIFO would block for ever: only a regular file is opened (checked before
    opening, so no device is opened at all, and again on the open file), and
    no more than *limit* + 1 bytes are read whatever its size says.
    Raises :class:`FileRefused` or OSError.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise FileRefused(path, f"not a regular file ({_kind(mode)})")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced between the two looks
            raise FileRefused(path, f"not a regular file ({_kind(info.st_mode)})")
        data = handle.read(limit + 1)
    if len(data) > limit:
        size = max(info.st_size, len(data))
        raise FileRefused(path, f"too large: {size} bytes (limit {limit} bytes)")
    return data


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def read_context(path: Path) -> tuple[str, str]:
    """The context file's absolute path and its text (UTF-8, as zsvc stores contexts);
    refused (exit 2) when it is not a regular file or over MAX_CONTEXT_BYTES."""
    try:
        text = read_limited(path).decode("utf-8")
    except FileRefused as exc:
        print(f"zsvc: {printable(str(exc))}", file=sys.stderr)
        raise CommandFailed(ExitCode.BAD_INPUT) from None
    except OSError as exc:
        print(f"zsvc: cannot read {path}: {exc.strerror}", file=sys.stderr)
        raise CommandFailed(ExitCode.BAD_INPUT) from None
    except UnicodeDecodeError as exc:
        print(f"{path}:0:0: not UTF-8 ({exc}); convert it, e.g. with iconv", file=sys.stderr)
        raise CommandFailed(ExitCode.BAD_INPUT) from None
    return str(path.absolute()), text


def call(runtime: str | os.PathLike[str] | None, command: str, wait: float, **args: Any) -> Any:
    """Run *command* in the daemon; prints the error and raises CommandFailed on failure."""
    from zsvc.client import open_control

    try:
        with open_control(runtime, wait) as client:
            return client.call(command, **args)
    except DaemonUnreachable as exc:
        print(f"zsvc: {exc}\n{exc.hint}", file=sys.stderr)
        raise CommandFailed(ExitCode.UNREACHABLE) from None
    except ZsvcError as exc:
        # A message may quote a task's last words or a file's text: escaped as any task text.
        if exc.code == ErrorCode.INVALID_CONFIG:  # file:line:column lines, as 'zsvc validate'
            print(printable(exc.message, keep="\n"), file=sys.stderr)
        else:
            print(f"zsvc: {printable(exc.message)}", file=sys.stderr)
        raise CommandFailed(exc.exit_code) from None


def reexec(runtime: str | os.PathLike[str] | None, timeout: float) -> dict[str, Any]:
    """Have the daemon execute anew and wait until the new one answers: its ``ping``.

    The new daemon is told from the old by its start time (``since``); the old one may
    close before its reply to ``reexec`` is sent, which is no error: only a refusal
    (invalid settings) is, and it comes while the old daemon goes on. Raises
    :class:`CommandFailed` on a refusal, or when no new daemon answers within *timeout*.
    """
    import time

    from zsvc.client import open_control

    old = call(runtime, "ping", 10.0)
    try:
        with open_control(runtime, 10.0) as client:
            client.call("reexec")
    except ZsvcError as exc:
        print(f"zsvc: {printable(exc.message)}", file=sys.stderr)
        raise CommandFailed(exc.exit_code) from None
    except DaemonUnreachable:
        pass  # it closed before its reply went out: it is executing anew
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open_control(runtime, max(0.1, deadline - time.monotonic())) as client:
                new: dict[str, Any] = client.call("ping")
            if new.get("since") != old.get("since"):
                return new
        except DaemonUnreachable:
            pass  # between the two daemons: nothing listens for a moment
        time.sleep(0.05)  # a poll of another process, bounded by the deadline
    print(f"zsvc: no new daemon answered within {timeout:g} s", file=sys.stderr)
    raise CommandFailed(ExitCode.UNREACHABLE)


def show_transaction(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return
    from zsvc.cli.render import print_transactions

    print_transactions([record])


def start(
    runtime: str | os.PathLike[str] | None,
    transaction: str | None,
    context: Path | None,
    services: list[str],
    no_block: bool,
    timeout: float | None,
    keep_going: bool,
    as_json: bool,
) -> int:
    """``zsvc start``: a new transaction from *context*, or a known one again."""
    args: dict[str, Any] = {"transaction": transaction, "services": list(services)}
    try:
        if context is not None:
            args["context_path"], args["context_text"] = read_context(context)
        elif transaction is None:
            print("zsvc: give a TRANSACTION to start again, or --context FILE", file=sys.stderr)
            return ExitCode.BAD_INPUT
        elif transaction.endswith(".xml") and Path(transaction).is_file():
            hint = f"zsvc: {transaction} is a file; start its context with --context"
            print(hint, file=sys.stderr)
            return ExitCode.BAD_INPUT
        args.update(block=not no_block, timeout=timeout, keep_going=keep_going)
        show_transaction(call(runtime, "start", wait_budget(timeout), **args), as_json)
    except CommandFailed as failed:
        return failed.code
    return ExitCode.OK


def stop(
    runtime: str | os.PathLike[str] | None,
    transaction: str,
    services: list[str],
    timeout: float | None,
    as_json: bool,
) -> int:
    """``zsvc stop``: a transaction, or some of its tasks; prints a summary (or JSON)."""
    show = functools.partial(show_transaction, as_json=True) if as_json else _show_stop_summary
    return _on_tasks("stop", wait_budget(timeout), runtime, transaction, services, timeout, show)


def restart(
    runtime: str | os.PathLike[str] | None,
    transaction: str,
    services: list[str],
    timeout: float | None,
    as_json: bool,
) -> int:
    """``zsvc restart``: stop, then start, a transaction or some of its tasks (two phases)."""
    show = functools.partial(show_transaction, as_json=as_json)
    wait = 2 * wait_budget(timeout)
    return _on_tasks("restart", wait, runtime, transaction, services, timeout, show)


def _show_stop_summary(record: dict[str, Any]) -> None:
    """Tasks counted by state, and any that did not end cleanly (a table of 200 tasks
    takes rich longer to render than the stop itself)."""
    from zsvc.cli.render import stop_summary

    print("\n".join(stop_summary(record)))


def _on_tasks(
    command: str,
    wait: float,
    runtime: str | os.PathLike[str] | None,
    transaction: str,
    services: list[str],
    timeout: float | None,
    show: Callable[[dict[str, Any]], None],
) -> int:
    """Run *command* on a transaction's tasks, then *show* the daemon's answer."""
    args = {"transaction": transaction, "services": list(services), "timeout": timeout}
    try:
        record = call(runtime, command, wait, **args)
    except CommandFailed as failed:
        return failed.code
    show(record)
    return ExitCode.OK
