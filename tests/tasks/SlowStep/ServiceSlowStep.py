"""A task whose step takes longer than its interval: messages must still reach it."""

from __future__ import annotations

import time

from zsvc import Task


class ServiceSlowStep(Task):
    interval = 0.05

    def step(self) -> None:
        time.sleep(0.1)  # simulated work, longer than the interval

    def on_message(self, message) -> None:
        self.publish(heard=message.action)
