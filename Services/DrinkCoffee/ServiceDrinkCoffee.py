"""DrinkCoffee: "Stop and take a coffee".

A one-shot task: when it exits, its on_exit trigger fires.
"""

from __future__ import annotations

import time

from zsvc import SingleTask


class ServiceDrinkCoffee(SingleTask):
    def setup(self, duration_s: float = 0.2, **config: object) -> None:
        self.duration_s = duration_s

    def run(self) -> None:
        self.set_status("Stop and take a coffee")
        deadline = time.monotonic() + self.duration_s
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)  # the task's own work: simulated
        self.publish(done=True)
