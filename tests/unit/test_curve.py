"""``zsvc keys``' directory: what it writes, with which modes, and how loading fails."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from zsvc import curve


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_directory_has_a_server_pair_and_admitted_clients(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    created = curve.create(keys, ["alice", "bob.example"], force=False)
    assert created == curve.Created(server=True, clients=("alice", "bob.example"))
    assert mode(keys / "server.key_secret") == 0o600
    assert mode(keys / "server.key") == 0o644
    assert mode(keys / "clients" / "alice.key_secret") == 0o600
    assert mode(keys / "clients" / "alice.key") == 0o644
    assert curve.admitted(keys) == ["alice", "bob.example"]
    server = curve.load_server(keys)
    client = curve.load_client(keys, "alice")
    assert client.server_public == server.public
    assert len(server.secret) == len(client.secret) == 40  # Z85 of 32 bytes
    assert server.clients == keys / "clients"


def test_a_second_run_keeps_the_server_and_refuses_to_replace_a_client(tmp_path: Path) -> None:
    curve.create(tmp_path, ["alice"], force=False)
    server = curve.load_server(tmp_path)
    assert curve.create(tmp_path, ["carol"], force=False) == curve.Created(False, ("carol",))
    assert curve.load_server(tmp_path) == server
    with pytest.raises(curve.KeysError, match=r"clients/alice.key: client 'alice' exists"):
        curve.create(tmp_path, ["alice"], force=False)
    alice = curve.load_client(tmp_path, "alice")
    curve.create(tmp_path, ["alice"], force=True)
    assert curve.load_client(tmp_path, "alice").public != alice.public
    assert curve.load_server(tmp_path).public != server.public  # force renews the server too


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "-opt", "a/b", "a" * 65, "é"])
def test_client_names_that_are_not_plain_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(curve.KeysError, match="client name"):
        curve.create(tmp_path, [name], force=False)
    assert not (tmp_path / "clients").exists()


def test_loading_names_the_file_that_is_missing_or_wrong(tmp_path: Path) -> None:
    with pytest.raises(curve.KeysError, match=rf"{tmp_path}/server.key_secret: no such key"):
        curve.load_server(tmp_path)
    curve.create(tmp_path, ["alice"], force=False)
    (tmp_path / "clients" / "alice.key_secret").write_text("not a certificate\n")
    with pytest.raises(curve.KeysError, match=r"alice\.key_secret: (not a CURVE|has no secret)"):
        curve.load_client(tmp_path, "alice")
    with pytest.raises(curve.KeysError, match=r"nobody\.key_secret: no such key"):
        curve.load_client(tmp_path, "nobody")
