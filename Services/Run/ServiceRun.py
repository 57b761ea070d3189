"""Run: "Start running". A looped task that reports each step."""

from __future__ import annotations

from zsvc import Task


class ServiceRun(Task):
    def setup(self, period_s: float = 0.5, **config: object) -> None:
        self.interval = period_s
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        self.set_status(f"Start running: step {self.steps}")
        self.publish(steps=self.steps)
