"""zsvc.service and the systemd runner under a real systemd 252 (no mocks).

Each test uses its own transaction id; ids with a ``-`` check that names
are escaped (the slice must not nest under another transaction's).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.conftest import TaskDef
from tests.system.conftest import WORK, Zsvc, wait_for
from zsvc.naming import instance_id, instance_slice, slice_name, unit_name

pytestmark = pytest.mark.system

NOTIFY_LATE = (
    "/usr/bin/python3 -c 'import os, socket, time; time.sleep({delay});"
    " socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto("
    'b"READY=1\\nSTATUS=late but ready", os.environ["NOTIFY_SOCKET"]); time.sleep(600)\''
)
"""A notifying command task that says READY=1 only after *delay* seconds."""
PROPS = [
    *("Type", "NotifyAccess", "KillMode", "CollectMode", "Slice", "ControlGroup"),
    *("TimeoutStartUSec", "TimeoutStopUSec", "WatchdogUSec", "LogExtraFields"),
    *("SyslogIdentifier", "MainPID", "ActiveState"),
]


INSTANCE = instance_id("/var/lib/zsvc")
"""zsvc.service's instance: its state dir is StateDirectory=zsvc (a real directory there)."""


def unit(transaction: str, task: str) -> str:
    return unit_name(transaction, task, INSTANCE)


def test_the_unit_file_verifies_and_runs_the_daemon(zsvc_service: Zsvc) -> None:
    box = zsvc_service.box
    verify = box.run("systemd-analyze", "verify", "/etc/systemd/system/zsvc.service")
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    ping = zsvc_service.ping()
    assert ping["runner"] == "systemd"
    shown = zsvc_service.show("zsvc.service", "Type", "MainPID", "WatchdogUSec", "ActiveState")
    assert shown == {
        "Type": "notify",
        "MainPID": str(ping["pid"]),
        "WatchdogUSec": "30s",
        "ActiveState": "active",
    }
    mode = box.run("stat", "-c", "%a %G", "/run/zsvc").stdout.split()
    assert mode == ["751", "zsvc"]  # others may search it (the notify socket), not list it


def test_each_task_is_a_transient_unit_with_the_right_properties(zsvc_service: Zsvc) -> None:
    tx = "sys-props"
    context = zsvc_service.context(
        [
            TaskDef("py", attrs={"watchdog_sec": "30"}, stop_timeout=4.0),
            TaskDef("cmd", command="/bin/sleep 600"),
        ]
    )
    zsvc_service.ok("start", "--context", context, tx)
    status = {task["id"]: task for task in zsvc_service.status(tx)["tasks"]}
    py = zsvc_service.show(unit(tx, "py"), *PROPS)
    assert py == {
        "Type": "notify",
        "NotifyAccess": "main",
        "KillMode": "control-group",
        "CollectMode": "inactive-or-failed",
        "Slice": slice_name("sys-props", INSTANCE),
        "ControlGroup": (
            f"/zsvc.slice/{instance_slice(INSTANCE)}/{slice_name('sys-props', INSTANCE)}"
            f"/{unit(tx, 'py')}"
        ),
        "TimeoutStartUSec": "20s",
        "TimeoutStopUSec": "4s",
        "WatchdogUSec": "30s",
        "LogExtraFields": "ZSVC_TRANSACTION=sys-props ZSVC_TASK=py ZSVC_SERVICE=py",
        "SyslogIdentifier": "sys-props/py",
        "MainPID": str(status["py"]["pid"]),
        "ActiveState": "active",
    }
    cmd = zsvc_service.show(unit(tx, "cmd"), "Type", "MainPID", "WatchdogUSec")
    assert cmd == {"Type": "exec", "MainPID": str(status["cmd"]["pid"]), "WatchdogUSec": "0"}
    zsvc_service.ok("stop", tx)
    for task in ("py", "cmd"):
        assert zsvc_service.show(unit(tx, task), "LoadState") == {"LoadState": "not-found"}
    stopped = {task["id"]: task for task in zsvc_service.status(tx)["tasks"]}
    assert {t["state"] for t in stopped.values()} == {"inactive"}
    wait_for(  # the idle slice is stopped too: nothing is left behind
        lambda: (
            zsvc_service.show(slice_name("sys-props", INSTANCE), "ActiveState")["ActiveState"]
            != "active"
        ),
        what="the transaction's slice stopped",
    )
    assert stopped["cmd"]["last_exit"] == "killed by SIGTERM (success)"


def test_readiness_gates_zsvc_start(zsvc_service: Zsvc) -> None:
    tx = "sys-ready"
    context = zsvc_service.context(
        [
            TaskDef("late", command=NOTIFY_LATE.format(delay=1.5), notify=True),
            TaskDef("next", command="/bin/sleep 600", attrs={"after": "late"}),
        ]
    )
    began = time.monotonic()
    zsvc_service.ok("start", "--context", context, tx)
    took = time.monotonic() - began
    tasks = {task["id"]: task for task in zsvc_service.status(tx)["tasks"]}
    assert took >= 1.5
    assert tasks["late"]["state"] == "active"
    assert tasks["late"]["status_text"] == "late but ready"
    assert tasks["next"]["state"] == "active"
    zsvc_service.ok("stop", tx)


def test_journal_has_each_tasks_output_and_zsvc_logs_reads_it(zsvc_service: Zsvc) -> None:
    tx = "sys-logs"
    context = zsvc_service.context(
        [
            TaskDef("one", command="/bin/sh -c 'echo output-of-one; exec sleep 600'"),
            TaskDef("two", command="/bin/sh -c 'echo output-of-two >&2; exec sleep 600'"),
        ]
    )
    zsvc_service.ok("start", "--context", context, tx)
    box = zsvc_service.box

    def journal() -> str:
        return box.run("journalctl", "--no-pager", f"ZSVC_TRANSACTION={tx}").stdout

    def both() -> list[str] | str:
        out = journal()
        return [out] if "output-of-one" in out and "output-of-two" in out else out

    [text] = wait_for(both, what="both tasks' lines in the journal")
    assert "sys-logs/one" in text  # SyslogIdentifier
    assert "ready" in text  # the daemon's own events carry the same fields
    only_two = zsvc_service.ok("logs", tx, "--service", "two", "-n", "50")
    assert "output-of-two" in only_two and "output-of-one" not in only_two
    both = zsvc_service.ok("logs", tx, "-n", "50")
    assert "output-of-one" in both and "output-of-two" in both
    zsvc_service.ok("stop", tx)


def test_sigkill_of_a_task_fires_on_fail(zsvc_service: Zsvc) -> None:
    tx = "sys-kill"
    victim = TaskDef("victim", triggers={"on_fail": ("start", "rescue")})
    context = zsvc_service.context([victim, TaskDef("rescue", entry="on_fail")])
    zsvc_service.ok("start", "--context", context, tx)
    pid = zsvc_service.task(tx, "victim")["pid"]
    assert zsvc_service.task(tx, "rescue")["state"] == "inactive"
    zsvc_service.box.run("kill", "-KILL", str(pid), check=True)
    rescue = wait_for(
        lambda: (t := zsvc_service.task(tx, "rescue"))["state"] == "active" and t,
        what="on_fail started the rescue task",
    )
    killed = zsvc_service.task(tx, "victim")
    assert (killed["state"], killed["result"]) == ("failed", "signal")
    assert killed["last_exit"] == "killed by SIGKILL (signal)"
    assert rescue["pid"] != pid
    # The failed unit was collected: its name is free for the next run.
    zsvc_service.ok("start", tx, "--service", "victim")
    assert zsvc_service.task(tx, "victim")["state"] == "active"
    zsvc_service.ok("stop", tx)


def test_a_failed_unit_name_is_reused(zsvc_service: Zsvc) -> None:
    tx = "sys-fail"
    context = zsvc_service.context([TaskDef("bad", command="/bin/sh -c 'exit 3'")])
    for _ in range(3):
        zsvc_service.zsvc("start", "--context", context, tx)
        bad = wait_for(
            lambda: (t := zsvc_service.task(tx, "bad"))["state"] == "failed" and t,
            what="the task failed",
        )
        assert (bad["result"], bad["last_exit"]) == (
            "exit-code",
            "exited with status 3 (exit-code)",
        )


def test_a_double_forking_task_leaves_nothing_in_its_cgroup(zsvc_service: Zsvc) -> None:
    tx = "sys-orphan"
    pidfile = f"{WORK}/orphan.pid"
    context = zsvc_service.context(
        [TaskDef("orphaner", instance="Orphaner", config={"pidfile": pidfile, "execs": True})]
    )
    zsvc_service.ok("start", "--context", context, tx)
    grandchild = int(zsvc_service.read(pidfile))
    cgroup = zsvc_service.show(unit(tx, "orphaner"), "ControlGroup")["ControlGroup"]
    procs = zsvc_service.box.run("cat", f"/sys/fs/cgroup/unified{cgroup}/cgroup.procs").stdout
    assert str(grandchild) in procs.split()
    zsvc_service.ok("stop", tx)
    wait_for(lambda: not zsvc_service.alive(grandchild), what="the grandchild is gone")
    gone = zsvc_service.box.run("test", "-e", f"/sys/fs/cgroup/unified{cgroup}")
    assert gone.returncode != 0


def test_the_monitor_samples_the_units_cgroup(zsvc_service: Zsvc) -> None:
    """A grandchild that left the task's process tree (setsid, its parent gone) is still in
    the unit's cgroup, and so in the task's sample: the cgroup is the process set."""
    tx = "sys-monitor"
    pidfile = f"{WORK}/monitored.pid"
    context = zsvc_service.context(
        [TaskDef("orphaner", instance="Orphaner", config={"pidfile": pidfile, "execs": True})]
    )
    zsvc_service.ok("start", "--context", context, tx)
    grandchild = int(zsvc_service.read(pidfile))
    sample = json.loads(zsvc_service.ok("monitor", tx, "--once", "--json"))
    (task,) = sample["tasks"]
    pids = {task["usage"]["pid"], *(child["pid"] for child in task["usage"]["children"])}
    assert grandchild in pids, sample
    assert task["usage"]["processes"] >= 2
    zsvc_service.ok("stop", tx)


def test_sigkill_of_the_daemon_readopts_every_task(zsvc_service: Zsvc) -> None:
    tx = "sys-crash"
    victim = TaskDef("victim", triggers={"on_fail": ("start", "rescue")})
    context = zsvc_service.context(
        [victim, TaskDef("cmd", command="/bin/sleep 600"), TaskDef("rescue", entry="on_fail")]
    )
    zsvc_service.ok("start", "--context", context, tx)
    before = {task["id"]: task for task in zsvc_service.status(tx)["tasks"]}
    old = zsvc_service.ping()["pid"]
    restarts = int(zsvc_service.show("zsvc.service", "NRestarts")["NRestarts"])
    zsvc_service.box.run("kill", "-KILL", str(old), check=True)

    def new_daemon() -> int | None:
        done = zsvc_service.zsvc("ping")
        pid = zsvc_service.ping()["pid"] if done.returncode == 0 else None
        return pid if pid not in (None, old) else None

    assert wait_for(new_daemon, timeout=30.0, what="systemd restarted the daemon") != old
    assert int(zsvc_service.show("zsvc.service", "NRestarts")["NRestarts"]) == restarts + 1
    after = {task["id"]: task for task in zsvc_service.status(tx)["tasks"]}
    for task_id in ("victim", "cmd"):
        assert after[task_id]["pid"] == before[task_id]["pid"]
        assert after[task_id]["state"] == "active"
        assert after[task_id]["restarts"] == before[task_id]["restarts"]
        main_pid = zsvc_service.show(unit(tx, task_id), "MainPID")["MainPID"]
        assert main_pid == str(before[task_id]["pid"])
    # Signals of the adopted units still reach the new daemon: triggers keep working.
    zsvc_service.box.run("kill", "-KILL", str(before["victim"]["pid"]), check=True)
    wait_for(
        lambda: zsvc_service.task(tx, "rescue")["state"] == "active",
        what="on_fail after the re-adoption",
    )
    assert zsvc_service.task(tx, "victim")["result"] == "signal"
    zsvc_service.ok("stop", tx)


LOCAL = {"ZSVC_RUNTIME_DIR": "/run/zsvc-local", "ZSVC_STATE_DIR": "/var/lib/zsvc-local"}
VOLATILE = {"pid", "since", "created", "context", "context_id"}


def test_both_runners_show_the_same_status(zsvc_service: Zsvc) -> None:
    """The same context under the systemd runner and under a local daemon in the same box."""
    box = zsvc_service.box
    flags = "".join(f" -E {key}={value}" for key, value in LOCAL.items())
    daemon = (
        f"systemd-run --unit=zsvc-local -p Type=notify{flags} /usr/bin/zsvc daemon --runner local"
    )
    box.run("sh", "-c", daemon, check=True)
    try:
        assert json.loads(box.run("zsvc", "ping", env=LOCAL).stdout)["runner"] == "local"
        tasks = [
            TaskDef("py", config={"period_s": 3600}),
            TaskDef("cmd", command="/bin/sh -c 'exit 4'", triggers={"on_fail": ("start", "waits")}),
            TaskDef("late", command=NOTIFY_LATE.format(delay=0.2), notify=True),
            TaskDef("waits", entry="on_fail"),
        ]
        views = []
        for env in (None, LOCAL):
            context = zsvc_service.context(tasks)
            box.run("zsvc", "start", "--context", context, "sys-same", env=env, timeout=60)
            view = wait_for(
                lambda env=env: _settled(box, env),
                what=f"cmd failed and its on_fail started 'waits' ({env})",
            )
            views.append(_comparable(view))
            box.run("zsvc", "stop", "sys-same", env=env, timeout=60)
        assert views[0] == views[1]
    finally:
        box.run("zsvc", "shutdown", "--wait", env=LOCAL, timeout=60)


def _settled(box, env) -> dict | str:
    """The status once it stopped changing; else the status itself (shown when it times out)."""
    view = json.loads(box.run("zsvc", "status", "sys-same", "--json", env=env).stdout)
    tasks = {task["id"]: task for task in view["tasks"]}
    done = tasks["cmd"]["state"] == "failed" and tasks["waits"]["state"] == "active"
    return (
        view
        if done
        else json.dumps(tasks) + "\n" + box.run("journalctl", "-n", "40", "--no-pager").stdout
    )


def _comparable(view: dict) -> dict:
    """The view without what differs from run to run (pids, times). last_action is
    compared too: a Sleeper publishes 'updated' right after READY=1, and under systemd
    READY=1 reaches the daemon through systemd and D-Bus, often after that update; the
    manager holds such early updates until the run is ready, so both runners agree."""
    view = {k: v for k, v in view.items() if k not in VOLATILE}
    view["tasks"] = [{k: v for k, v in t.items() if k not in VOLATILE} for t in view["tasks"]]
    return view


def test_systemd_daemon_reload_and_zsvc_reload_keep_every_task_followed(zsvc_service: Zsvc) -> None:
    """daemon-reload sends UnitRemoved for live units too; a zsvc reload re-executes it."""
    tx = "sys-reload"
    victim = TaskDef("victim", triggers={"on_fail": ("start", "rescue")})
    context = zsvc_service.context([victim, TaskDef("rescue", entry="on_fail")])
    zsvc_service.ok("start", "--context", context, tx)
    pid = zsvc_service.task(tx, "victim")["pid"]
    zsvc_service.box.run("systemctl", "daemon-reload", check=True)
    zsvc_service.box.run("systemctl", "reload", "zsvc.service", check=True, timeout=60)
    zsvc_service.box.run("systemctl", "daemon-reload", check=True)
    assert zsvc_service.task(tx, "victim") | {"since": 0} == zsvc_service.task(tx, "victim") | {
        "since": 0,
        "pid": pid,
        "state": "active",
    }
    zsvc_service.box.run("kill", "-KILL", str(pid), check=True)
    wait_for(
        lambda: zsvc_service.task(tx, "rescue")["state"] == "active",
        what="on_fail after the reloads",
    )
    assert zsvc_service.task(tx, "victim")["result"] == "signal"
    zsvc_service.ok("stop", tx)


def test_a_start_timeout_and_leftovers_are_told_as_by_the_local_runner(zsvc_service: Zsvc) -> None:
    """Issue 14: "no READY=1 within 1 s", not "killed by SIGTERM (timeout)"; and a main
    process that exits leaving a process, which systemd kills, is shown with the hint."""
    mute = zsvc_service.context(
        [TaskDef("mute", command="/bin/sleep 600", notify=True, start_timeout=1.0)]
    )
    failed = zsvc_service.zsvc("start", "--context", mute, "sys-mute")
    assert failed.returncode == 1, failed
    assert "no READY=1 within 1 s (timeout)" in failed.stdout + failed.stderr, failed
    left = zsvc_service.context(
        [TaskDef("bg", command="/bin/sh -c '/bin/sleep 600 & exit 0'", command_type="exec")]
    )
    zsvc_service.ok("start", "--context", left, "sys-left")
    wait_for(
        lambda: bool(zsvc_service.task("sys-left", "bg")["last_exit"]),
        what="the end of the task whose main process exited",
    )
    last_exit = zsvc_service.task("sys-left", "bg")["last_exit"]
    assert "leftover process" in last_exit and 'type="forking"' in last_exit, last_exit
