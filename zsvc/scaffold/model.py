"""What ``zsvc create-service`` is asked to create, as plain data, and the rules its values obey.

Both inputs — the command's flags and a ``MetaServiceConf`` file — become
one :class:`Request`; everything after that (rendering, planning, writing)
reads only these objects. Each value remembers where it came from
(``where``: a flag such as ``--task-id`` or ``file:line:column``), so every
problem found later, even in another module, names the flag or the line
the user has to fix.

The names matter more than in the original: a task service's name is a
directory, a module and a class (``Services/<task_service>/Service<task_service>.py``),
and the context name is part of a file name, so they are checked before
anything is written (no ``../`` and nothing Python cannot import).
"""

from __future__ import annotations

import ipaddress
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from zsvc.errors import ErrorCode, ZsvcError
from zsvc.states import TaskAction, TriggerEvent, is_valid_id

DEFAULT_SERVER_IP = "127.0.0.1"
DEFAULT_SUB_PORT = 5556
DEFAULT_PUB_PORT = 5557
DEFAULT_CONTEXT_ID = "context001"
"""The seed's context id (its ``conf_command`` lines say ``--service_id='context001'``)."""
DEFAULT_TOPIC = "process"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
RESERVED_CLASS_NAMES = frozenset({"Task", "SingleTask"})
"""Imported from zsvc by the generated task module, so a task class may not take them."""


class TaskType(StrEnum):
    """The task stub: a looped :class:`zsvc.Task` or a one-shot :class:`zsvc.SingleTask`."""

    LOOPED = "Looped"
    SINGLE = "Single"


TASK_TYPE_WORDS: Mapping[str, TaskType] = {
    "Looped": TaskType.LOOPED,
    "Single": TaskType.SINGLE,
    "Simple": TaskType.SINGLE,
}
"""The seed's README calls the one-shot kind "Simple" and its code "Single": both work."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, named by flag or by ``file:line:column``."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ScaffoldError(ZsvcError):
    """The input cannot be generated as asked; nothing was written (exit status 2)."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, problems: list[Problem]):
        self.problems = list(dict.fromkeys(problems))
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class TriggerSpec:
    """One of the seed's ``<state>`` entries: on *event*, run *action* on task *call*."""

    event: TriggerEvent
    action: TaskAction
    call: str
    where: str = field(default="", compare=False, hash=False)


@dataclass(frozen=True)
class ServiceSpec:
    """One task service to generate: its files and its ``<TaskService>``.

    ``where`` maps a field name (the seed's: ``task_id``, ``task_desc``, …)
    to the place the value was given; it takes no part in comparisons.
    """

    task_service: str
    task_id: str
    service_name: str
    task_file: str
    task_class: str
    task_desc: str = ""
    device_action: str = ""
    task_type: TaskType = TaskType.LOOPED
    entry_action: TriggerEvent = TriggerEvent.ON_START
    topic: str = DEFAULT_TOPIC
    triggers: tuple[TriggerSpec, ...] = ()
    where: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def service_class(self) -> str:
        """The class zsvc's task host loads: ``Service<task_service>``."""
        return f"Service{self.task_service}"

    def at(self, name: str) -> str:
        """Where field *name* was given (the service's own place when it was not)."""
        return self.where.get(name) or self.where.get("", name)


@dataclass(frozen=True)
class ContextSpec:
    """The context file the services go into. ``None`` means "keep or default"."""

    name: str
    context_id: str | None = None
    server_ip: str | None = None
    sub_port: int | None = None
    pub_port: int | None = None
    where: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def at(self, name: str) -> str:
        return self.where.get(name) or self.where.get("", name)

    @property
    def host(self) -> str:
        """The server address as an endpoint host: IPv6 in brackets."""
        ip = self.server_ip or DEFAULT_SERVER_IP
        return f"[{ip}]" if ":" in ip else ip

    @property
    def sub_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.sub_port or DEFAULT_SUB_PORT}"

    @property
    def pub_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.pub_port or DEFAULT_PUB_PORT}"

    @property
    def sub_bind(self) -> str:
        """What the daemon binds for subscribers (the seed's ``BackendBind``)."""
        return f"tcp://*:{self.sub_port or DEFAULT_SUB_PORT}"

    @property
    def pub_bind(self) -> str:
        """What the daemon binds for publishers (the seed's ``FrontBind``)."""
        return f"tcp://*:{self.pub_port or DEFAULT_PUB_PORT}"


@dataclass(frozen=True)
class Request:
    """Everything one ``zsvc create-service`` run generates."""

    service_path: Path
    context: ContextSpec
    services: tuple[ServiceSpec, ...]

    @property
    def conf_dir(self) -> Path:
        return self.service_path / "Conf"

    @property
    def services_dir(self) -> Path:
        return self.service_path / "Services"

    @property
    def context_file(self) -> Path:
        return self.conf_dir / f"Context-{self.context.name}.xml"


# --------------------------------------------------------------------------- value rules


def xml_unsafe(value: str) -> str | None:
    """The first character XML 1.0 cannot hold, described, or None when all are fine."""
    for ch in value:
        code = ord(ch)
        if code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD:
            continue
        if code >= 0x10000:
            continue
        return f"U+{code:04X}"
    return None


def _python_name(value: str, what: str) -> str | None:
    """Why *value* cannot be a module or class name, or None when it can."""
    if not _NAME_RE.match(value):
        return (
            f"{value!r} is not a valid {what}: use letters, digits and _ "
            "(ASCII, not starting with a digit; no paths)"
        )
    if keyword.iskeyword(value) or keyword.issoftkeyword(value):
        return f"{value!r} is a Python keyword; it cannot be a {what}"
    return None


def _token(value: str, what: str) -> str | None:
    if not value or any(ch.isspace() for ch in value):
        return f"{value!r} is not a valid {what}: expected a non-empty word without spaces"
    return _text(value)


def _text(value: str) -> str | None:
    bad = xml_unsafe(value)
    return f"contains {bad}, which an XML file cannot hold" if bad else None


def _id(value: str, what: str) -> str | None:
    if not is_valid_id(value):
        return f"{value!r} is not a valid {what}: expected 1-64 characters of A-Z a-z 0-9 _ -"
    return None


def service_problems(spec: ServiceSpec) -> list[Problem]:
    """Every rule *spec* breaks, each at the place its value was given."""
    found: list[tuple[str, str | None]] = [
        ("task_service", _python_name(spec.task_service, "task service name")),
        ("task_file", _python_name(spec.task_file, "task file (module) name")),
        ("task_class", _python_name(spec.task_class, "task class name")),
        ("task_id", _id(spec.task_id, "task id")),
        ("service_name", _token(spec.service_name, "service name")),
        ("task_desc", _text(spec.task_desc)),
        ("device_action", _text(spec.device_action)),
        ("task_topic", _token(spec.topic, "topic")),
    ]
    if spec.task_file in ("__init__", spec.service_class):
        found.append(
            ("task_file", f"{spec.task_file!r} is taken by the service package; choose another")
        )
    if spec.task_class == spec.service_class or spec.task_class in RESERVED_CLASS_NAMES:
        found.append(
            ("task_class", f"{spec.task_class!r} is taken (zsvc or the service class uses it)")
        )
    problems = [Problem(spec.at(name), message) for name, message in found if message]
    for trigger in spec.triggers:
        message = _id(trigger.call, "task id to call")
        if message:
            problems.append(Problem(trigger.where or spec.at("state_id"), message))
    return problems


def context_problems(context: ContextSpec) -> list[Problem]:
    """Every rule the context values break."""
    found: list[tuple[str, str | None]] = [
        ("context_name", _id(context.name, "context name")),
    ]
    if context.context_id is not None:
        found.append(("context_id", _id(context.context_id, "context id")))
    if context.server_ip is not None:
        found.append(("server_ip", _host(context.server_ip)))
    for name in ("sub_port", "pub_port"):
        port = getattr(context, name)
        if port is not None and not 1 <= port <= 65535:
            found.append((name, f"{port} is not a TCP port (1-65535)"))
    if context.sub_endpoint == context.pub_endpoint:
        found.append(("pub_port", "sub_port and pub_port must differ"))
    return [Problem(context.at(name), message) for name, message in found if message]


def _host(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if "%" not in value:  # a scoped IPv6 address has no endpoint syntax
            return None
    if _HOST_RE.match(value):
        return None
    return f"{value!r} is not an IP address or host name"
