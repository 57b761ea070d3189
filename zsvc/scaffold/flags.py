"""The command's flags as a :class:`Request` (the seed's ``create_service.py`` line).

The seed's README lists every value as required; zsvc needs only those
without a sensible default — the service path, the task service, the
context name, the service name and the task id — and fills the rest as the
seed's examples do: the task file and class are named after the task
service, the bus is ``127.0.0.1`` ports 5556/5557, the task is looped and
starts with its transaction. Missing flags are reported together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zsvc.scaffold.model import (
    TASK_TYPE_WORDS,
    ContextSpec,
    Problem,
    Request,
    ScaffoldError,
    ServiceSpec,
    TaskType,
)
from zsvc.states import TriggerEvent

REQUIRED = ("service_path", "task_service", "context_name", "service_name", "task_id")


def flag(name: str) -> str:
    """``task_id`` → ``--task-id``: how a field is named on the command line."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Flags:
    """The raw values of the command's flags (None: not given)."""

    service_path: Path | None = None
    task_service: str | None = None
    task_file: str | None = None
    task_class: str | None = None
    task_desc: str | None = None
    context_name: str | None = None
    context_id: str | None = None
    service_name: str | None = None
    server_ip: str | None = None
    sub_port: int | None = None
    pub_port: int | None = None
    task_id: str | None = None
    device_action: str | None = None
    task_type: str | None = None
    entry_action: str | None = None
    task_topic: str | None = None

    def given(self) -> list[str]:
        """The service flags that were given (``--xml-file`` takes none of them)."""
        return [
            flag(name)
            for name, value in self.__dict__.items()
            if value is not None and name != "service_path"
        ]


def request_from_flags(flags: Flags) -> Request:
    """The one-service :class:`Request`; :class:`ScaffoldError` names each bad or missing flag."""
    problems = [
        Problem(flag(name), "is required (or give --xml-file)")
        for name in REQUIRED
        if getattr(flags, name) is None
    ]
    task_type = TASK_TYPE_WORDS.get(flags.task_type or "Looped")
    if task_type is None:
        problems.append(
            Problem("--task-type", f"{flags.task_type!r} is not Looped or Single (or Simple)")
        )
    try:
        entry = TriggerEvent(flags.entry_action or TriggerEvent.ON_START)
    except ValueError:
        words = ", ".join(event.value for event in TriggerEvent)
        problems.append(Problem("--entry-action", f"{flags.entry_action!r} is not one of {words}"))
        entry = TriggerEvent.ON_START
    if problems:
        raise ScaffoldError(problems)
    assert flags.service_path is not None and flags.task_service is not None
    where = {name: flag(name) for name in Flags.__dataclass_fields__}
    service = ServiceSpec(
        task_service=flags.task_service,
        task_id=flags.task_id or "",
        service_name=flags.service_name or "",
        task_file=flags.task_file or flags.task_service,
        task_class=flags.task_class or flags.task_service,
        task_desc=(flags.task_desc or "").strip(),
        device_action=(flags.device_action or "").strip(),
        task_type=task_type or TaskType.LOOPED,
        entry_action=entry,
        topic=flags.task_topic or "process",
        where=where,
    )
    context = ContextSpec(
        name=flags.context_name or "",
        context_id=flags.context_id,
        server_ip=flags.server_ip,
        sub_port=flags.sub_port,
        pub_port=flags.pub_port,
        where=where,
    )
    return Request(Path(os.path.normpath(flags.service_path.absolute())), context, (service,))
