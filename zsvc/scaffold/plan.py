"""From a :class:`Request` to the exact bytes of every file to write: the pure core.

:func:`make_plan` reads existing files only through the *read* callable it
is given, and decides everything before anything is written:

- the three Python files of each service, and the context file (new, or
  the existing one with the services added);
- refusals, all reported at once: invalid values, a task id used twice, a
  task id already in the context for another service (or differently,
  without ``force``), a generated file that exists with other content (a
  user's edit, kept unless ``force``), and a resulting context that
  ``zsvc validate`` would refuse.

A file that already holds exactly what would be written is ``unchanged``:
running the same command twice changes nothing.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from lxml import etree

from zsvc.config.loader import load_context_text
from zsvc.config.model import Context
from zsvc.errors import ConfigError
from zsvc.scaffold import contextxml
from zsvc.scaffold.model import (
    Problem,
    Request,
    ScaffoldError,
    ServiceSpec,
    context_problems,
    service_problems,
)
from zsvc.scaffold.templates import render_init, render_service, render_task

Reader = Callable[[Path], bytes | None]
"""Returns a file's bytes, or None when it does not exist."""


class Change(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class FileChange:
    """One file: what it will hold, and what it held (None: it does not exist yet)."""

    path: Path
    content: bytes
    previous: bytes | None

    @property
    def change(self) -> Change:
        if self.previous is None:
            return Change.CREATE
        return Change.UNCHANGED if self.previous == self.content else Change.UPDATE


@dataclass(frozen=True)
class Plan:
    request: Request
    files: tuple[FileChange, ...]

    @property
    def writes(self) -> tuple[FileChange, ...]:
        """The files that change."""
        return tuple(f for f in self.files if f.change is not Change.UNCHANGED)


def service_files(request: Request, spec: ServiceSpec) -> dict[Path, bytes]:
    """The three Python files of one service."""
    directory = request.services_dir / spec.task_service
    return {
        directory / "__init__.py": render_init(spec).encode(),
        directory / f"{spec.service_class}.py": render_service(spec).encode(),
        directory / f"{spec.task_file}.py": render_task(spec).encode(),
    }


def make_plan(request: Request, read: Reader, force: bool = False) -> Plan:
    """Every file to write for *request*, or :class:`ScaffoldError` listing every refusal."""
    problems = context_problems(request.context)
    for spec in request.services:
        problems += service_problems(spec)
    problems += _duplicate_ids(request)
    if problems:
        raise ScaffoldError(problems)
    planned: dict[Path, bytes] = {}
    for spec in request.services:
        for path, content in service_files(request, spec).items():
            if path in planned and planned[path] != content:
                problems.append(
                    Problem(
                        spec.at("task_service"),
                        f"{path} would be generated twice with different content: services "
                        f"named {spec.task_service!r} must be the same service",
                    )
                )
            planned[path] = content
    files = [FileChange(path, content, read(path)) for path, content in planned.items()]
    for change in files:
        if change.change is Change.UPDATE and not force:
            problems.append(
                Problem(
                    str(change.path),
                    "exists and differs from what create-service generates (your edits?); "
                    "it is kept: --force overwrites it",
                )
            )
    context_path = request.context_file
    previous = read(context_path)
    try:
        context_bytes = _context_bytes(request, previous, force)
    except ScaffoldError as exc:
        problems += exc.problems
        context_bytes = None
    if problems:
        raise ScaffoldError(problems)
    assert context_bytes is not None
    files.append(FileChange(context_path, context_bytes, previous))
    return Plan(request, tuple(files))


def _duplicate_ids(request: Request) -> list[Problem]:
    seen: dict[str, ServiceSpec] = {}
    problems = []
    for spec in request.services:
        first = seen.setdefault(spec.task_id, spec)
        if first is not spec:
            problems.append(
                Problem(
                    spec.at("task_id"),
                    f"task id {spec.task_id!r} is given twice (first at {first.at('task_id')})",
                )
            )
    return problems


# --------------------------------------------------------------------------- the context file


def _context_bytes(request: Request, previous: bytes | None, force: bool) -> bytes:
    path = request.context_file
    if previous is None:
        _check_calls(request, set())
        content = contextxml.new_context(request.context, request.services)
    else:
        existing = _load(previous, path, "the existing context is invalid; fix it first")
        _check_header(request, existing)
        _check_calls(request, set(existing.task_ids))
        content = _merged(request, previous, existing, force)
    _load(content, path, "create-service would write an invalid context (a bug: please report)")
    return content


def _load(data: bytes, path: Path, why: str) -> Context:
    try:
        return load_context_text(data, path)
    except ConfigError as exc:
        issues = [Problem(f"{i.file}:{i.line}:{i.column}", i.message) for i in exc.issues]
        raise ScaffoldError([*issues, Problem(str(path), why)]) from None


def _check_calls(request: Request, existing_ids: set[str]) -> None:
    """Triggers may call tasks of the context or of this request, nothing else."""
    known = existing_ids | {spec.task_id for spec in request.services}
    problems = [
        Problem(
            trigger.where or spec.at("state_id"),
            f"trigger {trigger.event} of task {spec.task_id!r} calls {trigger.call!r}, "
            f"which is neither in this file nor in {request.context_file.name}",
        )
        for spec in request.services
        for trigger in spec.triggers
        if trigger.call not in known
    ]
    if problems:
        raise ScaffoldError(problems)


def _check_header(request: Request, existing: Context) -> None:
    """Values given explicitly must agree with the context being added to."""
    wanted = request.context
    problems = []
    if wanted.context_id is not None and wanted.context_id != existing.context_id:
        problems.append(
            Problem(
                wanted.at("context_id"),
                f"context id {wanted.context_id!r} differs from {existing.context_id!r} in "
                f"{existing.path}; leave it out to keep the file's",
            )
        )
    pairs = (
        ("sub_port", wanted.sub_port, existing.endpoints.sub_connect),
        ("pub_port", wanted.pub_port, existing.endpoints.pub_connect),
    )
    for name, port, found in pairs:
        if wanted.server_ip is None and port is None:
            continue
        if found is None:
            problems.append(
                Problem(
                    wanted.at(name if port is not None else "server_ip"),
                    f"{existing.path} writes no bus endpoints; leave server_ip and {name} out "
                    "to keep it so",
                )
            )
            continue
        host, _, found_port = found.removeprefix("tcp://").rpartition(":")
        asked_host = wanted.host if wanted.server_ip is not None else host
        asked = f"tcp://{asked_host}:{port if port is not None else found_port}"
        if asked != found:
            problems.append(
                Problem(
                    wanted.at(name if port is not None else "server_ip"),
                    f"the context's endpoint would be {asked}, but {existing.path} has "
                    f"{found}; leave server_ip and {name} out to keep the file's",
                )
            )
    if problems:
        raise ScaffoldError(problems)


def _merged(request: Request, previous: bytes, existing: Context, force: bool) -> bytes:
    tree = contextxml.parse_existing(previous)
    by_id = {element.get("id"): element for element in contextxml.task_services(tree)}
    problems = []
    for spec in request.services:
        old = by_id.get(spec.task_id)
        if old is None:
            contextxml.append_service(tree, spec)
        elif force:
            contextxml.replace_service(old, spec)
        elif not _same_task(tree, spec, existing):
            what = (
                f"task service {old.get('instance')!r}"
                if old.get("instance") != spec.task_service
                else "the same service, configured differently (your edits?)"
            )
            problems.append(
                Problem(
                    f"{existing.path}:{old.sourceline}:1",
                    f"task id {spec.task_id!r} already exists, for {what}; choose another "
                    f"task id ({spec.at('task_id')}), or --force to replace it",
                )
            )
    if problems:
        raise ScaffoldError(problems)
    return contextxml.serialise(tree)


def _same_task(tree: etree._ElementTree, spec: ServiceSpec, existing: Context) -> bool:
    """True when the context already says what *spec* would (formatting and comments aside)."""
    candidate = copy.deepcopy(tree)
    for element in contextxml.task_services(candidate):
        if element.get("id") == spec.task_id:
            contextxml.replace_service(element, spec)
    try:
        regenerated = load_context_text(contextxml.serialise(candidate), existing.path)
    except ConfigError:
        return False
    mine = dataclasses.replace(regenerated.task(spec.task_id), line=0)
    return mine == dataclasses.replace(existing.task(spec.task_id), line=0)
