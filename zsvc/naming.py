"""Unit, slice and cgroup names: the one place that spells them.

Both runners name a task ``zsvc-<instance>-<transaction>-<task>.service`` in
slice ``zsvc-<instance>-<transaction>.slice``, with each id escaped as
``systemd-escape`` does. Escaping every ``-`` matters: systemd nests slices at
each dash, so an unescaped ``zsvc-i-a-b.slice`` would live under
``zsvc-i-a.slice`` and stopping transaction ``a`` would stop transaction
``a-b`` too.

The *instance* (:func:`instance_id`) is a short hash of the daemon's state
directory. Unit and cgroup names are machine-global while transaction ids are
only unique within one daemon's table: two daemons on one machine (separate
state dirs, the same transaction and task ids) must never find, adopt, sweep
or kill each other's tasks, so every name, and every prefix a runner looks
for, starts with the instance. It is a fixed-width hex word, and escaped ids
never hold a ``-``, so the instance is always the second dash-separated part
of a name and a prefix of one instance never matches another's names.

Runs started by a version without instances (``zsvc-<tx>-<task>.service``)
are re-adopted by the unit or cgroup name saved in the daemon's own table,
never found by pattern.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


INSTANCE_LENGTH = 8
"""Hex digits of an instance: 32 bits, so two state dirs on one machine share one with a
chance of 1 in 4 billion per pair."""
UNIT_NAME_MAX = 255
"""systemd's longest unit name (UNIT_NAME_MAX is 256 with the terminating NUL)."""
CGROUP_SUFFIX_ROOM = 13
"""What the local runner may append to a unit name for a second group (``-`` and 12
characters, :meth:`zsvc.runners.cgroup.CgroupTree.create`): a directory name is at most 255."""
PART_MAX = (UNIT_NAME_MAX - CGROUP_SUFFIX_ROOM - len("zsvc---.service") - INSTANCE_LENGTH) // 2
"""The longest escaped transaction or task id kept whole in a name (108): an id of 64
characters escapes to 256 at worst (every character ``\\x2d``), which would not fit."""
_DIGEST = 16
"""Hex digits of the hash that replaces the end of an escaped id too long to keep whole."""


def instance_id(state_dir: str | os.PathLike[str]) -> str:
    """The daemon instance of the state directory *state_dir*: 8 hex digits of a SHA-256
    of its resolved path. The state dir is what makes a daemon itself (one daemon per
    state dir, its lock is there), and the same dir gives the same instance at every
    start, so a restarted daemon finds its own units again and nobody else's."""
    resolved = os.fsencode(Path(state_dir).resolve())
    return hashlib.sha256(resolved).hexdigest()[:INSTANCE_LENGTH]


def _part(value: str) -> str:
    """*value* escaped, cut to :data:`PART_MAX` with a hash of the whole when longer: the
    name stays within systemd's limit and still tells distinct ids apart. Cut before a
    partial ``\\xNN`` so the part keeps systemd's escaping rules."""
    escaped = systemd_escape(value)
    if len(escaped) <= PART_MAX:
        return escaped
    head = escaped[: PART_MAX - _DIGEST - 1]
    cut = head.rfind("\\")
    if cut >= len(head) - 3:
        head = head[:cut]
    digest = hashlib.sha256(escaped.encode()).hexdigest()[:_DIGEST]
    return f"{head}_{digest}"


def instance_slice(instance: str) -> str:
    """The slice (systemd) and parent cgroup (local runner) of every task of *instance*."""
    return f"zsvc-{instance}.slice"


def slice_name(transaction: str, instance: str) -> str:
    """*transaction*'s slice: systemd nests it under :func:`instance_slice`."""
    return f"zsvc-{instance}-{_part(transaction)}.slice"


def unit_prefix(transaction: str, instance: str) -> str:
    """What the unit (and local cgroup) name of every task of *transaction* starts with."""
    return f"zsvc-{instance}-{_part(transaction)}-"


def unit_name(transaction: str, task_id: str, instance: str) -> str:
    """The unit (and local cgroup) of a task; at most :data:`UNIT_NAME_MAX` characters."""
    return f"{unit_prefix(transaction, instance)}{_part(task_id)}.service"
