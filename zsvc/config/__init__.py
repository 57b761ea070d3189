"""Context files: the typed model and the loader that builds it from XML.

The loader (lxml and the compiled XSD, about 8 MB of a process's memory) is
imported on first use: a daemon that has no context loaded, and whatever
needs only the model's types, do without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zsvc.config.model import BusEndpoints, Context, TaskSpec, Trigger

if TYPE_CHECKING:
    from zsvc.config.loader import load_context, load_context_text

__all__ = [
    "BusEndpoints",
    "Context",
    "TaskSpec",
    "Trigger",
    "load_context",
    "load_context_text",
]


def __getattr__(name: str) -> Any:
    if name in ("load_context", "load_context_text"):
        from zsvc.config import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
