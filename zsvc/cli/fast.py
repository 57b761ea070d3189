"""Commands that must answer quickly, runnable without typer (see :mod:`zsvc.cli`).

Importing typer costs more than the commands people type most (today's typer
also imports pydantic: about 80 ms, before any work). Plain command lines of
``status``, ``start``, ``stop`` and ``restart`` are parsed here and run by
:mod:`zsvc.cli.actions`, which the typer commands run too; anything else
(``--help``, an unknown option, a usage error) falls through to typer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zsvc.cli import actions, values
from zsvc.errors import ExitCode

FLAG, VALUE, NUMBER, MANY = "flag", "value", "number", "many"
"""How an option takes its value: none (True), one string, seconds (a positive finite float:
the one kind of number the fast path's options take), repeatable."""

_TIMEOUT = {"--timeout": ("timeout", NUMBER)}
_JSON = {"--json": ("as_json", FLAG)}
_SERVICES = dict.fromkeys(actions.SERVICE_OPTION, ("services", MANY))
GRAMMAR: dict[str, tuple[dict[str, tuple[str, str]], int, int]] = {
    # command: (options, fewest positionals, most positionals)
    "status": (_JSON, 0, 1),
    "start": (
        {
            **dict.fromkeys(actions.CONTEXT_OPTION, ("context", VALUE)),
            **_SERVICES,
            "--no-block": ("no_block", FLAG),
            "--keep-going": ("keep_going", FLAG),
            **_TIMEOUT,
            **_JSON,
        },
        0,
        1,
    ),
    "stop": ({**_SERVICES, **_TIMEOUT, **_JSON}, 1, 1),
    "restart": ({**_SERVICES, **_TIMEOUT, **_JSON}, 1, 1),
}
"""The command lines the fast path takes; option spellings come from :mod:`zsvc.cli.actions`,
the single place both front ends read them from."""


def parse(argv: list[str]) -> tuple[str | None, str, list[str], dict[str, Any]] | None:
    """``(runtime_dir, command, positionals, options)`` of a plain command line, or None.

    None means "let typer do it": any other command, ``--help``, an unknown
    or incomplete option, a bad number (not a number, or one that
    :mod:`zsvc.cli.values` refuses), too many arguments. So the fast path
    never has to produce a usage error of its own.
    """
    args = list(argv)
    runtime: str | None = None
    if args and (args[0] == "--runtime-dir" or args[0].startswith("--runtime-dir=")):
        _, equals, value = args.pop(0).partition("=")
        if not equals:
            if not args:
                return None
            value = args.pop(0)
        runtime = value
    if not args or args[0] not in GRAMMAR:
        return None
    command, rest = args[0], args[1:]
    options_of, fewest, most = GRAMMAR[command]
    positionals: list[str] = []
    options: dict[str, Any] = {}
    while rest:
        token = rest.pop(0)
        if token == "--" or not token.startswith("-") or token == "-":
            if token == "--":
                return None
            positionals.append(token)
            continue
        name, equals, inline = token.partition("=")
        if name not in options_of:
            return None
        dest, kind = options_of[name]
        if kind == FLAG:
            if equals:
                return None
            options[dest] = True
            continue
        if not equals:
            if not rest:
                return None
            inline = rest.pop(0)
        if kind == NUMBER:
            try:
                options[dest] = float(inline)
            except ValueError:
                return None
            if not values.is_seconds(options[dest]):
                return None  # typer says why (exit 2): one rule, one message
        elif kind == MANY:
            options.setdefault(dest, []).append(inline)
        else:
            options[dest] = inline
    if not fewest <= len(positionals) <= most:
        return None
    return runtime, command, positionals, options


def fast_path(argv: list[str]) -> int | None:
    """Run a plain ``status``, ``start``, ``stop`` or ``restart``; None for any other line."""
    parsed = parse(argv)
    if parsed is None:
        return None
    runtime, command, positionals, options = parsed
    runtime = runtime or os.environ.get("ZSVC_RUNTIME_DIR")
    first = positionals[0] if positionals else None
    as_json = bool(options.get("as_json"))
    if command == "status":
        return show_status(runtime, first, as_json)
    services = options.get("services", [])
    timeout = options.get("timeout")
    if command == "start":
        context = options.get("context")
        return actions.start(
            runtime,
            first,
            Path(context) if context is not None else None,
            services,
            bool(options.get("no_block")),
            timeout,
            bool(options.get("keep_going")),
            as_json,
        )
    assert first is not None
    action = actions.stop if command == "stop" else actions.restart
    return action(runtime, first, services, timeout, as_json)


def show_status(runtime: str | Path | None, transaction: str | None, as_json: bool) -> int:
    """``zsvc status``: print the table (or JSON); returns the exit status."""
    from zsvc.client import DEFAULT_TIMEOUT

    try:
        result = actions.call(runtime, "status", DEFAULT_TIMEOUT, transaction=transaction)
    except actions.CommandFailed as failed:
        return failed.code
    if transaction or as_json:
        actions.show_transaction(result, as_json)
    else:
        from zsvc.cli.render import print_transactions

        print_transactions(result["transactions"])
    return ExitCode.OK
