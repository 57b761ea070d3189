"""A program that exits at once: never reported started when it has a minimal uptime.

Real programs that end within milliseconds: nginx given a configuration that
does not exist (status 1) and ``redis-server --version`` (status 0: a clean
exit is no more a running service than a failed one).
"""

from __future__ import annotations

import pytest

from tests.programs.checks import poll
from tests.programs.conftest import Case
from tests.programs.contexts import ProgramTask

QUICK = {
    "fails": ("/usr/sbin/nginx -c /nonexistent/nginx.conf", "exited with status 1"),
    "succeeds": ("/usr/bin/redis-server --version", "exited with status 0"),
}


def test_without_a_minimal_uptime_the_failure_shows_in_the_status(case: Case) -> None:
    """No start_secs: the start is over once the program runs; its end is a failure after."""
    command, _ = QUICK["fails"]
    case.start([ProgramTask("quick", command)])
    task = poll(
        lambda: (t := case.task("quick"))["state"] == "failed" and t,
        10.0,
        "the task failed",
        case.stack.daemon_log,
    )
    assert (task["result"], task["last_exit"]) == (
        "exit-code",
        "exited with status 1 (exit-code)",
    ), task
    assert 'open() "/nonexistent/nginx.conf" failed' in case.logs("quick")


@pytest.mark.parametrize("kind", sorted(QUICK))
def test_start_secs_makes_zsvc_start_fail(case: Case, kind: str) -> None:
    """start_secs="1": a program that ends within a second is not started: ``zsvc start``
    exits 1 and says it died before its minimal uptime."""
    command, ending = QUICK[kind]
    context = case.context([ProgramTask("quick", command, attrs={"start_secs": "1"})])
    done = case.stack.zsvc("start", "--context", context, case.transaction)
    assert done.returncode == 1, (done.stdout, done.stderr, case.stack.daemon_log())
    assert ending in done.stderr and "start_secs" in done.stderr, done.stderr
    task = case.task("quick")
    assert task["state"] == "failed", task
