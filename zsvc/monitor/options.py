"""What a monitor may be asked to collect, and the seed's Monitor task configuration, typed.

One parser serves three readers: the context loader (so a bad Monitor
configuration is a ``file:line`` error at ``zsvc validate``), the daemon
(``state``/``top`` requests from the bus, which it trusts no more than a
file) and the built-in Monitor task. The original converted each option
with ``bool()``, so ``"0"`` meant on; here only booleans and the integers
0 and 1 are accepted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MONITOR_INSTANCE = "Monitor"
"""The seed's ``instance`` of the context monitor task (``TaskService id="ts000"``)."""

DEFAULT_FREQUENCY_S = 30.0
"""The seed's example frequency; used when a Monitor configuration gives none."""
MIN_FREQUENCY_S = 0.1
MAX_FREQUENCY_S = 86400.0
PUBLISHER_TYPES = ("pub",)
"""Only PUB was ever implemented (the seed's ``type`` was stored and ignored)."""

OPTION_NAMES = ("opened_files", "open_connections", "memory_maps")
UNSUPPORTED_OPTIONS = {"store_records": "zsvc keeps no sample database (the original's MongoDB)"}


class MonitorConfigError(ValueError):
    """A monitor configuration or request is invalid; ``problems`` lists (key path, why)."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{key}: {why}" for key, why in problems))
        self.problems = problems


@dataclass(frozen=True)
class MonitorOptions:
    """The costly extras of a sample: lists rather than counts (the seed's ``monitor_options``)."""

    opened_files: bool = False
    open_connections: bool = False
    memory_maps: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in OPTION_NAMES}

    def __or__(self, other: MonitorOptions) -> MonitorOptions:
        return MonitorOptions(*(getattr(self, n) or getattr(other, n) for n in OPTION_NAMES))


NO_OPTIONS = MonitorOptions()
"""Counts only: what the bus stream and a plain ``top`` collect."""


@dataclass(frozen=True)
class MonitorSettings:
    """A context's Monitor task: where and how often it publishes, and what it collects."""

    endpoint: str
    frequency_s: float = DEFAULT_FREQUENCY_S
    type: str = "pub"
    options: MonitorOptions = NO_OPTIONS


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def parse_options(raw: Any, where: str = "monitor_options") -> MonitorOptions:
    """Typed options from a mapping such as ``{"memory_maps": 1}``; absent keys are off."""
    if raw is None or raw == "":
        return MonitorOptions()
    if not isinstance(raw, Mapping):
        raise MonitorConfigError([(where, f"expected the elements {', '.join(OPTION_NAMES)}")])
    problems: list[tuple[str, str]] = []
    values: dict[str, bool] = {}
    for key, value in raw.items():
        if key in UNSUPPORTED_OPTIONS:
            if _flag(value):
                problems.append((f"{where}.{key}", f"not supported: {UNSUPPORTED_OPTIONS[key]}"))
            continue
        if key not in OPTION_NAMES:
            problems.append(
                (f"{where}.{key}", f"unknown option; expected {', '.join(OPTION_NAMES)}")
            )
            continue
        flag = _flag(value)
        if flag is None:
            problems.append(
                (f"{where}.{key}", f"{value!r} is not a boolean; expected 1/0 or true/false")
            )
        else:
            values[key] = flag
    if problems:
        raise MonitorConfigError(problems)
    return MonitorOptions(**values)


def parse_frequency(raw: Any, where: str) -> float:
    """Seconds between two samples, within [MIN_FREQUENCY_S, MAX_FREQUENCY_S]."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise MonitorConfigError([(where, f"{raw!r} is not a number of seconds")])
    if not MIN_FREQUENCY_S <= raw <= MAX_FREQUENCY_S:
        raise MonitorConfigError(
            [
                (
                    where,
                    f"{raw:g} is out of range; expected {MIN_FREQUENCY_S:g} to"
                    f" {MAX_FREQUENCY_S:g} s",
                )
            ]
        )
    return float(raw)


def endpoint_problem(endpoint: str) -> str | None:
    """Why a Monitor may not bind *endpoint* (None when it may).

    The Monitor's samples name every process of a transaction and carry no
    authentication, so, like the bus, TCP is bound on loopback only.
    """
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return None
    if not endpoint.startswith("tcp://"):
        return f"'{endpoint}' is not a tcp:// or ipc:// endpoint"
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"'{endpoint}' has no valid port"
    if host in ("*", "0.0.0.0", "[::]", "127.0.0.1", "localhost", "[::1]") or host.startswith(
        "127."
    ):
        return None
    return f"'{endpoint}': a Monitor binds on loopback only (127.0.0.1), it has no authentication"


def bind_address(endpoint: str) -> str:
    """What the Monitor binds for *endpoint*: a wildcard host becomes 127.0.0.1."""
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        if host in ("*", "0.0.0.0", "[::]"):
            return f"tcp://127.0.0.1:{port}"
    return endpoint


def parse_settings(configuration: Mapping[str, Any]) -> MonitorSettings:
    """The seed's Monitor configuration: ``service{endpoint, frequency_s, type}`` and
    ``monitor_options``; the original code's ``publisher`` is accepted for ``service``."""
    problems: list[tuple[str, str]] = []
    key = "service" if "service" in configuration else "publisher"
    service = configuration.get(key)
    if not isinstance(service, Mapping):
        problems.append(
            ("service", "a Monitor needs <service> with <endpoint>, <frequency_s> and <type>")
        )
        service = {}
    endpoint = service.get("endpoint")
    if service and not isinstance(endpoint, str):
        problems.append((f"{key}.endpoint", "required: where the Monitor publishes its samples"))
    elif isinstance(endpoint, str) and (why := endpoint_problem(endpoint)):
        problems.append((f"{key}.endpoint", why))
    frequency = DEFAULT_FREQUENCY_S
    try:
        if "frequency_s" in service:
            frequency = parse_frequency(service["frequency_s"], f"{key}.frequency_s")
    except MonitorConfigError as exc:
        problems.extend(exc.problems)
    kind = service.get("type", "pub")
    if kind not in PUBLISHER_TYPES:
        problems.append((f"{key}.type", f"{kind!r} is not supported; expected 'pub'"))
    unknown = set(service) - {"endpoint", "frequency_s", "type"}
    problems.extend((f"{key}.{name}", "unknown element") for name in sorted(unknown))
    try:
        options = parse_options(configuration.get("monitor_options"))
    except MonitorConfigError as exc:
        problems.extend(exc.problems)
        options = MonitorOptions()
    if problems:
        raise MonitorConfigError(problems)
    return MonitorSettings(
        endpoint=str(endpoint), frequency_s=frequency, type=str(kind), options=options
    )
