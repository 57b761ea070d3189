"""A task that becomes ready, then fails in its first step."""

from __future__ import annotations

from zsvc import Task


class ServiceStepFails(Task):
    interval = 0.0

    def step(self) -> None:
        raise ValueError("step went wrong")
