"""EchoAction: "an echo action is for shouting the time" (the seed's tutorial service).

A looped task: every ``period_s`` seconds it publishes the time as an
``updated`` control message and shows it as its status line. It answers a
message addressed to it by echoing the message's content back.
"""

from __future__ import annotations

import time

from zsvc import Task


class ServiceEchoAction(Task):
    def setup(self, period_s: float = 1.0, shout: bool = False, **config: object) -> None:
        self.interval = period_s
        self.shout = shout
        self.count = 0

    def step(self) -> None:
        self.count += 1
        now = time.strftime("%H:%M:%S")
        text = f"the time is {now}"
        if self.shout:
            text = text.upper() + "!"
        self.set_status(text)
        self.log.info("%s (%d)", text, self.count)
        self.publish(count=self.count, echo=text)

    def on_message(self, message) -> None:
        self.send(
            "control", "echo", {"status": {"result": "success", "echo": dict(message.content)}}
        )
