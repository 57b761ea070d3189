"""The control commands, each declared once.

A declaration names the command, documents it, and types its arguments.
The daemon validates requests against it and dispatches to
``Daemon.cmd_<name>``; the control client and the CLI build requests from
it; ``docs/control-protocol.md`` describes the same table. Adding a
command means adding one entry here and one handler.

Wire format (one JSON object per ZMQ message, DEALER → ROUTER)::

    request  {"v": 1, "id": "<request id>", "command": "<name>", "args": {...}}
    reply    {"v": 1, "id": "<request id>", "ok": true,  "result": {...}}
             {"v": 1, "id": "<request id>", "ok": false,
              "error": {"code": "<ErrorCode>", "message": "...", "details": ...}}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zsvc.errors import BadRequest
from zsvc.protocol import MAX_REQUEST_BYTES

PROTOCOL_VERSION = 1
HEAD_BYTES = 512
"""How much of an oversized request is read to find its id (see :func:`head_request_id`)."""
_HEAD_ID = re.compile(
    rb'\A\s*\{(?:\s*"[^"\\]{0,64}"\s*:\s*(?:"[^"\\]{0,64}"|-?[0-9]{1,20})\s*,)*?'
    rb'\s*"id"\s*:\s*"([^"\\\x00-\x1f]{1,256})"'
)


@dataclass(frozen=True)
class Param:
    """One typed argument of a command."""

    name: str
    type: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    help: str = ""
    list_of: type | None = None  # when type is list: the element type
    positive: bool = False
    """A number that must be finite and above zero (timeouts): NaN, infinity, 0 or a
    negative value from a client that is not the CLI is refused, not obeyed."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    params: tuple[Param, ...] = ()

    def parse_args(self, raw: Any) -> dict[str, Any]:
        """Check *raw* against the declaration; raise :class:`BadRequest` naming the field."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadRequest(f"{self.name}: 'args' must be an object")
        known = {param.name for param in self.params}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BadRequest(f"{self.name}: unknown argument(s) {', '.join(unknown)}")
        args: dict[str, Any] = {}
        for param in self.params:
            if param.name not in raw or raw[param.name] is None:
                if param.required:
                    raise BadRequest(f"{self.name}: argument '{param.name}' is required")
                args[param.name] = param.default
                continue
            args[param.name] = _check_type(self.name, param, raw[param.name])
        return args


def _check_type(command: str, param: Param, value: Any) -> Any:
    expected = param.type if isinstance(param.type, tuple) else (param.type,)
    if isinstance(value, bool) and bool not in expected:
        raise BadRequest(f"{command}: argument '{param.name}' must be {_names(expected)}")
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected):
        raise BadRequest(f"{command}: argument '{param.name}' must be {_names(expected)}")
    if param.positive and not (math.isfinite(value) and value > 0):
        raise BadRequest(f"{command}: argument '{param.name}' must be a finite number above 0")
    if param.list_of is not None:
        for item in value:
            if not isinstance(item, param.list_of):
                raise BadRequest(
                    f"{command}: argument '{param.name}' must be a list of {param.list_of.__name__}"
                )
    return value


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


_TRANSACTION = Param("transaction", str, help="transaction id")
_SERVICES = Param("services", list, default=[], list_of=str, help="task ids (default: all)")
_TIMEOUT = Param(
    "timeout", float, default=None, help="seconds to wait (default: the tasks' own)", positive=True
)

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command("ping", "Daemon identity and health."),
        Command(
            "start",
            "Create a transaction from a context, or start a known one again; wait for readiness.",
            (
                Param("transaction", str, help="transaction id (generated when omitted)"),
                Param("context_path", str, help="the context file, for messages and locations"),
                Param("context_text", str, help="the context file's contents"),
                _SERVICES,
                Param("block", bool, default=True, help="wait until every started task is ready"),
                _TIMEOUT,
                Param(
                    "keep_going",
                    bool,
                    default=False,
                    help="when a task fails to become ready, leave the others running",
                ),
            ),
        ),
        Command(
            "stop",
            "Stop a transaction or some of its tasks.",
            (
                Param("transaction", str, required=True),
                _SERVICES,
                _TIMEOUT,
            ),
        ),
        Command(
            "restart",
            "Stop, then start, a transaction or some of its tasks.",
            (
                Param("transaction", str, required=True),
                _SERVICES,
                _TIMEOUT,
            ),
        ),
        Command("status", "The transaction table, or one transaction.", (_TRANSACTION,)),
        Command(
            "logs",
            "Where the tasks' logs are.",
            (
                Param("transaction", str, required=True),
                _SERVICES,
            ),
        ),
        Command(
            "forget",
            "Remove a stopped transaction from the table.",
            (Param("transaction", str, required=True),),
        ),
        Command(
            "reexec",
            "Execute the daemon anew (its code and settings from disk); every task keeps running.",
        ),
        Command("shutdown", "Stop every task, then the daemon."),
    )
}


CONTEXT_ACTIONS: Mapping[str, str] = {
    "start": "start",
    "stop": "stop",
    "restart": "restart",
    "exit": "shutdown",
}
"""The seed's context actions (its conf_command's ``--service_name context --action X``)
and the control command each one is."""

BUS_CONTEXT_ACTIONS = ("start", "stop", "restart")
"""The context actions the bus may carry (``[bus] context_commands``): ``exit`` stays on
the control socket, whose permissions say who may stop the daemon."""


def context_request(
    action: str,
    transaction: str | None,
    services: Sequence[str] = (),
    context: tuple[str, str] | None = None,
    allowed: Collection[str] = tuple(CONTEXT_ACTIONS),
) -> tuple[Command, dict[str, Any]]:
    """The control request a seed context command stands for: its command and full args.

    Both ways in take this one translation: ``zsvc send --service_name context``
    (the CLI, over the control socket) and a command on the bus's ``context``
    topic (the daemon). A start keeps the seed's meaning: it returns once every
    task is ready (``block``), with no timeout but the tasks' own. *context* is
    a start's ``(path, text)``; *allowed* the actions this way in accepts.

    Raises :class:`BadRequest` for an action outside *allowed*, or a stop or
    restart that names no transaction.
    """
    name = CONTEXT_ACTIONS.get(action) if action in allowed else None
    if name is None:
        raise BadRequest(f"unknown context action {action!r}; known: {', '.join(allowed)}")
    command = COMMANDS[name]
    raw: dict[str, Any] = {}
    if name != "shutdown":
        if not transaction and name != "start":
            raise BadRequest(f"context {action} needs a transaction")
        raw = {"transaction": transaction, "services": list(services), "timeout": None}
    if name == "start":
        raw["block"] = True
        if context is not None:
            raw["context_path"], raw["context_text"] = context
    return command, command.parse_args(raw)


def encode_request(request_id: str, command: str, args: Mapping[str, Any]) -> bytes:
    payload = {"v": PROTOCOL_VERSION, "id": request_id, "command": command, "args": dict(args)}
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_request(data: bytes) -> tuple[str | None, Command | None, dict[str, Any] | BadRequest]:
    """Parse a request frame.

    Returns ``(request_id, command, args)``; when the request is invalid the
    third item is the :class:`BadRequest` to send back, and the id is kept
    whenever it could be read so that the client can match the error.
    """
    if len(data) > MAX_REQUEST_BYTES:
        too_large = f"request too large: {len(data)} bytes exceeds the limit of"
        return head_request_id(data), None, BadRequest(f"{too_large} {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(data)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, digit limits
        return None, None, BadRequest(f"request is not JSON: {exc}")
    if not isinstance(request, dict):
        return None, None, BadRequest("request must be a JSON object")
    request_id = request.get("id")
    if not isinstance(request_id, str) or not request_id:
        return None, None, BadRequest("request 'id' must be a non-empty string")
    version = request.get("v", PROTOCOL_VERSION)
    if type(version) is not int or version != PROTOCOL_VERSION:
        return request_id, None, BadRequest(f"unsupported protocol version {request.get('v')!r}")
    name = request.get("command")
    command = COMMANDS.get(name) if isinstance(name, str) else None
    if command is None:
        known = ", ".join(sorted(COMMANDS))
        return request_id, None, BadRequest(f"unknown command {name!r}; known: {known}")
    try:
        return request_id, command, command.parse_args(request.get("args"))
    except BadRequest as exc:
        return request_id, command, exc


def head_request_id(data: bytes) -> str | None:
    """The id of a request too large to parse, read from its head, or None.

    Without it the refusal could not be matched: the client would wait for
    its timeout and then blame an unreachable daemon. Only a top-level ``id``
    that comes before any nested value counts (as :func:`encode_request`
    writes it, second); an id further in is not guessed at.
    """
    match = _HEAD_ID.match(data[:HEAD_BYTES])
    if match is None:
        return None
    try:
        return match.group(1).decode()
    except UnicodeDecodeError:
        return None


class RawJSON(bytes):
    """A result that is already encoded JSON (a cached view): sent as it is."""


def encode_reply(
    request_id: str, result: Any = None, error: Mapping[str, Any] | None = None
) -> bytes:
    payload: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "ok": error is None}
    if error is None and isinstance(result, RawJSON):
        head = json.dumps(payload, separators=(",", ":")).encode()
        return head[:-1] + b',"result":' + result + b"}"
    if error is None:
        payload["result"] = result
    else:
        payload["error"] = dict(error)
    return json.dumps(payload, separators=(",", ":"), default=str).encode()
