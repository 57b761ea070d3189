"""Bad input and faults: each gives a clear error, loses nothing, and never kills the daemon."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import zmq

from tests.integration.conftest import IGNORES_SIGTERM, TaskDef, pid_alive, wait_message


def _table(daemon) -> dict[str, str]:
    return {r["transaction"]: r["state"] for r in daemon.call("status")["transactions"]}


def test_malformed_context_is_refused_with_its_location(daemon, workdir: Path) -> None:
    bad = workdir / "Context-bad.xml"
    bad.write_text("<Context>\n  <ContextID>x</ContextID>\n  <TaskService id='t1'>\n</Context>\n")
    result = daemon.cli("start", "--context", str(bad), "BAD")
    assert result.code == 2
    assert f"{bad}:4:" in result.stderr or f"{bad}:3:" in result.stderr
    assert _table(daemon) == {}
    validated = daemon.cli("validate", str(bad))
    assert validated.code == 2 and str(bad) in validated.stderr


def test_invalid_context_reaching_the_daemon_is_refused(daemon, workdir: Path) -> None:
    """The daemon validates too: a client that skips local validation gets the same error."""
    from zsvc.errors import ConfigError, ZsvcError

    with pytest.raises(ZsvcError) as caught:
        daemon.call("start", context_path="/x/Context-y.xml", context_text="<Context><oops/>")
    assert caught.value.code == ConfigError.code
    assert "/x/Context-y.xml:1:" in caught.value.message
    assert _table(daemon) == {}


def test_validate_accepts_the_samples(daemon) -> None:
    result = daemon.cli("validate", "Conf/Context-EchoAction.xml", "Conf/Context-StateMachine.xml")
    assert result.code == 0, result.stderr
    assert "ok (1 tasks)" in result.stdout and "ok (4 tasks)" in result.stdout


def test_missing_task_module_fails_before_anything_starts(daemon, make_context) -> None:
    context = make_context([TaskDef("ok1"), TaskDef("ghost", instance="NoSuchService")])
    result = daemon.cli("start", "--context", str(context), "GHOST")
    assert result.code == 1
    assert "task ghost" in result.stderr
    assert "NoSuchService/ServiceNoSuchService.py does not exist" in result.stderr
    assert _table(daemon) == {}


def test_crash_in_setup_names_the_task_and_the_reason(daemon, make_context) -> None:
    context = make_context([TaskDef("burn", instance="SetupFails")])
    result = daemon.cli("start", "--context", str(context), "FIRE")
    assert result.code == 1
    assert "task burn exited with status 1" in result.stderr
    assert "the database is on fire" in result.stderr
    task = daemon.call("status", transaction="FIRE")["tasks"][0]
    assert (task["state"], task["result"], task["last_action"]) == ("failed", "exit-code", "failed")
    log = daemon.cli("logs", "FIRE")
    assert "RuntimeError: the database is on fire" in log.stdout


def test_failure_after_ready_is_reported_with_its_traceback(daemon, make_context) -> None:
    context = make_context([TaskDef("late", instance="StepFails")])
    bus = daemon.bus("control")
    assert daemon.cli("start", "--context", str(context), "LATE").code == 0
    wait_message(bus, lambda m: m.action == "failed" and m.service_id == "late")
    task = daemon.call("status", transaction="LATE")["tasks"][0]
    assert (task["state"], task["result"]) == ("failed", "exit-code")
    assert "ValueError: step went wrong" in daemon.cli("logs", "LATE").stdout
    bus.close()


def test_a_task_that_never_sends_ready_times_out(daemon, make_context) -> None:
    context = make_context(
        [TaskDef("mute", command="sleep 3600", notify=True, location=None, start_timeout=0.5)]
    )
    result = daemon.cli("start", "--context", str(context), "MUTE")
    assert result.code == 1
    assert "task mute" in result.stderr and "(timeout)" in result.stderr
    task = daemon.call("status", transaction="MUTE")["tasks"][0]
    assert (task["state"], task["result"], task["pid"]) == ("failed", "timeout", None)


def test_a_missing_executable_is_a_clear_failure(daemon, make_context) -> None:
    context = make_context([TaskDef("nope", command="/no/such/program", location=None)])
    result = daemon.cli("start", "--context", str(context), "NOEXEC")
    assert result.code == 1
    assert "task nope exited with status 203" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["status", "NOPE"],
        ["stop", "NOPE"],
        ["restart", "NOPE"],
        ["logs", "NOPE"],
        ["start", "NOPE"],
    ],
)
def test_unknown_transaction_exits_4(daemon, args: list[str]) -> None:
    result = daemon.cli(*args)
    assert result.code == 4, result.stderr
    assert "unknown transaction 'NOPE'" in result.stderr


def test_unknown_task_exits_4(daemon, make_context) -> None:
    context = make_context([TaskDef("t1")])
    assert daemon.cli("start", "--context", str(context), "UT").code == 0
    result = daemon.cli("stop", "UT", "--service", "t9")
    assert result.code == 4
    assert "has no task 't9'" in result.stderr


def test_invalid_transaction_id_exits_2(daemon, make_context) -> None:
    context = make_context([TaskDef("t1")])
    result = daemon.cli("start", "--context", str(context), "bad/id")
    assert result.code == 2
    assert "invalid transaction id" in result.stderr


def test_garbage_on_the_bus_and_the_control_socket_is_survived(daemon, make_context) -> None:
    context = make_context([TaskDef("t1")])
    assert daemon.cli("start", "--context", str(context), "JUNK").code == 0
    ctx = zmq.Context()
    try:
        pub = ctx.socket(zmq.PUB)
        pub.connect(f"ipc://{daemon.runtime / 'bus-pub'}")
        junk = [
            [b"control", b"not json"],
            [b"control @@@ {"],
            [b"state", b"[1, 2]"],
            [b"state", b'{"header": {"action": "request", "service_transaction": "x/y"}}'],
            [b"control", b'{"header": {"action": "updated"}, "content": ' + b"9" * 5000 + b"}"],
            [b"context", b'{"header": {"action": "start"}}'],
            [b"control", b"\xff\xfe", b"third frame"],
            [b"\xff", b"{}"],
        ]
        for frames in junk * 20:
            pub.send_multipart(frames)
        control = ctx.socket(zmq.DEALER)
        control.setsockopt(zmq.LINGER, 0)
        control.connect(f"ipc://{daemon.runtime / 'control'}")
        requests = [
            b"",
            b"garbage",
            b"[]",
            b'{"id": 5}',
            b'{"id": "a", "command": "nope"}',
            b'{"id": "b", "command": "stop", "args": {"transaction": 7}}',
            json.dumps({"id": "c", "command": "status", "args": {"x": 1}}).encode(),
        ]
        for request in requests:
            control.send(request)
        replies = []
        while len(replies) < len(requests) and control.poll(5000):
            replies.append(json.loads(control.recv()))
        assert len(replies) == len(requests)  # every bad request gets an error reply
        assert all(reply["ok"] is False for reply in replies)
        assert {reply["error"]["code"] for reply in replies} == {"bad-request"}
        control.send_multipart([b"a", b"b", b"c"])  # a malformed envelope: ignored
    finally:
        ctx.destroy(0)
    # Still alive, still forwarding, still answering.
    assert daemon.call("ping")["pid"] == daemon.pid()
    bus = daemon.bus("control")
    assert daemon.cli("restart", "JUNK").code == 0
    wait_message(bus, lambda m: m.action == "started" and m.transaction == "JUNK")
    bus.close()


def test_a_second_daemon_on_the_same_runtime_dir_refuses(daemons, workdir: Path) -> None:
    first = daemons()
    second = daemons(root=workdir, expect_ready=False)
    assert second.wait() == 1
    assert f"already runs on {first.runtime}" in second.log()
    assert first.call("ping")["pid"] == first.pid()


def test_daemon_sigkill_then_restart_readopts_live_tasks(daemons, make_context, workdir) -> None:
    """A SIGKILLed daemon's successor lists every transaction, re-adopts live tasks by pid and
    start time, stops them on request, and reports truthfully a task that died meanwhile."""
    daemon = daemons()
    context = make_context([TaskDef("keep"), TaskDef("lose")])
    record = daemon.cli("start", "--context", str(context), "CRASH", "--json").json()
    pids = {task["id"]: task["pid"] for task in record["tasks"]}
    daemon.kill9()
    assert all(pid_alive(pid) for pid in pids.values())  # tasks outlive the daemon
    os.kill(pids["lose"], signal.SIGKILL)

    successor = daemons(root=workdir)
    tasks = {t["id"]: t for t in successor.call("status", transaction="CRASH")["tasks"]}
    assert (tasks["keep"]["state"], tasks["keep"]["pid"]) == ("active", pids["keep"])
    assert (tasks["lose"]["state"], tasks["lose"]["result"]) == ("failed", "lost")
    assert "daemon" in tasks["lose"]["last_exit"]
    assert "lost: CRASH/lose" in successor.log()

    stopped = successor.cli("stop", "CRASH", "--json")
    assert stopped.code == 0, stopped.stderr
    assert not pid_alive(pids["keep"])
    keep = {t["id"]: t for t in stopped.json()["tasks"]}["keep"]
    assert (keep["state"], keep["last_action"]) == ("inactive", "stopped")


def test_acknowledged_changes_survive_a_daemon_sigkill(daemons, make_context, workdir) -> None:
    daemon = daemons()
    for name in ("A1", "A2", "A3"):
        context = make_context([TaskDef("t")])
        assert daemon.cli("start", "--context", str(context), name).code == 0
    assert daemon.cli("stop", "A2").code == 0
    daemon.kill9()
    successor = daemons(root=workdir)
    assert _table(successor) == {"A1": "running", "A2": "stopped", "A3": "running"}


def test_the_bus_is_never_bound_off_loopback(daemon, workdir: Path) -> None:
    """The bus has no authentication: a context asking for a public TCP bind is refused."""
    context = workdir / "Context-public.xml"
    context.write_text(
        "<Context><FrontBind>tcp://192.0.2.7:25999</FrontBind>"
        "<BackendBind>tcp://192.0.2.7:25998</BackendBind><ContextID>pub</ContextID>"
        '<TaskService id="t1" instance="x"><Task><command>sleep 1</command><message><header>'
        "<service_name>t</service_name></header></message></Task></TaskService></Context>"
    )
    result = daemon.cli("start", "--context", str(context), "PUB")
    assert result.code == 1
    assert "refusing to bind the bus on tcp://192.0.2.7:25999" in result.stderr
    assert _table(daemon) == {}


def test_nothing_starts_once_shutdown_began(daemon, make_context) -> None:
    from zsvc.errors import ZsvcError

    context = make_context(
        [TaskDef("slow", command=IGNORES_SIGTERM, notify=True, location=None, stop_timeout=3)]
    )
    assert daemon.cli("start", "--context", str(context), "SLOWSTOP").code == 0
    other = make_context([TaskDef("late")])
    with daemon.client() as client:
        client.call("shutdown")
        with pytest.raises(ZsvcError, match="shutting down"):
            client.call("start", context_path=str(other), context_text=other.read_text())
    assert daemon.wait() == 0


def test_an_unknown_task_in_a_new_transaction_creates_nothing(daemon, make_context) -> None:
    context = make_context([TaskDef("t1")])
    result = daemon.cli("start", "--context", str(context), "NEWTX", "--service", "bogus")
    assert result.code == 4
    assert "no task 'bogus'" in result.stderr
    assert _table(daemon) == {}
