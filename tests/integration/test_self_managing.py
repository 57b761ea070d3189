"""Self-managing transactions: triggers, restart policies, ordering, rollback — real processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import REPO, REPO_SERVICES, TaskDef, wait_message, wait_until


def collect(bus, until, timeout: float = 20.0) -> list[tuple[str, str]]:
    """(action, task id) of control messages, in arrival order, until *until* matches one."""
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        message = bus.receive(remaining)
        if message is None:
            break
        if message.service_name == "context":
            continue
        seen.append((message.action, message.service_id))
        if until(message):
            return seen
    raise AssertionError(f"condition not met within {timeout} s; saw {seen}")


def test_state_machine_sample_chains_by_triggers(daemon, workdir: Path) -> None:
    """Stand -> (on_exit) Walk -> (on_update) DrinkCoffee -> (on_exit) Run, from bus messages."""
    text = (REPO / "Conf" / "Context-StateMachine.xml").read_text()
    context = workdir / "conf" / "Context-StateMachine.xml"
    context.parent.mkdir()
    context.write_text(text.replace("5556", "25576").replace("5557", "25577"))
    (workdir / "Services").symlink_to(REPO_SERVICES)
    bus = daemon.bus("control")
    assert daemon.cli("start", "--context", str(context), "CHAIN").code == 0
    seen = collect(bus, lambda m: m.action == "started" and m.service_id == "ts_103")
    order = [event for event in seen if event[0] in ("started", "exited", "updated")]
    assert order[0] == ("started", "ts_100")
    assert order.index(("exited", "ts_100")) < order.index(("started", "ts_101"))
    assert order.index(("updated", "ts_101")) < order.index(("started", "ts_102"))
    assert order.index(("exited", "ts_102")) < order.index(("started", "ts_103"))
    # Each trigger fired once: Walk keeps updating, DrinkCoffee was started once.
    assert seen.count(("started", "ts_102")) == 1
    tasks = {t["id"]: t for t in daemon.call("status", transaction="CHAIN")["tasks"]}
    assert tasks["ts_101"]["state"] == tasks["ts_103"]["state"] == "active"
    bus.close()


def test_a_trigger_fires_once_per_event(daemon, make_context) -> None:
    """Every update of 'talk' fires on_update -> restart of 'count'; each restart is one run."""
    talk = TaskDef("talk", instance="Chatty", config={"period_s": 0.2})
    talk.triggers = {"on_update": ("start", "echo")}
    context = make_context([talk, TaskDef("echo", instance="Quick", entry="on_update")])
    bus = daemon.bus("control")
    assert daemon.cli("start", "--context", str(context), "ONCE").code == 0
    seen = collect(bus, lambda m: m.action == "updated" and m.content["status"]["count"] >= 4)
    updates = seen.count(("updated", "talk"))
    runs = seen.count(("started", "echo"))
    # Quick exits at once, so every update finds it down and starts it: one run per update,
    # never two (the original duplicated triggers on every command).
    assert 1 <= runs <= updates
    bus.close()


def test_no_trigger_fires_while_the_transaction_stops(daemon, make_context) -> None:
    context = make_context(
        [
            TaskDef("a", triggers={"on_exit": ("start", "b")}),
            TaskDef("b", entry="on_exit"),
        ]
    )
    assert daemon.cli("start", "--context", str(context), "QUIET").code == 0
    bus = daemon.bus("control")
    assert daemon.cli("stop", "QUIET").code == 0
    wait_message(bus, lambda m: m.action == "stopped" and m.service_id == "a")
    tasks = {t["id"]: t for t in daemon.call("status", transaction="QUIET")["tasks"]}
    assert tasks["b"]["state"] == "inactive" and tasks["b"]["pid"] is None
    bus.close()


def _start_and_kill(daemon, make_context, transaction: str, **attrs: str) -> tuple[int, object]:
    context = make_context([TaskDef("t", config={"setup_s": 0.2}, attrs=attrs)])
    record = daemon.cli("start", "--context", str(context), transaction, "--json").json()
    pid = record["tasks"][0]["pid"]
    bus = daemon.bus("control")
    os.kill(pid, signal.SIGKILL)
    return pid, bus


def test_sigkill_under_restart_no_stays_failed(daemon, make_context) -> None:
    _, bus = _start_and_kill(daemon, make_context, "PNO", restart="no")
    wait_message(bus, lambda m: m.action == "failed")
    task = daemon.call("status", transaction="PNO")["tasks"][0]
    assert (task["state"], task["result"]) == ("failed", "signal")
    bus.close()


def test_sigkill_under_on_failure_is_restarted_and_ready(daemon, make_context) -> None:
    pid, bus = _start_and_kill(daemon, make_context, "PONF", restart="on-failure", restart_sec="0")
    wait_message(bus, lambda m: m.action == "failed")
    again = wait_message(bus, lambda m: m.action == "started")
    assert again.content["status"]["pid"] != pid
    task = daemon.call("status", transaction="PONF")["tasks"][0]
    assert (task["state"], task["restarts"]) == ("active", 1)
    bus.close()


def test_a_task_restarted_after_a_crash_takes_messages_from_ready_on(daemon, make_context) -> None:
    """In a crash streak the host joins the bus after setup(), still before READY=1."""
    attrs = {"restart": "on-failure", "restart_sec": "0"}
    task = TaskDef("lis", instance="Listener", service_name="listener", attrs=attrs)
    context = make_context([task])
    record = daemon.cli("start", "--context", str(context), "PLIS", "--json").json()
    bus = daemon.bus("control")
    os.kill(record["tasks"][0]["pid"], signal.SIGKILL)
    again = wait_message(bus, lambda m: m.action == "started" and m.service_id == "lis")
    sent = daemon.cli("send", "--service_name=listener", "--transaction=PLIS", "--action=ping")
    assert sent.code == 0, sent.stderr
    heard = wait_message(bus, lambda m: m.action == "updated" and m.service_id == "lis")
    assert heard.content["status"]["heard"] == "ping"
    assert heard.content["status"]["pid"] == again.content["status"]["pid"]
    bus.close()


def test_restart_always_restarts_a_clean_exit_and_on_failure_does_not(daemon, make_context) -> None:
    always = {"restart": "always", "restart_sec": "0.05", "start_limit_burst": "3"}
    on_failure = {"restart": "on-failure", "restart_sec": "0"}
    context = make_context(
        [
            TaskDef("always", instance="Quick", attrs=always),
            TaskDef("onfail", instance="Quick", attrs=on_failure),
        ]
    )
    bus = daemon.bus("control")
    daemon.cli("start", "--context", str(context), "PCLEAN")
    seen = collect(bus, lambda m: m.service_id == "always" and m.status.get("state") == "failed")
    assert seen.count(("exited", "onfail")) == 1
    assert seen.count(("started", "onfail")) == 1
    tasks = {t["id"]: t for t in daemon.call("status", transaction="PCLEAN")["tasks"]}
    assert (tasks["always"]["state"], tasks["always"]["result"]) == ("failed", "start-limit-hit")
    assert tasks["always"]["restarts"] == 3
    assert "start limit hit" in tasks["always"]["status_text"]
    bus.close()


def wait_for_start_limit(daemon, transaction: str) -> dict:
    """The first task of *transaction* once it ended ``start-limit-hit``."""

    def at_the_limit() -> dict | None:
        task = daemon.call("status", transaction=transaction)["tasks"][0]
        return task if task["result"] == "start-limit-hit" else None

    return wait_until(at_the_limit, what=f"{transaction}: start-limit-hit")


def test_a_crash_loop_hits_the_start_limit(daemon, make_context) -> None:
    policy = {
        "restart": "on-failure",
        "restart_sec": "0",
        "start_limit_burst": "4",
        "start_limit_interval_sec": "60",
    }
    context = make_context([TaskDef("crash", instance="StepFails", attrs=policy)])
    daemon.cli("start", "--context", str(context), "LOOP")
    bus = daemon.bus("control")
    task = wait_for_start_limit(daemon, "LOOP")
    assert (task["state"], task["restarts"]) == ("failed", 4)
    # A start by hand resets the limit.
    assert daemon.cli("start", "LOOP").code in (0, 1)
    assert daemon.call("status", transaction="LOOP")["tasks"][0]["restarts"] >= 5
    bus.close()


def test_a_crash_loop_below_the_rate_limit_ends_by_its_crash_streak(daemon, make_context) -> None:
    """A window so short that the rate limit can never trip (as when runs or the back-off
    are longer than interval / burst): the loop still ends, after burst + 1 quick crashes."""
    policy = {
        "restart": "on-failure",
        "restart_sec": "0",
        "start_limit_burst": "2",
        "start_limit_interval_sec": "0.001",
    }
    context = make_context([TaskDef("crash", instance="StepFails", attrs=policy)])
    daemon.cli("start", "--context", str(context), "STREAK")
    task = wait_for_start_limit(daemon, "STREAK")
    assert (task["state"], task["restarts"]) == ("failed", 2)
    assert "3 runs in a row failed within restart_stable_sec" in task["status_text"]


def test_on_fail_ping_pong_stops_at_the_limit(daemon, make_context) -> None:
    limits = {"start_limit_burst": "3", "start_limit_interval_sec": "60"}
    ping = TaskDef("ping", instance="StepFails", attrs=limits)
    pong = TaskDef("pong", instance="StepFails", entry="on_fail", attrs=limits)
    ping.triggers = {"on_fail": ("start", "pong")}
    pong.triggers = {"on_fail": ("start", "ping")}
    context = make_context([ping, pong])
    daemon.cli("start", "--context", str(context), "PINGPONG")

    def stopped_at_the_limit() -> dict | None:
        tasks = {t["id"]: t for t in daemon.call("status", transaction="PINGPONG")["tasks"]}
        hit = any(t["result"] == "start-limit-hit" for t in tasks.values())
        settled = all(t["state"] == "failed" for t in tasks.values())
        return tasks if hit and settled else None

    tasks = wait_until(stopped_at_the_limit, what="the ping-pong stops")
    assert {t["state"] for t in tasks.values()} == {"failed"}
    assert max(t["restarts"] for t in tasks.values()) <= 4


def test_after_orders_the_start_and_the_stop(daemon, make_context) -> None:
    context = make_context(
        [
            TaskDef("db", config={"setup_s": 0.3}),
            TaskDef("app", config={"setup_s": 0.1}, attrs={"after": "db"}),
            TaskDef("web", attrs={"after": "app db"}),
        ]
    )
    bus = daemon.bus("control")
    assert daemon.cli("start", "--context", str(context), "ORDER").code == 0
    seen = collect(bus, lambda m: m.action == "started" and m.service_id == "web")
    started = [task for action, task in seen if action == "started"]
    assert started == ["db", "app", "web"]
    assert daemon.cli("stop", "ORDER").code == 0
    seen = collect(bus, lambda m: m.action == "stopped" and m.service_id == "db")
    stopped = [task for action, task in seen if action == "stopped"]
    assert stopped == ["web", "app", "db"]
    bus.close()


def test_a_failed_start_is_rolled_back_in_reverse_order(daemon, make_context) -> None:
    tasks = [
        TaskDef("base"),
        TaskDef("mid", attrs={"after": "base"}),
        TaskDef("bad", instance="SetupFails", attrs={"after": "mid"}),
        TaskDef("top", attrs={"after": "bad"}),
    ]
    result = daemon.cli("start", "--context", str(make_context(tasks)), "ROLL")
    assert result.code == 1
    assert "task bad exited with status 1" in result.stderr
    assert "not started (after a failed task): top" in result.stderr
    assert (
        "stopped again: base, mid" in result.stderr or "stopped again: mid, base" in result.stderr
    )
    states = {t["id"]: t["state"] for t in daemon.call("status", transaction="ROLL")["tasks"]}
    assert states == {"base": "inactive", "mid": "inactive", "bad": "failed", "top": "inactive"}


def test_keep_going_leaves_the_rest_running(daemon, make_context) -> None:
    tasks = [TaskDef("good"), TaskDef("bad", instance="SetupFails")]
    result = daemon.cli("start", "--context", str(make_context(tasks)), "KEEP", "--keep-going")
    assert result.code == 1 and "task bad" in result.stderr
    states = {t["id"]: t["state"] for t in daemon.call("status", transaction="KEEP")["tasks"]}
    assert states == {"good": "active", "bad": "failed"}
    assert daemon.call("status", transaction="KEEP")["state"] == "degraded"


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=4, max_size=4))
def test_ordering_holds_under_random_ready_delays(daemons, make_context, delays) -> None:
    """A diamond a -> (b, c) -> d: whatever the set-up times, nobody starts before its needs."""
    daemon = daemons()
    try:
        context = make_context(
            [
                TaskDef("a", config={"setup_s": delays[0]}),
                TaskDef("b", config={"setup_s": delays[1]}, attrs={"after": "a"}),
                TaskDef("c", config={"setup_s": delays[2]}, attrs={"after": "a"}),
                TaskDef("d", config={"setup_s": delays[3]}, attrs={"after": "b c"}),
            ]
        )
        bus = daemon.bus("control")
        assert daemon.cli("start", "--context", str(context), "DIAMOND").code == 0
        seen = collect(bus, lambda m: m.action == "started" and m.service_id == "d")
        started = [task for action, task in seen if action == "started"]
        assert started[0] == "a" and started[-1] == "d" and set(started) == {"a", "b", "c", "d"}
        bus.close()
    finally:
        daemon.terminate()
