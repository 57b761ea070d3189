"""Load and validate a context file (``Context-*.xml``) into the typed model.

Validation runs in two stages so that every problem is reported at once,
each with ``file:line:column``:

1. the XSD shipped next to this module (``context.xsd``) checks structure:
   which elements and attributes may appear where;
2. Python checks everything a schema says badly or not at all: required
   elements and their cardinality (children may come in any order), values
   (ids, endpoints, timeouts, restart policy, trigger targets, the ``after``
   order and its cycles) and the typing of the free-form ``<configuration>``.

Parsing is hardened: a document with a DOCTYPE is refused before its
internal subset is read, entities are never resolved, nothing is fetched
from the network and libxml2's size limits stay on. The original fed files
to a permissive converter and read every value as a string
(``spec/original-behaviour.md`` §2.3); nothing of that survives here.
"""

from __future__ import annotations

import keyword
import math
import re
import shlex
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from lxml import etree

from zsvc.builtin import builtin_task
from zsvc.config.execvalues import FALSE_WORDS as _FALSE_WORDS
from zsvc.config.execvalues import TRUE_WORDS as _TRUE_WORDS
from zsvc.config.execvalues import ValueProblem, parse_signal
from zsvc.config.execvalues import parse_bool as _parse_bool
from zsvc.config.execxml import read_exec
from zsvc.config.model import (
    DEFAULT_PUB_ENDPOINT,
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    DEFAULT_SUB_ENDPOINT,
    BusEndpoints,
    Context,
    RestartPolicy,
    TaskSpec,
    Trigger,
)
from zsvc.errors import ConfigError, ConfigIssue
from zsvc.hostwire import MAX_CONFIGURATION_BYTES, configuration_size
from zsvc.states import (
    RestartMode,
    ServiceType,
    StartType,
    TaskAction,
    TriggerEvent,
    is_valid_id,
)
from zsvc.xmlsafe import doctype_at, safe_parser

__all__ = ["load_context", "load_context_text"]

_Element = etree._Element

ROOT_TAG = "Context"
LIFTED_KEYS = ("device_action", "location")
"""Configuration keys with a meaning for zsvc, moved out of ``TaskSpec.configuration``."""
DEFAULT_LOCATION = Path("..") / "Services"
"""The seed's layout: ``service_path/{Conf,Services}``; relative to the context file."""
MAX_SCHEMA_ROUNDS = 100
"""Bound on re-validation rounds (see :func:`_schema_issues`)."""

_ID_RULE = "1-64 characters of A-Z a-z 0-9 _ -"
"""How :func:`zsvc.states.is_valid_id` reads in a message."""
_XS = "{http://www.w3.org/2001/XMLSchema}"
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][+-]?[0-9]+)?")
_TCP_RE = re.compile(
    r"tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r":(?P<port>[0-9]{1,5})"
)
_IPC_RE = re.compile(r"ipc://[^\s\x00]+")
_WILDCARD_HOSTS = ("*", "0.0.0.0")
_ENCODING_DECL_RE = re.compile(r"\A(\ufeff?<\?xml[^>]*?\bencoding\s*=\s*)([\"'])[^\"']*\2")


# --------------------------------------------------------------------------- public API


def load_context(path: str | Path) -> Context:
    """Read and validate the context file at *path*.

    Raises :class:`ConfigError` listing every problem; an unreadable file
    is one issue at line 0, column 0 carrying the OS error text.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), 0, 0, _os_error_text(exc))]) from exc
    return load_context_text(data, path)


def load_context_text(data: bytes | str, path: str | Path) -> Context:
    """Validate context XML that was read elsewhere (for example sent by the CLI).

    *path* names the file in messages and anchors relative locations (the
    default ``location`` is ``<dir of path>/../Services``); pass an absolute
    path when the caller's working directory is not the reader's.
    """
    issues = _Issues(str(path))
    root = _parse(data, issues)
    if root is None:
        raise ConfigError(issues.sorted())
    issues.extend(_schema_issues(root, issues.file))
    context = _build_context(root, Path(path), issues)
    if issues.items:
        raise ConfigError(issues.sorted())
    return context


# --------------------------------------------------------------------------- issues


_CONTROL_CHARACTERS = {code: f"\\x{code:02x}" for code in range(32)} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x7F: "\\x7f",
}


def one_line(message: str) -> str:
    """A message fit for ``file:line:column: message``: values quoted from the file may hold
    newlines or other control characters, which are shown escaped."""
    return message.translate(_CONTROL_CHARACTERS)


@dataclass
class _Issues:
    """Collects problems instead of stopping at the first, so users fix a file in one go."""

    file: str
    items: list[ConfigIssue] = field(default_factory=list)

    def add(self, line: int, column: int, message: str) -> None:
        self.items.append(ConfigIssue(self.file, line, column, one_line(message)))

    def at(self, element: _Element, message: str) -> None:
        """Report *message* at *element*'s line (column 1: lxml keeps no element columns)."""
        self.add(element.sourceline or 1, 1, message)

    def extend(self, issues: list[ConfigIssue]) -> None:
        self.items.extend(issues)

    def sorted(self) -> list[ConfigIssue]:
        unique = dict.fromkeys(self.items)
        return sorted(unique, key=lambda issue: (issue.line, issue.column))


def _os_error_text(exc: OSError) -> str:
    """``strerror`` without the repr noise, falling back to ``str(exc)``."""
    return f"cannot read file: {exc.strerror}" if exc.strerror else f"cannot read file: {exc}"


def _one_line(message: str) -> str:
    """libxml2 messages may span lines; a ConfigIssue is one line."""
    return " ".join(message.split())


# --------------------------------------------------------------------------- parsing


def _to_bytes(data: bytes | str, issues: _Issues) -> bytes | None:
    """Encode text input for libxml2, keeping any encoding declaration truthful."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    text = _ENCODING_DECL_RE.sub(r"\1\2UTF-8\2", data, count=1)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        column = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
        issues.add(line, column, "text is not valid Unicode (lone surrogate); expected UTF-8 text")
        return None


def _parse(data: bytes | str, issues: _Issues) -> _Element | None:
    """Parse *data* safely; on failure record the issues and return None."""
    raw = _to_bytes(data, issues)
    if raw is None:
        return None
    if (where := doctype_at(raw)) is not None:
        issues.add(*where, "DOCTYPE is not allowed (no DTDs or entities in context files)")
        return None
    parser = safe_parser()
    try:
        root = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        _syntax_issues(parser, exc, issues)
        return None
    if root.getroottree().docinfo.doctype:  # belt and braces: the scan above missed it
        issues.add(1, 1, "DOCTYPE is not allowed (no DTDs or entities in context files)")
        return None
    if root.tag != ROOT_TAG:
        issues.at(root, f"root element is <{root.tag}>; expected <{ROOT_TAG}> (no namespace)")
        return None
    return root


def _syntax_issues(parser: etree.XMLParser, exc: etree.XMLSyntaxError, issues: _Issues) -> None:
    """Every error libxml2 logged, or the exception itself when the log is empty."""
    entries = [e for e in parser.error_log if e.level >= etree.ErrorLevels.ERROR]
    for entry in entries:
        issues.add(
            max(entry.line, 1), max(entry.column, 1), f"XML syntax: {_one_line(entry.message)}"
        )
    if not entries:
        line, column = exc.position if exc.position else (1, 1)
        issues.add(max(line, 1), max(column, 1), f"XML syntax: {_one_line(str(exc.msg))}")


# --------------------------------------------------------------------------- stage 1: XSD


@dataclass(frozen=True)
class _Schema:
    """The compiled XSD plus what it allows, for messages that say what is expected."""

    xsd: etree.XMLSchema
    children: Mapping[str, tuple[str, ...]]
    attributes: Mapping[str, tuple[str, ...]]
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)


@cache
def _schema() -> _Schema:
    """Load ``context.xsd`` once, on first use (no I/O at import time)."""
    source = resources.files("zsvc.config").joinpath("context.xsd").read_bytes()
    document = etree.fromstring(source, safe_parser())
    children, attributes = _schema_tables(document)
    return _Schema(etree.XMLSchema(document), children, attributes)


def _schema_tables(
    document: _Element,
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """Map each element name to the children and attributes its (named) type allows."""
    types = {ct.get("name"): ct for ct in document.iterfind(f"{_XS}complexType")}
    children: dict[str, tuple[str, ...]] = {}
    attributes: dict[str, tuple[str, ...]] = {}
    for element in document.iter(f"{_XS}element"):
        complex_type = types.get(element.get("type"))
        name = element.get("name")
        if complex_type is None or name in children:
            children.setdefault(name, ())
            attributes.setdefault(name, ())
            continue
        children[name] = tuple(e.get("name") for e in complex_type.iter(f"{_XS}element"))
        attributes[name] = tuple(a.get("name") for a in complex_type.iter(f"{_XS}attribute"))
    return children, attributes


def _schema_issues(root: _Element, file: str) -> list[ConfigIssue]:
    """Validate against the XSD, reporting every structural problem.

    libxml2 stops checking a parent's remaining content after the first
    unexpected child, so each round removes the unexpected elements it found
    and validates again. The tree is ours, and the Python stage ignores
    unknown elements anyway.
    """
    schema = _schema()
    found: list[ConfigIssue] = []
    for _ in range(MAX_SCHEMA_ROUNDS):
        with schema.lock:
            valid = schema.xsd.validate(root)
            entries = list(schema.xsd.error_log)
        if valid:
            return found
        unexpected: dict[int, _Element] = {}
        for entry in entries:
            element = _element_at(root, entry.path)
            if element is None:
                element = _element_on_line(root, entry.message, entry.line)
            found.append(_schema_issue(file, entry, element, schema))
            if element is not None and _is_unexpected(entry.message) and element is not root:
                unexpected[id(element)] = element
        if not unexpected:
            return found
        for element in unexpected.values():
            parent = element.getparent()
            if parent is not None:
                parent.remove(element)
    found.append(ConfigIssue(file, 1, 1, "too many structural errors; stopped checking"))
    return found


def _element_at(root: _Element, path: str | None) -> _Element | None:
    """The element an XSD error points to (libxml2 gives an XPath), or None."""
    if not path:
        return None
    try:
        hits = root.getroottree().xpath(path)
    except etree.XPathError:
        return None
    if isinstance(hits, list) and hits and isinstance(hits[0], etree._Element):
        return hits[0]
    return None


def _element_on_line(root: _Element, message: str, line: int) -> _Element | None:
    """Fallback when the XPath cannot be evaluated (prefixed names): tag plus line."""
    match = re.match(r"Element '(?P<tag>[^']*)'", message)
    if match is None:
        return None
    for element in root.iter():
        if element.tag == match["tag"] and element.sourceline == line:
            return element
    return None


_UNEXPECTED_RE = re.compile(r"Element '(?P<tag>[^']*)': This element is not expected")
_ATTRIBUTE_RE = re.compile(r"Element '(?P<tag>[^']*)', attribute '(?P<attr>[^']*)': .*not allowed")
_SIMPLE_RE = re.compile(r"Element '(?P<tag>[^']*)': Element content is not allowed")
_CHARACTERS_RE = re.compile(r"Element '(?P<tag>[^']*)': Character content .* not allowed")


def _is_unexpected(message: str) -> bool:
    return _UNEXPECTED_RE.match(message) is not None


def _schema_issue(
    file: str, entry: etree._LogEntry, element: _Element | None, schema: _Schema
) -> ConfigIssue:
    """Turn a libxml2 schema error into a message that says what is expected."""
    line = element.sourceline if element is not None and element.sourceline else entry.line
    message = _schema_message(_one_line(entry.message), element, schema)
    return ConfigIssue(file, max(line, 1), max(entry.column, 1), message)


def _schema_message(raw: str, element: _Element | None, schema: _Schema) -> str:
    if match := _UNEXPECTED_RE.match(raw):
        parent = element.getparent() if element is not None else None
        if parent is None:
            return f"element <{match['tag']}> is not allowed here"
        allowed = _listing(schema.children.get(str(parent.tag), ()), "<{}>")
        return f"element <{match['tag']}> is not allowed in <{parent.tag}>; expected {allowed}"
    if match := _ATTRIBUTE_RE.match(raw):
        allowed = schema.attributes.get(match["tag"], ())
        if not allowed:
            return f"element <{match['tag']}>: unknown attribute '{match['attr']}'; it takes none"
        expected = _listing(allowed, "'{}'")
        return f"element <{match['tag']}>: unknown attribute '{match['attr']}'; expected {expected}"
    if match := _SIMPLE_RE.match(raw):
        return f"element <{match['tag']}> must contain only text, not child elements"
    if match := _CHARACTERS_RE.match(raw):
        return f"element <{match['tag']}> must contain only child elements, not text"
    return f"schema: {raw}"


def _listing(names: tuple[str, ...], form: str) -> str:
    if not names:
        return "no child elements"
    return "one of " + ", ".join(form.format(name) for name in names)


# --------------------------------------------------------------------------- element helpers


def _elements(parent: _Element) -> Iterator[_Element]:
    """Child elements only (comments and PIs are already removed by the parser)."""
    return (child for child in parent if isinstance(child.tag, str))


def _groups(parent: _Element) -> dict[str, list[_Element]]:
    """Children by tag, in document order: order never matters, cardinality does."""
    groups: dict[str, list[_Element]] = {}
    for child in _elements(parent):
        groups.setdefault(str(child.tag), []).append(child)
    return groups


def _at_most_one(
    parent: _Element, groups: dict[str, list[_Element]], tag: str, issues: _Issues
) -> _Element | None:
    """The single <tag> child, reporting every extra occurrence."""
    found = groups.get(tag, [])
    for extra in found[1:]:
        issues.at(
            extra,
            f"<{tag}> given twice in <{parent.tag}> (first at line {found[0].sourceline}); "
            "expected at most one",
        )
    return found[0] if found else None


def _exactly_one(
    parent: _Element,
    groups: dict[str, list[_Element]],
    tag: str,
    issues: _Issues,
    label: str = "",
) -> _Element | None:
    """Like :func:`_at_most_one`, and report a missing <tag> at the parent."""
    element = _at_most_one(parent, groups, tag, issues)
    if element is None:
        issues.at(parent, f"{label}<{parent.tag}> requires a <{tag}> element")
    return element


def _text(element: _Element | None) -> str | None:
    """Stripped text of a leaf; None when absent or when it has children (the XSD said so)."""
    if element is None or any(True for _ in _elements(element)):
        return None
    return (element.text or "").strip()


def _is_python_name(value: str) -> bool:
    """Usable as an identifier in Python code (keywords excluded)."""
    return value.isidentifier() and not keyword.iskeyword(value)


# --------------------------------------------------------------------------- stage 2: Context


def _build_context(root: _Element, path: Path, issues: _Issues) -> Context:
    """Check the top level and every task; returns a Context that is valid if no issues."""
    groups = _groups(root)
    context_id = _context_id(root, groups, issues)
    log_name = _optional_text(root, groups, "TaskLogName", issues)
    endpoints = _endpoints(root, groups, issues)
    services = groups.get("TaskService", [])
    if not services:
        issues.at(root, "<Context> requires at least one <TaskService> element")
    known_ids = _task_ids(services, issues)
    base_dir = path.parent
    tasks = tuple(_task_spec(el, known_ids, base_dir, issues) for el in services)
    _check_order_cycles(tasks, known_ids, issues)
    _check_spec_sizes(tasks, services, issues)
    return Context(
        path=path,
        context_id=context_id,
        log_name=log_name or context_id,
        endpoints=endpoints,
        tasks=tasks,
    )


def _context_id(root: _Element, groups: dict[str, list[_Element]], issues: _Issues) -> str:
    element = _exactly_one(root, groups, "ContextID", issues)
    value = _text(element)
    if element is not None and value is not None and not is_valid_id(value):
        issues.at(element, f"<ContextID> '{value}' is not a valid id; expected {_ID_RULE}")
    return value or ""


def _optional_text(
    parent: _Element, groups: dict[str, list[_Element]], tag: str, issues: _Issues
) -> str | None:
    """Text of an optional single element; given-but-empty is an error, not a default."""
    element = _at_most_one(parent, groups, tag, issues)
    value = _text(element)
    if element is not None and value == "":
        issues.at(element, f"<{tag}> is empty; leave it out to use the default")
        return None
    return value


def _task_ids(services: list[_Element], issues: _Issues) -> frozenset[str]:
    """All well-formed task ids (so trigger targets can be checked), reporting duplicates."""
    first_line: dict[str, int] = {}
    for element in services:
        task_id = element.get("id")
        if task_id is None or not is_valid_id(task_id):
            continue
        if task_id in first_line:
            issues.at(
                element,
                f"duplicate task id '{task_id}' (first defined at line {first_line[task_id]})",
            )
        else:
            first_line[task_id] = element.sourceline or 0
    return frozenset(first_line)


# --------------------------------------------------------------------------- endpoints

# element -> (side, role); the seed's names are inverted (spec §1.2).
_ENDPOINT_ROLES = {
    "FrontEndEndpoint": ("sub", "connect"),
    "BackendEndpoint": ("pub", "connect"),
    "BackendBind": ("sub", "bind"),
    "FrontBind": ("pub", "bind"),
}
_DEFAULT_ENDPOINT = {"sub": DEFAULT_SUB_ENDPOINT, "pub": DEFAULT_PUB_ENDPOINT}


def _endpoint_problem(value: str, role: str) -> str | None:
    """Why *value* is not a usable endpoint for *role*, or None when it is."""
    if _IPC_RE.fullmatch(value):
        return None
    match = _TCP_RE.fullmatch(value)
    if match is None:
        return "expected tcp://HOST:PORT or ipc://PATH"
    if not 1 <= int(match["port"]) <= 65535:
        return "the port must be 1-65535"
    if match["host"] == "*" and role == "connect":
        return "host '*' is only allowed in binds (FrontBind, BackendBind)"
    return None


def _connectable(bind: str) -> str:
    """Where a client connects to reach *bind*: a wildcard host becomes 127.0.0.1."""
    match = _TCP_RE.fullmatch(bind)
    if match is None or match["host"] not in _WILDCARD_HOSTS:
        return bind
    return f"tcp://127.0.0.1:{match['port']}"


def _endpoints(root: _Element, groups: dict[str, list[_Element]], issues: _Issues) -> BusEndpoints:
    """Read the four endpoints and derive the missing ones.

    A missing bind follows its connect endpoint; a missing connect endpoint
    follows its bind with a wildcard host made local; a side with neither
    gets the model's default when the other side is written. A file that
    writes none has none: the daemon binds nothing for it (issue 14).
    """
    given: dict[tuple[str, str], tuple[str, _Element]] = {}
    valid = True
    for tag, (side, role) in _ENDPOINT_ROLES.items():
        element = _at_most_one(root, groups, tag, issues)
        value = _text(element)
        if element is None or value is None:
            continue
        problem = _endpoint_problem(value, role)
        if problem is not None:
            issues.at(element, f"<{tag}> '{value}' is not a valid {role} endpoint: {problem}")
            valid = False
            continue
        given[side, role] = (value, element)
    if not given:
        return BusEndpoints()
    resolved = {side: _derive(side, given) for side in ("sub", "pub")}
    if valid:
        _check_distinct(given, resolved, issues)
    (sub_connect, sub_bind), (pub_connect, pub_bind) = resolved["sub"], resolved["pub"]
    return BusEndpoints(
        sub_connect=sub_connect, pub_connect=pub_connect, sub_bind=sub_bind, pub_bind=pub_bind
    )


def _derive(side: str, given: dict[tuple[str, str], tuple[str, _Element]]) -> tuple[str, str]:
    """(connect, bind) of one side: a missing one follows the other, both missing: default."""
    connect = given.get((side, "connect"), (None, None))[0]
    bind = given.get((side, "bind"), (None, None))[0]
    if connect is None and bind is None:
        return _DEFAULT_ENDPOINT[side], _DEFAULT_ENDPOINT[side]
    if bind is None:
        return str(connect), str(connect)
    return (connect if connect is not None else _connectable(bind)), bind


def _check_distinct(
    given: dict[tuple[str, str], tuple[str, _Element]],
    resolved: dict[str, tuple[str, str]],
    issues: _Issues,
) -> None:
    """Subscribers and publishers must use different endpoints, else the bus cannot work.

    A clash between two derived endpoints is implied by a reported one, so
    only clashes involving an element actually written are reported.
    """
    for index, role in enumerate(("connect", "bind")):
        if resolved["sub"][index] != resolved["pub"][index]:
            continue
        written = [given[side, role][1] for side in ("sub", "pub") if (side, role) in given]
        if not written:
            continue
        where = max(written, key=lambda el: el.sourceline or 0)
        issues.at(
            where,
            f"sub and pub endpoints must differ: both {role} to '{resolved['sub'][index]}'",
        )


# --------------------------------------------------------------------------- tasks


@dataclass
class _TaskReader:
    """Reads one <TaskService>; holds what every check needs to report precisely."""

    element: _Element
    known_ids: frozenset[str]
    base_dir: Path
    issues: _Issues
    label: str = ""

    def at(self, element: _Element, message: str) -> None:
        self.issues.at(element, f"{self.label}{message}")


def _task_spec(
    element: _Element, known_ids: frozenset[str], base_dir: Path, issues: _Issues
) -> TaskSpec:
    """Build one TaskSpec, reporting every problem of this <TaskService>.

    Attributes are checked first so that their messages come before those
    of the children on the same line.
    """
    reader = _TaskReader(element, known_ids, base_dir, issues)
    groups = _groups(element)
    task_id = _task_id(reader)
    instance = _instance(reader, task_id, has_command=_has_command(groups))
    service_type = _service_type(reader)
    topic = _topic(reader)
    start_timeout = _timeout(reader, "start_timeout", DEFAULT_START_TIMEOUT)
    stop_timeout = _timeout(reader, "stop_timeout", DEFAULT_STOP_TIMEOUT)
    restart = _restart_policy(reader)
    after = _after(reader, task_id)
    watchdog_sec = _seconds(reader, "watchdog_sec")
    start_secs = _seconds(reader, "start_secs", zero=True)
    kill_signal, final_kill_signal = (_signal(reader, attr) for attr in _SIGNAL_DEFAULTS)
    parts = _task_parts(reader, _exactly_one(element, groups, "Task", issues, reader.label))
    command = _command(reader, parts.get("command"))
    _check_process_settings(reader, service_type, command, parts.get("exec"))
    _check_start(reader, command, watchdog_sec=watchdog_sec, start_secs=start_secs)
    service_name = _service_name(reader, parts.get("message"))
    config, device_action, location = _configuration(reader, parts.get("message"))
    if command.argv is None:
        location = _builtin(reader, instance, parts.get("message"), config, location)
    entry, triggers = _state(reader, parts.get("state"))
    return TaskSpec(
        id=task_id,
        instance=instance,
        service_name=service_name,
        service_type=service_type,
        topic=topic,
        description=_text(parts.get("description")) or "",
        device_action=device_action,
        entry=entry,
        triggers=triggers,
        configuration=config,
        location=location,
        command=command.argv,
        start_type=command.start_type,
        pid_file=command.pid_file,
        start_secs=start_secs or 0.0,
        kill_signal=kill_signal,
        final_kill_signal=final_kill_signal,
        exec=read_exec(parts.get("exec"), reader.at),
        start_timeout=start_timeout,
        stop_timeout=stop_timeout,
        restart=restart,
        after=after,
        watchdog_sec=watchdog_sec,
        line=element.sourceline or 0,
    )


def _has_command(groups: dict[str, list[_Element]]) -> bool:
    """Whether the (first) <Task> has a <command>: it makes 'instance' optional."""
    tasks = groups.get("Task", [])
    return bool(tasks) and any(child.tag == "command" for child in _elements(tasks[0]))


def _task_parts(reader: _TaskReader, task: _Element | None) -> dict[str, _Element]:
    """The children of <Task>, each at most once; <message> is required."""
    if task is None:
        return {}
    groups = _groups(task)
    parts: dict[str, _Element] = {}
    for tag in ("description", "command", "exec", "state"):
        child = _at_most_one(task, groups, tag, reader.issues)
        if child is not None:
            parts[tag] = child
    message = _exactly_one(task, groups, "message", reader.issues, reader.label)
    if message is not None:
        parts["message"] = message
    return parts


def _attr_issue(reader: _TaskReader, attr: str, value: str, expected: str) -> None:
    reader.issues.at(
        reader.element, f"element <TaskService> attribute '{attr}': '{value}' {expected}"
    )


def _task_id(reader: _TaskReader) -> str:
    """The id attribute; also sets the label used to prefix this task's messages."""
    value = reader.element.get("id")
    if value is None:
        reader.issues.at(reader.element, "element <TaskService> requires attribute 'id'")
        return ""
    if not is_valid_id(value):
        _attr_issue(reader, "id", value, f"is not a valid task id; expected {_ID_RULE}")
        return value
    reader.label = f"task '{value}': "
    return value


def _instance(reader: _TaskReader, task_id: str, *, has_command: bool) -> str:
    """The task class package; optional for a <command> task (defaults to the id)."""
    value = reader.element.get("instance")
    if value is None:
        if not has_command:
            reader.issues.at(
                reader.element,
                "element <TaskService> requires attribute 'instance' (or a <command> in <Task>)",
            )
        return task_id
    if has_command:
        if not value.strip():
            _attr_issue(reader, "instance", value, "is empty; leave it out to use the task id")
        return value.strip()
    if not _is_python_name(value):
        _attr_issue(reader, "instance", value, "is not a valid Python identifier")
    return value


def _service_type(reader: _TaskReader) -> ServiceType:
    value = reader.element.get("serviceType")
    if value is None:
        return ServiceType.PROCESS
    try:
        return ServiceType(value)
    except ValueError:
        choices = " or ".join(f"'{t.value}'" for t in ServiceType)
        _attr_issue(reader, "serviceType", value, f"is not a service type; expected {choices}")
        return ServiceType.PROCESS


def _topic(reader: _TaskReader) -> str:
    value = reader.element.get("topic")
    if value is None:
        return "process"
    if not value or any(ch.isspace() for ch in value):
        _attr_issue(reader, "topic", value, "is not a topic; expected a word without whitespace")
    return value


def _timeout(reader: _TaskReader, attr: str, default: float) -> float:
    """A positive, finite number of seconds; *default* when absent or wrong (reported)."""
    number = _seconds(reader, attr)
    return default if number is None else number


def _number(value: str) -> float:
    """The number *value* spells (surrounding whitespace allowed); NaN when it is none."""
    text = value.strip()
    return float(text) if _FLOAT_RE.fullmatch(text) or _INT_RE.fullmatch(text) else math.nan


def _seconds(reader: _TaskReader, attr: str, *, zero: bool = False) -> float | None:
    """Attribute *attr* as finite seconds, > 0 (or >= 0 with *zero*).

    None when the attribute is absent or wrong; a wrong value is reported.
    """
    value = reader.element.get(attr)
    if value is None:
        return None
    number = _number(value)
    if math.isfinite(number) and (number > 0 or (zero and number == 0)):
        return number + 0.0  # -0 becomes 0
    expected = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
    _attr_issue(reader, attr, value, f"is not {expected}")
    return None


def _given_but_wrong(reader: _TaskReader, attr: str, parsed: object) -> bool:
    """True when *attr* is written but its value was rejected (*parsed* is None)."""
    return parsed is None and reader.element.get(attr) is not None


_RESTART_DEFAULTS = RestartPolicy()


def _restart_policy(reader: _TaskReader) -> RestartPolicy:
    """restart, restart_sec, restart_max_sec, restart_stable_sec and the start limit.

    A missing restart_max_sec is its default (30 s) or restart_sec when
    that is larger, so that the delays never shrink below what was asked.
    """
    defaults = _RESTART_DEFAULTS
    mode = _restart_mode(reader)
    delay_min = _seconds(reader, "restart_sec", zero=True)
    delay_max = _seconds(reader, "restart_max_sec", zero=True)
    low = defaults.delay_min if delay_min is None else delay_min
    if delay_max is not None and delay_max < low:
        if not _given_but_wrong(reader, "restart_sec", delay_min):
            given = "" if delay_min is not None else ", the default"
            _attr_issue(
                reader,
                "restart_max_sec",
                reader.element.get("restart_max_sec", ""),
                f"is less than restart_sec ({low:g}{given}); "
                "expected a number of seconds, restart_sec or more",
            )
        delay_max = None
    if delay_max is None:
        delay_max = max(defaults.delay_max, low)
    stable = _seconds(reader, "restart_stable_sec")
    burst = _start_limit_burst(reader)
    interval = _seconds(reader, "start_limit_interval_sec")
    return RestartPolicy(
        mode=mode,
        delay_min=low,
        delay_max=delay_max,
        jitter=defaults.jitter,
        stable_sec=defaults.stable_sec if stable is None else stable,
        limit_burst=defaults.limit_burst if burst is None else burst,
        limit_interval=defaults.limit_interval if interval is None else interval,
    )


def _restart_mode(reader: _TaskReader) -> RestartMode:
    value = reader.element.get("restart")
    if value is None:
        return _RESTART_DEFAULTS.mode
    try:
        return RestartMode(value)
    except ValueError:
        *first, last = (f"'{mode.value}'" for mode in RestartMode)
        choices = f"{', '.join(first)} or {last}"
        _attr_issue(reader, "restart", value, f"is not a restart mode; expected {choices}")
        return _RESTART_DEFAULTS.mode


def _start_limit_burst(reader: _TaskReader) -> int | None:
    """A whole number, 1 or more; None when absent or wrong (reported)."""
    attr = "start_limit_burst"
    value = reader.element.get(attr)
    if value is None:
        return None
    text = value.strip()
    if _INT_RE.fullmatch(text):
        try:
            number = int(text)
        except ValueError:  # more digits than Python converts
            _attr_issue(reader, attr, f"{text[:20]}...", "is too long a number")
            return None
        if number >= 1:
            return number
    _attr_issue(reader, attr, value, "is not a whole number, 1 or more")
    return None


def _after(reader: _TaskReader, task_id: str) -> tuple[str, ...]:
    """Ids of other tasks of this context, separated by whitespace, each once.

    Only the entries that are fine are returned; the others are reported.
    Cycles need every task and are checked by :func:`_check_order_cycles`.
    """
    value = reader.element.get("after")
    if value is None:
        return ()
    tokens = value.split()
    if not tokens:
        _attr_issue(
            reader,
            "after",
            value,
            "is empty; expected task ids separated by spaces (or leave it out)",
        )
    found: list[str] = []
    seen: set[str] = set()
    for token in tokens:
        if token in seen:
            _attr_issue(reader, "after", token, "is given twice; expected each task id once")
        elif token == task_id:
            _attr_issue(reader, "after", token, "is the task itself; expected ids of other tasks")
        elif token not in reader.known_ids:
            _attr_issue(
                reader,
                "after",
                token,
                "is not a task of this context; expected ids of other <TaskService> elements",
            )
        else:
            found.append(token)
        seen.add(token)
    return tuple(found)


def _check_start(
    reader: _TaskReader, command: _Command, *, watchdog_sec: float | None, start_secs: float | None
) -> None:
    """watchdog_sec needs a program that notifies; start_secs one that does not.

    A <command> whose type or notify is wrong is reported by :func:`_command` already.
    """
    if not command.known:
        return
    kind = command.start_type
    if watchdog_sec is not None and command.argv is not None and kind is not StartType.NOTIFY:
        reader.at(
            reader.element,
            'watchdog_sec needs a program that notifies; expected <command notify="true"> '
            "(a program that does not notify cannot send WATCHDOG=1)",
        )
    if reader.element.get("start_secs") is None:
        return
    if command.argv is None:
        reader.at(
            reader.element,
            "start_secs applies to command tasks (type 'simple' or 'exec'); "
            "a Python task is ready at its READY=1",
        )
    elif kind is StartType.NOTIFY or kind is StartType.FORKING:
        when = "at its READY=1" if kind is StartType.NOTIFY else "when its first process exits"
        reader.at(
            reader.element,
            f'start_secs applies to <command type="simple"> or type="exec"; '
            f"a {kind} task is ready {when}",
        )


def _check_process_settings(
    reader: _TaskReader, service_type: ServiceType, command: _Command, exec_: _Element | None
) -> None:
    """A Thread task has no process of its own: no <command>, <exec> or kill signals."""
    if service_type is not ServiceType.THREAD:
        return
    shared = "a Thread task runs in its transaction's shared host process"
    if command.argv is not None:
        reader.at(reader.element, "a <command> runs as a process; serviceType must be 'Process'")
    if exec_ is not None:
        reader.at(exec_, f"{shared}; <exec> needs serviceType 'Process'")
    for attr in _SIGNAL_DEFAULTS:
        if reader.element.get(attr) is not None:
            reader.at(reader.element, f"{shared}; {attr} needs serviceType 'Process'")


_SIGNAL_DEFAULTS = {"kill_signal": signal.SIGTERM, "final_kill_signal": signal.SIGKILL}


def _signal(reader: _TaskReader, attr: str) -> int:
    """A signal attribute (name or number); its default when absent or wrong (reported)."""
    value = reader.element.get(attr)
    if value is None:
        return int(_SIGNAL_DEFAULTS[attr])
    try:
        return parse_signal(value)
    except ValueProblem as problem:
        _attr_issue(reader, attr, value, str(problem))
        return int(_SIGNAL_DEFAULTS[attr])


def _check_order_cycles(
    tasks: tuple[TaskSpec, ...], known_ids: frozenset[str], issues: _Issues
) -> None:
    """Report every cycle of the 'after' graph once, at the line of its first task.

    A depth-first walk in document order reports one cycle per edge that
    closes one (a back edge), naming its members from the one defined first.
    """
    specs: dict[str, TaskSpec] = {}
    for spec in tasks:
        if spec.id in known_ids:
            specs.setdefault(spec.id, spec)
    order = {task_id: index for index, task_id in enumerate(specs)}
    done: set[str] = set()
    for root in specs:
        if root in done:
            continue
        path = [root]
        on_path = {root: 0}
        pending = [iter(specs[root].after)]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                pending.pop()
                node = path.pop()
                del on_path[node]
                done.add(node)
                continue
            if nxt in on_path:
                _report_cycle(path[on_path[nxt] :], specs, order, issues)
            elif nxt not in done and nxt in specs:
                on_path[nxt] = len(path)
                path.append(nxt)
                pending.append(iter(specs[nxt].after))


def _report_cycle(
    members: list[str], specs: Mapping[str, TaskSpec], order: Mapping[str, int], issues: _Issues
) -> None:
    """One issue naming the cycle *members* (each waits for the next), first-defined first."""
    start = min(range(len(members)), key=lambda index: order[members[index]])
    ring = members[start:] + members[:start]
    names = " → ".join([*ring, ring[0]])
    issues.add(specs[ring[0]].line or 1, 1, f"tasks {names} form an ordering cycle in 'after'")


@dataclass(frozen=True)
class _Command:
    """What <command> says: the argv (None: a Python task), when it is ready, its PID file."""

    argv: tuple[str, ...] | None = None
    start_type: StartType = StartType.NOTIFY
    pid_file: Path | None = None
    known: bool = True
    """False when 'type' or 'notify' was wrong (reported): checks that need it keep quiet."""


def _command(reader: _TaskReader, element: _Element | None) -> _Command:
    """The <command> argv (shell-like quoting, no shell), its start type and PID file."""
    if element is None:
        return _Command()
    start_type, known = _start_type(reader, element)
    pid_file = _pid_file(reader, element, start_type if known else None)
    text = _text(element)
    if text is None:
        return _Command(None, start_type, pid_file, known)
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        reader.at(element, f"<command> cannot be split into arguments: {exc}")
        return _Command((), start_type, pid_file, known)
    if not argv:
        reader.at(element, "<command> is empty; expected a program and its arguments")
    return _Command(argv, start_type, pid_file, known)


def _start_type(reader: _TaskReader, element: _Element) -> tuple[StartType, bool]:
    """'type' (simple, exec, notify, forking) and its older synonym notify="true"."""
    raw_notify, raw_type = element.get("notify"), element.get("type")
    notify = None if raw_notify is None else _parse_bool(raw_notify)
    notify_ok = raw_notify is None or notify is not None
    if not notify_ok:
        reader.at(
            element,
            f"<command> attribute 'notify': '{raw_notify}' is not a boolean; "
            "expected true/false/1/0/yes/no",
        )
    if raw_type is None:
        return (StartType.NOTIFY if notify else StartType.EXEC), notify_ok
    try:
        kind = StartType(raw_type)
    except ValueError:
        *first, last = (f"'{kind.value}'" for kind in StartType)
        reader.at(
            element,
            f"<command> attribute 'type': '{raw_type}' is not a start type; "
            f"expected {', '.join(first)} or {last}",
        )
        return StartType.EXEC, False
    if notify is not None and notify != (kind is StartType.NOTIFY):
        reader.at(
            element,
            f"<command> attributes 'type' and 'notify' disagree: type='{raw_type}' but "
            f'notify=\'{raw_notify}\'; give only type (notify="true" means type="notify")',
        )
        return kind, False
    return kind, notify_ok


def _pid_file(reader: _TaskReader, element: _Element, kind: StartType | None) -> Path | None:
    """'pid_file': an absolute path, only with type="forking" (*kind* None: type was wrong)."""
    value = element.get("pid_file")
    if value is None:
        return None
    text = value.strip()
    if kind is not None and kind is not StartType.FORKING:
        reader.at(
            element,
            f"<command> attribute 'pid_file' needs type=\"forking\"; this command's type is "
            f"'{kind}' (a program that stays in the foreground is its own main process)",
        )
        return None
    if not text.startswith("/"):
        reader.at(element, f"<command> attribute 'pid_file': '{value}' is not an absolute path")
        return None
    return Path(text)


def _service_name(reader: _TaskReader, message: _Element | None) -> str:
    """header/service_name (required, one word) and header/action (only 'start')."""
    if message is None:
        return ""
    header = _exactly_one(message, _groups(message), "header", reader.issues, reader.label)
    if header is None:
        return ""
    groups = _groups(header)
    action = _at_most_one(header, groups, "action", reader.issues)
    action_text = _text(action)
    if action is not None and action_text and action_text != TaskAction.START:
        reader.at(action, f"<header><action> '{action_text}' must be 'start' (or left out)")
    element = _exactly_one(header, groups, "service_name", reader.issues, reader.label)
    value = _text(element)
    if element is not None and value is not None and (not value or _has_space(value)):
        reader.at(element, f"<service_name> '{value}' must be a non-empty word without spaces")
    return value or ""


def _has_space(value: str) -> bool:
    return any(ch.isspace() for ch in value)


# --------------------------------------------------------------------------- state / triggers


def _state(
    reader: _TaskReader, state: _Element | None
) -> tuple[TriggerEvent, dict[TriggerEvent, Trigger]]:
    """The entry trigger (state@type) and the four optional triggers."""
    if state is None:
        return TriggerEvent.ON_START, {}
    entry = _entry(reader, state)
    groups = _groups(state)
    triggers: dict[TriggerEvent, Trigger] = {}
    for event in TriggerEvent:
        element = _at_most_one(state, groups, event.value, reader.issues)
        trigger = _trigger(reader, event, element) if element is not None else None
        if trigger is not None:
            triggers[event] = trigger
    return entry, triggers


def _entry(reader: _TaskReader, state: _Element) -> TriggerEvent:
    """state@type; the seed's ``start_now`` is a synonym of on_start."""
    value = state.get("type")
    if value is None or value == "start_now":
        return TriggerEvent.ON_START
    try:
        return TriggerEvent(value)
    except ValueError:
        choices = ", ".join([*(e.value for e in TriggerEvent), "start_now"])
        reader.at(
            state,
            f"<state> attribute 'type': '{value}' is not a trigger; expected one of {choices}",
        )
        return TriggerEvent.ON_START


def _first(preferred: _Element | None, fallback: _Element) -> _Element:
    """*preferred* unless None (lxml elements without children are falsy: no ``or``)."""
    return preferred if preferred is not None else fallback


def _trigger(reader: _TaskReader, event: TriggerEvent, element: _Element) -> Trigger | None:
    """One <on_*>: action and call both empty means no trigger."""
    groups = _groups(element)
    action_el = _at_most_one(element, groups, "action", reader.issues)
    call_el = _at_most_one(element, groups, "call", reader.issues)
    action, call = _text(action_el) or "", _text(call_el) or ""
    if not action and not call:
        return None
    if not call:
        reader.at(element, f"trigger {event} has action '{action}' but no <call> task id")
        return None
    if not action:
        reader.at(element, f"trigger {event} calls '{call}' but has no <action>")
        return None
    ok = True
    if action not in {a.value for a in TaskAction}:
        choices = ", ".join(a.value for a in TaskAction)
        reader.at(
            _first(action_el, element), f"trigger {event} action '{action}' is not one of {choices}"
        )
        ok = False
    if call not in reader.known_ids:
        reader.at(_first(call_el, element), f"trigger {event} calls unknown task '{call}'")
        ok = False
    return Trigger(TaskAction(action), call) if ok else None


# --------------------------------------------------------------------------- configuration


def _check_spec_sizes(
    tasks: tuple[TaskSpec, ...], services: list[_Element], issues: _Issues
) -> None:
    """Refuse a configuration too large to reach its task (:data:`MAX_CONFIGURATION_BYTES`).

    Unchecked, a 3 MB value passed validation and failed only at start: the zygote
    could not take the packet and, executed instead, the environment string was
    beyond what execve(2) accepts. Thread tasks share their host's ``$ZSVC_TASK``, so
    their sum is bounded too, reported once, at the one that goes over. Command tasks
    get no configuration and are not measured.
    """
    limit = f"at most {MAX_CONFIGURATION_BYTES} bytes (64 KiB) reach a task"
    threads = 0
    for spec, element in zip(tasks, services, strict=True):
        if spec.is_command:
            continue
        size = configuration_size(spec.configuration)
        found = element.find("Task/message/content/configuration")
        anchor = element if found is None else found
        label = f"task '{spec.id}': "
        if size > MAX_CONFIGURATION_BYTES:
            issues.at(anchor, f"{label}<configuration> is {size} bytes as JSON; {limit}")
        elif spec.service_type is ServiceType.THREAD and threads <= MAX_CONFIGURATION_BYTES:
            threads += size
            if threads > MAX_CONFIGURATION_BYTES:
                issues.at(
                    anchor,
                    f"{label}the <configuration>s of the Thread tasks up to this one come to "
                    f"{threads} bytes as JSON, and they travel together to the thread host; "
                    f"{limit}",
                )


def _configuration(
    reader: _TaskReader, message: _Element | None
) -> tuple[dict[str, Any], str, Path]:
    """Typed configuration, with device_action and location lifted out."""
    default_location = (reader.base_dir / DEFAULT_LOCATION).resolve()
    element = _config_element(reader, message)
    if element is None:
        return {}, "", default_location
    config = _config_mapping(reader, element, "configuration")
    if config is None:
        return {}, "", default_location
    device_action, location_text = (
        _lifted_text(reader, element, config, key) for key in LIFTED_KEYS
    )
    location = (reader.base_dir / location_text).resolve() if location_text else default_location
    return config, device_action, location


def _builtin(
    reader: _TaskReader,
    instance: str,
    message: _Element | None,
    config: dict[str, Any],
    location: Path,
) -> Path:
    """The task's location: zsvc's own when *instance* is a built-in task (:mod:`zsvc.builtin`),
    whose configuration is then checked here, so a mistake is a ``file:line`` error."""
    builtin = builtin_task(instance, location)
    if builtin is None:
        return location
    problems = builtin.check(config)
    configuration = _config_element(reader, message) if problems else None
    for key_path, why in problems:
        where = configuration if configuration is not None else reader.element
        for tag in key_path.split(".") if configuration is not None else ():
            found = [el for el in _elements(where) if el.tag == tag]
            if not found:
                break
            where = found[0]
        reader.at(where, f"{instance} configuration.{key_path}: {why}")
    return builtin.location


def _config_element(reader: _TaskReader, message: _Element | None) -> _Element | None:
    """message/content/configuration, each at most once."""
    if message is None:
        return None
    content = _at_most_one(message, _groups(message), "content", reader.issues)
    if content is None:
        return None
    return _at_most_one(content, _groups(content), "configuration", reader.issues)


def _lifted_text(
    reader: _TaskReader, configuration: _Element, config: dict[str, Any], key: str
) -> str:
    """Remove *key* from *config*: it must be one plain text value."""
    if key not in config:
        return ""
    config.pop(key)
    found = [el for el in _elements(configuration) if el.tag == key]
    value = _text(found[0])
    if len(found) > 1 or value is None or found[0].get("list") is not None:
        reader.at(found[-1], f"configuration '{key}' must be given once, as plain text")
        return ""
    if key == "location" and not value:
        reader.at(found[0], "configuration 'location' is empty; leave it out for the default")
    return value


def _config_mapping(reader: _TaskReader, element: _Element, where: str) -> dict[str, Any] | None:
    """An element with children: a dict; repeated tags (or list="true") give lists."""
    if _has_text(element):
        reader.at(element, f"{where} mixes text and elements; expected one or the other")
        return None
    result: dict[str, Any] = {}
    for tag, members in _groups(element).items():
        key_path = f"{where}.{tag}"
        if not _is_python_name(tag) or tag.startswith("_"):
            reader.at(
                members[0],
                f"{key_path}: '{tag}' is not a valid key; expected a Python identifier "
                "that does not start with '_'",
            )
            continue
        values = [_config_value(reader, member, key_path) for member in members]
        as_list = _list_flag(reader, members, key_path)
        result[tag] = values if as_list or len(members) > 1 else values[0]
    return result


def _has_text(element: _Element) -> bool:
    """True when non-whitespace text sits between the children of *element*."""
    if (element.text or "").strip():
        return True
    return any((child.tail or "").strip() for child in _elements(element))


def _list_flag(reader: _TaskReader, members: list[_Element], key_path: str) -> bool:
    """list="true" forces a list even for one occurrence."""
    forced = False
    for member in members:
        raw = member.get("list")
        if raw is None:
            continue
        flag = _parse_bool(raw)
        if flag is None:
            reader.at(member, f"{key_path}: list='{raw}' is not a boolean; expected true or false")
        elif not flag and len(members) > 1:
            reader.at(member, f"{key_path}: list='{raw}' but the key is repeated")
        forced = forced or bool(flag)
    return forced


_CONFIG_ATTRIBUTES = ("type", "list")


def _config_value(reader: _TaskReader, element: _Element, key_path: str) -> Any:
    """One configuration element: a dict when it has children, else a typed scalar."""
    for name in element.attrib:
        if name not in _CONFIG_ATTRIBUTES:
            reader.at(
                element,
                f"{key_path}: unknown attribute '{name}'; only 'type' and 'list' are allowed",
            )
    forced = element.get("type")
    if any(True for _ in _elements(element)):
        if forced is not None:
            reader.at(element, f"{key_path}: type='{forced}' applies to text values only")
        return _config_mapping(reader, element, key_path)
    text = (element.text or "").strip()
    if forced is None:
        return _infer(reader, element, key_path, text)
    return _convert(reader, element, key_path, text, forced)


def _infer(reader: _TaskReader, element: _Element, key_path: str, text: str) -> Any:
    """int, float, bool or str, by the look of *text* (fixes the original's bool("0"))."""
    if _INT_RE.fullmatch(text):
        return _to_int(reader, element, key_path, text)
    if _FLOAT_RE.fullmatch(text):
        return _to_float(reader, element, key_path, text)
    word = text.lower()
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    return text


def _to_int(reader: _TaskReader, element: _Element, key_path: str, text: str) -> int | None:
    if not _INT_RE.fullmatch(text):
        reader.at(element, f"{key_path}: '{text}' is not an integer (type=\"int\")")
        return None
    try:
        return int(text)
    except ValueError:  # more digits than Python converts
        reader.at(element, f"{key_path}: '{text[:20]}...' is too long an integer")
        return None


def _to_float(reader: _TaskReader, element: _Element, key_path: str, text: str) -> float | None:
    number = float(text) if _FLOAT_RE.fullmatch(text) or _INT_RE.fullmatch(text) else None
    if number is None or not math.isfinite(number):
        reader.at(element, f"{key_path}: '{text}' is not a finite number")
        return None
    return number


def _to_bool(reader: _TaskReader, element: _Element, key_path: str, text: str) -> bool | None:
    value = _parse_bool(text)
    if value is None:
        reader.at(
            element,
            f"{key_path}: '{text}' is not a boolean (type=\"bool\"); "
            "expected true/false/yes/no/on/off/1/0",
        )
    return value


def _to_str(reader: _TaskReader, element: _Element, key_path: str, text: str) -> str:
    return text


_CONVERTERS: dict[str, Callable[[_TaskReader, _Element, str, str], Any]] = {
    "str": _to_str,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
}


def _convert(reader: _TaskReader, element: _Element, key_path: str, text: str, kind: str) -> Any:
    """Apply an explicit type="..." attribute."""
    converter = _CONVERTERS.get(kind)
    if converter is None:
        choices = ", ".join(_CONVERTERS)
        reader.at(element, f"{key_path}: type='{kind}' is not one of {choices}")
        return None
    return converter(reader, element, key_path, text)
