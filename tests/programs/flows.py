"""The checks every program goes through, written once: ready, restarted, stopped, gone.

Each takes a :class:`~tests.programs.conftest.Case` and a *probe* (does the
program answer on its port?), so a test reads as the program's story:
started and ready, killed and back with a new pid, stopped by the right
signal with a clean result, and nothing of it left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.programs.checks import listening, marked_processes, poll

if TYPE_CHECKING:
    from tests.programs.conftest import Case

Probe = Callable[[], bool]
RESTART_TIMEOUT = 30.0
GONE_TIMEOUT = 15.0

COMPARED = ("state", "sub_state", "result", "last_exit", "restarts", "status_text")
"""The fields of ``zsvc status --json`` that must read the same on both runners."""


def comparable(task: dict[str, Any]) -> dict[str, Any]:
    """The part of a task's status that must not depend on the runner."""
    return {key: task.get(key) for key in COMPARED}


def ready_at_once(case: Case, task_id: str, probe: Probe) -> dict[str, Any]:
    """After ``zsvc start`` returned (the program said READY=1), it answers at once."""
    task = case.task(task_id)
    assert (task["state"], task["sub_state"]) == ("active", "running"), task
    assert probe(), f"[{case.stack.name}] {task_id} is ready but does not answer"
    return task


def restarted_after_sigkill(case: Case, task_id: str, probe: Probe) -> dict[str, Any]:
    """SIGKILL the main process: a new one becomes ready (and answers); its record."""
    old = case.task(task_id)
    case.stack.kill(old["pid"], "KILL")

    def back() -> dict[str, Any] | str:
        task = case.task(task_id)
        fresh = task["pid"] not in (None, old["pid"]) and task["sub_state"] == "running"
        return task if fresh and task["restarts"] > old["restarts"] else str(task)

    task = poll(back, RESTART_TIMEOUT, f"{task_id} restarted", case.stack.daemon_log)
    poll(probe, RESTART_TIMEOUT, f"{task_id} answers again", case.stack.daemon_log)
    assert not case.stack.alive(old["pid"])
    return task


def stopped_cleanly(case: Case, task_id: str, ports: tuple[int, ...]) -> dict[str, Any]:
    """``zsvc stop``: the task ends inactive (not failed: no timeout, no SIGKILL), nothing
    of it is left and its ports are closed; its final record."""
    pid = case.task(task_id)["pid"]
    case.stack.ok("stop", case.transaction)
    task = case.task(task_id)
    assert (task["state"], task["result"]) == ("inactive", "success"), task
    assert not case.stack.alive(pid)
    log = case.stack.daemon_log
    poll(lambda: not marked_processes(case.mark), GONE_TIMEOUT, "no process left", log)
    for port in ports:
        poll(lambda port=port: not listening(port), GONE_TIMEOUT, f"port {port} closed", log)
    return task
