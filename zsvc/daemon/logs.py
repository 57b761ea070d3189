"""Size caps for the local runner's task logs.

Tasks append to their log with O_APPEND, so the file can be cut in place
without telling them: the current content moves to ``<log>.1`` (replacing
the previous one) and the log is truncated, as logrotate's ``copytruncate``
does. A few lines written between the copy and the truncation can be lost;
that is the price of tasks that never depend on the daemon to write.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def cap_logs(paths: Iterable[Path], max_bytes: int) -> list[Path]:
    """Rotate every log in *paths* larger than *max_bytes*; returns those rotated."""
    rotated = []
    for path in paths:
        try:
            if path.stat().st_size <= max_bytes:
                continue
            backup = path.with_name(path.name + ".1")
            with path.open("rb") as source, backup.open("wb") as target:
                shutil.copyfileobj(source, target)
            os.truncate(path, 0)
            rotated.append(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot rotate %s: %s", path, exc)
    return rotated
