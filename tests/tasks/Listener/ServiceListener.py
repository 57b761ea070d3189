"""A task that answers every message addressed to it, to test on_message delivery."""

from __future__ import annotations

from zsvc import Task


class ServiceListener(Task):
    interval = 3600.0

    def on_message(self, message) -> None:
        self.publish(heard=message.action, content=dict(message.content))
