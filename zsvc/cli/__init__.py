"""The ``zsvc`` command line; :func:`main` is the console script.

``zsvc status``, ``start``, ``stop`` and ``restart`` are what people and
scripts run most, so their plain command lines take a fast path that runs
without importing typer (whose import alone costs more than a status round
trip or the start of a small transaction); every other line goes through typer.
"""

from __future__ import annotations

import sys


def main() -> None:
    from zsvc.cli.fast import fast_path

    code = fast_path(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from zsvc.cli.app import app

    app(prog_name="zsvc")
