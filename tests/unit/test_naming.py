"""zsvc.naming: systemd escaping, unit and slice names."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.naming import slice_name, systemd_escape, unit_name
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


def test_unit_and_slice_names() -> None:
    """Units are zsvc-<transaction>-<task>.service in zsvc-<transaction>.slice, escaped."""
    assert unit_name("T1", "ts_100") == "zsvc-T1-ts_100.service"
    assert slice_name("T1") == "zsvc-T1.slice"
    assert unit_name("a-b", "ts-1") == r"zsvc-a\x2db-ts\x2d1.service"
    assert slice_name("a-b") == r"zsvc-a\x2db.slice"


def test_dashed_transaction_is_not_nested_under_another() -> None:
    """Transaction a-b's slice is not a child of a's (systemd nests slices at dashes)."""
    parent = slice_name("a").removesuffix(".slice")
    assert not slice_name("a-b").startswith(parent + "-")


ids = st.from_regex(ID_PATTERN, fullmatch=True)


@settings(max_examples=100)
@given(ids, ids)
def test_escaped_ids_have_no_dash_so_names_are_unambiguous(transaction: str, task: str) -> None:
    """For any valid ids the escaped parts hold no '-', so the unit name splits back uniquely."""
    escaped_transaction, escaped_task = systemd_escape(transaction), systemd_escape(task)
    assert "-" not in escaped_transaction and "-" not in escaped_task
    name = unit_name(transaction, task)
    assert name.removesuffix(".service").split("-") == ["zsvc", escaped_transaction, escaped_task]
    assert slice_name(transaction) == f"zsvc-{escaped_transaction}.slice"


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
