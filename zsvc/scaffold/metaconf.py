"""Read a ``MetaServiceConf`` file (the seed's input for several services) into a :class:`Request`.

Three stages, each reporting every problem it finds as ``file:line:column``:

1. XML syntax, with the parser hardened (no DTD, no entities, no network).
   The seed's own sample has a stray ``</Service>``; libxml2 calls that an
   "Opening and ending tag mismatch", which is reported with the column
   where the stray tag starts and what it most likely is;
2. the shipped XSD (``metaconf.xsd``): elements, attributes and fixed words;
3. Python: required elements and elements given twice, then the same value
   rules as the flags (:mod:`zsvc.scaffold.model`).

Differences from the original's reader (``original-behaviour.md`` §2.2, §8):
``task_file``, ``task_class`` and ``task_topic`` are honoured instead of
ignored; ``context_id`` is optional (``context001``); "Simple" is accepted
for "Single", as the seed's README says; a ``<state>`` whose action and
target are both empty is no trigger, so 0 to 4 of them may be given.
"""

from __future__ import annotations

import os
import re
from functools import cache
from importlib import resources
from pathlib import Path

from lxml import etree

from zsvc.scaffold.model import (
    TASK_TYPE_WORDS,
    ContextSpec,
    Problem,
    Request,
    ScaffoldError,
    ServiceSpec,
    TaskType,
    TriggerSpec,
)
from zsvc.states import TaskAction, TriggerEvent
from zsvc.xmlsafe import doctype_at, safe_parser

_Element = etree._Element

ROOT = "MetaServiceConf"
CONTEXT_FIELDS = ("context_name", "context_id", "server_ip", "sub_port", "pub_port", "service_path")
SERVICE_FIELDS = (
    "task_service",
    "task_file",
    "task_class",
    "task_desc",
    "service_name",
    "task_id",
    "device_action",
    "task_topic",
    "entry_action",
)
REQUIRED_SERVICE_FIELDS = ("task_service", "service_name", "task_id")
_MISMATCH_RE = re.compile(
    r"Opening and ending tag mismatch: (?P<open>\S+) line (?P<line>\d+) and (?P<close>\S+)"
)


def load_metaconf(path: Path, service_path: Path | None = None) -> Request:
    """Read *path*; *service_path* (the ``--service-path`` flag) overrides its ``<service_path>``.

    A relative ``<service_path>`` is taken from the file's directory, as a
    context file's ``location`` is.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScaffoldError([Problem(f"{path}:0:0", f"cannot read file: {exc.strerror}")]) from None
    return parse_metaconf(data, path, service_path)


def parse_metaconf(data: bytes, path: Path, service_path: Path | None = None) -> Request:
    """The :class:`Request` that *data* (the text of file *path*) describes."""
    file = str(path)
    root = _parse(data, file)
    _validate(root, file)
    return _request(root, file, path, service_path)


# --------------------------------------------------------------------------- stage 1: syntax


def _at(file: str, line: int | None, column: int = 1) -> str:
    return f"{file}:{max(line or 1, 1)}:{max(column, 1)}"


def _parse(data: bytes, file: str) -> _Element:
    # Refused before libxml2 reads the internal subset, as in context files: otherwise an
    # entity bomb is parsed first, and refused with whatever libxml2's version says
    # ("entity reference loop", "amplification factor exceeded"), not as a DOCTYPE.
    if (where := doctype_at(data)) is not None:
        raise ScaffoldError(
            [Problem(_at(file, *where), "DOCTYPE is not allowed (no DTDs or entities)")]
        )
    parser = safe_parser()
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        entries = [e for e in parser.error_log if e.level >= etree.ErrorLevels.ERROR]
        if not entries:
            line, column = exc.position if exc.position else (1, 1)
            raise ScaffoldError(
                [Problem(_at(file, line, column), f"XML syntax: {exc.msg}")]
            ) from None
        # The first error only: libxml2 stops there, and what follows it (older versions
        # add "Extra content at the end of the document") are consequences.
        raise ScaffoldError([_syntax_problem(data, file, entries[0])]) from None
    if root.getroottree().docinfo.doctype:
        raise ScaffoldError([Problem(_at(file, 1), "DOCTYPE is not allowed (no DTDs or entities)")])
    if root.tag != ROOT:
        raise ScaffoldError(
            [
                Problem(
                    _at(file, root.sourceline), f"root element is <{root.tag}>; expected <{ROOT}>"
                )
            ]
        )
    return root


def _syntax_problem(data: bytes, file: str, entry: etree._LogEntry) -> Problem:
    """libxml2's message, made specific for the common case of a stray closing tag."""
    message = " ".join(entry.message.split())
    match = _MISMATCH_RE.match(message)
    if match is None:
        return Problem(_at(file, entry.line, entry.column), f"XML syntax: {message}")
    close = match["close"]
    line_text = _line(data, entry.line)
    start = line_text.rfind(f"</{close}", 0, max(entry.column - 1, 0))
    column = start + 1 if start >= 0 else entry.column
    return Problem(
        _at(file, entry.line, column),
        f"XML syntax: closing tag </{close}> does not close <{match['open']}> "
        f"(opened at line {match['line']}): a stray </{close}>, or a missing <{close}>",
    )


def _line(data: bytes, number: int) -> str:
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[number - 1] if 0 < number <= len(lines) else ""


# --------------------------------------------------------------------------- stage 2: XSD


@cache
def _schema() -> etree.XMLSchema:
    """The shipped schema, compiled once on first use."""
    source = resources.files("zsvc.scaffold").joinpath("metaconf.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(source))


def _validate(root: _Element, file: str) -> None:
    schema = _schema()
    if schema.validate(root):
        return
    problems = [
        Problem(_at(file, entry.line, entry.column), " ".join(entry.message.split()))
        for entry in schema.error_log
    ]
    raise ScaffoldError(problems)


# --------------------------------------------------------------------------- stage 3: values


class _Reader:
    """Collects problems while reading values, so a file is fixed in one go."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def at(self, element: _Element) -> str:
        return _at(self.file, element.sourceline)

    def add(self, element: _Element, message: str) -> None:
        self.problems.append(Problem(self.at(element), message))

    def fields(self, parent: _Element, names: tuple[str, ...]) -> dict[str, _Element]:
        """Each named child at most once."""
        found: dict[str, _Element] = {}
        for child in parent:
            if child.tag not in names:
                continue
            if child.tag in found:
                first = found[child.tag].sourceline
                self.add(
                    child, f"<{child.tag}> is given twice in <{parent.tag}> (first at line {first})"
                )
                continue
            found[child.tag] = child
        return found

    def require(self, parent: _Element, found: dict[str, _Element], names: tuple[str, ...]) -> bool:
        missing = [name for name in names if name not in found]
        for name in missing:
            self.add(parent, f"<{parent.tag}> has no <{name}>; it is required")
        return not missing


def _text(element: _Element | None) -> str | None:
    return None if element is None else (element.text or "").strip()


def _request(root: _Element, file: str, path: Path, override: Path | None) -> Request:
    reader = _Reader(file)
    found = reader.fields(root, CONTEXT_FIELDS)
    required = ("context_name",) if override is not None else ("context_name", "service_path")
    reader.require(root, found, required)
    services = [child for child in root if child.tag == "Service"]
    if not services:
        reader.add(root, "<MetaServiceConf> has no <Service>; give at least one")
    specs = [spec for element in services if (spec := _service(reader, element)) is not None]
    context = _context(reader, found)
    if reader.problems:
        raise ScaffoldError(reader.problems)
    assert context is not None
    if override is not None:
        service_path = override
    else:
        service_path = path.parent / (_text(found["service_path"]) or ".")
    return Request(Path(os.path.normpath(service_path.absolute())), context, tuple(specs))


def _context(reader: _Reader, found: dict[str, _Element]) -> ContextSpec | None:
    if "context_name" not in found:
        return None
    where = {name: reader.at(element) for name, element in found.items()}
    where[""] = where["context_name"]
    ports = {
        name: int(_text(found[name]) or 0) if name in found else None
        for name in ("sub_port", "pub_port")
    }
    return ContextSpec(
        name=_text(found["context_name"]) or "",
        context_id=_text(found.get("context_id")),
        server_ip=_text(found.get("server_ip")),
        sub_port=ports["sub_port"],
        pub_port=ports["pub_port"],
        where=where,
    )


def _service(reader: _Reader, element: _Element) -> ServiceSpec | None:
    found = reader.fields(element, SERVICE_FIELDS)
    if not reader.require(element, found, REQUIRED_SERVICE_FIELDS):
        return None
    where = {name: reader.at(child) for name, child in found.items()}
    where[""] = reader.at(element)
    triggers = _triggers(reader, element)

    def value(name: str) -> str:
        return _text(found.get(name)) or ""

    task_service = value("task_service")
    return ServiceSpec(
        task_service=task_service,
        task_id=value("task_id"),
        service_name=value("service_name"),
        task_file=value("task_file") or task_service,
        task_class=value("task_class") or task_service,
        task_desc=value("task_desc"),
        device_action=value("device_action"),
        task_type=TASK_TYPE_WORDS.get(element.get("task_type", "").strip(), TaskType.LOOPED),
        entry_action=TriggerEvent(value("entry_action") or TriggerEvent.ON_START),
        topic=value("task_topic") or "process",
        triggers=triggers,
        where=where,
    )


def _triggers(reader: _Reader, service: _Element) -> tuple[TriggerSpec, ...]:
    triggers: dict[TriggerEvent, TriggerSpec] = {}
    seen: dict[TriggerEvent, _Element] = {}
    for state in (child for child in service if child.tag == "state"):
        found = reader.fields(state, ("trigger", "action", "state_id"))
        if not reader.require(state, found, ("trigger",)):
            continue
        event = TriggerEvent(_text(found["trigger"]))
        if event in seen:
            reader.add(
                state, f"trigger {event} is given twice (first at line {seen[event].sourceline})"
            )
            continue
        seen[event] = state
        action, call = _text(found.get("action")) or "", _text(found.get("state_id")) or ""
        if not action and not call:
            continue
        if not action or not call:
            missing = "<action>" if not action else "<state_id> (the task id to call)"
            reader.add(
                state, f"trigger {event} needs both <action> and <state_id>; {missing} is empty"
            )
            continue
        triggers[event] = TriggerSpec(event, TaskAction(action), call, reader.at(found["state_id"]))
    return tuple(triggers[event] for event in TriggerEvent if event in triggers)
