"""Read a task's ``<exec>`` element into :class:`~zsvc.config.model.ExecSettings`.

Apart from the loader so that the loader stays about the context's structure; it
reports through the loader's callback (``report(element, message)``, which adds
the task's label and the line), one issue per wrong value, and returns the
settings with every wrong value left at its default. The values' rules are in
:mod:`zsvc.config.execvalues`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lxml import etree

from zsvc.config.execvalues import (
    ValueProblem,
    is_env_name,
    parse_bool,
    parse_cpu_quota,
    parse_id,
    parse_limit_nofile,
    parse_memory_max,
    parse_nice,
    parse_tasks_max,
    parse_umask,
    reserved_env_problem,
)
from zsvc.config.model import EnvironmentFile, ExecSettings, ProcessSettings

__all__ = ["Report", "read_exec"]

Report = Callable[[etree._Element, str], None]
"""How an issue is reported: at an element, with a message (the loader adds the task)."""

_T = TypeVar("_T")

_PARSERS: dict[str, Callable[[str], Any]] = {
    "user": lambda text: parse_id(text, "user"),
    "group": lambda text: parse_id(text, "group"),
    "umask": parse_umask,
    "nice": parse_nice,
    "limit_nofile": parse_limit_nofile,
    "memory_max": parse_memory_max,
    "cpu_quota": parse_cpu_quota,
    "tasks_max": parse_tasks_max,
}
_FLAGS = ("no_new_privileges", "private_tmp")


def read_exec(element: etree._Element | None, report: Report) -> ExecSettings:
    """The settings of *element* (``<exec>``); the defaults when it is None."""
    if element is None:
        return ExecSettings()
    values: dict[str, Any] = {}
    for attr, parser in _PARSERS.items():
        values[attr] = _attribute(element, attr, parser, report)
    for attr in _FLAGS:
        values[attr] = bool(_attribute(element, attr, _boolean, report))
    values["supplementary_groups"] = _groups(element, report)
    process = ProcessSettings(**values)
    return ExecSettings(
        process=process,
        environment=_environment(element, report),
        environment_files=_environment_files(element, report),
        working_directory=_attribute(element, "working_directory", _absolute, report),
    )


def _attribute(
    element: etree._Element, attr: str, parser: Callable[[str], _T], report: Report
) -> _T | None:
    """Attribute *attr* of *element* through *parser*; None when absent or wrong (reported)."""
    value = element.get(attr)
    if value is None:
        return None
    try:
        return parser(value)
    except ValueProblem as problem:
        report(element, f"<{element.tag}> attribute '{attr}': '{value}' {problem}")
        return None


def _boolean(text: str) -> bool:
    value = parse_bool(text)
    if value is None:
        raise ValueProblem("is not a boolean; expected true/false/1/0/yes/no")
    return value


def _absolute(text: str) -> Path:
    value = text.strip()
    if not value.startswith("/"):
        raise ValueProblem("is not an absolute path")
    return Path(value)


def _groups(element: etree._Element, report: Report) -> tuple[str, ...]:
    """``supplementary_groups``: names or gids separated by whitespace, each reported alone."""
    value = element.get("supplementary_groups")
    if value is None:
        return ()
    tokens = value.split()
    if not tokens:
        report(
            element,
            f"<exec> attribute 'supplementary_groups': '{value}' is empty; "
            "expected group names or gids separated by spaces (or leave it out)",
        )
    found: list[str] = []
    for token in tokens:
        try:
            found.append(parse_id(token, "group"))
        except ValueProblem as problem:
            report(element, f"<exec> attribute 'supplementary_groups': '{token}' {problem}")
    return tuple(found)


def _children(element: etree._Element, tag: str) -> list[etree._Element]:
    return [child for child in element if child.tag == tag]


def _environment(element: etree._Element, report: Report) -> tuple[tuple[str, str], ...]:
    """``<environment name="N">value</environment>``: the value exactly as written (not
    stripped); each name at most once (a context has no drop-ins to override it)."""
    found: dict[str, tuple[str, int]] = {}
    for child in _children(element, "environment"):
        name = child.get("name")
        if name is None:
            report(child, "<environment> requires attribute 'name'")
            continue
        if is_env_name(name):
            problem = reserved_env_problem(name)
        else:
            problem = "is not a variable name; expected [A-Za-z_][A-Za-z0-9_]*"
        if problem is not None:
            report(child, f"<environment> attribute 'name': '{name}' {problem}")
        elif name in found:
            report(
                child,
                f"<environment> '{name}' given twice (first at line {found[name][1]}); "
                "expected each name once",
            )
        else:
            found[name] = (child.text or "", child.sourceline or 0)
    return tuple((name, value) for name, (value, _) in found.items())


def _environment_files(element: etree._Element, report: Report) -> tuple[EnvironmentFile, ...]:
    """``<environment_file optional="…">/absolute/path</environment_file>``, in order."""
    found: list[EnvironmentFile] = []
    for child in _children(element, "environment_file"):
        text = (child.text or "").strip()
        optional = bool(_attribute(child, "optional", _boolean, report))
        if not text:
            report(child, "<environment_file> is empty; expected an absolute path")
        elif not text.startswith("/"):
            report(child, f"<environment_file> '{text}' is not an absolute path")
        else:
            found.append(EnvironmentFile(Path(text), optional=optional))
    return tuple(found)
