"""zsvc.protocol: framing, the legacy single frame, header normalisation, every refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsvc.protocol import (
    HEADER_FIELDS,
    MAX_FRAME_BYTES,
    PROBE_PREFIX,
    Message,
    ProtocolError,
    Topic,
    control_message,
    decode,
    encode,
    make_message,
    probe_topic,
    split_legacy,
)
from zsvc.states import ID_PATTERN


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def refused(frames: list[bytes]) -> str:
    """The ProtocolError text for *frames* (fails the test when they are accepted)."""
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    return str(info.value)


# --------------------------------------------------------------------------- round trips


def test_encode_is_topic_and_compact_json() -> None:
    """encode() gives exactly two frames: the topic and compact UTF-8 JSON."""
    message = make_message(
        "process", "start", transaction="T1", service_id="ts_1", content={"k": 1}
    )
    topic, payload = encode(message)
    assert topic == b"process"
    assert b": " not in payload and b", " not in payload
    assert json.loads(payload) == {
        "header": {
            "action": "start",
            "service_transaction": "T1",
            "service_id": "ts_1",
            "service_name": "",
        },
        "content": {"k": 1},
    }


def test_round_trip_keeps_topic_header_content() -> None:
    """decode(encode(m)) gives back the same topic, header and content, non-ASCII included."""
    message = make_message(
        "control",
        "updated",
        transaction="A_b-9",
        service_id="ts_100",
        service_name="échoé",
        content={"status": {"text": "über ✓", "n": [1, 2.5, None, True]}},
        extra="x",
    )
    decoded = decode(encode(message))
    assert decoded.topic == "control"
    assert decoded.header == message.header
    assert decoded.content == message.content
    assert decoded.transaction == "A_b-9"
    assert decoded.service_id == "ts_100"
    assert decoded.service_name == "échoé"
    assert decoded.action == "updated"


def test_make_message_headers_are_not_shared() -> None:
    """Every message gets its own header dict (no shared template as in the original)."""
    first = make_message("process", "start")
    second = make_message("process", "start")
    assert first.header is not second.header
    assert first.content is not second.content


def test_control_message_has_the_seed_status_shape() -> None:
    """control_message() puts result/device_action and extra status into content.status."""
    message = control_message(
        "started", transaction="T", service_id="ts_1", service_name="echo", pid=42
    )
    assert message.topic == Topic.CONTROL == "control"
    assert message.content == {"status": {"result": "success", "device_action": "", "pid": 42}}
    assert decode(encode(message)).content == message.content


def test_control_message_merges_items_but_protects_its_own_keys() -> None:
    """A task's items sit beside result/device_action/pid and may not replace them."""
    message = control_message(
        "updated", transaction="T", service_id="s", service_name="n", status={"count": 3}
    )
    assert message.content["status"]["count"] == 3
    with pytest.raises(ValueError, match="reserved"):
        control_message(
            "updated", transaction="T", service_id="s", service_name="n", status={"pid": 1}
        )


def test_missing_content_defaults_to_empty_and_header_fields_are_filled() -> None:
    """A message with only header.action gets content {} and all four header fields."""
    message = decode([b"state", body({"header": {"action": "request"}})])
    assert message.content == {}
    assert set(HEADER_FIELDS) <= set(message.header)
    assert message.transaction == message.service_id == message.service_name == ""


def test_topic_is_stripped() -> None:
    """Whitespace around the topic is dropped (the legacy frame puts a space there)."""
    assert decode([b"  process \n", body({"header": {"action": "a"}})]).topic == "process"


def test_probe_topic() -> None:
    """Probe topics are private: they carry the prefix and the nonce."""
    assert probe_topic("abc") == PROBE_PREFIX + "abc"
    assert probe_topic("abc").startswith("_probe.")


# --------------------------------------------------------------------------- legacy frame


def test_legacy_single_frame() -> None:
    """The seed's ``topic @@@ json`` single frame is accepted."""
    frame = b'context @@@ {"header": {"action": "start", "service_transaction": "T1"}}'
    message = decode([frame])
    assert message.topic == "context"
    assert message.action == "start"
    assert message.transaction == "T1"


def test_legacy_frame_whose_payload_contains_the_separator() -> None:
    """The frame is split at the first ``@@@``: a payload containing it survives (the
    original split at every marker and broke)."""
    payload = {"header": {"action": "say"}, "content": {"text": "a @@@ b @@@ c", "@@@": "@@@"}}
    message = decode([b"process @@@ " + body(payload)])
    assert message.topic == "process"
    assert message.content == payload["content"]


def test_split_legacy() -> None:
    """split_legacy() partitions at the first marker and refuses a frame without one."""
    assert split_legacy(b"a@@@b@@@c") == (b"a", b"b@@@c")
    with pytest.raises(ProtocolError, match="without the '@@@' separator"):
        split_legacy(b'process {"header": {}}')


def test_legacy_frame_without_separator_is_refused() -> None:
    """A single frame with no marker says what is missing."""
    assert "'@@@'" in refused([b'{"header": {"action": "x"}}'])


# --------------------------------------------------------------------------- transaction spelling


def test_transaction_is_normalised_to_service_transaction() -> None:
    """The seed's header.transaction becomes header.service_transaction and disappears."""
    message = decode([b"context", body({"header": {"action": "start", "transaction": "T1"}})])
    assert message.header["service_transaction"] == "T1"
    assert "transaction" not in message.header
    assert message.transaction == "T1"


def test_both_spellings_with_the_same_value_are_accepted() -> None:
    """transaction and service_transaction may both be present when they agree."""
    header = {"action": "start", "transaction": "T1", "service_transaction": "T1"}
    message = decode([b"context", body({"header": header})])
    assert message.header["service_transaction"] == "T1"
    assert "transaction" not in message.header


def test_both_spellings_with_different_values_are_refused() -> None:
    """Conflicting transaction and service_transaction are an error naming both."""
    header = {"action": "start", "transaction": "T1", "service_transaction": "T2"}
    text = refused([b"context", body({"header": header})])
    assert "'transaction'" in text and "'service_transaction'" in text
    assert "different values" in text


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([b"t", b"{not json"], "body is not JSON"),
        ([b"t", b""], "body is not JSON"),
        ([b"t", b"\xff\xfe\xfa"], "body is not JSON"),
        ([b"t", b"[1, 2]"], "message is list, not an object"),
        ([b"t", b'"text"'], "message is str, not an object"),
        ([b"t", b"null"], "message is NoneType, not an object"),
        ([b"t", body({"header": {"action": "a"}, "extra": 1})], "unknown top-level keys ['extra']"),
        ([b"t", body({"content": {}})], "'header' must be an object"),
        ([b"t", body({"header": ["action"]})], "'header' must be an object"),
        ([b"t", body({"header": "action"})], "'header' must be an object"),
        ([b"t", body({"header": {"action": "a"}, "content": [1]})], "'content' must be an object"),
        ([b"t", body({"header": {}})], "header.action is missing or empty"),
        ([b"t", body({"header": {"action": ""}})], "header.action is missing or empty"),
        ([b"t", body({"header": {"action": 1}})], "header.action must be a string"),
        (
            [b"t", body({"header": {"action": "a", "service_id": None}})],
            "header.service_id must be a string",
        ),
        (
            [b"t", body({"header": {"action": "a", "service_name": ["x"]}})],
            "header.service_name must be a string",
        ),
        (
            [b"t", body({"header": {"action": "a", "service_transaction": 7}})],
            "header.service_transaction must be a string",
        ),
        (
            [b"t", body({"header": {"action": "a", "transaction": 7}})],
            "header.service_transaction must be a string",
        ),
        (
            [b"t", body({"header": {"action": "a", "service_transaction": "no spaces"}})],
            "is not an id ([A-Za-z0-9_-]{1,64})",
        ),
        (
            [b"t", body({"header": {"action": "a", "service_transaction": "x" * 65}})],
            "is not an id",
        ),
        (
            [b"t", body({"header": {"action": "a", "service_transaction": "a\n"}})],
            "is not an id",
        ),
        ([], "expected 1 or 2 frames, got 0"),
        ([b"t", b"{}", b"{}"], "expected 1 or 2 frames, got 3"),
        ([b"\xff\xfe", body({"header": {"action": "a"}})], "topic is not UTF-8"),
        ([b"  ", body({"header": {"action": "a"}})], "empty topic"),
        ([b" @@@ {}"], "empty topic"),
    ],
)
def test_refusals_say_why(frames: list[bytes], expected: str) -> None:
    """Every invalid message raises ProtocolError whose text names the problem."""
    assert expected in refused(frames)


def test_refusal_names_the_topic() -> None:
    """Errors after the topic is known say which topic the bad message came on."""
    assert refused([b"control", b"[]"]).startswith("topic 'control':")


def test_oversize_body_is_refused_before_parsing() -> None:
    """A body above MAX_FRAME_BYTES is refused, whatever it contains."""
    text = refused([b"t", b"x" * (MAX_FRAME_BYTES + 1)])
    assert f"{MAX_FRAME_BYTES + 1} bytes exceeds {MAX_FRAME_BYTES}" in text


def test_oversize_legacy_body_is_refused() -> None:
    """The size limit applies to the legacy frame's body too."""
    assert "exceeds" in refused([b"t @@@ " + b" " * (MAX_FRAME_BYTES + 1)])


def test_body_of_exactly_the_limit_is_accepted() -> None:
    """MAX_FRAME_BYTES itself is still allowed (the limit is inclusive)."""
    empty = body({"header": {"action": "a"}, "content": {"p": ""}})
    padded = body(
        {"header": {"action": "a"}, "content": {"p": "x" * (MAX_FRAME_BYTES - len(empty))}}
    )
    assert len(padded) == MAX_FRAME_BYTES
    assert decode([b"t", padded]).content["p"].startswith("x")


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"header": {"action": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b'{"content": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    ],
    ids=["list", "in-header", "objects"],
)
def test_deeply_nested_json_is_refused(payload: bytes) -> None:
    """JSON nested beyond the recursion limit is a ProtocolError, not a RecursionError."""
    assert "nested too deeply" in refused([b"t", payload])


def test_huge_integer_is_a_protocol_error() -> None:
    """A number too long for int() (Python's 4300-digit limit) is refused as a ProtocolError.

    Today a raw ValueError escapes; the daemon's bus observer only catches
    ProtocolError, so such a message on an observed topic kills the forwarder.
    """
    payload = b'{"header": {"action": "a"}, "content": {"n": ' + b"1" * 5000 + b"}}"
    with pytest.raises(ProtocolError):
        decode([b"control", payload])


def test_a_decoded_message_can_be_encoded_again() -> None:
    """Whatever decode() accepts, encode() can send on.

    JSON may spell a lone surrogate as an escape; decode() accepts it, then
    encode() (ensure_ascii=False, then UTF-8) raises UnicodeEncodeError. The
    daemon re-publishes a ``state`` request's header in its reply, so such a
    request gets no reply and a traceback in the log.
    """
    header = b'{"action": "request", "service_id": "\\ud800"}'
    message = decode([b"state", b'{"header": ' + header + b"}"])
    assert decode(encode(message)).header == message.header


# --------------------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

# Bytes that often get past the JSON parser, to reach the shape and header checks.
header_like = st.fixed_dictionaries(
    {"action": st.text(min_size=1, max_size=5) | json_values},
    optional={
        name: st.text(max_size=5) | st.sampled_from(["T1", "x y"]) | json_values
        for name in ("service_transaction", "service_id", "service_name", "transaction")
    },
)
message_like = st.fixed_dictionaries(
    {"header": header_like | json_values},
    optional={"content": json_objects | json_values, "extra": json_values},
)
message_body = message_like.map(lambda v: json.dumps(v).encode())
frame = (
    st.binary(max_size=64)
    | st.text(max_size=20).map(str.encode)
    | json_values.map(lambda v: json.dumps(v).encode())
    | message_body
    | message_body.map(lambda b: b"topic @@@ " + b)
)
topic_frame = st.binary(max_size=8) | st.text(min_size=1, max_size=8).map(str.encode)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame, max_size=3) | st.tuples(topic_frame, frame).map(list))
def test_decode_returns_a_message_or_raises_protocol_error(frames: list[bytes]) -> None:
    """For any 0-3 frames decode() returns a Message or raises ProtocolError, nothing else."""
    try:
        message = decode(frames)
    except ProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(message, Message)
        assert message.action
        assert all(isinstance(message.header[name], str) for name in HEADER_FIELDS)


# decode() strips the topic, so generated topics have no surrounding whitespace.
topics = st.sampled_from(list(Topic)) | st.text(max_size=30).map(lambda t: t.strip() or "t")
header_text = st.text(max_size=30)
transactions = st.just("") | st.from_regex(ID_PATTERN, fullmatch=True)
extra_headers = st.dictionaries(
    # the prefix keeps them clear of the header fields and of make_message()'s keywords
    st.text(max_size=10).map(lambda key: "x-" + key),
    header_text,
    max_size=3,
)


@settings(max_examples=100)
@given(
    topic=topics,
    action=st.text(min_size=1, max_size=30),
    transaction=transactions,
    service_id=header_text,
    service_name=header_text,
    extra=extra_headers,
    content=json_objects,
)
def test_round_trip_of_generated_messages(
    topic: str,
    action: str,
    transaction: str,
    service_id: str,
    service_name: str,
    extra: dict[str, str],
    content: dict[str, Any],
) -> None:
    """Any valid message survives encode/decode with equal topic, header and content."""
    message = make_message(
        topic,
        action,
        transaction=transaction,
        service_id=service_id,
        service_name=service_name,
        content=content,
        **extra,
    )
    decoded = decode(encode(message))
    assert decoded.topic == topic
    assert decoded.header == message.header
    assert decoded.content == message.content
