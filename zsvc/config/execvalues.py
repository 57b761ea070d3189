"""The values of a task's execution settings, read from their text: pure functions.

Each parser takes the attribute's text and returns the model's value, or raises
:class:`ValueProblem` whose text completes "'<value>' …" in the loader's issue
(``is not a umask; expected …``). They look nothing up (no passwd, no /proc): a
context is validated where it is written, and a user or a file may exist only on
the host that runs it; the daemon checks those at start (:mod:`zsvc.daemon.launch`).

The rules follow systemd's (systemd.exec(5), systemd.resource-control(5)) where
zsvc accepts the same spelling, and are stricter where systemd's reading would
surprise (a size of ``0``, a umask above 0777).
"""

from __future__ import annotations

import math
import re
import signal

__all__ = [
    "MAX_ID",
    "MAX_NOFILE",
    "RESERVED_ENV_NAMES",
    "ValueProblem",
    "is_env_name",
    "parse_bool",
    "parse_cpu_quota",
    "parse_id",
    "parse_limit_nofile",
    "parse_memory_max",
    "parse_nice",
    "parse_signal",
    "parse_tasks_max",
    "parse_umask",
    "reserved_env_problem",
]


class ValueProblem(ValueError):
    """Why a value was refused, worded to follow the value in an issue."""


MAX_ID = 4_294_967_294
"""The largest uid or gid: 2^32 - 2 (2^32 - 1 is ``(uid_t) -1``, "no change")."""
MAX_NOFILE = 1 << 20
"""The largest ``limit_nofile``: Linux's default ``fs.nr_open`` (1,048,576), the most a
process may set without the administrator raising that sysctl first."""
MAX_BYTES = (1 << 63) - 1
"""The largest memory size: what cgroup v2's ``memory.max`` and systemd's uint64 hold
without being read as ``max``."""

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
"""A user or group name: POSIX's portable characters, not starting with ``-``, ``.`` or a
digit, at most 32 characters (useradd's limit; ``www-data``, ``Debian-exim``)."""
_DIGITS_RE = re.compile(r"[0-9]+")
_SIZE_RE = re.compile(r"([0-9]+)\s*([KMGT]?)", re.IGNORECASE)
_PERCENT_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUFFIXES = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}

RESERVED_ENV_PREFIX = "ZSVC_"
RESERVED_ENV_NAMES = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
"""What the runner sets for a task's readiness and watchdog (and systemd's socket passing):
a task's own environment must not replace them, or its READY=1 would go nowhere."""

TRUE_WORDS = frozenset({"true", "yes", "on"})
FALSE_WORDS = frozenset({"false", "no", "off"})

_SIGNALS = dict(signal.Signals.__members__)
"""Every name, aliases included (SIGIOT, SIGCLD, SIGPOLL)."""
_SIGNAL_NUMBERS = frozenset(int(s) for s in signal.valid_signals())


def parse_bool(value: str) -> bool | None:
    """true/false/yes/no/on/off/1/0, any case; None when it is none of them."""
    word = value.strip().lower()
    if word in TRUE_WORDS or word == "1":
        return True
    if word in FALSE_WORDS or word == "0":
        return False
    return None


def _whole(text: str, low: int, high: int, problem: str) -> int:
    """*text* as an integer within [low, high] (a sign allowed), else ValueProblem."""
    match = re.fullmatch(r"\s*([+-]?[0-9]{1,20})\s*", text)
    if match is None or not low <= int(match[1]) <= high:
        raise ValueProblem(problem)
    return int(match[1])


def parse_id(text: str, kind: str) -> str:
    """A user or group (*kind*): a name, or a number 0…4294967294 (normalised: ``007`` → ``7``).

    Not looked up: the name may exist only on the host that runs the task.
    """
    value = text.strip()
    if _DIGITS_RE.fullmatch(value):
        digits = value.lstrip("0") or "0"  # int() refuses over 4,300 digits, zeros too
        if len(digits) <= 10 and int(digits) <= MAX_ID:
            return digits
    elif _NAME_RE.fullmatch(value):
        return value
    number = "uid" if kind == "user" else "gid"
    raise ValueProblem(
        f"is not a {kind} name or {number}; expected a name of up to 32 characters of "
        f"A-Z a-z 0-9 _ . - (not starting with a digit, '.' or '-') or a number 0-{MAX_ID}"
    )


def parse_umask(text: str) -> int:
    """An octal umask 0000…0777 (``0027``, ``027``, ``27``), as systemd's ``UMask=`` reads it."""
    value = text.strip()
    if re.fullmatch(r"[0-7]{1,4}", value) and int(value, 8) <= 0o777:
        return int(value, 8)
    raise ValueProblem("is not a umask; expected an octal number 0000-0777, such as 0027")


def parse_nice(text: str) -> int:
    """A nice level, -20 (most favourable) … 19."""
    return _whole(text, -20, 19, "is not a nice level; expected a whole number from -20 to 19")


def parse_limit_nofile(text: str) -> int:
    """Open files, soft and hard: 1 … 1,048,576 (:data:`MAX_NOFILE`); no ``infinity``,
    which Linux caps at ``fs.nr_open`` anyway."""
    return _whole(
        text,
        1,
        MAX_NOFILE,
        f"is not an open-files limit; expected a whole number from 1 to {MAX_NOFILE}",
    )


def parse_tasks_max(text: str) -> int:
    """Processes and threads of the task together: 1 or more."""
    return _whole(text, 1, MAX_BYTES, "is not a tasks limit; expected a whole number, 1 or more")


def parse_memory_max(text: str) -> int | None:
    """Bytes, with an optional K, M, G or T suffix (1024-based, as systemd reads them, any
    case), or ``infinity``: no limit, the same as leaving the setting out (None)."""
    value = text.strip()
    if value == "infinity":
        return None
    match = _SIZE_RE.fullmatch(value)
    if match is not None and len(match[1]) <= 20:
        size = int(match[1]) << _SUFFIXES[match[2].upper()]
        if 1 <= size <= MAX_BYTES:
            return size
    raise ValueProblem(
        "is not a memory size; expected a number of bytes, 1 or more, with an optional "
        "K, M, G or T suffix (1024-based, such as 256M), or 'infinity'"
    )


def parse_cpu_quota(text: str) -> float:
    """A percentage of one CPU, above 0 (``50%``; ``200%`` is two CPUs), as ``CPUQuota=``."""
    match = _PERCENT_RE.fullmatch(text.strip())
    if match is not None and len(match[1]) <= 12:
        percent = float(match[1])
        if percent > 0 and math.isfinite(percent):
            return percent
    raise ValueProblem(
        "is not a CPU quota; expected a percentage above 0 such as 50% (200% is two CPUs)"
    )


def parse_signal(text: str) -> int:
    """A signal by name (``SIGINT`` or ``INT``, any case) or number; 0 and unknown refused.

    Any real signal is accepted, SIGKILL included (systemd's ``KillSignal=`` allows it).
    """
    value = text.strip()
    if _DIGITS_RE.fullmatch(value) and len(value) <= 3 and int(value) in _SIGNAL_NUMBERS:
        return int(value)
    name = value.upper()
    member = _SIGNALS.get(name) or _SIGNALS.get(f"SIG{name}")
    if member is not None:
        return int(member)
    raise ValueProblem(
        "is not a signal; expected a name such as SIGTERM or TERM, "
        f"or a number from 1 to {max(_SIGNAL_NUMBERS)}"
    )


def is_env_name(name: str) -> bool:
    """A variable name a shell can use: ``[A-Za-z_][A-Za-z0-9_]*``."""
    return _ENV_NAME_RE.fullmatch(name) is not None


def reserved_env_problem(name: str) -> str | None:
    """Why *name* may not be set by a task's environment, or None: zsvc sets it."""
    if name.startswith(RESERVED_ENV_PREFIX) or name in RESERVED_ENV_NAMES:
        return (
            f"is set by zsvc; expected a name that does not start with {RESERVED_ENV_PREFIX} "
            f"and is none of {', '.join(sorted(RESERVED_ENV_NAMES))}"
        )
    return None
