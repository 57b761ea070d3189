"""Logging of invalid input, at most one line per interval (issue 19, finding 13).

Whoever may publish on the bus can send invalid messages as fast as the
device reads them: 200,000 in 3.7 s once added 29 MB to ``daemon.log``, one
line each. A :class:`ThrottledLog` writes the first line of a kind, then at
most one line every :data:`LOG_INTERVAL` seconds, which says how many were
left out since the last one: the log still shows that it happens, how
often, and an example, at a bounded cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_INTERVAL = 10.0
"""Seconds between two lines of one kind, at least."""


class ThrottledLog:
    """A warning that is logged at most once per *interval* seconds, with the count of
    the occurrences left out since the line before."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        """Occurrences not logged since the last line."""
        self._next = float("-inf")

    def warning(self, message: str, *args: object) -> bool:
        """Log *message* % *args* unless a line went out less than *interval* ago;
        True when it was logged."""
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        if self.suppressed:
            message += " (%d more like it in the last %g s were not logged)"
            args = (*args, self.suppressed, self.interval)
            self.suppressed = 0
        self.logger.warning(message, *args)
        return True
