"""The remote CLI's settings and rules (zsvc.daemon.remoteauth), without a daemon."""

from __future__ import annotations

import pwd

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.daemon import remoteauth
from zsvc.daemon.settings import parse
from zsvc.errors import ConfigError

KEY = st.from_regex(remoteauth.CLIENT_NAME, fullmatch=True)
USER = st.from_regex(remoteauth.USER_NAME, fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEY, USER, max_size=6))
def test_act_as_reads_back_what_was_written(pairs: dict[str, str]) -> None:
    text = "  ".join(f"{key}:{user}" for key, user in pairs.items())
    assert dict(remoteauth.act_as(text)) == pairs


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_act_as_takes_only_key_user_pairs(text: str) -> None:
    try:
        pairs = remoteauth.act_as(text)
    except ValueError:
        return
    for key, user in pairs:
        assert remoteauth.CLIENT_NAME.fullmatch(key) and remoteauth.USER_NAME.fullmatch(user)


@pytest.mark.parametrize("bad", ["alice", "alice:", ":alice", "a/b:c", "x:y x:z", ".k:u"])
def test_act_as_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        remoteauth.act_as(bad)


@pytest.mark.parametrize(
    "good", ["tcp://0.0.0.0:5560", "tcp://*:1", "tcp://[::]:65535", "tcp://host.example:80"]
)
def test_tcp_endpoints(good: str) -> None:
    assert remoteauth.tcp_endpoint(good) == good


@pytest.mark.parametrize(
    "bad", ["ipc:///run/x", "tcp://0.0.0.0", "tcp://h:0", "tcp://h:65536", "tcp://:5", "h:5"]
)
def test_not_tcp_endpoints(bad: str) -> None:
    with pytest.raises(ValueError):
        remoteauth.tcp_endpoint(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.builds("tcp://{}:{}".format, st.text(max_size=12), st.integers()))
def test_tcp_endpoint_takes_only_tcp_host_port(text: str) -> None:
    try:
        endpoint = remoteauth.tcp_endpoint(text)
    except ValueError:
        return
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    assert endpoint.startswith("tcp://") and host and 0 < int(port) < 65536
    assert not any(c.isspace() or c in "/@?#" for c in host)


def test_listen_needs_curve_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("[daemon]\nrunner = local\n[control]\nlisten = tcp://0.0.0.0:5560\n", "z.conf")
    assert str(caught.value).startswith("z.conf:4:1: listen: a TCP control endpoint is never")
    found = parse("[bus]\ncurve_keys = /k\n[control]\nlisten = tcp://*:5560\nact_as = a:b\n", "z")
    assert (found.listen, found.act_as) == ("tcp://*:5560", (("a", "b"),))


def test_keys_map_to_users_or_to_nobody() -> None:
    root = pwd.getpwuid(0).pw_name
    principals = remoteauth.KeyPrincipals.resolve(["ops", "viewer"], [("ops", root)])
    ops, viewer = principals.of("ops"), principals.of("viewer")
    assert ops is not None and (ops.uid, ops.name, ops.key) == (0, root, "ops")
    assert not ops.is_root  # a key is never root's own socket, whatever it acts as
    assert viewer is not None and (viewer.uid, viewer.name) == (None, "key:viewer")
    assert principals.of("stranger") is None and principals.of(None) is None
    with pytest.raises(KeyError, match="no user"):
        remoteauth.KeyPrincipals.resolve(["x"], [("x", "no-such-user-zsvc")])


@given(
    st.sampled_from(
        ["ping", "status", "logs", "start", "stop", "restart", "forget", "reexec", "shutdown"]
    )
)
def test_nobody_never_starts(command: str) -> None:
    nobody = remoteauth.KeyPrincipals.resolve(["v"], []).of("v")
    assert nobody is not None
    assert remoteauth.may_ask(nobody, command) == (command != "start")
    mapped = remoteauth.KeyPrincipals.resolve(["m"], [("m", pwd.getpwuid(0).pw_name)]).of("m")
    assert mapped is not None and remoteauth.may_ask(mapped, command)
