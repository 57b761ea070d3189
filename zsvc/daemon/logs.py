"""Size caps for the local runner's task logs.

Tasks append to their log with O_APPEND, so the file can be cut in place
without telling them: the last *max_bytes* of the current content (from the
first line that starts within them) move to ``<log>.1``, replacing the
previous one, and the log is truncated, as logrotate's ``copytruncate`` does.
A few lines written between the copy and the truncation can be lost; that is
the price of tasks that never depend on the daemon to write.

Only the tail is kept so that a rotation costs at most *max_bytes* of I/O
however far a fast writer got past the cap between two checks (a task
flooding stdout writes over 1 GB/s to the page cache: copying all of it
took seconds and kept gigabytes). The daemon checks again soon after a
rotation (``LOG_BUSY_INTERVAL`` in :mod:`zsvc.daemon.server`), so a log
stays within the cap plus what its task writes in that interval.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def cap_logs(paths: Iterable[Path], max_bytes: int) -> list[Path]:
    """Rotate every log in *paths* larger than *max_bytes*; returns those rotated."""
    rotated = []
    for path in paths:
        try:
            size = path.stat().st_size
            if size <= max_bytes:
                continue
            backup = path.with_name(path.name + ".1")
            with path.open("rb") as source, backup.open("wb") as target:
                source.seek(size - max_bytes - 1)
                mid_line = source.read(1) != b"\n"
                tail = source.read(max_bytes)
                if mid_line and b"\n" in tail:  # keep whole lines only
                    tail = tail[tail.index(b"\n") + 1 :]
                target.write(tail)
            os.truncate(path, 0)
            rotated.append(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot rotate %s: %s", path, exc)
    return rotated
