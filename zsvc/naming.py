"""Unit and slice names: the one place that spells them.

Both runners name a task ``zsvc-<transaction>-<task>.service`` in slice
``zsvc-<transaction>.slice``, with each id escaped as ``systemd-escape``
does. Escaping every ``-`` matters: systemd nests slices at each dash, so an
unescaped ``zsvc-a-b.slice`` would live under ``zsvc-a.slice`` and stopping
transaction ``a`` would stop transaction ``a-b`` too.
"""

from __future__ import annotations

_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_.")


def systemd_escape(value: str) -> str:
    """Escape *value* like ``systemd-escape`` (unit_name_escape in systemd)."""
    out = []
    for index, byte in enumerate(value.encode()):
        if byte == ord("/"):
            out.append("-")
        elif byte in _KEEP and not (index == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def slice_name(transaction: str) -> str:
    return f"zsvc-{systemd_escape(transaction)}.slice"


def unit_prefix(transaction: str) -> str:
    """What the unit (and local cgroup) name of every task of *transaction* starts with."""
    return f"zsvc-{systemd_escape(transaction)}-"


def unit_name(transaction: str, task_id: str) -> str:
    return f"{unit_prefix(transaction)}{systemd_escape(task_id)}.service"
