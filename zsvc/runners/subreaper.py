"""The daemon as a child subreaper: the children of the local runner that are no task.

With ``PR_SET_CHILD_SUBREAPER`` (prctl(2)), a process whose parent dies is
re-parented to the daemon instead of to init. The local runner needs that
twice:

* the zygote double-forks its tasks (:mod:`zsvc.runners.zygote`), so a forked
  task becomes the daemon's child, watched and reaped like an executed one;
* *without a cgroup* to find everything a task started, an orphan re-parented
  to the daemon whose environment carries the invocation id
  (:data:`~zsvc.hostwire.INVOCATION_ENV`) of a run that has ended is
  SIGKILLed, when that run ends or later when any child of the daemon dies.
  Limits: an orphan that was forked without exec from a zygote task has the
  zygote's environment and cannot be told from another; one that cleared its
  environment cannot either; and an orphan of a task re-adopted after a
  daemon restart is re-parented to init, not to the new daemon.

Tasks are reaped by their own pidfd handler (:class:`~zsvc.runners.localtask.LocalTask`,
with their exit status); on SIGCHLD only the other children are collected
here, by pid, so that no task's status is stolen.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Collection, Container

from zsvc.procs import children_of, descendants, environ_of, invocation_in
from zsvc.runners.zygote_client import Zygote

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
FINISHED_LIMIT = 1024
"""How many ended runs' invocation ids are kept to recognise their orphans (no cgroup)."""
ORPHAN_LOOKS = 10
ORPHAN_LOOK_DELAY = 0.02
"""A child whose environment cannot be read yet (inside execve) is looked at again after
this many seconds, ORPHAN_LOOKS times in all (0.2 s: an exec takes a few milliseconds)."""
REAP_AGAIN_DELAY = 0.05
"""How soon to look again for children to reap when a zygote fork was in flight."""


def become_subreaper() -> bool:
    """Make orphaned descendants of our tasks our children (prctl(2)); False if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


class Subreaper:
    """Reaps the daemon's children that are no task; kills the orphans of ended runs.

    *tasks* holds the pids of the tasks' main processes (the runner's books):
    those are never reaped here. :attr:`zygote` is the fork server, when there
    is one: a child too, whose death is noticed here.
    """

    def __init__(self, tasks: Container[int]):
        self.tasks = tasks
        self.zygote: Zygote | None = None
        self.active = False
        """The prctl succeeded and SIGCHLD is handled: orphans become our children."""
        self.hunt_orphans = False
        """Kill the orphans of ended runs on every SIGCHLD (when there is no cgroup)."""
        self.finished: dict[str, None] = {}
        """Invocation ids of runs that ended (bounded): whose orphans to kill (no cgroup)."""
        self._again_pending = False

    def start(self, hunt_orphans: bool) -> bool:
        """Become the subreaper and handle SIGCHLD; False when the kernel refused."""
        if not become_subreaper():
            return False
        self.active = True
        self.hunt_orphans = hunt_orphans
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self.reap_strays)
        return True

    def stop(self) -> None:
        """Stop handling SIGCHLD (the runner closes)."""
        if self.active:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    def run_ended(self, invocation: str) -> None:
        """Remember that this run ended: an orphan carrying its id is to be killed."""
        self.finished[invocation] = None
        while len(self.finished) > FINISHED_LIMIT:
            del self.finished[next(iter(self.finished))]

    def _reap_later(self) -> None:
        self._again_pending = False
        self.reap_strays()

    def reap_strays(self) -> None:
        """Reap children that are no task: orphans re-parented to us, a dead zygote.

        Without cgroups, a live orphan of a run that ended is killed too.
        """
        if self.zygote is not None and self.zygote.lock.locked():
            # A fork is in flight: its task may already be our child while we do not know
            # its pid yet. Reaping it here would lose its exit status; come back shortly,
            # once however many SIGCHLDs arrive meanwhile (a crash loop sends plenty).
            if not self._again_pending:
                self._again_pending = True
                asyncio.get_running_loop().call_later(REAP_AGAIN_DELAY, self._reap_later)
            return
        zygote = self.zygote.proc.pid if self.zygote is not None else None
        for pid in children_of("self"):
            if pid in self.tasks or pid == zygote:
                continue
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if (
            self.zygote is not None
            and not self.zygote.broken
            and self.zygote.proc.poll() is not None
        ):
            code = self.zygote.proc.returncode
            log.warning("the zygote exited (%s)", code)
            self.zygote.broken = True  # the client executes tasks until it started a new one
        if self.hunt_orphans:
            self.kill_orphans(self.finished)

    def kill_orphans(self, invocations: Collection[str], looks: int = ORPHAN_LOOKS) -> None:
        """SIGKILL (with their descendants) children of ours that are no task and whose
        environment names one of *invocations*: orphans of those runs (fallback without
        cgroups; only a subreaper has them as children).

        A child inside execve(2) shows an empty environment for a moment: it is
        looked at again, *looks* times in all, rather than let go for good.
        """
        if not self.active or not invocations:
            return
        zygote = self.zygote.proc.pid if self.zygote is not None else None
        unsettled = False
        for pid in children_of("self"):
            if pid in self.tasks or pid == zygote:
                continue
            environ = environ_of(pid)
            if environ == b"":
                unsettled = True
                continue
            if environ is not None and invocation_in(environ) in invocations:
                log.info("killing process %d, left behind by an ended task", pid)
                for victim in (pid, *descendants(pid)):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(victim, signal.SIGKILL)
        if unsettled and looks > 1:
            asyncio.get_running_loop().call_later(
                ORPHAN_LOOK_DELAY, self.kill_orphans, invocations, looks - 1
            )
