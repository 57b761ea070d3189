"""Files a task names, read with its transaction's owner's rights, not the daemon's.

A root daemon reads a task's ``<environment_file>`` itself (as systemd reads
``EnvironmentFile=``) and hands the variables to a task that runs as the owner
(:mod:`zsvc.daemon.identity`). Read as root, a member's context could name
``/etc/shadow`` or another user's secrets and get them in its task's environment, or in
the refusal that quotes a line of it. So for a non-root owner the file is read by a
short-lived child that has the owner's uid, gid and groups: the kernel decides, ACLs,
symlinks and directory permissions included, at the moment of the read (checking modes
first, then reading as root, would leave a window to swap the file).
"""

from __future__ import annotations

import errno
import functools
import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

from zsvc.daemon.access import Principal

READ_TIMEOUT = 10.0
"""The longest a read may take (a file on a hung network mount)."""
CAT = "/bin/cat"
"""The reader: coreutils' (any interpreter of the daemon's may be out of the owner's reach)."""
_ERRNO_OF = {os.strerror(code): code for code in errno.errorcode}
"""cat's words (glibc's strerror, in the C locale the child gets) back to their errno."""

Reader = Callable[[Path], bytes]
"""Reads a whole file; raises :class:`OSError` (FileNotFoundError …) as ``open`` does."""


def reader_for(owner: Principal) -> Reader:
    """How the daemon reads the files of *owner*'s tasks: itself for root, else as them."""
    if owner.is_root or owner.uid is None or os.geteuid() != 0:
        return Path.read_bytes  # a user's daemon already has only its user's rights
    return functools.partial(read_as, owner.uid, owner.gid)


def read_as(uid: int, gid: int | None, path: Path) -> bytes:
    """*path*'s bytes as user *uid* (primary group *gid*, and the user's groups) reads them;
    the :class:`OSError` that user's ``open`` would raise otherwise."""
    try:
        groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid if gid is not None else uid)
    except KeyError:
        groups = []
    try:
        done = subprocess.run(
            [CAT, "--", os.fspath(path)],
            user=uid,
            group=gid if gid is not None else uid,
            extra_groups=groups,
            capture_output=True,
            timeout=READ_TIMEOUT,
            cwd="/",
            env={"LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"no answer within {READ_TIMEOUT:g} s") from None
    if done.returncode == 0:
        return done.stdout
    said = done.stderr.decode(errors="replace").strip()
    code = _ERRNO_OF.get(said.rpartition(": ")[2])
    if code is not None:
        raise OSError(code, os.strerror(code), os.fspath(path))
    raise OSError(f"reading it as uid {uid}: {said or f'exit {done.returncode}'}")
