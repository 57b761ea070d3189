"""Facts about the programs, seen from the outside: ports, answers, processes left behind.

Ports are checked from this process for both stacks (the box shares the
machine's network namespace). Processes are found on the machine's /proc,
which sees the box's processes too: by the tier's marker in the environment,
the command line or the working directory (see :mod:`tests.programs.contexts`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.programs.contexts import MARK_VARIABLE
from tests.system.conftest import wait_for

CONNECT_TIMEOUT = 2.0


def answers(port: int, send: bytes, timeout: float = CONNECT_TIMEOUT) -> bytes:
    """Connect to 127.0.0.1:*port*, send *send*, and return the first bytes of the answer
    (b'' when nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(send)
            return sock.recv(4096)
    except OSError:
        return b""


def redis_ping(port: int) -> bool:
    return answers(port, b"PING\r\n").startswith(b"+PONG")


def http_get(port: int, path: str = "/") -> bytes:
    """The first bytes of an HTTP/1.0 answer to GET *path* (b'' when nothing listens)."""
    return answers(port, f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())


def listening(port: int) -> bool:
    """Does anything accept TCP connections on 127.0.0.1:*port*?"""
    with socket.socket() as sock:
        sock.settimeout(CONNECT_TIMEOUT)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def poll(predicate: Callable[[], Any], timeout: float, what: str, log: Callable[[], str]) -> Any:
    """Poll a fact no event announces (a port, a pid) until it holds, within *timeout*.

    A string from *predicate* means "not yet, and here is why" (shown on failure).
    """
    try:
        return wait_for(predicate, timeout, what, step=0.05)
    except pytest.fail.Exception as failure:
        pytest.fail(f"{failure}\n--- daemon ---\n{log()}")


def marked_processes(mark: str) -> dict[int, str]:
    """Live processes of this machine (the box's included) that carry *mark*: pid -> why."""
    found: dict[int, str] = {}
    needle = mark.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        why = _carries(entry, needle)
        if why:
            found[int(entry.name)] = why
    return found


def _carries(proc: Path, needle: bytes) -> str:
    """Where process *proc* carries *needle* ('' when it does not, or has gone, or is a
    zombie: a zombie is its parent's to reap, not a process left running)."""
    with contextlib.suppress(OSError, IndexError):  # IndexError: it ended while read
        if " Z " in (proc / "stat").read_text().rsplit(")", 1)[1][:4]:
            return ""
        cmdline = (proc / "cmdline").read_bytes()
        if needle in cmdline:
            return "command line: " + cmdline.replace(b"\0", b" ").decode(errors="replace")
        if MARK_VARIABLE.encode() + b"=" + needle in (proc / "environ").read_bytes():
            return "environment: " + cmdline.replace(b"\0", b" ").decode(errors="replace")
        if needle.decode() in os.readlink(proc / "cwd"):
            return "working directory: " + cmdline.replace(b"\0", b" ").decode(errors="replace")
    return ""


def kill_marked(mark: str) -> dict[int, str]:
    """SIGKILL every process carrying *mark*; those found (so a test can fail on them)."""
    found = marked_processes(mark)
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    return found


def proc_status(text: str) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict (``Uid`` -> its first field: the real id)."""
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.split()[0] if value.split() else "" for key, value in fields}
