"""Walk: "Walk along the street". A looped task that reports each step."""

from __future__ import annotations

from zsvc import Task


class ServiceWalk(Task):
    def setup(self, period_s: float = 0.5, **config: object) -> None:
        self.interval = period_s
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        self.set_status(f"Walk along the street: step {self.steps}")
        self.publish(steps=self.steps)
