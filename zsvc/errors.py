"""Errors with a stable code, shared by the daemon, the control protocol and the CLI.

A control reply carries ``error.code``; the CLI turns the code into its
documented exit status. The table lives here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """The CLI's documented exit statuses."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    UNREACHABLE = 3
    UNKNOWN = 4
    NOT_YOURS = 5
    """The daemon refused: the transaction is someone else's, or the command is root's
    (not the caller's by ownership nor by a grant in the daemon's ``[access]`` settings)."""


class ErrorCode(StrEnum):
    """``error.code`` in a control reply."""

    BAD_REQUEST = "bad-request"  # malformed request: not JSON, unknown command, bad argument
    INVALID_CONFIG = "invalid-config"  # a context file failed validation
    UNKNOWN_TRANSACTION = "unknown-transaction"
    UNKNOWN_TASK = "unknown-task"
    EXISTS = "exists"  # a transaction with that id already exists
    FAILED = "failed"  # the operation ran and failed (a task did not become ready, …)
    STORAGE = "storage"  # the state could not be persisted; nothing was changed
    INTERNAL = "internal"  # a bug in zsvc; the daemon logged a traceback
    NOT_YOURS = "not-yours"  # the caller may not do this: another owner's, or root's only


EXIT_CODE_FOR_ERROR: dict[ErrorCode, ExitCode] = {
    ErrorCode.BAD_REQUEST: ExitCode.BAD_INPUT,
    ErrorCode.INVALID_CONFIG: ExitCode.BAD_INPUT,
    ErrorCode.UNKNOWN_TRANSACTION: ExitCode.UNKNOWN,
    ErrorCode.UNKNOWN_TASK: ExitCode.UNKNOWN,
    ErrorCode.EXISTS: ExitCode.FAILED,
    ErrorCode.FAILED: ExitCode.FAILED,
    ErrorCode.STORAGE: ExitCode.FAILED,
    ErrorCode.INTERNAL: ExitCode.FAILED,
    ErrorCode.NOT_YOURS: ExitCode.NOT_YOURS,
}


class ZsvcError(Exception):
    """An error that can cross the control socket: a code and a message."""

    code: ErrorCode = ErrorCode.FAILED

    def __init__(self, message: str, *, code: ErrorCode | None = None, details: object = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = details

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODE_FOR_ERROR[self.code]

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"code": str(self.code), "message": self.message}
        if self.details is not None:
            wire["details"] = self.details
        return wire


class BadRequest(ZsvcError):
    code = ErrorCode.BAD_REQUEST


class UnknownTransaction(ZsvcError):
    code = ErrorCode.UNKNOWN_TRANSACTION


class UnknownTask(ZsvcError):
    code = ErrorCode.UNKNOWN_TASK


class OperationFailed(ZsvcError):
    code = ErrorCode.FAILED


class StorageError(ZsvcError):
    code = ErrorCode.STORAGE


class NotYours(ZsvcError):
    """Refused by the access rules (:mod:`zsvc.daemon.access`): exit 5."""

    code = ErrorCode.NOT_YOURS


class DaemonUnreachable(Exception):
    """The control socket did not answer; the CLI exits 3 with a hint."""

    hint = "hint: start the daemon with 'zsvc daemon --detach'"


class DaemonForbidden(DaemonUnreachable):
    """The daemon's sockets exist but this user may not use them (exit 3).

    Membership of group ``zsvc`` (or root) is the permission: the runtime
    control socket is ``0660 root:zsvc``, so anyone else gets EACCES on connect.
    """

    hint = "hint: members of group zsvc may control it (as root: adduser USER zsvc)"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, located to the character."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConfigError(ZsvcError):
    """A configuration file is invalid; ``issues`` lists every problem found."""

    code = ErrorCode.INVALID_CONFIG

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues), details=None)

    def to_wire(self) -> dict[str, object]:
        wire = super().to_wire()
        wire["details"] = [issue.__dict__ for issue in self.issues]
        return wire
