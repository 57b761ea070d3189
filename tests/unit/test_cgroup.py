"""The cgroup2 helpers, against the machine's real hierarchy when it is writable (root)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from zsvc.runners.cgroup import (
    Cgroup,
    CgroupTree,
    cgroup_of,
    find_hierarchy,
    is_cgroup2,
    join,
)

TREE = find_hierarchy()
needs_cgroup2 = pytest.mark.skipif(
    TREE is None,
    reason="no writable cgroup2 hierarchy (needs root and /sys/fs/cgroup/unified"
    " or /sys/fs/cgroup mounted as cgroup2)",
)


def test_a_plain_directory_is_no_cgroup2_hierarchy(tmp_path: Path) -> None:
    assert not is_cgroup2(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("")  # the file alone does not make one
    assert not is_cgroup2(tmp_path)
    assert find_hierarchy([tmp_path, tmp_path / "missing"]) is None
    assert not (tmp_path / "zsvc.slice").exists()


def test_cgroup_of_reads_the_unified_line() -> None:
    mine = cgroup_of("self")
    if "0::" not in Path("/proc/self/cgroup").read_text():
        assert mine is None
    else:
        assert mine is not None and mine.startswith("/")
    assert cgroup_of(2**22 + 12345) is None  # beyond pid_max: no such process


def test_relative_paths_are_confined_to_the_slice(tmp_path: Path) -> None:
    tree = CgroupTree(tmp_path, tmp_path / "zsvc.slice")
    assert tree.relative(tmp_path / "zsvc.slice" / "u.service") == "/zsvc.slice/u.service"
    assert tree.relative(tmp_path / "zsvc.slice") is None
    assert tree.relative(tmp_path / "other") is None
    assert tree.relative(tmp_path / "zsvc.slice" / ".." / "x") is None
    assert tree.at(tmp_path / "zsvc.slice" / "u.service") is None  # not a cgroup (no procs)


@pytest.fixture
def group() -> Iterator[tuple[CgroupTree, Cgroup]]:
    assert TREE is not None
    made = TREE.create(f"zsvc-test-{uuid.uuid4().hex[:10]}.service", "unused")
    try:
        yield TREE, made
    finally:
        made.kill()
        asyncio.run(made.wait_empty(5.0))
        made.remove()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


@needs_cgroup2
def test_find_hierarchy_makes_the_slice() -> None:
    assert TREE is not None
    assert is_cgroup2(TREE.root)
    assert TREE.slice.name == "zsvc.slice"
    assert (TREE.slice / "cgroup.procs").is_file()


@needs_cgroup2
def test_a_group_tracks_joins_and_kills_every_process(group: tuple[CgroupTree, Cgroup]) -> None:
    tree, cgroup = group
    assert cgroup.procs() == [] and not cgroup.populated()
    assert tree.at(cgroup.path) is not None
    children = [_sleeper(), _sleeper()]
    try:
        for child in children:
            join(cgroup.path, child.pid)
        assert sorted(cgroup.procs()) == sorted(child.pid for child in children)
        assert cgroup.populated()
        assert cgroup_of(children[0].pid) == cgroup.relative
        found = tree.of_pid(children[0].pid)
        assert found is not None and found.path == cgroup.path
        assert tree.of_pid(os.getpid()) is None  # we are not in one of its groups
        assert not cgroup.remove()  # a populated group cannot be removed

        cgroup.kill()
        assert asyncio.run(cgroup.wait_empty(5.0))
        for child in children:
            assert child.wait(5) == -signal.SIGKILL
        assert cgroup.remove() and not cgroup.path.exists()
        assert cgroup.remove()  # already gone: fine
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait(5)


@needs_cgroup2
def test_signal_reaches_every_member(group: tuple[CgroupTree, Cgroup]) -> None:
    _, cgroup = group
    child = _sleeper()
    try:
        join(cgroup.path, child.pid)
        cgroup.signal(signal.SIGTERM)
        assert child.wait(5) == -signal.SIGTERM
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait(5)


@needs_cgroup2
def test_a_stale_empty_group_is_replaced_and_a_busy_one_is_not(
    group: tuple[CgroupTree, Cgroup],
) -> None:
    tree, cgroup = group
    name = cgroup.path.name
    again = tree.create(name, f"{name}-other")  # empty: removed and made anew
    assert again.path == cgroup.path
    child = _sleeper()
    other: Cgroup | None = None
    try:
        join(cgroup.path, child.pid)
        other = tree.create(name, f"{name}-other")  # in use: the alternative name
        assert other.path == cgroup.path.with_name(f"{name}-other")
        assert cgroup.procs() == [child.pid]  # the live group was left alone
    finally:
        child.kill()
        child.wait(5)
        asyncio.run(cgroup.wait_empty(5.0))
        if other is not None:
            other.remove()


@needs_cgroup2
def test_wait_empty_gives_up_at_its_deadline(group: tuple[CgroupTree, Cgroup]) -> None:
    _, cgroup = group
    child = _sleeper()
    try:
        join(cgroup.path, child.pid)
        assert asyncio.run(cgroup.wait_empty(0.05)) is False
    finally:
        child.kill()
        child.wait(5)


@needs_cgroup2
def test_sweep_removes_only_old_empty_groups(group: tuple[CgroupTree, Cgroup]) -> None:
    tree, private = group
    tree = CgroupTree(tree.root, private.path)  # a slice of our own: others' groups are safe
    idle = tree.create("idle.service", "unused")
    busy = tree.create("busy.service", "unused")
    child = _sleeper()
    try:
        join(busy.path, child.pid)
        assert tree.sweep() == []  # young: it may be about to be joined
        assert tree.sweep(min_age=0.0) == [idle.path]
        assert not idle.path.exists() and busy.path.exists()
    finally:
        child.kill()
        child.wait(5)
        asyncio.run(busy.wait_empty(5.0))
        busy.remove()
        idle.remove()


def test_task_groups_are_found_by_transaction_and_by_id_prefix(tmp_path) -> None:
    """The groups of a transaction's tasks, named as the units are (zsvc.naming), in the
    daemon instance's directory only: another instance's group of the same ids is not."""
    from zsvc.naming import instance_slice, unit_name
    from zsvc.runners.cgroup import SLICE, task_groups

    mine, other = "0123abcd", "fedc9876"
    slice_dir = tmp_path / SLICE / instance_slice(mine)
    rows = [("tx-1", "a", "12\n13\n", mine), ("tx-10", "a", "", mine), ("TX", "b", "", mine)]
    rows.append(("tx-1", "a", "14\n", other))
    for transaction, task, pids, instance in rows:
        group = tmp_path / SLICE / instance_slice(instance) / unit_name(transaction, task, instance)
        group.mkdir(parents=True)
        (group / "cgroup.procs").write_text(pids)
    assert task_groups(["tx-1"], mine, candidates=[tmp_path]) == {
        str(slice_dir / unit_name("tx-1", "a", mine)): [12, 13]
    }
    assert sorted(task_groups(["tx-1"], mine, id_prefixes=True, candidates=[tmp_path])) == sorted(
        str(slice_dir / unit_name(tx, "a", mine)) for tx in ("tx-1", "tx-10")
    )
    assert task_groups(["nothing"], mine, candidates=[tmp_path, tmp_path / "absent"]) == {}


def _fake_instance_tree(root: Path, instance: str) -> CgroupTree:
    """A CgroupTree over plain directories, as find_hierarchy makes it for *instance*."""
    from zsvc.naming import instance_slice
    from zsvc.runners.cgroup import SLICE

    top = root / SLICE
    (top / instance_slice(instance)).mkdir(parents=True, exist_ok=True)
    return CgroupTree(root, top / instance_slice(instance), top)


def test_a_daemon_finds_only_its_own_instance_groups_and_legacy_ones(tmp_path: Path) -> None:
    """Adoption (at, of_pid) accepts this instance's groups and a group named before
    instances existed (its own table names it after an upgrade), never another's."""
    mine = _fake_instance_tree(tmp_path, "0123abcd")
    other = _fake_instance_tree(tmp_path, "fedc9876")
    own = mine.slice / "zsvc-0123abcd-TX-t0.service"
    theirs = other.slice / "zsvc-fedc9876-TX-t0.service"
    legacy = mine.top / "zsvc-TX-t0.service"
    legacy_suffixed = mine.top / "zsvc-TX-t0.service-0a1b2c3d4e5f"
    assert mine.relative(own) == f"/zsvc.slice/zsvc-0123abcd.slice/{own.name}"
    assert mine.relative(theirs) is None
    assert mine.relative(other.slice) is None and mine.relative(mine.slice) is None
    assert mine.relative(legacy) == "/zsvc.slice/zsvc-TX-t0.service"
    assert mine.relative(legacy_suffixed) is not None
    assert other.relative(own) is None


def test_sweep_looks_only_at_its_own_instance(tmp_path: Path) -> None:
    """A stale empty group is swept by its own daemon only; no sweep touches an instance's
    directory or a group made before instances existed."""
    mine = _fake_instance_tree(tmp_path, "0123abcd")
    other = _fake_instance_tree(tmp_path, "fedc9876")
    groups = [mine.slice / "zsvc-0123abcd-T-a.service", other.slice / "zsvc-fedc9876-T-a.service"]
    groups.append(mine.top / "zsvc-T-a.service")
    for group in groups:
        group.mkdir()
        os.utime(group, (0, 0))  # made long ago, and empty (no cgroup.events: not populated)
    assert mine.sweep() == [groups[0]]
    whole = CgroupTree(tmp_path, mine.top)  # the whole slice, as outside a daemon
    assert whole.sweep() == [groups[2]]  # a legacy group; no instance's directory
    assert groups[1].is_dir() and mine.slice.is_dir() and other.slice.is_dir()
