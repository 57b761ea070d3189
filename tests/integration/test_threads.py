"""Thread tasks (serviceType="Thread"): one host process per transaction, a thread per task."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.integration.conftest import TaskDef, pid_alive, wait_message, wait_until


def threaded(make_context: Callable[..., Path], tasks: list[TaskDef], *ids: str) -> Path:
    """A context of *tasks* in which the tasks *ids* are Thread tasks."""
    path = make_context(tasks)
    text = path.read_text()
    for task_id in ids:
        pattern = rf'(<TaskService id="{task_id}" instance="[^"]*") serviceType="Process"'
        text, count = re.subn(pattern, r'\1 serviceType="Thread"', text)
        assert count == 1, task_id
    path.write_text(text)
    return path


def tasks_of(daemon, transaction: str) -> dict[str, dict]:
    return {t["id"]: t for t in daemon.call("status", transaction=transaction)["tasks"]}


def test_thread_tasks_of_a_transaction_share_one_process(daemon, make_context) -> None:
    context = threaded(make_context, [TaskDef("a"), TaskDef("b"), TaskDef("p")], "a", "b")
    result = daemon.cli("start", "--context", str(context), "THR", "--json")
    assert result.code == 0, result.stderr
    tasks = {t["id"]: t for t in result.json()["tasks"]}
    assert tasks["a"]["state"] == tasks["b"]["state"] == tasks["p"]["state"] == "active"
    host = tasks["a"]["pid"]
    assert host == tasks["b"]["pid"] and host != tasks["p"]["pid"] and pid_alive(host)
    assert tasks["a"]["status_text"] == f"thread in pid {host}"
    assert psutil.Process(host).num_threads() >= 3  # the main thread and one per task
    # The host is internal: not a task of the transaction.
    assert set(tasks) == {"a", "b", "p"}
    listing = daemon.cli("status", "THR")
    assert listing.code == 0 and f"thread in pid {host}" in listing.stdout


def test_an_exception_in_a_thread_fails_that_task_only(daemon, make_context) -> None:
    context = threaded(
        make_context, [TaskDef("good"), TaskDef("bad", instance="StepFails")], "good", "bad"
    )
    bus = daemon.bus("control")
    daemon.cli("start", "--context", str(context), "THRFAIL")
    failed = wait_message(bus, lambda m: m.action == "failed" and m.service_id == "bad")
    tasks = tasks_of(daemon, "THRFAIL")
    good, bad = tasks["good"], tasks["bad"]
    assert (bad["state"], bad["result"], bad["last_action"]) == ("failed", "exit-code", "failed")
    assert "ServiceStepFails failed: ValueError: step went wrong" in bad["last_exit"]
    assert bad["status_text"] == ""  # STATUS= belongs to the run: it ended
    assert failed.content["status"]["pid"] == good["pid"]
    assert good["state"] == "active" and pid_alive(good["pid"])
    assert daemon.call("status", transaction="THRFAIL")["state"] == "degraded"
    # The traceback is in the host's log, on a line naming the thread.
    logs = daemon.cli("logs", "THRFAIL", "-s", "bad").stdout
    assert "[bad]" in logs and "ValueError: step went wrong" in logs


def test_a_failing_setup_fails_the_start_and_names_the_reason(daemon, make_context) -> None:
    context = threaded(
        make_context, [TaskDef("ok"), TaskDef("burn", instance="SetupFails")], "ok", "burn"
    )
    result = daemon.cli("start", "--context", str(context), "THRSETUP", "--keep-going")
    assert result.code == 1
    assert "task burn" in result.stderr and "the database is on fire" in result.stderr
    tasks = tasks_of(daemon, "THRSETUP")
    assert (tasks["burn"]["state"], tasks["burn"]["result"]) == ("failed", "exit-code")
    assert tasks["ok"]["state"] == "active"


def test_triggers_fire_between_thread_tasks(daemon, make_context) -> None:
    once = TaskDef("once", instance="Quick", triggers={"on_exit": ("start", "next")})
    context = threaded(make_context, [once, TaskDef("next", entry="on_exit")], "once", "next")
    bus = daemon.bus("control")
    assert daemon.cli("start", "--context", str(context), "THRTRIG").code == 0
    seen: list[tuple[str, str]] = []

    def next_started(message) -> bool:
        seen.append((message.action, message.service_id))
        return message.action == "started" and message.service_id == "next"

    started = wait_message(bus, next_started)
    assert seen.index(("exited", "once")) < seen.index(("started", "next"))
    tasks = tasks_of(daemon, "THRTRIG")
    assert (tasks["once"]["state"], tasks["once"]["sub_state"]) == ("inactive", "exited")
    assert tasks["next"]["state"] == "active"
    assert tasks["next"]["pid"] == started.content["status"]["pid"]


def test_stopping_one_thread_task_leaves_the_other_and_the_last_stops_the_host(
    daemon, make_context
) -> None:
    context = threaded(make_context, [TaskDef("a"), TaskDef("b")], "a", "b")
    record = daemon.cli("start", "--context", str(context), "THRSTOP", "--json").json()
    host = record["tasks"][0]["pid"]
    stopped = daemon.cli("stop", "THRSTOP", "-s", "a", "--json")
    assert stopped.code == 0, stopped.stderr
    tasks = {t["id"]: t for t in stopped.json()["tasks"]}
    assert (tasks["a"]["state"], tasks["a"]["last_action"]) == ("inactive", "stopped")
    assert tasks["a"]["pid"] is None
    assert (tasks["b"]["state"], tasks["b"]["pid"]) == ("active", host) and pid_alive(host)
    # Started again: a new thread in the same host.
    assert daemon.cli("start", "THRSTOP", "-s", "a").code == 0
    assert tasks_of(daemon, "THRSTOP")["a"]["pid"] == host
    assert daemon.cli("stop", "THRSTOP", "-s", "a", "-s", "b").code == 0
    assert not pid_alive(host)  # the last Thread task stopped: so did its host


def test_stopping_the_transaction_leaves_no_host_process(daemon, make_context) -> None:
    context = threaded(make_context, [TaskDef("a"), TaskDef("b"), TaskDef("p")], "a", "b")
    record = daemon.cli("start", "--context", str(context), "THRALL", "--json").json()
    host = record["tasks"][0]["pid"]
    stopped = daemon.cli("stop", "THRALL", "--json")
    assert stopped.code == 0, stopped.stderr
    assert not pid_alive(host)
    states = {t["id"]: (t["state"], t["last_action"]) for t in stopped.json()["tasks"]}
    assert set(states.values()) == {("inactive", "stopped")}
    assert daemon.call("status", transaction="THRALL")["state"] == "stopped"


def test_a_killed_host_fails_every_thread_task(daemon, make_context) -> None:
    context = threaded(make_context, [TaskDef("a"), TaskDef("b")], "a", "b")
    record = daemon.cli("start", "--context", str(context), "THRKILL", "--json").json()
    host = record["tasks"][0]["pid"]
    bus = daemon.bus("control")
    os.kill(host, signal.SIGKILL)
    ended: set[str] = set()

    def both_failed(message) -> bool:
        if message.action == "failed":
            ended.add(message.service_id)
        return ended == {"a", "b"}

    wait_message(bus, both_failed)
    for task in tasks_of(daemon, "THRKILL").values():
        assert (task["state"], task["result"], task["pid"]) == ("failed", "signal", None)
        assert "killed by SIGKILL" in task["last_exit"] and str(host) in task["last_exit"]
    # A new start gets a new host.
    assert daemon.cli("start", "THRKILL").code == 0
    again = tasks_of(daemon, "THRKILL")
    assert again["a"]["pid"] == again["b"]["pid"] != host


def test_a_thread_that_ignores_its_stop_flag_times_out(daemon, make_context) -> None:
    tasks = [
        TaskDef("stuck", instance="Stubborn", stop_timeout=0.5),
        TaskDef("fine", stop_timeout=0.5),
    ]
    context = threaded(make_context, tasks, "stuck", "fine")
    assert daemon.cli("start", "--context", str(context), "THRSTUCK").code == 0
    wait_until(
        lambda: tasks_of(daemon, "THRSTUCK")["stuck"]["status_text"] == "blocking for 30 s",
        what="the thread's status line, sent over the bus",
    )
    begun = time.monotonic()
    assert daemon.cli("stop", "THRSTUCK", "-s", "stuck").code == 0
    assert time.monotonic() - begun < 10
    tasks = tasks_of(daemon, "THRSTUCK")
    stuck = tasks["stuck"]
    assert (stuck["state"], stuck["result"], stuck["last_action"]) == (
        "failed",
        "timeout",
        "stopped",
    )
    assert tasks["fine"]["state"] == "active"
    host = tasks["fine"]["pid"]
    # The whole transaction's stop ends the host, the stuck thread with it.
    assert daemon.cli("stop", "THRSTUCK").code == 0
    assert not pid_alive(host)


def test_messages_reach_the_addressed_thread(daemon, make_context) -> None:
    tasks = [
        TaskDef("lis", instance="Listener", service_name="listener"),
        TaskDef("other", instance="Listener", service_name="other"),
    ]
    context = threaded(make_context, tasks, "lis", "other")
    assert daemon.cli("start", "--context", str(context), "THRMSG").code == 0
    bus = daemon.bus("control")
    sent = daemon.cli("send", "--service_name=listener", "--transaction=THRMSG", "--action=ping")
    assert sent.code == 0, sent.stderr
    heard = wait_message(bus, lambda m: m.action == "updated")
    assert (heard.service_id, heard.content["status"]["heard"]) == ("lis", "ping")
    assert heard.content["status"]["pid"] == tasks_of(daemon, "THRMSG")["lis"]["pid"]
    assert tasks_of(daemon, "THRMSG")["lis"]["last_action"] == "updated"


def test_thread_tasks_are_not_readopted_after_a_daemon_restart(
    daemons, make_context, workdir
) -> None:
    daemon = daemons()
    context = threaded(make_context, [TaskDef("a")], "a")
    record = daemon.cli("start", "--context", str(context), "THRCRASH", "--json").json()
    host = record["tasks"][0]["pid"]
    daemon.kill9()
    assert pid_alive(host)
    successor = daemons(root=workdir)
    task = tasks_of(successor, "THRCRASH")["a"]
    assert (task["state"], task["result"]) == ("failed", "lost")
    assert "not re-adopted" in task["last_exit"]
    # A start right away waits for the old host to end, then launches a new one.
    assert successor.cli("start", "THRCRASH").code == 0
    again = tasks_of(successor, "THRCRASH")["a"]
    assert again["state"] == "active" and again["pid"] != host
    assert not pid_alive(host)


def test_the_restart_policy_restarts_a_thread_in_the_same_host(daemon, make_context) -> None:
    policy = {
        "restart": "on-failure",
        "restart_sec": "0",
        "start_limit_burst": "3",
        "start_limit_interval_sec": "60",
    }
    tasks = [TaskDef("keep"), TaskDef("crash", instance="StepFails", attrs=policy)]
    context = threaded(make_context, tasks, "keep", "crash")
    bus = daemon.bus("control")
    daemon.cli("start", "--context", str(context), "THRLOOP")
    pids: set[int] = set()

    def limit_hit(message) -> bool:
        if message.service_id == "crash" and message.action == "started":
            pids.add(message.content["status"]["pid"])
        return message.service_id == "crash" and message.status.get("reason", "").endswith(
            "(start-limit-hit): restart=on-failure"
        )

    wait_message(bus, limit_hit)
    tasks_now = tasks_of(daemon, "THRLOOP")
    crash, keep = tasks_now["crash"], tasks_now["keep"]
    assert (crash["state"], crash["result"], crash["restarts"]) == ("failed", "start-limit-hit", 3)
    assert pids == {keep["pid"]}  # every restart was a new thread in the same host
    assert keep["state"] == "active"
    # Only the crash loop was a Thread task left: once it is down for good, the host goes.
    assert daemon.cli("stop", "THRLOOP", "-s", "keep").code == 0
    wait_until(lambda: not pid_alive(keep["pid"]), what="the idle thread host stops")


def test_the_thread_hosts_log_is_capped_like_a_tasks(daemon, make_context) -> None:
    """The shared host's ``@threads.log`` is rotated at the cap (8 MiB), as every task log."""
    big = TaskDef("big", instance="BigLog", config={"megabytes": 10})
    context = threaded(make_context, [big], "big")
    assert daemon.cli("start", "--context", str(context), "THRLOG").code == 0
    log = daemon.state / "logs" / "THRLOG" / "@threads.log"
    backup = log.with_name("@threads.log.1")
    # 10 MiB written: one rotation keeps the last (at most) 8 MiB, from a whole line, in .1
    # (it runs in a worker thread: wait until the copy is complete and the log truncated).
    wait_until(
        lambda: backup.exists() and log.stat().st_size < 8 << 20 and backup.stat().st_size > 0,
        what="@threads.log rotated",
    )
    assert 1 << 20 <= backup.stat().st_size <= 8 << 20
    assert backup.read_bytes()[-1:] == b"\n"
