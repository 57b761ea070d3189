"""The daemon's end of the fork server: asks :mod:`zsvc.runners.zygote` for a task host.

The server side (what the zygote is, why it double-forks, the protocol on
its socket) is documented in :mod:`zsvc.runners.zygote`; this is the client
the local runner holds. Beside the server, not inside it: that module is the
zygote process's program (``python -m zsvc.runners.zygote``), this one lives in
the daemon and speaks asyncio; what they share, the protocol, is written once,
there.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys


class Zygote:
    """The daemon's end of the fork server (:mod:`zsvc.runners.zygote`).

    With *fd_limit*, the zygote sets its soft open-files limit to it first
    thing, so every task it forks has that limit (see
    :func:`zsvc.runners.localexec.wrap_exec`).
    """

    def __init__(self, fd_limit: int | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        argv = [sys.executable, "-m", "zsvc.runners.zygote", str(theirs.fileno())]
        if fd_limit is not None:
            argv.append(str(fd_limit))
        self.proc = subprocess.Popen(
            argv,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock.setblocking(False)
        self.lock = asyncio.Lock()
        """Held while a fork is in flight (one request at a time on the socket)."""
        self.broken = False
        """The zygote is gone or its socket failed: tasks are executed instead."""

    async def spawn(
        self,
        env: dict[str, str],
        cwd: str,
        log_path: str,
        marker: str | None,
        cgroup: str | None = None,
    ) -> int:
        """Fork a task host; OSError when the zygote refused, ConnectionError when it is gone."""
        request = json.dumps(
            {"env": env, "cwd": cwd, "log": log_path, "marker": marker, "cgroup": cgroup}
        ).encode()
        loop = asyncio.get_running_loop()
        async with self.lock:
            try:
                await loop.sock_sendall(self.sock, request)
                packet = await loop.sock_recv(self.sock, 65536)
            except OSError as exc:
                self.broken = True
                raise ConnectionError(f"the zygote is gone: {exc}") from exc
        if not packet:
            self.broken = True
            raise ConnectionError("the zygote is gone")
        reply = json.loads(packet)
        if "error" in reply:
            raise OSError(reply["error"])
        return int(reply["pid"])

    def close(self) -> None:
        """Close our end (the zygote exits when it sees that) and reap it."""
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
