"""A task with known resource use, for the monitor's tests.

It holds ``memory_mb`` MiB (touched, so resident), keeps ``files`` regular
files and ``sockets`` TCP sockets open (one listening socket, the rest
connected to it), runs ``threads`` extra threads that sleep, forks
``children`` child processes that sleep, and, with ``spin`` true, one thread
that keeps a core busy. It forks first, so that its children hold none of
the rest. It reports what it made in its STATUS= line.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading

from zsvc import Task

MIB = 1 << 20


class ServiceHog(Task):
    interval = 3600.0

    def setup(
        self,
        memory_mb: int = 0,
        files: int = 0,
        sockets: int = 0,
        threads: int = 0,
        children: int = 0,
        spin: bool = False,
        **config: object,
    ) -> None:
        self.children: list[int] = []
        for _ in range(children):
            pid = os.fork()
            if pid == 0:  # the child: sleep until killed (it dies with the task's group)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                while True:
                    signal.pause()
            self.children.append(pid)
        self.stop_event = threading.Event()
        self.ballast = bytearray(memory_mb * MIB)
        for offset in range(0, len(self.ballast), 4096):
            self.ballast[offset] = 1  # touch every page: resident, not just reserved
        self.tmp = tempfile.TemporaryDirectory(prefix="zsvc-hog-")
        self.files = [open(os.path.join(self.tmp.name, f"f{i}"), "w") for i in range(files)]  # noqa: SIM115
        self.sockets: list[socket.socket] = []
        if sockets:
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen(sockets)
            self.sockets.append(server)
            for _ in range(sockets - 1):
                self.sockets.append(socket.create_connection(server.getsockname()))
        self.threads = [
            threading.Thread(target=self.stop_event.wait, daemon=True) for _ in range(threads)
        ]
        if spin:
            self.threads.append(threading.Thread(target=self._spin, daemon=True))
        for thread in self.threads:
            thread.start()
        self.set_status(
            f"memory_mb={memory_mb} files={files} sockets={sockets} threads={threads}"
            f" children={children} spin={spin}"
        )

    def _spin(self) -> None:
        while not self.stop_event.is_set():
            sum(range(10_000))

    def teardown(self) -> None:
        self.stop_event.set()
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for handle in self.files:
            handle.close()
        for sock in self.sockets:
            sock.close()
        self.tmp.cleanup()
