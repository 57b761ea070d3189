"""End-to-end behaviour of transactions on the embedded runner: real daemon, real processes."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import (
    IGNORES_SIGTERM,
    REPO,
    REPO_SERVICES,
    TaskDef,
    pid_alive,
    wait_message,
    wait_until,
)

DOCUMENTED_TASK_KEYS = {
    "id", "service_name", "instance", "pid", "state", "sub_state", "result",
    "status_text", "last_action", "restarts", "since", "last_exit",
}  # fmt: skip


def test_echo_action_flow(daemons, workdir: Path) -> None:
    """The seed's tutorial: start EchoAction, it is ready, reports, answers state, stops."""
    context = workdir / "Context-EchoAction.xml"
    # The sample as shipped, on ports of its own so that tests never collide.
    text = (REPO / "Conf" / "Context-EchoAction.xml").read_text()
    text = text.replace("5556", "25556").replace("5557", "25557")
    shout = "<device_action>shout</device_action>"
    text = text.replace(shout, f"{shout}<location>{REPO_SERVICES}</location>")
    context.write_text(text)
    daemon = daemons(context)
    bus = daemon.bus("control")

    started = daemon.cli("start", "--context", str(context), "ECHO1", "--json")
    assert started.code == 0, started.stderr
    record = started.json()
    assert record["transaction"] == "ECHO1"
    assert record["state"] == "running"
    (task,) = record["tasks"]
    assert set(task) == DOCUMENTED_TASK_KEYS
    assert (task["id"], task["state"], task["sub_state"]) == ("ts_100", "active", "running")
    assert task["instance"] == "EchoAction" and task["service_name"] == "echo_action"
    assert pid_alive(task["pid"])

    hello = wait_message(bus, lambda m: m.action == "started" and m.service_id == "ts_100")
    assert hello.transaction == "ECHO1"
    assert hello.content["status"]["device_action"] == "shout"
    update = wait_message(bus, lambda m: m.action == "updated" and m.service_id == "ts_100")
    assert update.content["status"]["echo"].startswith("THE TIME IS")

    # The seed's state query, as its README wrote it (underscore flags).
    state = daemon.cli(
        "send", "--endpoint=tcp://127.0.0.1:25557", "--service_name=state",
        "--transaction=ECHO1", "--action=request",
    )  # fmt: skip
    assert state.code == 0, state.stderr
    reply = state.json()
    assert reply["header"]["action"] == "reply_context"
    assert reply["content"]["tasks"][0]["pid"] == task["pid"]

    status = daemon.cli("status", "ECHO1", "--json").json()
    assert status["tasks"][0]["last_action"] in ("started", "updated")
    assert status["tasks"][0]["status_text"].startswith("THE TIME IS")

    stopped = daemon.cli("stop", "ECHO1", "--json")
    assert stopped.code == 0, stopped.stderr
    (task_after,) = stopped.json()["tasks"]
    assert (task_after["state"], task_after["last_action"], task_after["pid"]) == (
        "inactive", "stopped", None,
    )  # fmt: skip
    assert not pid_alive(task["pid"])
    wait_message(bus, lambda m: m.action == "stopped" and m.service_id == "ts_100")

    logs = daemon.cli("logs", "ECHO1", "-n", "50")
    assert logs.code == 0
    bus.close()


def test_seed_conf_command_starts_and_stops(daemon, make_context) -> None:
    """`zsvc send` accepts the seed's conf_command line and carries it over the control socket."""
    context = make_context([TaskDef("ts_001")])
    started = daemon.cli(
        "send", "--endpoint=tcp://127.0.0.1:5557", f"--context_file={context}",
        "--service_name=context", "--service_id=context001", "--transaction=6FDAHH3WPRVV7FGZCRIN",
        "--action=start",
    )  # fmt: skip
    assert started.code == 0, started.stderr
    record = daemon.call("status", transaction="6FDAHH3WPRVV7FGZCRIN")
    assert record["tasks"][0]["state"] == "active"
    stopped = daemon.cli(
        "send", "--service_name=context", "--transaction=6FDAHH3WPRVV7FGZCRIN", "--action=stop"
    )
    assert stopped.code == 0, stopped.stderr
    assert daemon.call("status", transaction="6FDAHH3WPRVV7FGZCRIN")["state"] == "stopped"


def test_generated_transaction_id(daemon, make_context) -> None:
    result = daemon.cli("start", "--context", str(make_context([TaskDef("t1")])), "--json")
    assert result.code == 0, result.stderr
    transaction = result.json()["transaction"]
    assert len(transaction) == 20 and transaction.isalnum() and transaction.upper() == transaction


def test_state_machine_sample_starts_its_entry_task(daemon, workdir: Path) -> None:
    """Only the task whose entry trigger is on_start starts; the others wait to be called."""
    text = (REPO / "Conf" / "Context-StateMachine.xml").read_text()
    text = text.replace("5556", "25566").replace("5557", "25567")
    context = workdir / "conf" / "Context-StateMachine.xml"
    context.parent.mkdir()
    context.write_text(text)
    (workdir / "Services").symlink_to(REPO_SERVICES)
    bus = daemon.bus("control")
    result = daemon.cli("start", "--context", str(context), "SM1", "--json")
    assert result.code == 0, result.stderr
    tasks = {task["id"]: task for task in result.json()["tasks"]}
    assert tasks["ts_100"]["state"] in ("active", "inactive")
    for waiting in ("ts_101", "ts_102", "ts_103"):
        assert (tasks[waiting]["state"], tasks[waiting]["sub_state"]) == ("inactive", "waiting")
    exited = wait_message(bus, lambda m: m.action == "exited" and m.service_id == "ts_100")
    assert exited.content["status"]["result"] == "success"
    stand = daemon.call("status", transaction="SM1")["tasks"][0]
    assert (stand["state"], stand["sub_state"], stand["result"]) == (
        "inactive",
        "exited",
        "success",
    )
    # A waiting task can be started by hand.
    walk = daemon.cli("start", "SM1", "--service", "ts_101", "--json")
    assert walk.code == 0, walk.stderr
    assert {t["id"]: t for t in walk.json()["tasks"]}["ts_101"]["state"] == "active"
    bus.close()


def test_on_message_reaches_the_addressed_task(daemon, make_context) -> None:
    context = make_context([TaskDef("lis", instance="Listener", service_name="listener")])
    assert daemon.cli("start", "--context", str(context), "MSG").code == 0
    bus = daemon.bus("control")
    sent = daemon.cli(
        "send", "--service_name=listener", "--transaction=MSG", "--action=ping",
        "--device_action=hello",
    )  # fmt: skip
    assert sent.code == 0, sent.stderr
    heard = wait_message(bus, lambda m: m.action == "updated" and m.service_id == "lis")
    assert heard.content["status"]["heard"] == "ping"
    assert heard.content["status"]["content"] == {"configuration": {"device_action": "hello"}}
    bus.close()


def test_command_task_ready_at_exec_and_notifying_command(daemon, make_context) -> None:
    """A plain executable is a task too; with notify, readiness is its own READY=1."""
    notifier = (
        "python3 -c 'import os,socket,time; s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM);"
        ' s.sendto(b"READY=1\\nSTATUS=serving", os.environ["NOTIFY_SOCKET"]); time.sleep(3600)\''
    )
    context = make_context(
        [
            TaskDef("plain", command="sleep 3600", location=None),
            TaskDef("notif", command=notifier, notify=True, location=None),
        ]
    )
    result = daemon.cli("start", "--context", str(context), "CMD", "--json")
    assert result.code == 0, result.stderr
    tasks = {task["id"]: task for task in result.json()["tasks"]}
    assert tasks["plain"]["state"] == "active"
    assert tasks["notif"]["state"] == "active"
    assert tasks["notif"]["status_text"] == "serving"


def test_task_exit_is_noticed_and_reported(daemon, make_context) -> None:
    context = make_context([TaskDef("victim")])
    pid = daemon.cli("start", "--context", str(context), "KILL", "--json").json()["tasks"][0]["pid"]
    bus = daemon.bus("control")
    os.kill(pid, signal.SIGKILL)
    failed = wait_message(bus, lambda m: m.action == "failed" and m.service_id == "victim")
    assert failed.content["status"]["result"] == "failure"
    task = daemon.call("status", transaction="KILL")["tasks"][0]
    assert (task["state"], task["result"]) == ("failed", "signal")
    assert "SIGKILL" in task["last_exit"]
    # A failed task starts again on request; its restart is counted.
    again = daemon.cli("start", "KILL", "--json")
    assert again.code == 0, again.stderr
    assert again.json()["tasks"][0]["restarts"] == 1
    bus.close()


def test_task_that_ignores_sigterm_is_killed_after_the_stop_timeout(daemon, make_context) -> None:
    context = make_context(
        [TaskDef("stubborn", command=IGNORES_SIGTERM, notify=True, location=None, stop_timeout=0.5)]
    )
    record = daemon.cli("start", "--context", str(context), "STUB", "--json").json()
    pid = record["tasks"][0]["pid"]
    stopped = daemon.cli("stop", "STUB", "--json").json()["tasks"][0]
    assert (stopped["state"], stopped["result"]) == ("failed", "timeout")
    assert not pid_alive(pid)


def test_stop_kills_the_whole_process_group_and_descendants(daemon, make_context) -> None:
    """A task's children die with it (its process group), even one that left the group."""
    forker = "sh -c 'sleep 3600 & setsid sleep 3601 & echo started; wait'"
    context = make_context([TaskDef("forker", command=forker, location=None)])
    record = daemon.cli("start", "--context", str(context), "TREE", "--json").json()
    import psutil

    main = psutil.Process(record["tasks"][0]["pid"])
    children = wait_until(
        lambda: len(main.children(recursive=True)) >= 2 and main.children(recursive=True)
    )
    assert daemon.cli("stop", "TREE").code == 0
    for child in children:
        wait_until(lambda child=child: not pid_alive(child.pid), what=f"{child.pid} gone")


def test_concurrent_starts_on_different_transactions(daemon, make_context) -> None:
    """Commands on different transactions run concurrently; none is refused as busy."""
    contexts = [make_context([TaskDef("t1", config={"setup_s": 0.3})]) for _ in range(6)]
    results: dict[int, int] = {}
    errors: dict[int, str] = {}

    def start(index: int) -> None:
        done = daemon.cli("start", "--context", str(contexts[index]), f"C{index}")
        results[index] = done.code
        if done.code:
            errors[index] = done.stderr

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(contexts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == dict.fromkeys(range(len(contexts)), 0), errors
    table = daemon.call("status")["transactions"]
    assert {record["transaction"]: record["state"] for record in table} == {
        f"C{i}": "running" for i in range(len(contexts))
    }


def test_commands_on_one_transaction_run_in_order(daemon, make_context) -> None:
    context = make_context([TaskDef("t1", config={"setup_s": 0.5})])
    daemon.call("start", context_path=str(context), context_text=context.read_text(),
                transaction="ORD", block=False)  # fmt: skip
    # The stop queues behind the start; the start's readiness wait is not a lock holder.
    record = daemon.call("stop", transaction="ORD")
    assert record["tasks"][0]["state"] in ("inactive", "failed")
    assert record["tasks"][0]["pid"] is None


def test_sigterm_stops_every_task_and_exits_zero(daemons, make_context) -> None:
    daemon = daemons()
    context = make_context([TaskDef("a"), TaskDef("b")])
    record = daemon.cli("start", "--context", str(context), "TERM", "--json").json()
    pids = [task["pid"] for task in record["tasks"]]
    os.kill(daemon.pid(), signal.SIGTERM)
    assert daemon.wait() == 0
    for pid in pids:
        assert not pid_alive(pid)


@pytest.mark.parametrize("command", ["status", "shutdown", "stop X"])
def test_unreachable_daemon_exits_3_with_a_hint(daemon, command: str) -> None:
    daemon.terminate()
    result = daemon.cli(*command.split())
    assert result.code == 3
    assert "no zsvc daemon is listening" in result.stderr
    assert "zsvc daemon --detach" in result.stderr


def test_shutdown_command_stops_the_daemon(daemon, make_context) -> None:
    context = make_context([TaskDef("a")])
    pid = daemon.cli("start", "--context", str(context), "SD", "--json").json()["tasks"][0]["pid"]
    assert daemon.cli("shutdown").code == 0
    assert daemon.wait() == 0
    assert not pid_alive(pid)


def test_many_tasks_that_are_ready_at_once_are_all_seen_ready(daemon, make_context) -> None:
    """Forty tasks ready at once are all seen ready: a load smoke test. (The race of a READY=1
    read before the zygote's answer is tested exactly in tests/unit/test_local_runner.py.)"""
    context = make_context([TaskDef(f"t{i}") for i in range(40)])
    result = daemon.cli("start", "--context", str(context), "MANY", "--timeout", "20", "--json")
    assert result.code == 0, result.stderr
    assert {task["state"] for task in result.json()["tasks"]} == {"active"}
    assert daemon.cli("stop", "MANY").code == 0


def test_a_step_slower_than_its_interval_does_not_starve_messages(daemon, make_context) -> None:
    context = make_context([TaskDef("slow", instance="SlowStep", service_name="slow")])
    assert daemon.cli("start", "--context", str(context), "SLOW").code == 0
    bus = daemon.bus("control")
    assert (
        daemon.cli("send", "--service_name=slow", "--transaction=SLOW", "--action=ping").code == 0
    )
    heard = wait_message(bus, lambda m: m.action == "updated" and m.service_id == "slow")
    assert heard.content["status"]["heard"] == "ping"
    bus.close()


def test_a_task_package_may_share_a_name_with_a_standard_module(daemon, make_context) -> None:
    context = make_context([TaskDef("sig", instance="signal")])
    result = daemon.cli("start", "--context", str(context), "SIG", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["tasks"][0]["state"] == "active"


def test_context_info_is_published_to_control_subscribers(daemon, make_context) -> None:
    bus = daemon.bus("control")
    assert daemon.cli("start", "--context", str(make_context([TaskDef("t1")])), "INFO").code == 0
    info = wait_message(bus, lambda m: m.status.get("device_action") == "context_info")
    assert info.action == "update" and info.transaction == "INFO"
    assert info.status["data"]["tasks"][0]["id"] == "t1"


def test_restart_of_a_transaction_brings_a_failed_entry_task_back(daemon, make_context) -> None:
    """`zsvc restart TX` is `stop` then `start` of the transaction: a task that failed
    (here SIGKILLed, restart policy 'no') runs again, beside the ones that were up."""
    context = make_context([TaskDef("up"), TaskDef("dies")])
    assert daemon.cli("start", "--context", str(context), "RESTARTTX").code == 0
    tasks = {t["id"]: t for t in daemon.call("status", transaction="RESTARTTX")["tasks"]}
    bus = daemon.bus("control")
    os.kill(tasks["dies"]["pid"], signal.SIGKILL)
    wait_message(bus, lambda m: m.action == "failed" and m.service_id == "dies")
    bus.close()
    assert daemon.cli("restart", "RESTARTTX").code == 0
    after = {t["id"]: t for t in daemon.call("status", transaction="RESTARTTX")["tasks"]}
    assert {t["state"] for t in after.values()} == {"active"}, after
    assert after["up"]["pid"] != tasks["up"]["pid"]
    assert after["dies"]["pid"] not in (None, tasks["dies"]["pid"])
