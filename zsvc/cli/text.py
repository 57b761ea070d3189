"""Text a task (or any peer) provided, made safe to print on a terminal.

A task's ``STATUS=`` text, its last words and its output reach the user's
terminal through ``zsvc status``, ``stop``, ``monitor`` and ``logs``. Raw,
``ESC]0;…`` retitles the terminal, ``ESC[2J`` clears it, and a carriage
return or a bidi override makes a line say something it does not. Every
human rendering of such text goes through :func:`printable`, which shows
each control character as a visible escape (``\\x1b``, ``\\n``, ``\\u202e``)
instead. JSON output needs none of this: ``json.dumps`` escapes them.
"""

from __future__ import annotations

_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_BIDI_AND_SEPARATORS = (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F))
_BIDI_AND_SEPARATORS += tuple(range(0x2066, 0x206A))


def _escape(code: int) -> str:
    return _NAMED.get(code) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


_ESCAPES: dict[int, str] = {
    code: _escape(code) for code in (*range(0x20), *range(0x7F, 0xA0), *_BIDI_AND_SEPARATORS)
}
"""C0 and C1 controls, DEL, the bidi controls and the Unicode line separators."""


def printable(text: str, keep: str = "") -> str:
    """*text* with every control character shown as an escape, except those in *keep*.

    *keep* is for a caller that lays out lines itself: ``"\\t"`` for a log
    line, ``"\\n"`` for a multi-line error message from zsvc's own checks.
    """
    if keep:
        table = {code: escape for code, escape in _ESCAPES.items() if chr(code) not in keep}
        return text.translate(table)
    return text.translate(_ESCAPES)
