"""``zsvc logs``: the last lines of each task's log, then (with -f) new lines as they come.

The local runner's files are read here; under the systemd runner the output is in
journald, and ``zsvc logs`` runs ``journalctl ZSVC_TRANSACTION=<id>`` instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, NoReturn

from zsvc.cli.text import printable

FOLLOW_INTERVAL = 0.2


def tail(path: Path, count: int) -> list[str]:
    """The last *count* lines of *path*. Lines end at ``\n`` only: a carriage return is a
    character of its line, shown escaped by :func:`_emit`, not a line break."""
    try:
        with path.open("r", errors="replace", newline="\n") as handle:
            return list(deque(handle, maxlen=count)) if count > 0 else []
    except FileNotFoundError:
        return []
    except OSError as exc:
        unreadable(path, exc)


def unreadable(path: Path, exc: OSError) -> NoReturn:
    """Exit 1 with one line that says which log and why (a traceback helps nobody)."""
    why = exc.strerror or str(exc)
    hint = ""
    if isinstance(exc, PermissionError):
        hint = " (a root daemon's task logs are readable by root and group zsvc)"
    sys.stderr.write(f"zsvc: cannot read {path}: {why.lower()}{hint}\n")
    raise SystemExit(1)


def show_logs(entries: list[dict[str, Any]], count: int, follow: bool) -> None:
    prefix = len(entries) > 1
    width = max((len(entry["task"]) for entry in entries), default=0)
    positions: dict[str, int] = {}
    for entry in entries:
        path = Path(entry["path"])
        for line in tail(path, count):
            _emit(entry["task"], line, prefix, width)
        positions[entry["path"]] = _size(path)
    sys.stdout.flush()
    while follow:
        for entry in entries:
            path = Path(entry["path"])
            size = _size(path)
            start = positions[entry["path"]]
            if size < start:  # rotated (copytruncate)
                start = 0
            if size > start:
                try:
                    with path.open("r", errors="replace", newline="\n") as handle:
                        handle.seek(start)
                        for line in handle:
                            _emit(entry["task"], line, prefix, width)
                        positions[entry["path"]] = handle.tell()
                except FileNotFoundError:
                    pass  # rotated away between the size and the open: read it next time
                except OSError as exc:
                    unreadable(path, exc)
        sys.stdout.flush()
        time.sleep(FOLLOW_INTERVAL)  # a user-facing refresh rate, not synchronisation


def show_journal(query: dict[str, Any], count: int, follow: bool) -> int:
    """Under the systemd runner the output is in journald: become ``journalctl`` for it.

    Returns only when journalctl cannot be run (exit status 1, with the reason).
    """
    from zsvc.journal import journal_argv

    argv = journal_argv(
        query["transaction"], query.get("tasks") or (), count, follow, bool(query.get("user"))
    )
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"zsvc: cannot run {argv[0]}: {exc.strerror}\n")
    return 1


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _emit(task: str, line: str, prefix: bool, width: int) -> None:
    """One line of a task's output, its control characters escaped (tabs kept): a task's
    output must not drive the reader's terminal."""
    text = printable(line.rstrip("\r\n"), keep="\t")
    sys.stdout.write(f"{task:<{width}} | {text}\n" if prefix else f"{text}\n")
