"""The daemon <-> task-host wire format: what one side writes and the other reads.

Both sides import this module and nothing else of each other: the daemon
builds a :class:`HostSpec` (or a :class:`ThreadGroupSpec`) and passes it as
JSON in ``$ZSVC_TASK``; a thread host takes orders (:data:`ORDER_START`,
:data:`ORDER_STOP`, under :data:`ORDER_KEY`) and answers with reports
(:data:`REPORT_ACTION`, :class:`Event`). Keeping the format here, below both,
is what lets the daemon never import the task host's implementation and the
task side never import the daemon.

Standard library only: the task host imports it on every start, and so does
the daemon.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ENDS",
    "GROUP_KIND",
    "INVOCATION_ENV",
    "MAX_CONFIGURATION_BYTES",
    "ORDER_KEY",
    "ORDER_START",
    "ORDER_STOP",
    "REPORT_ACTION",
    "SPEC_ENV",
    "THREAD_HOST_ID",
    "Event",
    "HostSpec",
    "SpecError",
    "ThreadGroupSpec",
    "configuration_size",
    "is_group",
    "task_module_path",
]

SPEC_ENV = "ZSVC_TASK"
"""The environment variable that carries a host's description (JSON)."""

INVOCATION_ENV = "ZSVC_INVOCATION"
"""The environment variable that carries a run's invocation id: how a run is found in
``/proc/<pid>/environ`` after a daemon restart (:mod:`zsvc.procs`)."""

THREAD_HOST_ID = "@threads"
"""The runner key's task id of a transaction's thread host (never a task id: ``@`` is not
allowed in one). Its unit is ``unit_name(transaction, THREAD_HOST_ID)``, its log
``<transaction>/@threads.log``."""

GROUP_KIND = "threads"
"""``kind`` of the JSON in ``$ZSVC_TASK`` that makes the task host a thread host."""

ORDER_KEY = "zsvc_order"
"""The content key that makes a ``process`` start/stop message an order of the daemon."""
ORDER_START = "start"
ORDER_STOP = "stop"

REPORT_ACTION = "thread"
"""The ``control`` action of a thread host's reports to the daemon."""

MAX_CONFIGURATION_BYTES = 64 * 1024
"""The most a task's ``<configuration>`` may take in ``$ZSVC_TASK`` (its compact JSON, as
:func:`configuration_size` measures it); the Thread tasks of a context share one
``$ZSVC_TASK``, so the same bound holds for their sum. The loader refuses more.

Why 64 KiB: the spec travels twice and must fit both ways with room for the rest.
Executed, it is one environment string, which Linux caps at MAX_ARG_STRLEN =
128 KiB (``ZSVC_TASK=`` and the NUL included: 131,071 characters pass, 131,072 fail
with E2BIG). Forked, it is one packet on the zygote's SOCK_SEQPACKET socket, which
Linux caps at the socket's SO_SNDBUF - 32 bytes: 212,960 with Debian's default
``net.core.wmem_default`` of 212,992 (EMSGSIZE above), and that packet holds the
spec escaped once more (up to twice its size) beside the daemon's whole environment.
64 KiB leaves the other fields (ids, paths, endpoints) and the environment 64 KiB in
the first case and about 80 KiB in the second. A larger value is no task argument:
put it in a file and pass its path."""


def configuration_size(configuration: Mapping[str, Any]) -> int:
    """Bytes *configuration* takes in ``$ZSVC_TASK``: encoded as :meth:`HostSpec.to_json` does
    (compact, ASCII), so that what the loader measures is what the daemon sends."""
    return len(json.dumps(configuration, separators=(",", ":")))


class Event:
    """``content.status.event`` of a thread report."""

    STARTED = "started"
    STATUS = "status"
    EXITED = "exited"
    STOPPED = "stopped"
    FAILED = "failed"


ENDS = frozenset({Event.EXITED, Event.STOPPED, Event.FAILED})
"""The events that end a thread task's run."""


class SpecError(ValueError):
    """``$ZSVC_TASK`` is missing: the task host was not started by zsvc."""


def task_module_path(location: str | os.PathLike[str], instance: str) -> Path:
    """``<location>/<instance>/Service<instance>.py``: where a Python task's class lives.

    The seed's layout (``Services/EchoAction/ServiceEchoAction.py``): the
    loader checks it, the daemon refuses a start without it, the task host
    imports it. One rule, written once.
    """
    return Path(location) / instance / f"Service{instance}.py"


@dataclass(frozen=True)
class HostSpec:
    """What the daemon tells a host about its task (the JSON in ``$ZSVC_TASK``)."""

    transaction: str
    task_id: str
    service_name: str
    instance: str
    location: str
    bus_pub: str
    bus_sub: str
    topic: str = "process"
    device_action: str = ""
    configuration: dict[str, Any] = field(default_factory=dict)
    handshake_timeout: float = 30.0
    join_after_setup: bool = False
    """Join the bus once ``setup()`` returned (or when it first publishes), not before it.

    The daemon asks this of a task in a crash streak (its last run failed
    before lasting ``stable_sec``): one that keeps failing in ``setup()`` then
    costs the daemon no bus connections, about a fifth of its CPU per start
    in a crash loop. Either way the handshake is done before ``READY=1``.
    """

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> HostSpec:
        """The spec in ``$ZSVC_TASK``; SpecError when unset, ValueError/TypeError when bad."""
        raw = (environ if environ is not None else os.environ).get(SPEC_ENV)
        if not raw:
            raise SpecError(f"${SPEC_ENV} is not set: the task host is started by zsvc")
        return cls(**json.loads(raw))

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))


@dataclass(frozen=True)
class ThreadGroupSpec:
    """What the daemon tells a thread host (the JSON in ``$ZSVC_TASK``, with ``kind``)."""

    transaction: str
    bus_pub: str
    bus_sub: str
    tasks: tuple[HostSpec, ...]
    handshake_timeout: float = 30.0
    stop_timeout: float = 10.0
    """How long the host waits for its threads when it is stopped itself."""

    def to_json(self) -> str:
        data = {
            "kind": GROUP_KIND,
            "transaction": self.transaction,
            "bus_pub": self.bus_pub,
            "bus_sub": self.bus_sub,
            "handshake_timeout": self.handshake_timeout,
            "stop_timeout": self.stop_timeout,
            "tasks": [dict(task.__dict__) for task in self.tasks],
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThreadGroupSpec:
        fields = {key: value for key, value in data.items() if key not in ("kind", "tasks")}
        return cls(**fields, tasks=tuple(HostSpec(**task) for task in data["tasks"]))


def is_group(data: object) -> bool:
    """True when a decoded ``$ZSVC_TASK`` describes a thread group, not one task."""
    return isinstance(data, dict) and data.get("kind") == GROUP_KIND
