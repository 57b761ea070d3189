"""A looped task whose set-up takes ``setup_s`` seconds (the peers' benchmark workload)."""

from __future__ import annotations

import time

from zsvc import Task


class ServiceSleeper(Task):
    def setup(self, setup_s: float = 0.0, period_s: float = 3600.0, **config: object) -> None:
        time.sleep(setup_s)  # simulated set-up work, not synchronisation
        self.interval = period_s

    def step(self) -> None:
        self.publish(alive=True)
