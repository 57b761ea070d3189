"""Commands that must answer quickly, runnable without typer (see :mod:`zsvc.cli`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from zsvc.errors import DaemonUnreachable, ExitCode, ZsvcError


def fast_path(argv: list[str]) -> int | None:
    """Run ``[--runtime-dir DIR] status [TRANSACTION] [--json]``; None for any other line."""
    runtime: str | None = None
    args = list(argv)
    if args and args[0].startswith("--runtime-dir"):
        if "=" in args[0]:
            runtime = args.pop(0).split("=", 1)[1]
        elif len(args) >= 2:
            args.pop(0)
            runtime = args.pop(0)
        else:
            return None
    if not args or args[0] != "status":
        return None
    rest = args[1:]
    as_json = "--json" in rest
    positional = [a for a in rest if a != "--json"]
    if len(positional) > 1 or any(a.startswith("-") for a in positional):
        return None
    transaction = positional[0] if positional else None
    return show_status(runtime or os.environ.get("ZSVC_RUNTIME_DIR"), transaction, as_json)


def show_status(runtime: str | Path | None, transaction: str | None, as_json: bool) -> int:
    """``zsvc status``: print the table (or JSON); returns the exit status."""
    from zsvc.client import ControlClient
    from zsvc.paths import client_runtime_dir

    try:
        with ControlClient(client_runtime_dir(runtime)) as client:
            result: Any = client.call("status", transaction=transaction)
    except DaemonUnreachable as exc:
        print(f"zsvc: {exc}\n{exc.hint}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    except ZsvcError as exc:
        print(f"zsvc: {exc.message}", file=sys.stderr)
        return exc.exit_code
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return ExitCode.OK
    from zsvc.cli.render import print_transactions

    print_transactions([result] if transaction else result["transactions"])
    return ExitCode.OK
