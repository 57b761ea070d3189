"""A one-shot task that shows a status line, then blocks ``block_s`` seconds ignoring stops."""

from __future__ import annotations

import time

from zsvc import SingleTask


class ServiceStubborn(SingleTask):
    def setup(self, block_s: float = 30.0, **config: object) -> None:
        self.block_s = block_s

    def run(self) -> None:
        self.set_status(f"blocking for {self.block_s:g} s")
        time.sleep(self.block_s)  # deliberately never looks at self.stopping
