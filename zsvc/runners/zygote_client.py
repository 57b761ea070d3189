"""The daemon's end of the fork server: asks :mod:`zsvc.runners.zygote` for a task host.

The server side (what the zygote is, why it double-forks, the protocol on
its socket) is documented in :mod:`zsvc.runners.zygote`; this is the client
the local runner holds. Beside the server, not inside it: that module is the
zygote process's program (``python -m zsvc.runners.zygote``), this one lives in
the daemon and speaks asyncio; what they share, the protocol, is written once,
there.

The client heals the fork server. A zygote that dies (noticed by the
subreaper on SIGCHLD, which sets :attr:`Zygote.broken`) or whose socket fails
or falls silent during a fork is replaced by a new process after a delay that
doubles with each failure in a row (:class:`Backoff`: 0.1 s up to 30 s, back to
0.1 s after a fork succeeds), so a zygote that cannot start costs a process
start every 30 s at worst, not a busy loop. While there is none, the local
runner executes Python tasks as it does without a zygote. A request too large
for the socket is refused *before* it is sent: it says nothing about the
zygote, which keeps serving (once, a 3 MB configuration broke the socket and,
never replaced, turned every later Python start into an exec until the daemon
restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
import subprocess
import sys
from typing import Any

log = logging.getLogger(__name__)

REPLY_BYTES = 65536
"""The largest reply read (one is a pid or an error message: a few hundred bytes)."""
PACKET_OVERHEAD = 32
"""Linux takes a unix SOCK_SEQPACKET/SOCK_DGRAM packet of at most SO_SNDBUF minus this
(``unix_dgram_sendmsg``: EMSGSIZE above; measured: 212,960 with a 212,992 buffer)."""
SPAWN_TIMEOUT = 30.0
"""How long a fork may take before the zygote counts as hung and is replaced (a fork
takes milliseconds; this only bounds the wait on a stopped or wedged process)."""
CLOSE_TIMEOUT = 5.0
"""How long a zygote gets to exit, then again to be reaped once killed."""


class Backoff:
    """Delays between restarts of something that keeps failing: *first*, doubled per
    failure in a row, at most *limit*; :meth:`reset` after a success.

    Pure (no clock, no I/O) so that the policy is tested on its own.
    """

    def __init__(self, first: float = 0.1, limit: float = 30.0) -> None:
        if not 0 < first <= limit:
            raise ValueError(f"need 0 < first <= limit, got {first} and {limit}")
        self.first = first
        self.limit = limit
        self._next = first

    def next(self) -> float:
        """The delay before the next attempt; the one after it is twice as long."""
        delay = self._next
        self._next = min(self._next * 2, self.limit)
        return delay

    def reset(self) -> None:
        """It worked: the next failure waits *first* again."""
        self._next = self.first


class Zygote:
    """The daemon's end of the fork server (:mod:`zsvc.runners.zygote`), restarted when it
    dies or breaks (see the module's docstring).

    With *fd_limit*, the zygote sets its soft open-files limit to it first
    thing, so every task it forks has that limit (see
    :func:`zsvc.runners.localexec.wrap_exec`).
    """

    def __init__(self, fd_limit: int | None = None, backoff: Backoff | None = None) -> None:
        self.fd_limit = fd_limit
        self.backoff = backoff or Backoff()
        self.lock = asyncio.Lock()
        """Held while a fork is in flight (one request at a time on the socket)."""
        self.restarts = 0
        """How many times the zygote was replaced."""
        self._broken = False
        self._restart: asyncio.TimerHandle | None = None
        self._closed = False
        self.sock, self.proc = self._start_process()

    def _start_process(self) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        """Start a zygote on a new socketpair; our end, non-blocking, and the process."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "zsvc.runners.zygote", str(theirs.fileno())]
        if self.fd_limit is not None:
            argv.append(str(self.fd_limit))
        try:
            proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return ours, proc

    @property
    def max_request(self) -> int:
        """The largest request the socket takes in one packet (SO_SNDBUF less the kernel's
        overhead): a larger one is refused before it is sent."""
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - PACKET_OVERHEAD

    @property
    def broken(self) -> bool:
        """No zygote to ask now: tasks are executed until a new one has started."""
        return self._broken

    @broken.setter
    def broken(self, value: bool) -> None:
        # The subreaper sets this when it reaped the zygote.
        if value:
            self._break("it exited")

    def _break(self, why: str) -> None:
        """Give up on this zygote (killed and reaped if still there); schedule a new one."""
        if self._broken or self._closed:
            return
        self._broken = True
        self._end_process()
        delay = self.backoff.next()
        log.warning("the zygote broke (%s): a new one in %.1f s; tasks are executed", why, delay)
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): nothing can be scheduled
            return
        self._restart = loop.call_later(delay, self._replace)

    def _replace(self) -> None:
        """Start the new zygote (the timer's callback); on failure, try again later."""
        self._restart = None
        if self._closed:
            return
        try:
            self.sock, self.proc = self._start_process()
        except OSError as exc:
            delay = self.backoff.next()
            log.warning("cannot start a new zygote (%s): trying again in %.1f s", exc, delay)
            self._schedule(delay)
            return
        self.restarts += 1
        self._broken = False
        log.info("started a new zygote, pid %d (restart %d)", self.proc.pid, self.restarts)

    def _end_process(self) -> None:
        """Close our end and make sure the process is gone and reaped (bounded waits)."""
        self.sock.close()
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(CLOSE_TIMEOUT)

    async def spawn(
        self,
        env: dict[str, str],
        cwd: str,
        log_path: str,
        marker: str | None,
        cgroup: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> int:
        """Fork a task host; OSError when the zygote refused or the request is too large
        for it (the zygote is fine), ConnectionError when it is gone (it is replaced).
        *settings*: what the child applies to itself first
        (:meth:`zsvc.runners.procsettings.Resolved.to_wire`)."""
        request = {"env": env, "cwd": cwd, "log": log_path, "marker": marker, "cgroup": cgroup}
        if settings is not None:
            request["settings"] = settings
        packet = json.dumps(request).encode()
        loop = asyncio.get_running_loop()
        async with self.lock:
            if self._broken:
                raise ConnectionError("the zygote is gone")
            if len(packet) > self.max_request:
                raise OSError(
                    errno.EMSGSIZE,
                    f"the task's request to the zygote is {len(packet)} bytes, more than its"
                    f" socket takes ({self.max_request}): the task's environment is too large",
                )
            try:
                await loop.sock_sendall(self.sock, packet)
                packet = await asyncio.wait_for(
                    loop.sock_recv(self.sock, REPLY_BYTES), SPAWN_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                why = str(exc) or f"no answer within {SPAWN_TIMEOUT:g} s"
                self._break(why)
                raise ConnectionError(f"the zygote is gone: {why}") from exc
            if not packet:
                self._break("its socket closed")
                raise ConnectionError("the zygote is gone")
        reply = json.loads(packet)
        if "error" in reply:
            raise OSError(reply["error"])
        self.backoff.reset()
        return int(reply["pid"])

    def close(self) -> None:
        """Close our end (the zygote exits when it sees that) and reap it; no restart."""
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        self.sock.close()
        try:
            self.proc.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(CLOSE_TIMEOUT)
