"""The ``zsvc`` command line; :func:`main` is the console script.

``zsvc status`` is what people and scripts run most, so it has a fast path
that answers without importing typer (whose import alone costs more than a
status round trip); every other command line goes through typer.
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
