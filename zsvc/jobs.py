"""Background work that something holds: the one way zsvc runs a coroutine on the side.

asyncio keeps only a weak reference to a task: one that nothing holds may be
collected mid-flight, and its exception is lost ("Task exception was never
retrieved"). Every component that runs work in the background (the manager's
triggers and restarts, the server's requests, the runners' waits, the
monitor's answers) owns a :class:`Jobs` and spawns through it, so that each
job is held until it ends, its failure is logged with its name, and the
owner can cancel what is left when it closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from zsvc.errors import ZsvcError

log = logging.getLogger(__name__)


class Jobs:
    """A set of named background tasks, held until each ends; failures are logged."""

    def __init__(self, owner: str):
        self.owner = owner
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run *coroutine* in the background; a failure is logged, never lost."""
        job = asyncio.get_running_loop().create_task(coroutine, name=f"{self.owner}: {name}")
        self._running.add(job)
        job.add_done_callback(self._done)
        return job

    def __len__(self) -> int:
        return len(self._running)

    def _done(self, job: asyncio.Task[Any]) -> None:
        self._running.discard(job)
        if job.cancelled():
            return
        exc = job.exception()
        if isinstance(exc, ZsvcError):
            # An expected refusal (unknown task, a stop that raced): one line, no traceback.
            log.warning("%s: %s", job.get_name(), exc.message)
        elif exc is not None:
            log.error("%s failed", job.get_name(), exc_info=exc)

    async def cancel_all(self) -> None:
        """Cancel every job still running and wait until each has ended."""
        jobs = list(self._running)
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
