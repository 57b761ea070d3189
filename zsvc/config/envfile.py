"""Environment files (``<environment_file>``, systemd's ``EnvironmentFile=``): a pure parser.

zsvc reads a subset of systemd's format, chosen so that every file it accepts means
the same to systemd (systemd.exec(5), ``load_env_file``), and what systemd would
skip with a warning or read in a surprising way is an error naming ``file:line``:

- one assignment ``NAME=value`` per line; whitespace around the name and the ``=``
  is ignored; ``NAME`` is ``[A-Za-z_][A-Za-z0-9_]*`` (systemd ignores other lines:
  here ``export NAME=…``, a line without ``=`` or a bad name is an error);
- empty lines, and lines whose first non-blank character is ``#`` or ``;``, are
  comments; a ``#`` after a value is part of the value, as in systemd;
- an unquoted value is stripped of surrounding whitespace; a backslash takes the
  next character literally, and a backslash at the end of a line joins the next;
- ``'…'``: everything literal, newlines included; ``"…"``: a backslash escapes
  ``"``, ``\\``, `````, ``$`` and joins lines, and is kept before anything else;
  only whitespace may follow the closing quote (systemd would glue more text on);
- no variable expansion (``$HOME`` stays as written); the file is UTF-8, without NUL;
  a name set twice: the later wins, as in systemd.

The names zsvc sets itself (``ZSVC_*``, ``NOTIFY_SOCKET``, …) are refused, as in
the context file (:func:`zsvc.config.execvalues.reserved_env_problem`).
"""

from __future__ import annotations

from dataclasses import dataclass

from zsvc.config.execvalues import is_env_name, reserved_env_problem

__all__ = ["EnvFileError", "parse_environment_file"]

_DOUBLE_ESCAPES = frozenset('"\\`$')
_BLANKS = " \t\r\f\v"


class EnvFileError(ValueError):
    """A line of an environment file zsvc does not read: ``path:line: why``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass
class _Cursor:
    """The text and where the parser is in it; lines count from 1."""

    text: str
    path: str
    pos: int = 0
    line: int = 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        self.pos += 1
        if char == "\n":
            self.line += 1
        return char

    def skip_blanks(self) -> None:
        while self.peek() and self.peek() in _BLANKS:
            self.pos += 1

    def rest_of_line(self) -> str:
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        return self.text[self.pos : end]

    def error(self, message: str, line: int | None = None) -> EnvFileError:
        return EnvFileError(self.path, self.line if line is None else line, message)


def parse_environment_file(text: str, path: str) -> list[tuple[str, str]]:
    """The assignments of environment file *text* (named *path* in errors), in order.

    Raises :class:`EnvFileError` at the first line it does not read.
    """
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise EnvFileError(path, line, "a NUL character; an environment holds none")
    cursor = _Cursor(text, path)
    found: list[tuple[str, str]] = []
    while cursor.peek():
        cursor.skip_blanks()
        char = cursor.peek()
        if char in ("\n", ""):
            cursor.take()
        elif char in "#;":
            cursor.pos += len(cursor.rest_of_line())
        else:
            found.append(_assignment(cursor))
    return found


def _assignment(cursor: _Cursor) -> tuple[str, str]:
    """One ``NAME=value`` from the name's first character to the end of its (last) line."""
    line = cursor.line
    head = cursor.rest_of_line()
    name, equals, _ = head.partition("=")
    name = name.rstrip(_BLANKS)
    if not equals:
        raise cursor.error(f"'{_shown(head)}' is no assignment; expected NAME=value")
    if name.startswith("export") and name[6:7] in tuple(_BLANKS):
        raise cursor.error(
            "'export' is shell syntax, which systemd does not read; expected NAME=value"
        )
    if not is_env_name(name):
        raise cursor.error(
            f"'{_shown(name)}' is not a variable name; expected [A-Za-z_][A-Za-z0-9_]*"
        )
    if (problem := reserved_env_problem(name)) is not None:
        raise cursor.error(f"'{name}' {problem}")
    cursor.pos += head.index("=") + 1
    cursor.skip_blanks()
    quote = cursor.peek()
    value = _quoted(cursor, quote, line) if quote in ("'", '"') else _unquoted(cursor)
    return name, value


def _unquoted(cursor: _Cursor) -> str:
    """To the end of the line: a backslash takes the next character, or joins the next line."""
    parts: list[str] = []
    while (char := cursor.peek()) not in ("\n", ""):
        cursor.take()
        if char == "\\":
            escaped = cursor.take()
            if escaped not in ("\n", ""):
                parts.append(escaped)
        else:
            parts.append(char)
    return "".join(parts).strip(_BLANKS)


def _quoted(cursor: _Cursor, quote: str, line: int) -> str:
    """A quoted value (it may span lines); only blanks may follow it on its last line."""
    cursor.take()
    parts: list[str] = []
    while True:
        char = cursor.take()
        if char == "":
            raise cursor.error(f"the value's {quote} is never closed", line)
        if char == quote:
            break
        if char == "\\" and quote == '"':
            escaped = cursor.take()
            if escaped in _DOUBLE_ESCAPES:
                parts.append(escaped)
            elif escaped != "\n":
                parts.append("\\" + escaped)
            continue
        parts.append(char)
    after = cursor.rest_of_line()
    if after.strip(_BLANKS):
        raise cursor.error(
            f"'{_shown(after.strip(_BLANKS))}' after the closing {quote}; "
            "expected the end of the line (quote the whole value)"
        )
    cursor.pos += len(after)
    return "".join(parts)


def _shown(text: str, limit: int = 40) -> str:
    """*text* fit for a one-line message: shortened, control characters escaped."""
    short = text if len(text) <= limit else text[:limit] + "…"
    return short.encode("unicode_escape").decode("ascii") if not short.isprintable() else short
