"""The same programs, the same story, the same ``zsvc status --json`` on both runners.

One transaction of real programs (notifying, exec, one that fails at once)
goes through a start, a SIGKILL and its restart, and a stop on each runner;
at each step the fields that must not depend on the runner are compared.
"""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import free_port
from tests.programs.checks import http_get, poll, redis_ping
from tests.programs.conftest import Case, open_case
from tests.programs.contexts import ProgramTask
from tests.programs.flows import comparable, restarted_after_sigkill
from tests.programs.recipes import HAPROXY_CONFIG, redis
from tests.programs.stacks import BoxStack, LocalStack

ALWAYS = {"restart": "always", "restart_sec": "0"}


def story(case: Case) -> list[dict[str, Any]]:
    """The transaction's comparable status after its start, a restart and its stop."""
    redis_port, haproxy_port = free_port(), free_port()
    haproxy = case.write("haproxy.cfg", HAPROXY_CONFIG.format(port=haproxy_port))
    tasks = [
        redis(redis_port, case.directory, **ALWAYS),
        ProgramTask("haproxy", f"/usr/sbin/haproxy -Ws -f {haproxy}", type="notify"),
        ProgramTask("sleeper", "/usr/bin/sleep 600"),
        ProgramTask("quick", "/usr/sbin/nginx -c /nonexistent/nginx.conf"),
    ]
    case.start(tasks)
    views = [snapshot(case)]
    assert b"haproxy ok" in http_get(haproxy_port)
    restarted_after_sigkill(case, "redis", lambda: redis_ping(redis_port))
    views.append(snapshot(case))
    case.stack.ok("stop", case.transaction)
    views.append(snapshot(case))
    return views


def snapshot(case: Case) -> dict[str, Any]:
    """Each task's comparable status and the view's shape (its fields and its tasks'),
    once the quick task's failure has been seen."""
    poll(
        lambda: case.task("quick")["state"] == "failed",
        10.0,
        "the quick task failed",
        case.stack.daemon_log,
    )
    view = case.stack.status(case.transaction)
    tasks = {task["id"]: comparable(task) for task in view["tasks"]}
    shape = {"view": sorted(view), "task": sorted({key for t in view["tasks"] for key in t})}
    return {"shape": shape, **tasks}


def test_both_runners_tell_the_same_story(local_stack: LocalStack, box_stack: BoxStack) -> None:
    with open_case(local_stack) as case:
        local = story(case)
    with open_case(box_stack) as case:
        systemd = story(case)
    for step, (one, other) in enumerate(zip(local, systemd, strict=True)):
        assert one == other, f"step {step}: local {one}\n!= systemd {other}"
