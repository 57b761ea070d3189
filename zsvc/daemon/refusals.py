"""Refused requests, logged with who asked for what (issue 15).

The daemon's log always has the line (``refused: bob (uid 1002) asked to stop transaction
web-1, which belongs to alice``). Under systemd, where that log is the journal, the line
is written through journald's native protocol instead, with fields an administrator can
query: ``journalctl ZSVC_REFUSED=1``, ``ZSVC_UID=1002``, ``ZSVC_TRANSACTION=web-1``. Only
then: a line written both ways would show twice in ``journalctl -u zsvc``.
"""

from __future__ import annotations

import logging
import os

from zsvc import journal
from zsvc.daemon.access import Principal, describe

log = logging.getLogger("zsvc.daemon")


def stderr_is_journal() -> bool:
    """Whether our stderr is a journal stream (systemd's ``JOURNAL_STREAM=dev:ino``
    names it, and a redirected stderr no longer matches)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdecimal() and ino.isdecimal()):
        return False
    try:
        info = os.fstat(2)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == (int(dev), int(ino))


def fields_of(principal: Principal, command: str, transaction: str | None) -> dict[str, str]:
    """The journal fields of a refusal: who (user, uid, key) asked for which command."""
    fields = {"ZSVC_REFUSED": "1", "ZSVC_COMMAND": command, "ZSVC_PRINCIPAL": principal.name}
    if principal.uid is not None:
        fields["ZSVC_UID"] = str(principal.uid)
    if principal.key is not None:
        fields["ZSVC_KEY"] = principal.key
    if transaction:
        fields["ZSVC_TRANSACTION"] = transaction
    return fields


def log_refusal(
    principal: Principal,
    command: str,
    what: str,
    transaction: str | None = None,
    journal_path: str = journal.JOURNAL_SOCKET,
) -> None:
    """Log that *principal* was refused *command*; *what* ends the line (``to stop
    transaction T, which belongs to alice``)."""
    message = f"refused: {describe(principal)} asked {what}"
    if stderr_is_journal():
        fields = fields_of(principal, command, transaction)
        if journal.send(message, journal.WARNING, path=journal_path, **fields):
            return
    log.warning("%s", message)
