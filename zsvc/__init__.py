"""zsvc: transactions of small task services on a ZeroMQ bus.

``from zsvc import Task, SingleTask`` is all a task author needs; the
classes are imported lazily so that ``import zsvc`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["SingleTask", "Task", "__version__"]

if TYPE_CHECKING:
    from zsvc.task.api import SingleTask, Task


def __getattr__(name: str) -> Any:
    if name in ("Task", "SingleTask"):
        from zsvc.task import api

        return getattr(api, name)
    raise AttributeError(f"module 'zsvc' has no attribute {name!r}")
