"""zsvc.procs: what /proc says about a process, read from real processes."""

from __future__ import annotations

import os
import select
import subprocess
import sys

from zsvc.procs import environ_of, invocation_in, invocation_of
from zsvc.runners.base import INVOCATION_ENV

WAITER = "import sys; print('up', flush=True); sys.stdin.read()"
"""A child that says when it runs: Popen returns before execve has set up the environment."""
STARTUP_DEADLINE = 20.0


def started(env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], STARTUP_DEADLINE)[0]:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"the child said nothing within {STARTUP_DEADLINE} s")
    assert proc.stdout.readline() == b"up\n"
    return proc


def test_a_live_process_shows_the_invocation_it_was_executed_with() -> None:
    env = dict(os.environ, **{INVOCATION_ENV: "abc123"})
    with started(env) as proc:
        try:
            assert invocation_of(proc.pid) == "abc123"
        finally:
            proc.communicate(b"", timeout=10)


def test_a_process_without_an_invocation_has_none() -> None:
    env = {k: v for k, v in os.environ.items() if k != INVOCATION_ENV}
    with started(env) as proc:
        try:
            environ = environ_of(proc.pid)
            assert environ  # readable, and not empty
            assert invocation_in(environ) is None
        finally:
            proc.communicate(b"", timeout=10)


def test_a_zombie_and_a_gone_process_have_no_readable_environment() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pidfd = os.pidfd_open(pid)
    try:
        assert select.select([pidfd], [], [], 10)[0], "the child did not exit"
        assert environ_of(pid) is None  # exited, not reaped yet
    finally:
        os.close(pidfd)
        os.waitpid(pid, 0)
    assert environ_of(pid) is None


def test_an_empty_environment_reads_empty() -> None:
    """What the runner looks at again: it is also what a reader sees during an execve."""
    with started({}) as proc:
        try:
            assert environ_of(proc.pid) == b""
        finally:
            proc.communicate(b"", timeout=10)


def test_invocation_in_reads_only_the_exact_variable() -> None:
    environ = b"\0".join(
        [b"X=1", f"{INVOCATION_ENV}X=no".encode(), f"{INVOCATION_ENV}=yes".encode(), b""]
    )
    assert invocation_in(environ) == "yes"
    assert invocation_in(f"{INVOCATION_ENV}=".encode()) is None
    assert invocation_in(b"") is None
