"""A task whose package name shadows the standard ``signal`` module; it must still load."""

from __future__ import annotations

from zsvc import Task


class Servicesignal(Task):
    interval = 3600.0
