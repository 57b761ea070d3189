"""Throwaway Unix users for the tests that need another user, removed on every path.

A user is removed by :func:`remove_user` when its test ends, whatever the outcome: its
processes are killed first (``userdel`` refuses a user that still runs something, and a
member's tasks may outlive its test until the daemon's own teardown), ``/etc/passwd``'s
lock is waited for (another ``useradd`` may hold it), and a removal that still fails is an
error, not a silent leak. Every user made here is also noted, and the session's end
(:func:`remove_leftovers`, from ``tests/conftest.py``) removes any one a crashed test left.
"""

from __future__ import annotations

import contextlib
import pwd
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence

import psutil

PREFIX = "zt"
"""Every throwaway user's name starts so (and is at most 32 characters)."""
DEADLINE = 30.0

_made: set[str] = set()
"""The users this test process made and has not removed yet."""


def add_user(
    name: str | None = None, groups: Sequence[str] = (), system: bool = False
) -> pwd.struct_passwd:
    """A new user with a group of its own (and *groups*); *name* defaults to a random one."""
    name = name or f"{PREFIX}{uuid.uuid4().hex[:12]}"
    argv = ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"]
    argv += ["--system"] if system else []
    argv += ["--groups", ",".join(groups)] if groups else []
    _locked_retry([*argv, name], f"cannot add the user {name}")
    _made.add(name)
    return pwd.getpwnam(name)


def remove_user(name: str) -> None:
    """Kill every process of *name*, then delete it (and its own group); an error if it
    cannot be deleted within the deadline. Quiet when it is gone already."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        _made.discard(name)
        return
    deadline = time.monotonic() + DEADLINE
    while True:
        _kill_all(uid)  # again at each try: a task restarted meanwhile runs as the user too
        done = subprocess.run(["userdel", name], capture_output=True, text=True, timeout=DEADLINE)
        if done.returncode == 0 or "does not exist" in done.stderr:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot remove the throwaway user {name}: {done.stderr.strip()}")
        time.sleep(0.05)  # its processes are dying, or another command holds the passwd lock
    _made.discard(name)


@contextlib.contextmanager
def throwaway_user(groups: Sequence[str] = (), system: bool = False) -> Iterator[pwd.struct_passwd]:
    """:func:`add_user`, removed at the end of the block whatever happens in it."""
    user = add_user(groups=groups, system=system)
    try:
        yield user
    finally:
        remove_user(user.pw_name)


def remove_leftovers() -> list[str]:
    """Remove the users this process made and did not remove (a test that crashed between
    the two); returns their names."""
    left = [name for name in sorted(_made) if _exists(name)]
    for name in left:
        remove_user(name)
    _made.clear()
    return left


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _kill_all(uid: int) -> None:
    """SIGKILL every process whose real or effective uid is *uid*."""
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids and uid in (uids.real, uids.effective):
            with contextlib.suppress(psutil.Error):
                process.kill()


def _locked_retry(argv: list[str], what: str) -> None:
    """Run a shadow-utils command, again while another one holds the passwd lock."""
    deadline = time.monotonic() + DEADLINE
    while True:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE)
        if done.returncode == 0:
            return
        if "lock" not in done.stderr or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {' '.join(argv)}: {done.stderr.strip()}")
        time.sleep(0.1)  # a back-off while the lock is held (bounded above)
