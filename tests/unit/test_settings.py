"""The daemon's settings file: what it accepts, and how it says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.daemon.settings import Settings, load, parse
from zsvc.errors import ConfigError

PACKAGED = Path(__file__).parents[2] / "packaging" / "zsvc.conf"


def test_the_packaged_file_is_valid_and_sets_nothing() -> None:
    """Every line of the shipped file is a commented default."""
    assert parse(PACKAGED.read_text(), str(PACKAGED)) == Settings()


def test_values_are_read_and_normalised() -> None:
    text = "[daemon]\nrunner = systemd\nlog_level = debug\ndurable = Yes\n"
    assert parse(text, "z.conf") == Settings(runner="systemd", log_level="DEBUG", durable=True)


def test_the_bus_section_sets_keys_and_commands() -> None:
    text = "[daemon]\nrunner = local\n[bus]\ncurve_keys = /etc/zsvc/keys\ncontext_commands = on\n"
    assert parse(text, "z.conf") == Settings(
        runner="local", curve_keys=Path("/etc/zsvc/keys"), context_commands=True
    )


def test_bus_settings_are_checked_in_their_section() -> None:
    text = "[bus]\ncurve_keys = keys\nrunner = local\n"
    with pytest.raises(ConfigError) as caught:
        parse(text, "z.conf")
    assert [str(issue) for issue in caught.value.issues] == [
        "z.conf:2:1: curve_keys: 'keys' is not an absolute path",
        "z.conf:3:1: unknown setting 'runner' in [bus]; known: curve_keys, context_commands",
    ]


def test_every_problem_is_reported_with_its_line() -> None:
    text = "[daemon]\n# comment\nrunner = docker\nlog_level = loud\ndurable = maybe\ncolour = red\n"
    with pytest.raises(ConfigError) as caught:
        parse(text, "/etc/zsvc/zsvc.conf")
    assert [str(issue) for issue in caught.value.issues] == [
        "/etc/zsvc/zsvc.conf:3:1: runner: 'docker' is not one of auto, local, systemd",
        "/etc/zsvc/zsvc.conf:4:1: log_level: 'loud' is not one of DEBUG, INFO, WARNING,"
        " ERROR, CRITICAL",
        "/etc/zsvc/zsvc.conf:5:1: durable: 'maybe' is not yes or no",
        "/etc/zsvc/zsvc.conf:6:1: unknown setting 'colour' in [daemon]; known: runner,"
        " log_level, durable",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "runner = local\n",
            "z.conf:1:1: expected a [daemon] or [bus] or [control] section before any setting",
        ),
        ("[daemon]\nrunner = local\nrunner = auto\n", "z.conf:3:1: 'runner' is set twice"),
        ("[daemon]\n[daemon]\n", "z.conf:2:1: section [daemon] appears twice"),
        ("[daemon]\nrunner local\n", "z.conf:2:1: not 'key = value': 'runner local'"),
        ("[deamon]\nrunner = local\n", "z.conf:1:1: unknown section [deamon]"),
    ],
)
def test_malformed_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        parse(text, "z.conf")


def test_an_explicit_file_must_exist_and_the_system_file_may_not(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.conf", is_root=False)
    assert load(None, is_root=False) == Settings()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_either_settings_or_a_located_error(text: str) -> None:
    """The parser never crashes: whatever the file holds, a Settings or a ConfigError
    whose every issue names the file and a line inside it."""
    try:
        result = parse(text, "f.conf")
    except ConfigError as exc:
        assert exc.issues
        lines = max(1, len(text.splitlines()))
        for issue in exc.issues:
            assert issue.file == "f.conf"
            assert 1 <= issue.line <= lines + 1
    else:
        assert isinstance(result, Settings)
