"""A one-shot task that finishes at once with ``exit_code`` (0: success)."""

from __future__ import annotations

import sys

from zsvc import SingleTask


class ServiceQuick(SingleTask):
    def setup(self, exit_code: int = 0, **config: object) -> None:
        self.exit_code = exit_code

    def run(self) -> None:
        if self.exit_code:
            sys.exit(self.exit_code)
