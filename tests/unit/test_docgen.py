"""The man page and the bash completion are generated from the CLI and stay usable."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest

from zsvc.cli.docgen import bash_completion, cli_group, commands_of, man_page


@pytest.fixture(scope="module")
def commands():
    return commands_of(cli_group())


def test_every_command_and_option_is_in_the_man_page(commands) -> None:
    page = man_page(commands, date=datetime.date(2026, 11, 27))
    assert page.startswith('.TH ZSVC 1 "2026-11-27"')
    names = {command.name for command in commands}
    assert {"start", "stop", "status", "restart", "logs", "send", "daemon"} <= names
    for command in commands:
        assert f"\\fBzsvc {command.name.replace('-', chr(92) + '-')}\\fR" in page
        for option in command.options:
            assert option.names[0].replace("-", "\\-") in page


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_renders_the_page_without_warnings(commands, tmp_path: Path) -> None:
    page = tmp_path / "zsvc.1"
    page.write_text(man_page(commands))
    result = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "zsvc start" in result.stdout


def complete(script: Path, words: list[str]) -> list[str]:
    """What bash's completion function offers for the command line *words*."""
    line = " ".join(f"'{word}'" for word in words)
    program = (
        f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        'zsvc() { return 1; }; _zsvc; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return sorted(filter(None, result.stdout.splitlines()))


def test_bash_completes_commands_and_their_options(commands, tmp_path: Path) -> None:
    script = tmp_path / "zsvc"
    script.write_text(bash_completion(commands))
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert complete(script, ["zsvc", "st"]) == ["start", "status", "stop"]
    assert "--keep-going" in complete(script, ["zsvc", "start", "--k"])
    assert complete(script, ["zsvc", "logs", "--fol"]) == ["--follow"]
