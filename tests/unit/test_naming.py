"""zsvc.naming: systemd escaping, unit and slice names."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.naming import (
    PART_MAX,
    UNIT_NAME_MAX,
    instance_id,
    instance_slice,
    slice_name,
    systemd_escape,
    unit_name,
    unit_prefix,
)
from zsvc.paths import StateLayout
from zsvc.states import ID_PATTERN

SYSTEMD_ESCAPE = "/usr/bin/systemd-escape"

# Each row checked against the real `systemd-escape -- <input>` (systemd 252).
ESCAPES = [
    ("a-b", r"a\x2db"),
    ("a.b", "a.b"),
    ("über", r"\xc3\xbcber"),
    ("x y", r"x\x20y"),
    ("a/b", "a-b"),
    (".hid", r"\x2ehid"),
    ("A_b:c", "A_b:c"),
    ("-lead", r"\x2dlead"),
    ("", ""),
    ("a//b", "a--b"),
    (".", r"\x2e"),
    ("..x", r"\x2e.x"),
    ("a.", "a."),
    ("ts_100", "ts_100"),
]


@pytest.mark.parametrize(("value", "escaped"), ESCAPES)
def test_systemd_escape_table(value: str, escaped: str) -> None:
    """systemd_escape() matches systemd-escape on a table of known cases."""
    assert systemd_escape(value) == escaped


INST = "0123abcd"
"""An instance, as instance_id() makes them."""


def test_unit_and_slice_names() -> None:
    """Units are zsvc-<instance>-<transaction>-<task>.service in
    zsvc-<instance>-<transaction>.slice (under zsvc-<instance>.slice), escaped."""
    assert unit_name("T1", "ts_100", INST) == "zsvc-0123abcd-T1-ts_100.service"
    assert slice_name("T1", INST) == "zsvc-0123abcd-T1.slice"
    assert unit_name("a-b", "ts-1", INST) == r"zsvc-0123abcd-a\x2db-ts\x2d1.service"
    assert slice_name("a-b", INST) == r"zsvc-0123abcd-a\x2db.slice"
    assert instance_slice(INST) == "zsvc-0123abcd.slice"
    assert slice_name("T1", INST).startswith(instance_slice(INST).removesuffix(".slice") + "-")


def test_dashed_transaction_is_not_nested_under_another() -> None:
    """Transaction a-b's slice is not a child of a's (systemd nests slices at dashes)."""
    parent = slice_name("a", INST).removesuffix(".slice")
    assert not slice_name("a-b", INST).startswith(parent + "-")


def test_the_instance_is_the_state_dirs_own(tmp_path: Path) -> None:
    """Stable for one state dir (however it is spelled), different for another: two
    daemons on one machine never share a unit or cgroup name."""
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    (tmp_path / "link").symlink_to(first)
    assert instance_id(first) == instance_id(str(first)) == instance_id(tmp_path / "link")
    assert instance_id(first) == instance_id(tmp_path / "two" / ".." / "one")
    assert instance_id(first) != instance_id(second)
    assert re.fullmatch(r"[0-9a-f]{8}", instance_id(first))
    assert StateLayout(first).instance == instance_id(first)
    mine, theirs = instance_id(first), instance_id(second)
    assert unit_name("SAME", "t0", mine) != unit_name("SAME", "t0", theirs)
    assert not unit_name("SAME", "t0", theirs).startswith(unit_prefix("SAME", mine))


def test_no_prefix_of_one_instance_matches_another_instances_names() -> None:
    """A transaction whose id looks like an instance is still no other instance: the
    instance is always the second dash-separated part, and escaped ids hold no dash."""
    other = "fedc9876"
    assert not unit_name("x", "t", other).startswith(unit_prefix(other, INST))
    assert not unit_name(other, "t", INST).startswith(unit_prefix("t", other)[:-1])


@settings(max_examples=100)
@given(st.from_regex(ID_PATTERN, fullmatch=True), st.from_regex(ID_PATTERN, fullmatch=True))
def test_every_name_fits_systemds_limit_and_rules(transaction: str, task: str) -> None:
    """Whatever the ids (64 dashes escape to 256 characters), a name is a valid unit name
    of at most 255 characters, with room for the local runner's suffix, and the ids stay
    apart: the transaction's prefix still starts its tasks' names."""
    name = unit_name(transaction, task, INST)
    assert len(name) + 13 <= UNIT_NAME_MAX
    assert re.fullmatch(r"[A-Za-z0-9:_.\\-]+\.service", name)
    assert name.startswith(unit_prefix(transaction, INST))
    assert len(slice_name(transaction, INST)) <= UNIT_NAME_MAX
    assert name.count("-") == 3


def test_long_ids_stay_distinct() -> None:
    """Two ids cut to fit differ by the hash of the whole: names do not collide."""
    one, two = "-" * 64, "-" * 63 + "a"
    assert unit_name("T", one, INST) != unit_name("T", two, INST)
    assert unit_name(one, "t", INST) != unit_name(two, "t", INST)
    assert "\\x2" not in unit_name("T", one, INST).replace("\\x2d", "")  # no cut escape


ids = st.from_regex(ID_PATTERN, fullmatch=True)


@settings(max_examples=100)
@given(ids, ids)
def test_escaped_ids_have_no_dash_so_names_are_unambiguous(transaction: str, task: str) -> None:
    """For any valid ids the escaped parts hold no '-', so the unit name splits back uniquely."""
    escaped_transaction, escaped_task = systemd_escape(transaction), systemd_escape(task)
    assert "-" not in escaped_transaction and "-" not in escaped_task
    if len(escaped_transaction) > PART_MAX or len(escaped_task) > PART_MAX:
        return  # cut to fit: test_every_name_fits_systemds_limit_and_rules
    name = unit_name(transaction, task, INST)
    parts = name.removesuffix(".service").split("-")
    assert parts == ["zsvc", INST, escaped_transaction, escaped_task]
    assert slice_name(transaction, INST) == f"zsvc-{INST}-{escaped_transaction}.slice"


# Characters with a special meaning to escaping, mixed with arbitrary ones.
tricky = st.sampled_from("-./\\ _:aZ9ü\n\t") | st.characters()


def _fits_in_argv(value: str) -> bool:
    """True for text that can be passed as an argument: UTF-8 encodable, no NUL."""
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return "\x00" not in value


def _escape_with_systemd(value: str) -> str:
    done = subprocess.run(
        [SYSTEMD_ESCAPE, "--", value], capture_output=True, check=True, timeout=10
    )
    return done.stdout.decode().removesuffix("\n")


@pytest.mark.skipif(not os.access(SYSTEMD_ESCAPE, os.X_OK), reason="no systemd-escape")
@settings(max_examples=50, deadline=None)
@given(st.text(tricky, max_size=20).filter(_fits_in_argv))
def test_systemd_escape_agrees_with_systemd(value: str) -> None:
    """systemd_escape() gives what the real systemd-escape gives, for arbitrary text."""
    assert systemd_escape(value) == _escape_with_systemd(value)
