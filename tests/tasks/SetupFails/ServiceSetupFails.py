"""A task whose set-up raises: the start must fail and name the reason."""

from __future__ import annotations

from zsvc import Task


class ServiceSetupFails(Task):
    def setup(self, **config: object) -> None:
        raise RuntimeError("the database is on fire")
