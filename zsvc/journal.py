"""journald, both ways: the daemon's own events in, and ``zsvc logs`` out.

Under the systemd runner a task's output goes to the journal with
``ZSVC_TRANSACTION``, ``ZSVC_TASK`` and ``ZSVC_SERVICE`` on every line
(``LogExtraFields=``), so ``journalctl ZSVC_TRANSACTION=<id>`` is the way to
read a transaction. The daemon writes its events about a task (ready,
ended) with the same fields through journald's native protocol
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/), so they show up in the same
query; and ``zsvc logs`` is a thin ``journalctl`` call.

No dependency on python3-systemd: the native protocol is one datagram.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "zsvc"
INFO, WARNING = 6, 4


def encode_entry(fields: Mapping[str, str]) -> bytes:
    """One journal entry in the native protocol: ``KEY=value\\n``, or the binary form for a
    value with a newline (``KEY\\n`` + 64-bit little-endian length + value + ``\\n``)."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode()
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def send(message: str, priority: int = INFO, path: str = JOURNAL_SOCKET, **fields: str) -> bool:
    """Write one entry; False (nothing raised) when there is no journal to write to.

    A lost event line must never disturb the daemon: the transaction table is
    the record, the journal is for reading.
    """
    entry = {"MESSAGE": message, "PRIORITY": str(priority), "SYSLOG_IDENTIFIER": IDENTIFIER}
    entry.update(fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(encode_entry(entry), path)
    except OSError:
        return False
    return True


def journal_argv(
    transaction: str,
    tasks: Iterable[str] = (),
    lines: int = 20,
    follow: bool = False,
    user: bool = False,
) -> list[str]:
    """The ``journalctl`` command line of ``zsvc logs``.

    Several ``ZSVC_TASK=`` matches are OR-ed by journalctl, and AND-ed with
    ``ZSVC_TRANSACTION=``; ``-n`` counts lines of the whole selection.
    """
    argv = ["journalctl", "--no-pager", "-o", "short-precise", "-n", str(max(0, lines))]
    if user:
        argv.append("--user")
    if follow:
        argv.append("--follow")
    argv.append(f"ZSVC_TRANSACTION={transaction}")
    argv += [f"ZSVC_TASK={task}" for task in dict.fromkeys(tasks)]
    return argv
