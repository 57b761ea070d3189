"""A task that writes ``megabytes`` MiB to stdout in its set-up, then idles: it fills its log."""

from __future__ import annotations

import sys

from zsvc import Task


class ServiceBigLog(Task):
    interval = 3600.0

    def setup(self, megabytes: int = 1, **config: object) -> None:
        line = "x" * 1023 + "\n"
        for _ in range(megabytes * 1024):
            sys.stdout.write(line)
        sys.stdout.flush()
