"""A task whose set-up leaves a double-forked grandchild behind, in a session of its own.

The grandchild writes its pid to ``pidfile`` (atomically) before set-up
returns, so a test knows whom to look for. With ``execs`` it executes
``sleep`` (and carries the task's environment); without, it stays a plain
fork of the task host that keeps the host's SIGTERM handler, so only
SIGKILL ends it — the hardest kind of orphan to find and to kill.
"""

from __future__ import annotations

import os
import signal
import time

from zsvc import Task


class ServiceOrphaner(Task):
    def setup(
        self, pidfile: str = "", execs: bool = False, period_s: float = 3600.0, **config: object
    ) -> None:
        self.interval = period_s
        read_fd, write_fd = os.pipe()
        intermediate = os.fork()
        if intermediate == 0:
            try:
                os.close(read_fd)
                os.setsid()
                if os.fork() == 0:
                    _grandchild(pidfile, write_fd, bool(execs))
            finally:
                os._exit(0)
        os.close(write_fd)
        os.read(read_fd, 1)  # EOF: the grandchild wrote its pid and closed its end
        os.close(read_fd)
        os.waitpid(intermediate, 0)

    def step(self) -> None:
        pass


def _grandchild(pidfile: str, write_fd: int, execs: bool) -> None:
    try:
        signal.set_wakeup_fd(-1)  # the host's wake-up pipe is the task's, not ours
        with open(f"{pidfile}.tmp", "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(f"{pidfile}.tmp", pidfile)
        os.close(write_fd)
        os.closerange(3, 4096)  # the bus sockets and the rest belong to the task host
        if execs:
            os.execvp("sleep", ["sleep", "3600"])
        while True:
            time.sleep(3600)
    finally:
        os._exit(1)
