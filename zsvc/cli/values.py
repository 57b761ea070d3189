"""The rules for the CLI's numeric option values, shared by typer and the fast path.

A timeout of ``-1`` once reached the daemon and SIGKILLed every task at
once; ``nan`` crashed the client with a traceback; ``logs -n -5`` printed
nothing and exited 0. Each rule lives here once: the typer commands check
their options through it (a usage error, exit 2, naming the option), and
the fast path (:mod:`zsvc.cli.fast`), which must not import typer, hands any
line with a value it breaks to typer, so both say the same thing.
"""

from __future__ import annotations

import math


class BadValue(ValueError):
    """An option value outside its rule; the text says what the option takes."""


def seconds(value: float | None) -> float | None:
    """*value* when it is a positive, finite number of seconds (or None: not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise BadValue(f"{value:g} is not a positive, finite number of seconds")
    return value


def count(value: int | None) -> int | None:
    """*value* when it is a whole number, zero or more (or None: not given)."""
    if value is not None and value < 0:
        raise BadValue(f"{value} is negative; a count is 0 or more")
    return value


def is_seconds(value: float) -> bool:
    """Whether :func:`seconds` takes *value* (the fast path's test)."""
    try:
        seconds(value)
    except BadValue:
        return False
    return True
