"""Task services that come with zsvc, in the seed's layout (``<instance>/Service<instance>.py``).

A context that names a built-in instance (``TaskService instance="Monitor"``)
gets it from here, unless the context's own task location has a package of
that name: the user's own task is then left alone. What is built in, and how
its configuration is checked before anything runs, is known here only; the
context loader asks :func:`builtin_task` and needs no special case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsvc.hostwire import task_module_path
from zsvc.monitor.options import MONITOR_INSTANCE, MonitorConfigError, parse_settings

BUILTIN_LOCATION = Path(__file__).resolve().parent
"""The task location of every built-in task."""

Problems = list[tuple[str, str]]
"""(key path in the configuration, why): what a configuration check found wrong."""


@dataclass(frozen=True)
class BuiltinTask:
    """One built-in task: where it lives and how its configuration is checked."""

    instance: str
    check: Callable[[Mapping[str, Any]], Problems]
    """What is wrong with a configuration for this task (empty when nothing is)."""
    location: Path = BUILTIN_LOCATION


def _monitor_problems(configuration: Mapping[str, Any]) -> Problems:
    """The Monitor's settings, parsed as the task itself will parse them."""
    try:
        parse_settings(configuration)
    except MonitorConfigError as exc:
        return exc.problems
    return []


BUILTIN_TASKS = {
    task.instance: task for task in (BuiltinTask(MONITOR_INSTANCE, check=_monitor_problems),)
}


def builtin_task(instance: str, location: Path) -> BuiltinTask | None:
    """The built-in task a context's *instance* names, None if none or if *location* has its own.

    *location* is the context's task location: a package of that name there
    is the user's own task and wins over the built-in one.
    """
    task = BUILTIN_TASKS.get(instance)
    if task is None or task_module_path(location, instance).is_file():
        return None
    return task
