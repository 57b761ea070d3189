"""CURVE keys for the bus and the remote CLI: the one place that knows their files.

A bus bound beyond loopback is reachable by anyone on the network, and
circus's lesson ("no security at all" on its endpoint) is that an open bus
is an open door. zsvc refuses such a bind unless the daemon holds CURVE
keys (ZeroMQ's authenticated encryption, RFC 26) and admits only clients
whose public key an administrator put in the keys directory.

``zsvc keys`` writes the directory; the daemon (``[bus] curve_keys`` in
``/etc/zsvc/zsvc.conf``) and any client read it. The TCP control endpoint
(``[control] listen``) admits the same clients: ``zsvc --connect … --keys`` reads a
client's secret and the daemon's public key (:func:`load_remote`). The files are pyzmq's
certificate format (:func:`zmq.auth.create_certificates`)::

    <dir>/server.key              the daemon's public key: give it to clients
    <dir>/server.key_secret       the daemon's secret key (mode 0600)
    <dir>/clients/<name>.key      an admitted client's public key
    <dir>/clients/<name>.key_secret   its secret key, for the client's machine

Admitting a client is copying its ``.key`` into ``clients/``; revoking it is
deleting that file (and reloading the daemon, which reads the directory
when it starts).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zmq

SERVER = "server"
CLIENTS = "clients"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A client's name becomes a file name: no separators, no leading dot."""


class KeysError(Exception):
    """A keys directory or key file is missing, unreadable or malformed; says which."""


def curve_available() -> bool:
    """Whether this libzmq was built with CURVE (libsodium); Debian's and PyPI's are."""
    return bool(zmq.has("curve"))


@dataclass(frozen=True)
class ServerKeys:
    """What the daemon needs to bind a CURVE endpoint and admit clients."""

    public: bytes
    secret: bytes
    clients: Path
    """The directory of admitted clients' public keys (read by the ZAP handler)."""

    def apply(self, sock: zmq.Socket) -> None:
        """Make the next bind of *sock* a CURVE server (libzmq copies options per bind)."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_SERVER, 1)


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to connect to a CURVE bus."""

    server_public: bytes
    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket) -> None:
        """Make the next connect of *sock* a CURVE client of the daemon."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def _load(path: Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth  # here, not at the top: the daemon's settings import this module

    if not path.is_file():
        raise KeysError(f"{path}: no such key file (create the keys with 'zsvc keys')")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeysError(f"{path}: not a CURVE key file: {exc}") from None
    if want_secret and not secret:
        raise KeysError(f"{path}: has no secret key")
    return public, secret


def load_server(directory: Path) -> ServerKeys:
    """The daemon's keys in *directory*; KeysError names the file that is wrong."""
    public, secret = _load(directory / f"{SERVER}{SECRET_SUFFIX}", want_secret=True)
    clients = directory / CLIENTS
    if not clients.is_dir():
        raise KeysError(f"{clients}: no directory of admitted clients' keys")
    assert secret is not None
    return ServerKeys(public, secret, clients)


def load_client(directory: Path, name: str) -> ClientKeys:
    """Client *name*'s keys, with the daemon's public key, as ``zsvc keys`` laid them out."""
    server_public, _ = _load(directory / f"{SERVER}{PUBLIC_SUFFIX}", want_secret=False)
    public, secret = _load(directory / CLIENTS / f"{name}{SECRET_SUFFIX}", want_secret=True)
    assert secret is not None
    return ClientKeys(server_public, public, secret)


def load_remote(path: Path) -> tuple[str, ClientKeys]:
    """A remote CLI's keys (``zsvc --keys PATH``) and the key's name.

    *PATH* is a client's ``NAME.key_secret`` with the daemon's ``server.key`` beside it or
    one directory up (the layout ``zsvc keys`` writes), or a directory holding
    ``server.key`` and exactly one client's secret (in it or in its ``clients/``): what an
    operator copies to their machine. KeysError says what is missing or ambiguous.
    """
    if not path.exists():
        raise KeysError(f"{path}: no such file or directory (the keys 'zsvc keys' made)")
    if path.is_dir():
        found = [
            secret
            for where in (path, path / CLIENTS)
            for secret in sorted(where.glob(f"*{SECRET_SUFFIX}"))
            if secret.name != f"{SERVER}{SECRET_SUFFIX}"
        ]
        if len(found) != 1:
            names = ", ".join(secret.name for secret in found) or "none"
            raise KeysError(
                f"{path}: expected one client's *{SECRET_SUFFIX} (found {names});"
                f" give the file itself: --keys {path}/NAME{SECRET_SUFFIX}"
            )
        path = found[0]
    if not path.name.endswith(SECRET_SUFFIX):
        raise KeysError(f"{path}: not a client's secret key file (NAME{SECRET_SUFFIX})")
    server = next(
        (
            where / f"{SERVER}{PUBLIC_SUFFIX}"
            for where in (path.parent, path.parent.parent)
            if (where / f"{SERVER}{PUBLIC_SUFFIX}").is_file()
        ),
        path.parent / f"{SERVER}{PUBLIC_SUFFIX}",
    )
    server_public, _ = _load(server, want_secret=False)
    public, secret = _load(path, want_secret=True)
    assert secret is not None
    return path.name[: -len(SECRET_SUFFIX)], ClientKeys(server_public, public, secret)


def admitted(directory: Path) -> list[str]:
    """The names of the clients whose public keys are in ``clients/``."""
    clients = directory / CLIENTS
    if not clients.is_dir():
        return []
    return sorted(path.name[: -len(PUBLIC_SUFFIX)] for path in clients.glob(f"*{PUBLIC_SUFFIX}"))


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    """Files created meanwhile are readable by their owner only (pyzmq does not chmod)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _create(directory: Path, name: str) -> Path:
    """A new key pair *name* in *directory*; the public file is made world-readable."""
    for suffix in (PUBLIC_SUFFIX, SECRET_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{name}{suffix}").unlink()
    import zmq.auth

    with _private_umask():
        public, _ = zmq.auth.create_certificates(directory, name)
    os.chmod(public, 0o644)
    return Path(public)


@dataclass(frozen=True)
class Created:
    """What :func:`create` wrote, for the CLI to tell the user."""

    server: bool
    clients: tuple[str, ...]


def create(directory: Path, clients: list[str], force: bool) -> Created:
    """Make *directory* a keys directory: a server pair (kept if present) and client pairs.

    An existing server pair is replaced only with *force* (every client then
    needs the new ``server.key``); an existing client likewise.
    """
    if not curve_available():
        raise KeysError("this libzmq has no CURVE support (built without libsodium)")
    for name in clients:
        if not CLIENT_NAME.fullmatch(name):
            raise KeysError(
                f"client name {name!r}: use letters, digits, '_', '.' and '-' (at most 64),"
                " not starting with '.', '_' or '-'"
            )
    server_secret = directory / f"{SERVER}{SECRET_SUFFIX}"
    for name in clients:
        existing = directory / CLIENTS / f"{name}{PUBLIC_SUFFIX}"
        if existing.exists() and not force:
            raise KeysError(f"{existing}: client {name!r} exists (--force replaces it)")
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        (directory / CLIENTS).mkdir(mode=0o750, exist_ok=True)
        new_server = force or not server_secret.exists()
        if new_server:
            _create(directory, SERVER)
        for name in clients:
            _create(directory / CLIENTS, name)
    except OSError as exc:
        raise KeysError(f"{exc.filename or directory}: {exc.strerror or exc}") from None
    return Created(new_server, tuple(clients))
