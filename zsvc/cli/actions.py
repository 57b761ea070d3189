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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zsvc.errors import DaemonUnreachable, ErrorCode, ExitCode, ZsvcError

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


def read_context(path: Path) -> tuple[str, str]:
    """The context file's absolute path and its text (UTF-8, as zsvc stores contexts)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        print(f"zsvc: cannot read {path}: {exc.strerror}", file=sys.stderr)
        raise CommandFailed(ExitCode.BAD_INPUT) from None
    except UnicodeDecodeError as exc:
        print(f"{path}:0:0: not UTF-8 ({exc}); convert it, e.g. with iconv", file=sys.stderr)
        raise CommandFailed(ExitCode.BAD_INPUT) from None
    return str(path.absolute()), text


def call(runtime: str | os.PathLike[str] | None, command: str, wait: float, **args: Any) -> Any:
    """Run *command* in the daemon; prints the error and raises CommandFailed on failure."""
    from zsvc.client import ControlClient
    from zsvc.paths import client_runtime_dir

    try:
        with ControlClient(client_runtime_dir(runtime), timeout=wait) as client:
            return client.call(command, **args)
    except DaemonUnreachable as exc:
        print(f"zsvc: {exc}\n{exc.hint}", file=sys.stderr)
        raise CommandFailed(ExitCode.UNREACHABLE) from None
    except ZsvcError as exc:
        if exc.code == ErrorCode.INVALID_CONFIG:  # file:line:column lines, as 'zsvc validate'
            print(exc.message, file=sys.stderr)
        else:
            print(f"zsvc: {exc.message}", file=sys.stderr)
        raise CommandFailed(exc.exit_code) from None


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
