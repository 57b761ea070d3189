"""Parsing XML that may be hostile: one parser configuration and one DOCTYPE refusal.

Context files and MetaServiceConf files both come from users. Neither may
resolve entities, load a DTD or touch the network, and a DOCTYPE is refused
before libxml2 reads its internal subset: otherwise an entity bomb is
expanded first and refused with whatever libxml2's version says about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lxml import etree


class _DoctypeSeen(Exception):
    """Raised by the pre-scan target when the parser meets a DOCTYPE."""


class _RootSeen(Exception):
    """Raised by the pre-scan target at the root element: the prolog is over."""


class _PrologTarget:
    """Parser target that stops at the DOCTYPE (before its internal subset) or the root."""

    def doctype(self, name: str | None, pubid: str | None, system: str | None) -> None:
        raise _DoctypeSeen(name)

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        raise _RootSeen(tag)

    def end(self, tag: str) -> None:
        """Unused: the scan stops at the first start tag."""

    def data(self, text: str) -> None:
        """Unused: text before the root is not data."""

    def close(self) -> None:
        return None


def safe_parser(**extra: Any) -> etree.XMLParser:
    """A parser that never resolves entities, loads a DTD or touches the network."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        **extra,
    )


def _has_doctype(raw: bytes) -> bool:
    """Scan the prolog only; the DOCTYPE is refused before libxml2 reads its subset."""
    try:
        etree.fromstring(raw, safe_parser(target=_PrologTarget()))
    except _DoctypeSeen:
        return True
    except (_RootSeen, etree.XMLSyntaxError):
        return False
    return False


def _doctype_position(raw: bytes) -> tuple[int, int]:
    """Best-effort line and column of ``<!DOCTYPE`` for the message."""
    for encoding in ("utf-8", "utf-16", "utf-32"):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        index = text.find("<!DOCTYPE")
        if index >= 0:
            line = text.count("\n", 0, index) + 1
            return line, index - (text.rfind("\n", 0, index) + 1) + 1
    return 1, 1


def doctype_at(raw: bytes) -> tuple[int, int] | None:
    """Where a DOCTYPE starts in *raw* (line, column), or None when it has none."""
    return _doctype_position(raw) if _has_doctype(raw) else None
