"""A looped task that publishes an update every ``period_s`` seconds (fires on_update)."""

from __future__ import annotations

from zsvc import Task


class ServiceChatty(Task):
    def setup(self, period_s: float = 0.05, **config: object) -> None:
        self.interval = period_s
        self.count = 0

    def step(self) -> None:
        self.count += 1
        self.publish(count=self.count)
