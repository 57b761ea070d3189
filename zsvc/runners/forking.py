"""A ``forking`` task's main process, found once its starter exited 0 (local runner).

systemd's ``Type=forking``: the first process is only the starter; the program
proper is what it leaves running. Its pid is read from the task's PID file
(``PIDFile=``, waited for up to the start timeout: a daemon often writes it
just after the starter's exit), or, without one, is the one process left in the
task (``GuessMainPID=``): the only one of its processes whose parent is not
itself one of them. Either way the pid must be a process of the task (its cgroup,
or, without cgroups, a child of the daemon, a subreaper, that carries the run's
invocation id): a PID file cannot make zsvc follow, and later kill, somebody
else's process.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable

from zsvc.procs import children_of, invocation_of

PID_FILE_POLL = 0.02
"""Seconds between two looks for a PID file not written yet (bounded by the deadline)."""


class NoMainProcess(Exception):
    """Why a forking task's main process cannot be known; the message says it.

    *timed_out*: systemd's result is then ``timeout`` (it waits for a PID file until
    the start timeout), else ``protocol`` (a PID file it cannot use)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


PID = re.compile(r"[0-9]{1,10}")
"""A process id as a PID file writes it: ASCII digits only (``str.isdigit`` takes "²")."""


def parse_pid(text: str) -> int:
    """The pid in a PID file's text (one positive decimal number, whitespace around it)."""
    word = text.strip()
    if not PID.fullmatch(word) or int(word) <= 1:
        raise NoMainProcess(f"it holds {word[:40]!r}, not a process id")
    return int(word)


def orphans_of(invocation: str | None) -> set[int]:
    """The daemon's children (it is a subreaper) executed for the run *invocation*."""
    if not invocation:
        return set()
    return {pid for pid in children_of("self") if invocation_of(pid) == invocation}


def top_level(members: set[int], parent: Callable[[int], int | None]) -> list[int]:
    """The processes of *members* whose parent is not one of them (pure, given *parent*)."""
    return sorted(pid for pid in members if parent(pid) not in members)


def group_of(pid: int) -> int | None:
    """The process group of *pid*, None when it is gone."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def parent_of(pid: int) -> int | None:
    """The parent pid of *pid*, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


async def read_pid_file(
    path: str, deadline: float, members: Callable[[], set[int]], quiet: bool = False
) -> int:
    """The pid in the PID file *path* that is one of *members* (the task's processes).

    Waited for until *deadline* (loop time): the daemon itself often writes the file
    after the starter's exit, and may be caught with the file empty, or still holding
    a stale pid of an earlier run. At the deadline the last reason is raised: timeout
    when the file never was there, protocol when it holds no pid of the task.

    *quiet* (a task run as another user, whose owner may be a group ``zsvc`` member):
    the root daemon reads a path they chose, so the reasons never quote what is in it.
    """
    loop = asyncio.get_running_loop()
    why = NoMainProcess(f"no PID file {path} by the start timeout", timed_out=True)
    while True:
        try:
            with open(path, "rb") as handle:
                pid = parse_pid(handle.read(64).decode("ascii", "replace"))
            if pid in members():
                return pid
            named = "a process" if quiet else str(pid)
            why = NoMainProcess(f"{path} names {named}, not a process of the task")
        except FileNotFoundError:
            pass
        except NoMainProcess as exc:
            said = "it holds no process id" if quiet else str(exc)
            why = NoMainProcess(f"the PID file {path}: {said}")
        except OSError as exc:
            why = NoMainProcess(f"the PID file {path} cannot be read: {exc.strerror}")
        if loop.time() >= deadline:
            raise why
        await asyncio.sleep(PID_FILE_POLL)  # no event for a file yet to come: a bounded look


def guess_main(members: set[int]) -> int:
    """The one process left in the task, without a PID file (``GuessMainPID=``)."""
    roots = top_level(members, parent_of)
    if not roots:
        raise NoMainProcess(
            "the starter exited 0 and left no process"
            ' (a program that stays in the foreground: use type="exec")'
        )
    if len(roots) > 1:
        raise NoMainProcess(
            f"{len(roots)} processes left ({', '.join(map(str, roots))}) and no pid_file"
            " to tell the main one"
        )
    return roots[0]
