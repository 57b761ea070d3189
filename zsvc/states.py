"""The one vocabulary of zsvc: task states, transaction states, triggers, actions.

Every other module imports its words from here; no other file spells a state
as a string literal. Task states mirror systemd's (``ActiveState``,
``SubState``, ``Result`` of org.freedesktop.systemd1(5)) so that the local
runner and the systemd runner speak one language, and the seed's
``last_action`` words (started, updated, failed, stopped, exited) travel
beside them on the bus.

This module imports nothing but the standard library on purpose: it is
loaded by the task host, the CLI and the daemon alike.
"""

from __future__ import annotations

import re
from enum import StrEnum


class State(StrEnum):
    """A task's high-level state (systemd's ``ActiveState``)."""

    INACTIVE = "inactive"
    ACTIVATING = "activating"
    ACTIVE = "active"
    DEACTIVATING = "deactivating"
    FAILED = "failed"


class SubState(StrEnum):
    """A task's detailed state (a subset of systemd's service ``SubState``).

    systemd's ``stop-sigkill`` is not among them: a run that must be killed
    after its stop timeout stays ``stop-sigterm`` until it ends, and its
    result ``timeout`` tells that it was killed (no runner reports the
    escalation, so the word would never be set).
    """

    WAITING = "waiting"  # zsvc's own: not started, waits for a trigger to call it
    START = "start"
    RUNNING = "running"
    EXITED = "exited"
    AUTO_RESTART = "auto-restart"
    STOP_SIGTERM = "stop-sigterm"
    DEAD = "dead"
    FAILED = "failed"


class Result(StrEnum):
    """Why a task's last run ended (systemd's service ``Result``).

    ``LOST`` is zsvc's own: the process ended while the daemon was not
    running, so nobody could collect its exit status.
    """

    SUCCESS = "success"
    EXIT_CODE = "exit-code"
    SIGNAL = "signal"
    CORE_DUMP = "core-dump"
    TIMEOUT = "timeout"
    WATCHDOG = "watchdog"
    START_LIMIT_HIT = "start-limit-hit"
    PROTOCOL = "protocol"
    RESOURCES = "resources"
    LOST = "lost"


class LastAction(StrEnum):
    """The seed's control actions, reported on the ``control`` topic."""

    STARTED = "started"
    UPDATED = "updated"
    FAILED = "failed"
    STOPPED = "stopped"
    EXITED = "exited"


class TransactionState(StrEnum):
    """The state of a whole transaction, derived from its tasks."""

    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    BROKEN = "broken"
    """Its stored context no longer loads: its tasks are tracked and may be stopped, not
    started, until it is started again with a corrected context (or forgotten)."""


class TriggerEvent(StrEnum):
    """The seed's four state triggers, also used as a task's entry trigger."""

    ON_START = "on_start"
    ON_UPDATE = "on_update"
    ON_FAIL = "on_fail"
    ON_EXIT = "on_exit"


class TaskAction(StrEnum):
    """What a command or a trigger asks of a task."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"


class RestartMode(StrEnum):
    """When a task that ended on its own is started again (systemd's ``Restart=`` subset)."""

    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class StartType(StrEnum):
    """When a command task counts as started (systemd's ``Type=``, the subset that fits).

    ``simple``: once its process exists; ``exec``: once its program was executed;
    ``notify``: at its own ``READY=1``; ``forking``: once its first process exited
    successfully, leaving the daemon it forked as the task's main process.
    A Python task is always ``notify``: its host reports READY=1.
    """

    SIMPLE = "simple"
    EXEC = "exec"
    NOTIFY = "notify"
    FORKING = "forking"


class ServiceType(StrEnum):
    """The seed's ``serviceType``: a task in its own process, or a thread."""

    PROCESS = "Process"
    THREAD = "Thread"


# The trigger that each reported action fires (seed README, "Autonomous process states").
TRIGGER_FOR_ACTION: dict[LastAction, TriggerEvent] = {
    LastAction.STARTED: TriggerEvent.ON_START,
    LastAction.UPDATED: TriggerEvent.ON_UPDATE,
    LastAction.FAILED: TriggerEvent.ON_FAIL,
    LastAction.STOPPED: TriggerEvent.ON_EXIT,
    LastAction.EXITED: TriggerEvent.ON_EXIT,
}

# Groups the code asks about.
HAS_PROCESS: frozenset[State] = frozenset({State.ACTIVATING, State.ACTIVE, State.DEACTIVATING})
"""The states of an up task: a run exists, or (``activating/auto-restart``) one is due."""

DOWN: frozenset[State] = frozenset({State.INACTIVE, State.FAILED})
"""States in which a task has no process."""

STATE_OF: dict[SubState, State] = {
    SubState.WAITING: State.INACTIVE,
    SubState.DEAD: State.INACTIVE,
    SubState.EXITED: State.INACTIVE,
    SubState.START: State.ACTIVATING,
    SubState.AUTO_RESTART: State.ACTIVATING,
    SubState.RUNNING: State.ACTIVE,
    SubState.STOP_SIGTERM: State.DEACTIVATING,
    SubState.FAILED: State.FAILED,
}
"""The one state each sub-state belongs to (``docs/states.md``, the sub_state table)."""

SIGNALLABLE: frozenset[SubState] = frozenset(
    {SubState.START, SubState.RUNNING, SubState.STOP_SIGTERM}
)
"""Sub-states in which a run exists: it may be signalled, and only its end takes it down.

Narrower than :data:`HAS_PROCESS`: a task in ``activating/auto-restart`` is up
(a restart is due) but has no run to signal (supervisor's signallable states
are likewise starting, running and stopping)."""

# Identifiers: transactions (DESIGN §1) and task ids share one rule, so that
# both can be used in unit names, file names and ZMQ topics without escaping
# surprises.
ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
ID_RE = re.compile(rf"\A{ID_PATTERN}\Z")
GENERATED_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
GENERATED_ID_LENGTH = 20


def is_valid_id(value: str) -> bool:
    """True when *value* may name a transaction or a task."""
    return bool(ID_RE.match(value))


def new_transaction_id() -> str:
    """A fresh transaction id in the seed's style: 20 characters of [A-Z0-9]."""
    import secrets

    return "".join(secrets.choice(GENERATED_ID_ALPHABET) for _ in range(GENERATED_ID_LENGTH))
