"""Context files for real programs, in the syntax of issue 14.

A program task is a command task with what issue 14 adds: ``<command type=…
pid_file=…>``, an ``<exec>`` element and TaskService attributes (start_secs,
kill_signal, restart…). The seed's part of the file (endpoints, message,
state) is :func:`tests.integration.conftest.render_context`'s, written once;
this module only adds the new syntax to it, so a change of the seed's format
is made in one place.

Every command is started through ``env --chdir=DIR ZPROG=MARK``: the marker
and the working directory find the test's processes afterwards, whatever a
program does to its command line (redis and nginx rewrite it over their
environment, so no single one of the three is enough).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from tests.integration.conftest import TaskDef, free_port, render_context

MARK_VARIABLE = "ZPROG"
"""The environment variable that marks a process as started by the tier."""


@dataclass
class ProgramTask:
    """One real program as a task."""

    id: str
    command: str
    type: str = "exec"
    """simple | exec | notify | forking (``<command type=…>``)."""
    pid_file: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    """TaskService attributes: start_secs, kill_signal, restart, restart_sec, …"""
    exec: dict[str, str] = field(default_factory=dict)
    """Attributes of ``<exec>`` (user, group, umask, limit_nofile, memory_max, …)."""
    environment: dict[str, str] = field(default_factory=dict)
    """``<environment name=…>`` children of ``<exec>``."""
    exec_children: str = ""
    """More children of ``<exec>``, as XML (``<environment_file>``…)."""
    chdir: bool = True
    """Start in the test's directory (off where the task's working_directory is checked)."""
    start_timeout: float = 10.0
    stop_timeout: float = 10.0


def wrapped(task: ProgramTask, directory: str, mark: str) -> str:
    """The task's command line, started with the tier's marker (and in *directory*)."""
    chdir = f"--chdir={directory} " if task.chdir else ""
    return f"/usr/bin/env {chdir}{MARK_VARIABLE}={mark} {task.command}"


def needs_new_syntax(task: ProgramTask) -> bool:
    """Does *task* use syntax only issue 14's loader reads? (type=notify does not: the old
    ``notify="true"`` is its synonym, so these tasks run on a loader without the rest.)"""
    return task.type not in ("exec", "notify") or bool(
        task.pid_file or task.exec or task.environment or task.exec_children
    )


def render(tasks: list[ProgramTask], directory: str, mark: str, context_id: str) -> str:
    """The context file of *tasks*."""
    defs = [
        TaskDef(
            task.id,
            command=wrapped(task, directory, mark),
            notify=task.type == "notify",
            location=None,
            start_timeout=task.start_timeout,
            stop_timeout=task.stop_timeout,
            attrs=task.attrs,
        )
        for task in tasks
    ]
    root = etree.fromstring(render_context(defs, free_port(), free_port(), context_id).encode())
    for task in tasks:
        if needs_new_syntax(task):
            _add_new_syntax(root, task)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8").decode()


def _add_new_syntax(root: etree._Element, task: ProgramTask) -> None:
    """``type=``/``pid_file=`` on the task's ``<command>``; its ``<exec>`` after it."""
    [command] = root.xpath("TaskService[@id=$id]/Task/command", id=task.id)
    del command.attrib["notify"]
    command.set("type", task.type)
    if task.pid_file:
        command.set("pid_file", task.pid_file)
    if task.exec or task.environment or task.exec_children:
        settings = etree.fromstring(f"<exec>{task.exec_children}</exec>")
        for name, value in task.exec.items():
            settings.set(name, value)
        for name, value in task.environment.items():
            etree.SubElement(settings, "environment", name=name).text = value
        command.addnext(settings)
