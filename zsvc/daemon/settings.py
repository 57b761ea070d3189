"""The daemon's settings file (``/etc/zsvc/zsvc.conf``), validated.

An INI file with the sections ``[daemon]``, ``[bus]`` and ``[control]``, read with the
standard library's :mod:`configparser`. Command-line options win over the file, the
file over the built-in defaults, so a packaged daemon can be tuned without
editing its unit. Every problem is reported with the file and line, all at
once, and an invalid file stops the daemon before it touches anything: a
typo must not silently fall back to a default.
"""

from __future__ import annotations

import ast
import configparser
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zsvc.daemon import remoteauth
from zsvc.daemon.access import AccessRules, Grant, parse_grant, rules_of
from zsvc.errors import ConfigError, ConfigIssue

SYSTEM_SETTINGS = Path("/etc/zsvc/zsvc.conf")
"""Read by a daemon running as root when no ``--config`` is given (absent: defaults)."""

RUNNERS = ("auto", "local", "systemd")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True}
_BOOLEANS |= {"no": False, "false": False, "off": False, "0": False}


@dataclass(frozen=True)
class Settings:
    """What the file sets; None where it is silent (the command line or default decides)."""

    runner: str | None = None
    log_level: str | None = None
    durable: bool | None = None
    curve_keys: Path | None = None
    """``[bus]``: the directory ``zsvc keys`` wrote; TCP endpoints then require CURVE."""
    context_commands: bool | None = None
    """``[bus]``: act on start/stop/restart published on the bus's ``context`` topic."""
    access: AccessRules = field(default_factory=AccessRules)
    """``[access]``: grants beyond root and each transaction's owner (none by default)."""
    listen: str | None = None
    """``[control]``: a TCP control endpoint for remote CLIs (CURVE only: needs curve_keys)."""
    act_as: tuple[tuple[str, str], ...] | None = None
    """``[control]``: the local user each admitted key acts as (others: as nobody)."""


def _line_of(text: str, key: str) -> int:
    """The line where *key* is set (configparser keeps no positions)."""
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*[=:]", re.IGNORECASE)
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return 1


def _unrepr(line: str) -> str:
    """configparser hands over the faulty lines as repr() strings; show the line itself."""
    try:
        value = ast.literal_eval(line)
    except (ValueError, SyntaxError):
        return line
    return value if isinstance(value, str) else line


def _read(text: str, source: str) -> configparser.ConfigParser:
    """*text* as INI; ConfigError for what configparser refuses (the first problem)."""
    parser = configparser.ConfigParser(interpolation=None, default_section="-none-")
    # [access] keys name users, groups and transaction ids after their dot: keep their case.
    parser.optionxform = _option_name  # type: ignore[assignment, method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.MissingSectionHeaderError as exc:
        issue = f"expected a {_sections()} section before any setting, found {exc.line.strip()!r}"
        raise ConfigError([ConfigIssue(source, exc.lineno, 1, issue)]) from None
    except configparser.DuplicateOptionError as exc:
        issue = f"'{exc.option}' is set twice in [{exc.section}]"
        raise ConfigError([ConfigIssue(source, exc.lineno or 1, 1, issue)]) from None
    except configparser.DuplicateSectionError as exc:
        issue = f"section [{exc.section}] appears twice"
        raise ConfigError([ConfigIssue(source, exc.lineno or 1, 1, issue)]) from None
    except configparser.ParsingError as exc:
        issues = [
            ConfigIssue(source, lineno, 1, f"not 'key = value': {_unrepr(line).strip()!r}")
            for lineno, line in exc.errors
        ]
        raise ConfigError(issues) from None
    return parser


def parse(text: str, source: str) -> Settings:
    """The settings in *text* (the contents of *source*); ConfigError lists every problem."""
    parser = _read(text, source)
    issues: list[ConfigIssue] = []
    found: dict[str, object] = {}
    grants: list[tuple[str, Grant]] = []
    for section in parser.sections():
        if section == ACCESS:
            for key, raw in parser[section].items():
                try:
                    grants.append(parse_grant(key, raw.strip()))
                except ValueError as exc:
                    issues.append(ConfigIssue(source, _line_of(text, key), 1, f"{key}: {exc}"))
            continue
        known = CONVERTERS.get(section)
        if known is None:
            line = next(
                (n for n, t in enumerate(text.splitlines(), 1) if t.strip() == f"[{section}]"), 1
            )
            issues.append(
                ConfigIssue(source, line, 1, f"unknown section [{section}]; expected {_sections()}")
            )
            continue
        for key, raw in parser[section].items():
            convert = known.get(key)
            if convert is None:
                why = f"unknown setting {key!r} in [{section}]; known: {', '.join(known)}"
            else:
                try:
                    found[key] = convert(raw.strip())
                    continue
                except ValueError as exc:
                    why = f"{key}: {exc}"
            issues.append(ConfigIssue(source, _line_of(text, key), 1, why))
    if "listen" in found and "curve_keys" not in found:
        why = "listen: a TCP control endpoint is never open without CURVE; set curve_keys in [bus]"
        issues.append(ConfigIssue(source, _line_of(text, "listen"), 1, why))
    if issues:
        raise ConfigError(issues)
    if grants:
        found["access"] = rules_of(grants)
    return Settings(**found)  # type: ignore[arg-type]


def _option_name(key: str) -> str:
    """A key as configparser should keep it: lower case, but for what follows a dot."""
    name, dot, rest = key.partition(".")
    return name.lower() + dot + rest


def _one_of(choices: tuple[str, ...], normalise: Callable[[str], str]) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if normalise(value) not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return normalise(value)

    return convert


def _boolean(value: str) -> bool:
    if value.lower() not in _BOOLEANS:
        raise ValueError(f"{value!r} is not yes or no")
    return _BOOLEANS[value.lower()]


def _sections() -> str:
    """The known sections, as a message names them: ``[daemon] or [bus] or [control]``."""
    return " or ".join(f"[{name}]" for name in CONVERTERS)


def _absolute_path(value: str) -> Path:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    return Path(value)


ACCESS = "access"
"""The section of grants (:func:`zsvc.daemon.access.parse_grant`): its keys are open-ended
(``control.PATTERN``, ``run_as.NAME``), so it is read apart from :data:`CONVERTERS`."""

CONVERTERS: dict[str, dict[str, Callable[[str], object]]] = {
    "daemon": {
        "runner": _one_of(RUNNERS, str),
        "log_level": _one_of(LOG_LEVELS, str.upper),
        "durable": _boolean,
    },
    "bus": {
        "curve_keys": _absolute_path,
        "context_commands": _boolean,
    },
    "control": {  # the remote CLI's endpoint: zsvc.daemon.remoteauth
        "listen": remoteauth.tcp_endpoint,
        "act_as": remoteauth.act_as,
    },
}
"""Each section's settings, in the order the docs give them, and how text becomes value.
Names are unique across sections: each is a field of :class:`Settings`."""


def load(path: Path | None, is_root: bool) -> Settings:
    """The settings of *path*, or of the system file for root; defaults when there is none.

    An explicit *path* must exist; the system file may be absent (a pip
    install has none).
    """
    if path is None:
        if not is_root or not SYSTEM_SETTINGS.exists():
            return Settings()
        path = SYSTEM_SETTINGS
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError([ConfigIssue(str(path), 1, 1, f"cannot read: {reason}")]) from None
    return parse(text, str(path))
