"""The remote control client (zsvc.client.Remote, ControlClient over TCP+CURVE) and the
forms of ``--keys`` (zsvc.curve.load_remote), with real files and real sockets: no daemon,
a CURVE ROUTER of the test's own where one must answer."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import zmq

from zsvc import curve
from zsvc.client import ControlClient, Remote, RemoteUnreachable
from zsvc.errors import BadRequest


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    curve.create(directory, ["alice", "bob"], force=False)
    return directory


def test_keys_as_zsvc_keys_wrote_them(keys: Path) -> None:
    name, loaded = curve.load_remote(keys / "clients" / "alice.key_secret")
    server, _ = curve._load(keys / "server.key", want_secret=False)
    assert (name, loaded.server_public) == ("alice", server)


def test_keys_as_copied_to_a_client(keys: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(keys / "server.key", mine)
    shutil.copy(keys / "clients" / "bob.key_secret", mine)
    assert curve.load_remote(mine)[0] == "bob"  # the directory: its one secret
    assert curve.load_remote(mine / "bob.key_secret")[0] == "bob"


def test_keys_that_cannot_be_used_are_named(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(curve.KeysError, match="expected one client's"):
        curve.load_remote(keys)  # alice and bob: which one?
    with pytest.raises(curve.KeysError, match="no such file or directory"):
        curve.load_remote(tmp_path / "nowhere")
    with pytest.raises(curve.KeysError, match="not a client's secret key file"):
        curve.load_remote(keys / "clients" / "alice.key")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(keys / "clients" / "alice.key_secret", lone)
    with pytest.raises(curve.KeysError, match=r"server\.key: no such key file"):
        curve.load_remote(lone)
    with pytest.raises(BadRequest, match="needs --keys"):
        Remote.load("tcp://127.0.0.1:1", None)
    with pytest.raises(BadRequest, match="expected tcp://HOST:PORT"):
        Remote.load("ipc:///run/zsvc/control", str(keys / "clients" / "alice.key_secret"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nothing_listening_is_told_at_the_deadline(keys: Path) -> None:
    remote = Remote.load(f"tcp://127.0.0.1:{closed_port()}", str(keys / "clients/alice.key_secret"))
    started = time.monotonic()
    refused = pytest.raises(RemoteUnreachable, match=r"\(connection refused\) within 1 s")
    with ControlClient(Path("/"), timeout=1.0, remote=remote) as client, refused:
        client.call("status")
    assert 1.0 <= time.monotonic() - started < 3.0


def test_a_server_of_other_keys_fails_the_handshake_at_once(keys: Path, tmp_path: Path) -> None:
    """A CURVE server whose secret is not the one of our server.key: the handshake fails
    and the client says so without waiting for its timeout."""
    other = tmp_path / "other"
    curve.create(other, [], force=False)
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        curve.load_server(other).apply(router)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        remote = Remote.load(f"tcp://127.0.0.1:{port}", str(keys / "clients/alice.key_secret"))
        started = time.monotonic()
        refused = pytest.raises(RemoteUnreachable, match="refused key 'alice'")
        with ControlClient(Path("/"), timeout=10.0, remote=remote) as client, refused:
            client.call("status")
        assert time.monotonic() - started < 5.0
    finally:
        ctx.destroy(0)


def test_the_daemon_names_admitted_keys_by_file_and_skips_broken_ones(keys: Path) -> None:
    from zsvc.daemon.remote import NamingAuthenticator, key_names

    (keys / "clients" / "bob.key").write_text("not a key\n")
    names = key_names(keys / "clients")
    assert sorted(names.values()) == ["alice"]
    _, alice = curve.load_remote(keys / "clients" / "alice.key_secret")
    ctx = zmq.Context()
    try:
        authenticator = NamingAuthenticator(ctx, names)  # type: ignore[arg-type]
        assert authenticator.curve_user_id(zmq.utils.z85.decode(alice.public)) == "alice"
    finally:
        ctx.term()
