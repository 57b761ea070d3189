"""Context files: the typed model and the loader that builds it from XML."""

from zsvc.config.loader import load_context, load_context_text
from zsvc.config.model import BusEndpoints, Context, TaskSpec, Trigger

__all__ = [
    "BusEndpoints",
    "Context",
    "TaskSpec",
    "Trigger",
    "load_context",
    "load_context_text",
]
