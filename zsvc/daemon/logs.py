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
took seconds and kept gigabytes).

How often to look (:class:`CapSchedule`, pure) follows the fastest writer:
every ``CHECK_INTERVAL`` when the logs grow slowly, sooner when one grows
fast, so that it passes the cap by about one cap's worth at most (and by
``BUSY_INTERVAL`` of writing for a flood faster than a cap per
``BUSY_INTERVAL``). A schedule that only hurried after a rotation let a
64 MiB/s writer take its 8 MiB log to 136 MiB between two relaxed looks.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO, NamedTuple

log = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0
"""Seconds between looks at the logs while none grows fast."""
BUSY_INTERVAL = 0.05
"""The shortest time between looks (each costs a stat() per log)."""


class Checked(NamedTuple):
    """What one look at the logs found: each log's size, and those rotated."""

    sizes: dict[Path, int]
    rotated: list[Path]


class CapSchedule:
    """When to look at the logs next, from how fast they grew since the last look."""

    def __init__(self) -> None:
        self._left: dict[Path, int] = {}
        """Each log's size as the last look left it (0 if it was rotated)."""
        self._at: float | None = None

    def next_interval(
        self, sizes: Mapping[Path, int], rotated: Iterable[Path], now: float, max_bytes: int
    ) -> float:
        """Seconds until the next look, given what the look at *now* found."""
        fastest = 0.0
        if self._at is not None and now > self._at:
            elapsed = now - self._at
            for path, size in sizes.items():
                # A log not seen before counts from empty: a flood that started since
                # the last look is seen at once (a log kept from an earlier run only
                # makes this one interval short).
                fastest = max(fastest, (size - self._left.get(path, 0)) / elapsed)
        cut = set(rotated)
        self._left = {path: 0 if path in cut else size for path, size in sizes.items()}
        self._at = now
        if fastest <= 0:
            return CHECK_INTERVAL
        return min(CHECK_INTERVAL, max(BUSY_INTERVAL, max_bytes / fastest))


def _open_backup(path: Path, live: os.stat_result) -> BinaryIO:
    """Open ``<log>.1`` for the tail, with the live log's mode and owner, whatever the umask.

    A backup made with ``open("wb")`` under umask 0022 was 0644, readable by
    every user, next to a live log of 0640. It is opened without following a
    symlink, and its mode set on the fd (an existing backup keeps the mode it
    was made with otherwise).
    """
    backup = path.with_name(path.name + ".1")
    mode = stat.S_IMODE(live.st_mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(backup, flags, mode)
    try:
        info = os.fstat(fd)
        if (info.st_uid, info.st_gid) != (live.st_uid, live.st_gid) and os.geteuid() == 0:
            os.fchown(fd, live.st_uid, live.st_gid)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def cap_logs(paths: Iterable[Path], max_bytes: int) -> Checked:
    """Rotate every log in *paths* larger than *max_bytes*; returns the sizes seen and
    the logs rotated (a missing log is left out)."""
    rotated = []
    sizes = {}
    for path in paths:
        try:
            size = sizes[path] = path.stat().st_size
            if size <= max_bytes:
                continue
            with path.open("rb") as source, _open_backup(path, os.fstat(source.fileno())) as target:
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
    return Checked(sizes, rotated)
