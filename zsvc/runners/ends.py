"""Honest words for how a start or a run ended (issue 14), shared by both runners; pure.

An operator reading ``zsvc status`` or a failed ``zsvc start`` must learn *why*
zsvc ended a task or refused its start, not only how its process died: "exited
with status 0 (timeout)" hid that the program never sent READY=1; "success" hid
that a daemon which forked itself into the background was SIGKILLed as a leftover.
Each function here turns what the runner saw into an :class:`ExitInfo` whose
``detail`` says it, and is unit-tested without processes.
"""

from __future__ import annotations

import dataclasses

from zsvc.runners.base import ExitInfo, LaunchSpec
from zsvc.states import Result, StartType

READY_AT_EXEC = frozenset({StartType.SIMPLE, StartType.EXEC})
"""Start types that are ready once executed (after ``start_secs``, when set)."""


def start_timeout_detail(spec: LaunchSpec, limit: float) -> str:
    """Why a start timed out, by what the task was waiting for (its type)."""
    if spec.start_type is StartType.FORKING:
        return f"the starting process did not exit within {limit:g} s (type forking)"
    return f"no READY=1 within {limit:g} s"


def with_reason(info: ExitInfo, reason: str) -> ExitInfo:
    """*info* with zsvc's *reason* for ending it, before whatever it already said."""
    if not reason:
        return info
    detail = f"{reason}; {info.detail}" if info.detail else reason
    return dataclasses.replace(info, detail=detail)


def before_start_secs(info: ExitInfo, ran: float, start_secs: float) -> ExitInfo:
    """A run that ended before it had run *start_secs* (supervisord's ``startsecs``): a
    failed start whatever its status, since the program did not stay up. An exit 0
    becomes ``protocol`` (as a notifying task that exits before READY=1)."""
    reason = f"exited after {ran:.3f} s, before start_secs={start_secs:g} s"
    if info.result is Result.SUCCESS:
        info = dataclasses.replace(info, result=Result.PROTOCOL)
    return with_reason(info, reason)


def leftover_detail(count: int | None, forking: bool = False) -> str:
    """What killing the processes a main process left behind says (KillMode=control-group):
    often a program that forked itself into the background, run as type exec. *count*
    None: there were some (systemd had to kill them), how many is not known."""
    noun = "process" if count == 1 else "processes"
    said = f"main process exited; {count or 'its'} leftover {noun} killed"
    return said if forking else f'{said} — is this a forking program? use <command type="forking">'


def forking_failure(why: str, timed_out: bool = False) -> ExitInfo:
    """A forking task whose starter exited 0 but whose main process cannot be known:
    systemd's result ``protocol`` (a PID file that is invalid or names a process that
    is not the task's), or ``timeout`` (no PID file by the start timeout)."""
    result = Result.TIMEOUT if timed_out else Result.PROTOCOL
    return ExitInfo(result, exit_code=0, detail=f"type forking: {why}")
