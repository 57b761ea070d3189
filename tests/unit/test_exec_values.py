"""Properties of the execution settings' value parsers and of the environment-file parser.

Rendered values read back as themselves; arbitrary text either parses or raises the
one documented error (never anything else); an accepted value is always in range.
"""

from __future__ import annotations

import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.config.envfile import EnvFileError, parse_environment_file
from zsvc.config.execvalues import (
    MAX_BYTES,
    MAX_ID,
    MAX_NOFILE,
    ValueProblem,
    parse_cpu_quota,
    parse_id,
    parse_limit_nofile,
    parse_memory_max,
    parse_nice,
    parse_signal,
    parse_tasks_max,
    parse_umask,
)

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True).filter(
    lambda name: (
        not name.startswith("ZSVC_")
        and name not in {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
        and not name.startswith("LISTEN_")
    )
)
VALUES = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))
PARSERS = [
    lambda text: parse_id(text, "user"),
    lambda text: parse_id(text, "group"),
    parse_umask,
    parse_nice,
    parse_limit_nofile,
    parse_memory_max,
    parse_cpu_quota,
    parse_tasks_max,
    parse_signal,
]


# --------------------------------------------------------------------------- values


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(PARSERS))), st.text(max_size=40))
def test_property_any_text_parses_or_is_a_value_problem(index: int, text: str) -> None:
    try:
        PARSERS[index](text)
    except ValueProblem as problem:
        assert str(problem).startswith("is ")


@given(st.integers(0, MAX_ID))
def test_property_ids_round_trip(number: int) -> None:
    assert parse_id(str(number), "user") == str(number)
    assert parse_id(f"00{number}", "group") == str(number)


@given(st.integers(MAX_ID + 1, 10**30))
def test_property_ids_above_the_range_are_refused(number: int) -> None:
    with pytest.raises(ValueProblem):
        parse_id(str(number), "user")


@given(st.integers(0, 0o777), st.integers(1, 4))
def test_property_umask_round_trips(mask: int, width: int) -> None:
    text = format(mask, "o").zfill(width)
    assert parse_umask(text) == mask


@given(st.integers(0o1000, 0o7777))
def test_property_umask_above_0777_is_refused(mask: int) -> None:
    with pytest.raises(ValueProblem):
        parse_umask(format(mask, "o"))


@given(st.integers(-1000, 1000))
def test_property_nice_is_in_range_or_refused(level: int) -> None:
    if -20 <= level <= 19:
        assert parse_nice(str(level)) == level
    else:
        with pytest.raises(ValueProblem):
            parse_nice(str(level))


@given(st.integers(-10, MAX_NOFILE + 10))
def test_property_limit_nofile_is_in_range_or_refused(limit: int) -> None:
    if 1 <= limit <= MAX_NOFILE:
        assert parse_limit_nofile(str(limit)) == limit
    else:
        with pytest.raises(ValueProblem):
            parse_limit_nofile(str(limit))


@given(st.integers(0, 2**45), st.sampled_from(["", "K", "M", "G", "T", "k", "m", "g", "t"]))
def test_property_sizes_are_1024_based(number: int, suffix: str) -> None:
    size = number * 1024 ** ("KMGT".find(suffix.upper()) + 1 if suffix else 0)
    if 1 <= size <= MAX_BYTES:
        assert parse_memory_max(f"{number}{suffix}") == size
    else:
        with pytest.raises(ValueProblem):
            parse_memory_max(f"{number}{suffix}")


@given(st.decimals(min_value="0.01", max_value="100000", places=2))
def test_property_cpu_quota_reads_percentages(percent: object) -> None:
    assert parse_cpu_quota(f"{percent}%") == pytest.approx(float(str(percent)))


@given(st.sampled_from(sorted(signal.valid_signals())))
def test_property_every_real_signal_by_number_and_name(number: int) -> None:
    assert parse_signal(str(int(number))) == number
    try:
        name = signal.Signals(number).name
    except ValueError:  # a real-time signal without a name of its own
        return
    assert parse_signal(name) == number
    assert parse_signal(name.removeprefix("SIG").lower()) == number


# --------------------------------------------------------------------------- env files


def render(pairs: list[tuple[str, str]]) -> str:
    """An environment file that sets *pairs*: each value double-quoted, escaped as systemd reads."""
    lines = ["# rendered", ""]
    for name, value in pairs:
        escaped = "".join("\\" + c if c in '"\\`$' else c for c in value)
        lines.append(f'{name}="{escaped}"')
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=8))
def test_property_environment_files_round_trip(pairs: list[tuple[str, str]]) -> None:
    assert parse_environment_file(render(pairs), "/e") == pairs


def escaped(value: str) -> str:
    return "".join("\\" + char for char in value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES.map(lambda v: v.replace("\n", "").strip())), max_size=8))
def test_property_unquoted_values_round_trip_with_backslashes(
    pairs: list[tuple[str, str]],
) -> None:
    """Unquoted, each character escaped with a backslash reads back as itself (a backslash
    before a newline joins lines instead, and the ends are stripped: none in the values)."""
    text = "".join(f"{name}={escaped(value)}\n" for name, value in pairs)
    assert parse_environment_file(text, "/e") == pairs


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("AB_=#; \t\n\"'\\$x0\x00é"), max_size=60))
def test_property_any_text_parses_or_names_its_line(text: str) -> None:
    try:
        pairs = parse_environment_file(text, "/etc/app")
    except EnvFileError as exc:
        assert 1 <= exc.line <= text.count("\n") + 1
        assert str(exc).startswith(f"/etc/app:{exc.line}: ")
    else:
        assert all("\x00" not in value for _, value in pairs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\n", [("A", "1")]),
        ("  A = spaced out  \n", [("A", "spaced out")]),
        ("# c\n; c\n\n   # c\nA=1", [("A", "1")]),
        ("A=x # y\n", [("A", "x # y")]),
        ("A='a $B \\n'\n", [("A", "a $B \\n")]),
        ('A="a \\$B \\n \\"q\\""\n', [("A", 'a $B \\n "q"')]),
        ('A="multi\nline"\nB=2\n', [("A", "multi\nline"), ("B", "2")]),
        ("A=con\\\ntinued\n", [("A", "continued")]),
        ('A="con\\\ntinued"\n', [("A", "continued")]),
        ("A=1\nA=2\n", [("A", "1"), ("A", "2")]),
        ("A=\n", [("A", "")]),
        ("A=it's\n", [("A", "it's")]),
        ("A=1\r\nB=2\r\n", [("A", "1"), ("B", "2")]),
    ],
)
def test_environment_file_rules(text: str, expected: list[tuple[str, str]]) -> None:
    assert parse_environment_file(text, "/e") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "A=1\nexport B=2\n",
            "/e:2: 'export' is shell syntax, which systemd does not read; expected NAME=value",
        ),
        ("\n\nJUSTTEXT\n", "/e:3: 'JUSTTEXT' is no assignment; expected NAME=value"),
        ("A B=1", "/e:1: 'A B' is not a variable name; expected [A-Za-z_][A-Za-z0-9_]*"),
        (
            'A=1\nB="x" y\n',
            "/e:2: 'y' after the closing \"; expected the end of the line (quote the whole value)",
        ),
        ("A=1\nB='open\n\n", "/e:2: the value's ' is never closed"),
        ("A=\x00", "/e:1: a NUL character; an environment holds none"),
        (
            "ZSVC_INVOCATION=x",
            "/e:1: 'ZSVC_INVOCATION' is set by zsvc; expected a name that "
            "does not start with ZSVC_ and is none of LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID, "
            "NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC",
        ),
    ],
)
def test_environment_file_errors(text: str, expected: str) -> None:
    with pytest.raises(EnvFileError) as info:
        parse_environment_file(text, "/e")
    assert str(info.value) == expected
