"""Hostile input to the decoders and the XML loaders (issue 8 part 4).

What every parser of outside input must do, for any input: return a value or raise
the module's own error, whose text says what is wrong, never anything else:

* ``commands.decode_request`` (the control socket) returns a :class:`BadRequest`,
  never raises; ``protocol.decode`` (the bus) raises :class:`ProtocolError` only
  (its basic property is in ``test_protocol.py``; here, near-valid messages);
* ``load_context_text`` raises :class:`ConfigError` only, ``parse_metaconf``
  :class:`ScaffoldError` only.

And the XML loaders resolve nothing: entity bombs are refused at once, and an
external entity, an external DTD, a parameter entity or an XInclude naming a
``file://`` or ``http://`` URL is refused without the file being read or a
connection being made. Both are proved, not assumed: the "file" is a FIFO holding
bytes that a read would consume, and the URL is a listening socket on which a
connection attempt would show up.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsvc.commands import COMMANDS, decode_request
from zsvc.config.loader import load_context_text
from zsvc.errors import BadRequest, ConfigError
from zsvc.protocol import Message, ProtocolError, decode
from zsvc.scaffold.metaconf import parse_metaconf
from zsvc.scaffold.model import Request, ScaffoldError

CONTEXT = """<?xml version="1.0"?>
<Context>
  <FrontEndEndpoint>tcp://127.0.0.1:5557</FrontEndEndpoint>
  <BackendEndpoint>tcp://127.0.0.1:5558</BackendEndpoint>
  <ContextID>ctx</ContextID>
  <TaskLogName>t</TaskLogName>
  <TaskService id="ts_1" instance="Sleeper" serviceType="Process" topic="process">
    <Task>
      <description>{value}</description>
      <message><header><action>start</action><service_name>s</service_name></header>
        <content><configuration><location>/tmp</location></configuration></content></message>
      <state type="on_start"/>
    </Task>
  </TaskService>
</Context>
"""
METACONF = """<?xml version="1.0"?>
<MetaServiceConf>
  <context_name>M</context_name>
  <service_path>.</service_path>
  <Service>
    <task_service>A</task_service>
    <service_name>a</service_name>
    <task_id>ts_1</task_id>
    <task_desc>{value}</task_desc>
  </Service>
</MetaServiceConf>
"""


def load_context(data: bytes | str) -> Any:
    return load_context_text(data, "/fuzz/Context-f.xml")


def load_metaconf(data: bytes | str) -> Any:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return parse_metaconf(raw, Path("/fuzz/meta.xml"))


LOADERS: dict[str, tuple[Callable[[bytes | str], Any], str, type[Exception]]] = {
    "context": (load_context, CONTEXT, ConfigError),
    "metaconf": (load_metaconf, METACONF, ScaffoldError),
}


def test_the_templates_load() -> None:
    """The fuzzing below starts from valid documents."""
    assert load_context(CONTEXT.format(value="x")).tasks[0].description == "x"
    assert isinstance(load_metaconf(METACONF.format(value="x")), Request)


# --------------------------------------------------------------------------- control requests

json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
param_names = sorted({param.name for command in COMMANDS.values() for param in command.params})
requests = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, 0, "1", True, 1.0, None]),
        "id": st.text(max_size=10) | json_values,
        "command": st.sampled_from([*COMMANDS, "nope", ""]) | json_values,
        "args": st.none()
        | json_values
        | st.dictionaries(
            st.sampled_from(param_names) | st.text(max_size=8), json_values, max_size=4
        ),
        "extra": json_values,
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests.map(lambda r: json.dumps(r).encode())
    | st.binary(max_size=100)
    | json_values.map(lambda v: json.dumps(v).encode())
    | requests.map(lambda r: json.dumps(r).encode()[: len(json.dumps(r)) // 2])
)
def test_decode_request_answers_every_input_with_a_request_or_bad_request(data: bytes) -> None:
    request_id, command, args = decode_request(data)
    if isinstance(args, BadRequest):
        assert args.message and args.code == "bad-request"
        assert request_id is None or (isinstance(request_id, str) and request_id)
        return
    assert isinstance(request_id, str) and request_id
    assert command is not None and command.name in COMMANDS
    assert set(args) == {param.name for param in command.params}
    for param in command.params:  # every argument has its declared type (or its default)
        value = args[param.name]
        expected = param.type if isinstance(param.type, tuple) else (param.type,)
        assert value == param.default or isinstance(value, expected)


# --------------------------------------------------------------------------- bus messages

near_messages = st.fixed_dictionaries(
    {},
    optional={
        "header": st.fixed_dictionaries(
            {},
            optional={
                "action": st.text(max_size=8) | json_values,
                "service_transaction": st.sampled_from(["", "T1", "x/y", "a" * 65]) | json_values,
                "transaction": st.sampled_from(["T1", "T2"]) | json_values,
                "service_id": st.text(max_size=8) | json_values,
                "service_name": st.text(max_size=8) | json_values,
            },
        )
        | json_values,
        "content": json_values,
        "other": json_values,
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([b"control", b"state", b"context", b" x ", b"", b"\xff"]),
    near_messages.map(lambda m: json.dumps(m).encode()),
    st.booleans(),
)
def test_decode_of_near_valid_messages_is_a_message_or_protocol_error(
    topic: bytes, body: bytes, legacy: bool
) -> None:
    frames = [topic + b" @@@ " + body] if legacy else [topic, body]
    try:
        message = decode(frames)
    except ProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(message, Message) and message.action and message.topic


# --------------------------------------------------------------------------- XML: any input


def mutations(template: str) -> st.SearchStrategy[str]:
    """The valid document with a random value, or cut, or with random text spliced in."""
    document = template.format(value="x")
    return st.one_of(
        st.text(max_size=40).map(lambda value: template.format(value=value)),
        st.integers(0, len(document)).map(lambda cut: document[:cut]),
        st.tuples(st.integers(0, len(document)), st.text(max_size=20)).map(
            lambda spliced: document[: spliced[0]] + spliced[1] + document[spliced[0] :]
        ),
        st.sampled_from(["<", "&", "]]>", "<!--", "<?", "\x00", "&#0;", "&#xD800;"]).map(
            lambda bad: template.format(value=bad)
        ),
    )


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_xml_loaders_answer_any_input_with_their_own_error(name: str) -> None:
    load, template, error = LOADERS[name]

    @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(st.binary(max_size=200) | st.text(max_size=200) | mutations(template))
    def check(data: bytes | str) -> None:
        try:
            load(data)
        except error as exc:
            assert str(exc), "an error without a message"
            assert all(":" in line for line in str(exc).splitlines())  # file:line:col: why

    check()


# --------------------------------------------------------------------------- XML: resolving


@pytest.fixture
def bait(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A FIFO holding bytes a read would take, and a listener a connection would reach."""
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a reader and a writer: opening never blocks
    os.write(fd, b"s3cret")
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield {"fifo": fifo, "fd": fd, "listener": listener, "port": listener.getsockname()[1]}
    finally:
        os.close(fd)
        listener.close()


def assert_nothing_resolved(bait: dict[str, Any]) -> None:
    assert os.read(bait["fd"], 100) == b"s3cret", "the file was read"
    readable, _, _ = select.select([bait["listener"]], [], [], 0)
    assert not readable, "a connection was made"


def hostile_documents(template: str, fifo: Path, port: int) -> dict[str, str]:
    root = template.split("<", 3)[2].split(">")[0].split()[0]  # Context / MetaServiceConf
    body = template.format(value="&x;").split("?>", 1)[1]
    plain = template.format(value="y").split("?>", 1)[1]
    laughs = "".join(
        f'<!ENTITY l{n} "{"".join(f"&l{n - 1};" for _ in range(10))}">' for n in range(1, 10)
    )
    url = f"http://127.0.0.1:{port}/x"
    return {
        "billion laughs": f'<!DOCTYPE {root} [<!ENTITY l0 "lol">{laughs}<!ENTITY x "&l9;">]>{body}',
        "quadratic blowup": f'<!DOCTYPE {root} [<!ENTITY x "{"a" * 100_000}">]>'
        + template.format(value="&x;" * 10_000).split("?>", 1)[1],
        "file entity": f'<!DOCTYPE {root} [<!ENTITY x SYSTEM "file://{fifo}">]>{body}',
        "http entity": f'<!DOCTYPE {root} [<!ENTITY x SYSTEM "{url}">]>{body}',
        "file DTD": f'<!DOCTYPE {root} SYSTEM "file://{fifo}">{plain}',
        "http DTD": f'<!DOCTYPE {root} PUBLIC "-//x//y" "{url}">{plain}',
        "parameter entity": f'<!DOCTYPE {root} [<!ENTITY % p SYSTEM "{url}"> %p;]>{plain}',
        "parameter entity file": f'<!DOCTYPE {root} [<!ENTITY % p SYSTEM "{fifo}"> %p;]>{plain}',
        "undeclared entity": body,
        "xinclude": template.format(
            value=f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file://{fifo}"'
            ' parse="text"/>'
        ),
        "xinclude http": template.format(
            value=f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{url}"/>'
        ),
    }


CASES = [
    "billion laughs",
    "quadratic blowup",
    "file entity",
    "http entity",
    "file DTD",
    "http DTD",
    "parameter entity",
    "parameter entity file",
    "undeclared entity",
    "xinclude",
    "xinclude http",
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_xml_loaders_refuse_entities_and_resolve_nothing(
    name: str, case: str, bait: dict[str, Any]
) -> None:
    load, template, error = LOADERS[name]
    document = hostile_documents(template, bait["fifo"], bait["port"])[case]
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            load(document)
        except BaseException as exc:  # noqa: BLE001 - judged below, in the test's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    # In a thread: a loader that opened the FIFO would wait for its end forever.
    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10.0)
    if thread.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.dup(bait["fd"]))
        pytest.fail(f"{name} loader blocked on {case}: it opened the FIFO")
    elapsed = time.monotonic() - started
    assert_nothing_resolved(bait)
    assert elapsed < 5.0, f"{case} took {elapsed:.1f} s"
    (result,) = outcome
    assert isinstance(result, error), f"{case}: {result!r} is not a {error.__name__}"
    text = str(result)
    assert text and "s3cret" not in text and "lol" * 10 not in text
    if case not in ("undeclared entity", "xinclude", "xinclude http"):
        assert "DOCTYPE is not allowed" in text, text
