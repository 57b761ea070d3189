"""A fork server for Python tasks: start a task host without paying for an interpreter.

Starting ``python -m zsvc.task`` costs about 50 ms of CPU, most of it
interpreter start-up and imports (pyzmq alone is ~25 ms). On two cores that
caps a transaction's start at about forty tasks a second. The zygote is one
process that imported the task host once; for each task it forks, and the
child runs the host directly — what remains per task is the fork, the
user's own module and the bus handshake.

Layering: this is the one module on the runners' side that imports the task
host's implementation (:mod:`zsvc.task.host`), and it does so only inside
:func:`main` and :func:`_become_task`, which run in the zygote process and in
the tasks it forks, never in the daemon. That is not a daemon-to-task-host
dependency but this process's job: the zygote *is* a task host waiting to
become a task, exactly as ``python -m zsvc.task`` is. The daemon only starts
it (``python -m zsvc.runners.zygote``) and sends it plain JSON; what the task
is told travels in its environment (``$ZSVC_TASK``, :mod:`zsvc.hostwire`). At
module level this file imports only what a child needs before it becomes the
task (its cgroup, exit codes), so importing it never loads the task side
(``tests/unit/test_imports.py`` checks that).

How a forked task becomes the daemon's child: the daemon is a child
subreaper (``PR_SET_CHILD_SUBREAPER``) and the zygote double-forks. The
intermediate process forks the task and exits at once, so the task is
re-parented to the daemon, which then watches and reaps it exactly like a
task it executed itself (pidfd + waitid, with the real exit status). The
zygote answers with the pid only after it reaped the intermediate, so the
re-parenting has happened when the daemon first looks, and after the task
joined its cgroup and made its own process group, so that a stop that
follows at once reaches it.

The zygote runs with the soft open-files limit its tasks must get (the
one the daemon was started with, given as its second argument; see
:mod:`zsvc.runners.local`): it sets it on itself before anything else, and
every task it forks inherits it, at no cost per task.

Protocol on a SOCK_SEQPACKET socketpair, one JSON object per packet:
request ``{"env": {...}, "cwd": "...", "log": "...", "marker": "...", "cgroup": "...",
"settings": {...}}``,
reply ``{"pid": N}`` or ``{"error": "..."}``. The zygote exits when the
daemon's end closes. A packet is at most the socket's send buffer less 32 bytes (212,960
bytes by default): the client refuses a larger request before sending it, and
the loader caps what makes a request large, a task's configuration
(:data:`zsvc.hostwire.MAX_CONFIGURATION_BYTES`). A zygote that dies or stops
answering is replaced by the client, with a backoff
(:mod:`zsvc.runners.zygote_client`).

With ``settings`` (:class:`zsvc.runners.procsettings.Resolved`, as JSON; absent:
none), the task takes on its umask, limits, nice level, private /tmp, groups and
user (in that order, systemd's) after the change to ``cwd`` and before the task
host imports the user's module; a step that fails ends the child with systemd's
status for it (EXIT_USER, …), its reason in the task's log.

With ``cgroup`` (a directory of a cgroup2 hierarchy, or null), the task's
first act is to join that group, before it runs any task code: everything
it starts later, however it forks, stays there for the daemon to find and
kill (:mod:`zsvc.runners.cgroup`). With ``WATCHDOG_USEC`` in ``env``, the task
sets ``WATCHDOG_PID`` to its own pid, as systemd does for a main process.

Before it answers, the zygote writes the task's pid to the ``marker`` file:
if the daemon dies before it saved that pid, its successor still finds
the task (a forked task's ``/proc/<pid>/environ`` is the zygote's, so the
invocation id in its environment cannot be searched for as it can for an
executed task).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import sys
from typing import Any

from zsvc.runners.cgroup import join
from zsvc.runners.exitcodes import EXIT_CGROUP, EXIT_CHDIR
from zsvc.runners.procsettings import Resolved, SetupFailed, apply

MAX_PACKET = 1 << 20
"""Receive buffer: above any packet the socket can carry (no request is truncated)."""


def serve(sock: socket.socket) -> None:
    """Answer fork requests until the daemon closes its end."""
    while True:
        try:
            packet = sock.recv(MAX_PACKET)
        except InterruptedError:
            continue
        if not packet:
            return
        try:
            request = json.loads(packet)
            reply: dict[str, Any] = {"pid": spawn(request, sock)}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sock.send(json.dumps(reply).encode())


def spawn(request: dict[str, Any], sock: socket.socket) -> int:
    """Double-fork a task host; return its pid once it belongs to the daemon."""
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        intermediate = os.fork()
        if intermediate == 0:  # the intermediate: fork the task, tell its pid, leave
            os.close(read_end)
            task = os.fork()
            if task == 0:
                _become_task(request, log_fd, sock, write_end)
            os.write(write_end, str(task).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            text = pipe.read()
        os.waitpid(intermediate, 0)
    finally:
        os.close(log_fd)
    if not text:
        raise OSError("the intermediate process died before forking the task")
    pid = int(text)
    if marker := request.get("marker"):
        with open(marker, "w") as handle:
            handle.write(f"{pid}\n")
    return pid


def _become_task(request: dict[str, Any], log_fd: int, sock: socket.socket, started: int) -> None:
    """In the task: look exactly like ``python -m zsvc.task`` started by the local runner.

    *started* is the write end of the pipe the zygote reads to its end: it is
    closed only once the task is in its cgroup and its own process group, so
    when the daemon learns the pid, a signal to either reaches the task.
    """
    code = 1
    try:
        if cgroup := request.get("cgroup"):
            try:
                join(cgroup)
            except OSError as exc:
                os.write(log_fd, f"zsvc: cannot join the cgroup {cgroup}: {exc}\n".encode())
                os._exit(EXIT_CGROUP)
        os.setpgid(0, 0)
        os.close(started)
        sock.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.close(null)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(request["env"])
        if "WATCHDOG_USEC" in os.environ:
            os.environ["WATCHDOG_PID"] = str(os.getpid())
        if settings := request.get("settings"):
            try:
                apply(Resolved.from_wire(settings))
            except SetupFailed as exc:
                os.write(2, f"zsvc: {exc}\n".encode())
                os._exit(exc.code)
        # As the task's user (after apply), as systemd: see localexec.CHDIR_AS_USER.
        try:
            os.chdir(request["cwd"])
        except OSError as exc:
            os.write(2, f"zsvc: cannot change to {request['cwd']}: {exc}\n".encode())
            os._exit(EXIT_CHDIR)
        sys.argv = [sys.executable, "-m", "zsvc.task"]
        from zsvc.task.host import main

        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a forked child must never return into the zygote
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def set_fd_limit(soft: int) -> None:
    """Set this process's soft open-files limit to *soft* (the hard one is kept)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def main() -> int:
    """``python -m zsvc.runners.zygote FD [FD_LIMIT]``: serve the socket inherited as FD,
    under the soft open-files limit FD_LIMIT when given (what the tasks get)."""
    if len(sys.argv) > 2:
        set_fd_limit(int(sys.argv[2]))
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon to handle
    # Import the task host now: this is what every forked task saves.
    import zsvc.task.host  # noqa: F401

    serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
