"""zsvc.commands: request validation against the declarations, and the reply shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.commands import (
    BUS_CONTEXT_ACTIONS,
    COMMANDS,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    Command,
    Param,
    context_request,
    decode_request,
    encode_reply,
    encode_request,
)
from zsvc.errors import BadRequest, ErrorCode


def request(**fields: Any) -> bytes:
    payload = {"v": PROTOCOL_VERSION, "id": "r1", **fields}
    return json.dumps(payload).encode()


def error_of(data: bytes) -> tuple[str | None, BadRequest]:
    """The request id and the BadRequest for an invalid request."""
    request_id, _command, result = decode_request(data)
    assert isinstance(result, BadRequest), f"accepted: {result!r}"
    assert result.code == ErrorCode.BAD_REQUEST
    return request_id, result


# A valid value for each parameter type used in COMMANDS.
SAMPLE = {str: "T1", list: ["ts_1", "ts_2"], bool: False, float: 2.5}


def full_args(command: Command) -> dict[str, Any]:
    return {param.name: SAMPLE[param.type] for param in command.params}


def required_args(command: Command) -> dict[str, Any]:
    return {param.name: SAMPLE[param.type] for param in command.params if param.required}


# --------------------------------------------------------------------------- invalid requests


@pytest.mark.parametrize("data", [b"", b"{", b"nope", b"\xff\xfe\x00", b"[" * 100_000])
def test_not_json(data: bytes) -> None:
    """Bytes that are not JSON give 'request is not JSON' and no id."""
    request_id, error = error_of(data)
    assert request_id is None
    assert error.message.startswith("request is not JSON")


@pytest.mark.parametrize("data", [b"[]", b"1", b'"ping"', b"null"])
def test_not_an_object(data: bytes) -> None:
    """JSON that is not an object is refused."""
    request_id, error = error_of(data)
    assert request_id is None
    assert error.message == "request must be a JSON object"


@pytest.mark.parametrize(
    "payload",
    [{"command": "ping"}, {"id": "", "command": "ping"}, {"id": 5, "command": "ping"}],
)
def test_missing_or_bad_id(payload: dict[str, Any]) -> None:
    """The id must be a non-empty string."""
    request_id, error = error_of(json.dumps(payload).encode())
    assert request_id is None
    assert error.message == "request 'id' must be a non-empty string"


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_version(version: Any) -> None:
    """Another protocol version is refused, and the id is kept for the reply."""
    request_id, error = error_of(request(v=version, command="ping"))
    assert request_id == "r1"
    assert error.message == f"unsupported protocol version {version!r}"


def test_missing_version_means_current() -> None:
    """A request without 'v' is taken as the current version."""
    _id, command, args = decode_request(b'{"id": "r1", "command": "ping"}')
    assert command is COMMANDS["ping"]
    assert args == {}


@pytest.mark.parametrize("name", ["nope", "", None, 3, ["ping"]])
def test_unknown_command_lists_the_known_ones(name: Any) -> None:
    """An unknown command names itself and lists every known command, sorted."""
    request_id, error = error_of(request(command=name))
    assert request_id == "r1"
    assert error.message == f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}"


def test_unknown_arguments_are_named() -> None:
    """Unknown arguments are listed, sorted, with the command's name."""
    request_id, error = error_of(
        request(command="stop", args={"transaction": "T", "zz": 1, "a": 2})
    )
    assert request_id == "r1"
    assert error.message == "stop: unknown argument(s) a, zz"


def test_args_must_be_an_object() -> None:
    """'args' that is not an object is refused."""
    _id, error = error_of(request(command="ping", args=[1]))
    assert error.message == "ping: 'args' must be an object"


@pytest.mark.parametrize(
    "name", [name for name, command in COMMANDS.items() if any(p.required for p in command.params)]
)
def test_missing_required_argument(name: str) -> None:
    """Leaving out (or nulling) a required argument names it."""
    command = COMMANDS[name]
    required = next(param.name for param in command.params if param.required)
    for args in ({}, {required: None}):
        _id, error = error_of(request(command=name, args=args))
        assert error.message == f"{name}: argument '{required}' is required"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"transaction": 5}, "stop: argument 'transaction' must be str"),
        ({"transaction": True}, "stop: argument 'transaction' must be str"),
        ({"transaction": "T", "timeout": True}, "stop: argument 'timeout' must be float"),
        ({"transaction": "T", "timeout": "3"}, "stop: argument 'timeout' must be float"),
        ({"transaction": "T", "services": "ts_1"}, "stop: argument 'services' must be list"),
        (
            {"transaction": "T", "services": ["ts_1", 2]},
            "stop: argument 'services' must be a list of str",
        ),
        (
            {"transaction": "T", "services": [None]},
            "stop: argument 'services' must be a list of str",
        ),
    ],
)
def test_wrong_types(args: dict[str, Any], message: str) -> None:
    """A value of the wrong type is refused with the argument and the expected type."""
    _id, error = error_of(request(command="stop", args=args))
    assert error.message == message


@pytest.mark.parametrize("value", [1, 0, "true"])
def test_bool_argument_takes_only_bool(value: Any) -> None:
    """start.block is a bool: 1, 0 and "true" are refused."""
    _id, error = error_of(request(command="start", args={"block": value}))
    assert error.message == "start: argument 'block' must be bool"


def test_bool_is_not_an_int() -> None:
    """A bool never passes for an int parameter, although bool subclasses int."""
    command = Command("count", "", (Param("n", int),))
    with pytest.raises(BadRequest, match="argument 'n' must be int"):
        command.parse_args({"n": True})
    assert command.parse_args({"n": 3}) == {"n": 3}


def test_int_is_accepted_for_float() -> None:
    """An integer timeout is accepted and becomes a float."""
    _id, _command, args = decode_request(
        request(command="stop", args={"transaction": "T", "timeout": 3})
    )
    assert isinstance(args, dict)
    assert args["timeout"] == 3.0
    assert type(args["timeout"]) is float


def test_oversize_request() -> None:
    """A request above MAX_REQUEST_BYTES is refused before parsing."""
    _id, error = error_of(b" " * (MAX_REQUEST_BYTES + 1))
    assert "exceeds" in error.message


def test_huge_integer_gives_bad_request() -> None:
    """A number too long for int() is answered with BadRequest, not an exception.

    Today ValueError escapes: the daemon's request task dies and the client
    gets no reply at all.
    """
    data = b'{"v": 1, "id": "r1", "command": "stop", "args": {"timeout": ' + b"9" * 5000 + b"}}"
    _id, _command, result = decode_request(data)
    assert isinstance(result, BadRequest)


# --------------------------------------------------------------------------- valid requests


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_with_required_args_only(name: str) -> None:
    """Each command accepts its required arguments; the others get their defaults."""
    command = COMMANDS[name]
    request_id, decoded, args = decode_request(request(command=name, args=required_args(command)))
    assert request_id == "r1"
    assert decoded is command
    assert isinstance(args, dict)
    assert set(args) == {param.name for param in command.params}
    for param in command.params:
        expected = SAMPLE[param.type] if param.required else param.default
        assert args[param.name] == expected


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_with_all_args_via_encode_request(name: str) -> None:
    """encode_request() builds what decode_request() accepts, every argument given."""
    command = COMMANDS[name]
    request_id, decoded, args = decode_request(encode_request("req-9", name, full_args(command)))
    assert (request_id, decoded) == ("req-9", command)
    assert args == full_args(command)


def test_args_may_be_omitted_or_null() -> None:
    """A command without required arguments accepts no 'args' and 'args': null."""
    assert decode_request(request(command="ping"))[2] == {}
    assert decode_request(request(command="status", args=None))[2] == {"transaction": None}


def test_the_command_table_is_consistent() -> None:
    """Every declaration is keyed by its name, documented, with unique typed parameters."""
    for name, command in COMMANDS.items():
        assert command.name == name
        assert command.help
        names = [param.name for param in command.params]
        assert len(names) == len(set(names))
        for param in command.params:
            assert param.type in SAMPLE, f"{name}.{param.name}: untested type {param.type}"
            assert not (param.required and param.default is not None)


# --------------------------------------------------------------------------- replies


def test_reply_ok_shape() -> None:
    """A success reply is {v, id, ok: true, result} and has no error."""
    reply = json.loads(encode_reply("r1", result={"a": [1, 2]}))
    assert reply == {"v": PROTOCOL_VERSION, "id": "r1", "ok": True, "result": {"a": [1, 2]}}


def test_reply_ok_without_result() -> None:
    """A success reply with no result still carries result: null."""
    assert json.loads(encode_reply("r1")) == {"v": 1, "id": "r1", "ok": True, "result": None}


def test_reply_error_shape() -> None:
    """An error reply is {v, id, ok: false, error{code, message, details?}} and has no result."""
    error = BadRequest("stop: argument 'transaction' is required", details={"field": "transaction"})
    reply = json.loads(encode_reply("r1", error=error.to_wire()))
    assert reply == {
        "v": PROTOCOL_VERSION,
        "id": "r1",
        "ok": False,
        "error": {
            "code": "bad-request",
            "message": "stop: argument 'transaction' is required",
            "details": {"field": "transaction"},
        },
    }


def test_reply_stringifies_what_json_cannot_hold() -> None:
    """Values JSON cannot hold (a Path) are sent as strings instead of failing the reply."""
    reply = json.loads(encode_reply("r1", result={"path": Path("/run/zsvc")}))
    assert reply["result"] == {"path": "/run/zsvc"}


# --------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.just(PROTOCOL_VERSION) | json_values,
        "id": st.text(max_size=5) | json_values,
        "command": st.sampled_from(sorted(COMMANDS)) | json_values,
        "args": st.dictionaries(
            st.sampled_from(["transaction", "services", "timeout", "block", "context_path", "x"]),
            json_values,
        )
        | json_values,
    },
).map(lambda value: json.dumps(value).encode())


def _check_decoded(data: bytes) -> None:
    request_id, command, result = decode_request(data)
    assert request_id is None or isinstance(request_id, str)
    if isinstance(result, BadRequest):
        assert result.message
    else:
        assert isinstance(command, Command)
        assert isinstance(result, dict)
        assert set(result) == {param.name for param in command.params}


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_decode_request_never_raises_for_bytes(data: bytes) -> None:
    """Arbitrary bytes give a BadRequest (or, by chance, a valid request), never an exception."""
    _check_decoded(data)


@settings(max_examples=100)
@given(request_like)
def test_decode_request_never_raises_for_request_like_json(data: bytes) -> None:
    """JSON shaped like a request, with arbitrary values, is decoded or refused, never raises."""
    _check_decoded(data)


# --- the seed's context commands ----------------------------------------------------------


def test_a_context_start_is_a_blocking_start_of_the_context_file() -> None:
    """The seed's start returns once every task is ready, with no timeout but the tasks'."""
    command, args = context_request("start", None, ["ts_1"], ("/c/Context-T.xml", "<xml/>"))
    assert command is COMMANDS["start"]
    assert args == {
        "transaction": None,
        "context_path": "/c/Context-T.xml",
        "context_text": "<xml/>",
        "services": ["ts_1"],
        "block": True,
        "timeout": None,
        "keep_going": False,
    }


@pytest.mark.parametrize("action", ["stop", "restart"])
def test_a_context_stop_or_restart_names_its_transaction(action: str) -> None:
    command, args = context_request(action, "T1", [])
    assert command is COMMANDS[action]
    assert args == {"transaction": "T1", "services": [], "timeout": None}
    for missing in (None, ""):
        with pytest.raises(BadRequest, match=f"context {action} needs a transaction"):
            context_request(action, missing, [])


def test_a_context_exit_is_a_shutdown() -> None:
    command, args = context_request("exit", "ignored", ["ignored"])
    assert (command, args) == (COMMANDS["shutdown"], {})


def test_an_unknown_context_action_lists_the_known_ones() -> None:
    with pytest.raises(BadRequest, match="unknown context action 'reboot'; known: start, stop"):
        context_request("reboot", "T1")


def test_the_bus_may_not_stop_the_daemon() -> None:
    """exit stays on the control socket, whose permissions say who may stop zsvc."""
    assert "exit" not in BUS_CONTEXT_ACTIONS
    with pytest.raises(BadRequest, match="unknown context action 'exit'; known: start, stop"):
        context_request("exit", "T1", allowed=BUS_CONTEXT_ACTIONS)


@pytest.mark.parametrize("action", BUS_CONTEXT_ACTIONS)
def test_every_context_request_is_a_valid_control_request(action: str) -> None:
    """What the translation makes, the daemon's own validation accepts unchanged."""
    command, args = context_request(action, "T1", ["ts_1"])
    request_id, decoded, parsed = decode_request(encode_request("r1", command.name, args))
    assert (request_id, decoded, parsed) == ("r1", command, args)


@pytest.mark.parametrize("command", ["start", "stop", "restart"])
@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), float("inf"), -0.5])
def test_the_daemon_refuses_a_timeout_that_is_not_a_finite_positive_number(
    command: str, timeout: float
) -> None:
    """A raw client (not the CLI, which checks too) cannot make every task be SIGKILLed at once."""
    raw = {"transaction": "T", "timeout": timeout}
    with pytest.raises(BadRequest, match="'timeout' must be a finite number above 0"):
        COMMANDS[command].parse_args(raw)
    assert COMMANDS[command].parse_args({"transaction": "T", "timeout": 2})["timeout"] == 2.0
