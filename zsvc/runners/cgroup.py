"""One cgroup2 group per task run: the local runner's way to leave no process behind.

A process group is not enough to find everything a task started: a child
that calls ``setsid`` leaves it, and a grandchild whose parent exits is
re-parented away from the task's tree. A cgroup is inherited by every
descendant and cannot be left without privileges, so when the runner can
write a cgroup2 hierarchy (as root; see :func:`find_hierarchy`), each run of a
task gets ``<hierarchy>/zsvc.slice/zsvc-<instance>.slice/<unit name>`` and the
task's first process joins it before it runs any task code. The instance
(:func:`zsvc.naming.instance_id`, a hash of the state dir) keeps each daemon
in its own directory: the sweep, adoption and the kill of what a run left
behind look there only, so two daemons with the same transaction and task
ids never touch each other's groups. Then:

* every process of the task, however it forked, is listed in ``cgroup.procs``;
* ``cgroup.kill`` (Linux 5.14) SIGKILLs all of them at once, forks in flight
  included; on an older kernel each listed pid is SIGKILLed, again until the
  group is empty;
* ``populated 0`` in ``cgroup.events`` says the last one is gone, and the
  empty directory is removed. A group left empty by a run whose daemon died
  is removed at the next start of that unit, or by :meth:`CgroupTree.sweep`
  once it is a minute old.

Only the cgroup2 core files are used, unless a task has a limit
(``memory_max``, ``cpu_quota``, ``tasks_max``): then its controller is enabled in
``cgroup.subtree_control`` of each level from the hierarchy's root down to the
instance's directory (:meth:`CgroupTree.enable`; a controller reaches a group only
through its parent), and the limit is written in the run's group before the task
joins it (:meth:`Cgroup.set_limits`). Those levels hold no process, only task
groups, so the "no internal processes" rule is kept. Standard library only: the
zygote imports it.

Limits: the groups are made directly under the hierarchy's root, outside of
what systemd manages on a pure cgroup2 host (a daemon run by systemd with
``Delegate=yes`` could use its own subtree instead; not done). A group made
by a version without instances (directly in ``zsvc.slice``) is still
followed when the daemon's own table names it (re-adoption after an
upgrade), and never swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from zsvc.naming import instance_slice, unit_prefix

log = logging.getLogger(__name__)

CGROUP2_SUPER_MAGIC = 0x63677270
CANDIDATES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
"""Where a cgroup2 hierarchy is mounted: the hybrid layout first, then the unified one."""
SLICE = "zsvc.slice"
STALE_AGE = 60.0
"""An empty group older than this (seconds) is a leftover that :meth:`CgroupTree.sweep` removes."""


def _statfs_type(path: Path) -> int | None:
    """The filesystem magic of *path* (statfs(2) ``f_type``), None when it cannot be read."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit
        if libc.statfs(os.fsencode(path), buffer) != 0:
            return None
    except (OSError, AttributeError):
        return None
    # f_type is the first member, a (signed) word.
    return ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF


def is_cgroup2(path: Path) -> bool:
    """Whether *path* is a directory of a cgroup2 hierarchy."""
    if not (path / "cgroup.controllers").is_file():  # cgroup1 and tmpfs have none
        return False
    magic = _statfs_type(path)
    return magic is None or magic == CGROUP2_SUPER_MAGIC


def find_hierarchy(
    candidates: Iterable[Path] = CANDIDATES, *, instance: str = ""
) -> CgroupTree | None:
    """The first writable cgroup2 hierarchy, with zsvc's slice (and *instance*'s directory
    in it) made; None if none is. Without *instance*, the tree is the whole slice: for
    checks from outside a daemon, never for a runner (its sweep would be everybody's).

    Writable means: we may create a directory there and move processes (write
    its ``cgroup.procs``), which in practice means root.
    """
    for root in candidates:
        if not is_cgroup2(root):
            continue
        if not (os.access(root, os.W_OK) and os.access(root / "cgroup.procs", os.W_OK)):
            log.debug("cgroup2 at %s is not writable", root)
            continue
        top = root / SLICE
        slice_path = top / instance_slice(instance) if instance else top
        try:
            slice_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.debug("cannot make %s: %s", slice_path, exc)
            continue
        if not (slice_path / "cgroup.procs").is_file():
            continue
        return CgroupTree(root, slice_path, top)
    return None


def cgroup_of(pid: int | str) -> str | None:
    """The cgroup2 path of *pid* as the kernel shows it (``/zsvc.slice/…``), None if unknown."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            for line in handle:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def members_of(relative: str, candidates: Iterable[Path] = CANDIDATES) -> list[int]:
    """The processes of the cgroup2 group *relative* (as :func:`cgroup_of` spells it).

    Readable by anyone, writable or not: the monitor uses it for units that
    systemd made, whose group is exactly the task's processes.
    """
    for root in candidates:
        try:
            with open(root / relative.lstrip("/") / "cgroup.procs") as handle:
                return [int(pid) for pid in handle.read().split()]
        except OSError:
            continue
    return []


def task_groups(
    transactions: Iterable[str],
    instance: str,
    id_prefixes: bool = False,
    candidates: Iterable[Path] = CANDIDATES,
) -> dict[str, list[int]]:
    """The local runner's groups of *transactions*' tasks in daemon *instance*'s directory
    that exist, with their processes (another daemon's tasks of the same ids are not its).

    With *id_prefixes*, of every transaction whose id starts with one of them.
    For checks from outside the daemon (tests, benchmarks: nothing left
    behind); empty when no writable cgroup2 hierarchy holds zsvc's slice.
    """
    cut = -1 if id_prefixes else None  # unit_prefix ends with the '-' before the task id
    prefixes = tuple(unit_prefix(transaction, instance)[:cut] for transaction in transactions)
    found: dict[str, list[int]] = {}
    for root in candidates:
        slice_dir = root / SLICE / instance_slice(instance)
        if not slice_dir.is_dir():
            continue
        for group in slice_dir.iterdir():
            if group.name.startswith(prefixes):
                with contextlib.suppress(OSError):  # removed meanwhile
                    procs = (group / "cgroup.procs").read_text().split()
                    found[str(group)] = [int(pid) for pid in procs]
    return found


def _legacy_group(name: str) -> bool:
    """Whether *name* is a task's group as a version without instances named it
    (``zsvc-<tx>-<task>.service``, maybe with a suffix), not an instance's directory."""
    return name.startswith("zsvc-") and ".service" in name and not name.endswith(".slice")


def join(path: str | os.PathLike[str], pid: int = 0) -> None:
    """Move *pid* (0: the caller) into the cgroup at *path*; OSError when refused."""
    with open(os.path.join(path, "cgroup.procs"), "w") as handle:
        handle.write(str(pid or os.getpid()))


class CgroupTree:
    """zsvc's slice in a writable cgroup2 hierarchy: where task groups are made."""

    def __init__(self, root: Path, slice_path: Path, top: Path | None = None):
        self.root = root
        self.slice = slice_path
        """This daemon instance's directory: where its groups are made, swept, found."""
        self.top = top if top is not None else slice_path
        """``zsvc.slice``: where a version without instances made its groups."""
        self._slice_relative = "/" + str(slice_path.relative_to(root))
        """The slice as /proc/<pid>/cgroup spells it, the prefix of every group's."""

    def __repr__(self) -> str:
        return f"CgroupTree({str(self.slice)!r})"

    def create(
        self, name: str, alternative: str, limits: Mapping[str, str] | None = None
    ) -> Cgroup:
        """A new, empty group *name*; *alternative* when *name* is still in use (OSError if
        neither can be made). A stale empty group of an earlier run is removed first.

        With *limits* (``{"memory.max": "268435456"}``), their controllers are enabled
        (:meth:`enable`; the file's prefix is the controller's name) and the values
        written in the new group: OSError, and no group, when one is refused."""
        if limits:
            self.enable({file.partition(".")[0] for file in limits})
        group = self._make(name, alternative)
        if limits:
            try:
                group.set_limits(limits)
            except OSError:
                group.remove()
                raise
        return group

    def _make(self, name: str, alternative: str) -> Cgroup:
        path = self.slice / name
        try:
            try:
                path.mkdir()
            except FileNotFoundError:  # the instance's directory was removed meanwhile
                self.slice.mkdir(parents=True, exist_ok=True)
                path.mkdir()
        except FileExistsError:
            try:
                path.rmdir()  # left over by an earlier run: empty, else EBUSY
                path.mkdir()
            except OSError as exc:
                log.warning(
                    "cgroup %s is still in use (%s): using %s", path, exc.strerror, alternative
                )
                path = self.slice / alternative
                path.mkdir()
        return Cgroup(path, self, relative=f"{self._slice_relative}/{path.name}")

    def controllers(self) -> frozenset[str]:
        """The controllers the hierarchy offers (its root's ``cgroup.controllers``): on a
        hybrid host, those not bound to cgroup1 (often none that limits anything)."""
        try:
            return frozenset((self.root / "cgroup.controllers").read_text().split())
        except OSError:
            return frozenset()

    def enable(self, controllers: Iterable[str]) -> None:
        """Make *controllers* available in the groups made here: enabled in the
        ``cgroup.subtree_control`` of the root, ``zsvc.slice`` and the instance's
        directory, where not yet. OSError when the kernel refuses."""
        wanted = set(controllers)
        levels = [self.root]
        for part in self.slice.relative_to(self.root).parts:
            levels.append(levels[-1] / part)
        for level in levels:
            control = level / "cgroup.subtree_control"
            missing = wanted - set(control.read_text().split())
            if missing:
                control.write_text(" ".join(f"+{name}" for name in sorted(missing)))

    def sweep(self, min_age: float = STALE_AGE) -> list[Path]:
        """Remove empty groups made more than *min_age* seconds ago: left by runs whose
        processes were killed by someone else, or whose daemon died. A group is empty only
        for an instant after it is made, so a young empty group is never touched. Only this
        instance's directory is looked at, and a ``.slice`` in it (another instance's
        directory, when the tree is the whole slice) is never a task's group."""
        removed = []
        now = time.time()
        try:
            entries = list(os.scandir(self.slice))
        except OSError:
            return removed
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.name.endswith(".slice") or not entry.is_dir(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                    continue
                group = Cgroup(Path(entry.path), self)
                if not group.populated():
                    os.rmdir(entry.path)  # EBUSY if it was populated meanwhile
                    removed.append(group.path)
        return removed

    def relative(self, path: Path) -> str | None:
        """*path* as /proc/<pid>/cgroup spells it, None when it is not one of our groups:
        in this instance's directory, or a group of a version without instances (in
        ``zsvc.slice`` itself, named for a unit), which only the daemon's own table or
        its own task's pid can name (re-adoption after an upgrade)."""
        try:
            inside = path.relative_to(self.slice)
        except ValueError:
            inside = None
        if inside is None or not inside.parts:
            if not (path.parent == self.top and _legacy_group(path.name)):
                return None
        elif ".." in inside.parts:
            return None
        return "/" + str(path.relative_to(self.root))

    def of_pid(self, pid: int) -> Cgroup | None:
        """The task group *pid* is in, when it is one of ours."""
        relative = cgroup_of(pid)
        if not relative:
            return None
        return self.at(self.root / relative.lstrip("/"))

    def at(self, path: str | os.PathLike[str]) -> Cgroup | None:
        """The existing group at *path* (from a task's description), None if not ours or gone."""
        path = Path(path)
        if self.relative(path) is None or not (path / "cgroup.procs").is_file():
            return None
        return Cgroup(path, self)


class Cgroup:
    """One task run's group."""

    def __init__(self, path: Path, tree: CgroupTree | None = None, relative: str | None = None):
        self.path = path
        self.tree = tree
        if relative is None and tree is not None:
            relative = tree.relative(path)
        self.relative = relative
        """The group as /proc/<pid>/cgroup spells it (looked up per event); *relative*, when
        the maker of the group knows it, saves the path arithmetic at every task start."""
        self._events = os.path.join(path, "cgroup.events")
        """Read at every end of a run (:meth:`populated`): joined once."""

    def __repr__(self) -> str:
        return f"Cgroup({str(self.path)!r})"

    def set_limits(self, limits: Mapping[str, str]) -> None:
        """Write each of *limits* (``memory.max``: ``"268435456"``, …) in the group, before
        any process joins it; OSError when one is refused (its controller not enabled)."""
        for name, value in limits.items():
            with open(self.path / name, "w") as handle:
                handle.write(value)

    def procs(self) -> list[int]:
        """Every process in the group (empty when the group is gone)."""
        try:
            with open(self.path / "cgroup.procs") as handle:
                return [int(pid) for pid in handle.read().split()]
        except OSError:
            return []

    def populated(self) -> bool:
        """Whether any process is left (``populated`` in ``cgroup.events``); False once gone."""
        try:
            with open(self._events) as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "populated":
                        return value.strip() != "0"
        except FileNotFoundError:
            return False
        except OSError:
            return bool(self.procs())
        return bool(self.procs())

    def signal(self, signum: int) -> None:
        """Send *signum* to every process in the group."""
        for pid in self.procs():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def kill(self) -> None:
        """SIGKILL everything in the group: ``cgroup.kill``, or each pid on older kernels."""
        try:
            with open(self.path / "cgroup.kill", "w") as handle:
                handle.write("1")
            return
        except FileNotFoundError:
            if not self.path.is_dir():
                return
        except OSError as exc:
            log.debug("cgroup.kill of %s failed: %s", self.path, exc)
        self.signal(signal.SIGKILL)

    async def wait_empty(self, timeout: float) -> bool:
        """Wait (bounded) until the group is empty; True if it is. Killed processes that
        forked meanwhile (no cgroup.kill) are killed again on each look."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.001
        has_kill = (self.path / "cgroup.kill").exists()
        while self.populated():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if not has_kill:
                self.signal(signal.SIGKILL)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
        return True

    def remove(self) -> bool:
        """Remove the (empty) group; True when it is gone."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            level = logging.WARNING if exc.errno != errno.EBUSY else logging.INFO
            log.log(level, "cannot remove cgroup %s: %s", self.path, exc.strerror)
            return False
        return True
