"""A reload (SIGHUP) executes the daemon anew in the same process; every task keeps running.

This is how a package upgrade takes effect (``systemctl reload zsvc``): the new
code re-adopts the tasks from the table, and goes on noticing their ends.
"""

from __future__ import annotations

import os
import signal

from tests.integration.conftest import TaskDef, pid_alive, wait_message, wait_until
from zsvc.errors import DaemonUnreachable, ZsvcError


def test_sighup_reexecutes_the_daemon_and_keeps_every_task(daemon, make_context) -> None:
    context = make_context([TaskDef("t1"), TaskDef("t2", command="sleep 3600", location=None)])
    assert daemon.cli("start", "--context", str(context), "RELOAD").code == 0
    before = {t["id"]: t["pid"] for t in daemon.call("status", transaction="RELOAD")["tasks"]}
    ping = daemon.call("ping")

    os.kill(daemon.pid(), signal.SIGHUP)

    def reloaded() -> dict | None:
        try:
            answer = daemon.call("ping")
        except (DaemonUnreachable, ZsvcError):  # closed while the daemon executes anew
            return None
        return answer if answer["since"] != ping["since"] else None

    after = wait_until(reloaded, what="the daemon answers again, executed anew", log=daemon.log)
    assert after["pid"] == ping["pid"] == daemon.pid(), "a reload keeps the daemon's pid"
    tasks = daemon.call("status", transaction="RELOAD")["tasks"]
    assert {t["id"]: t["pid"] for t in tasks} == before
    assert {t["state"] for t in tasks} == {"active"}

    # The new daemon watches the re-adopted tasks: an end is noticed and reported.
    bus = daemon.bus("control")
    os.kill(before["t2"], signal.SIGKILL)
    failed = wait_message(bus, lambda m: m.action == "failed" and m.service_id == "t2")
    assert failed.content["status"]["pid"] == before["t2"]
    bus.close()
    assert daemon.cli("stop", "RELOAD").code == 0
    t1 = next(t for t in daemon.call("status", transaction="RELOAD")["tasks"] if t["id"] == "t1")
    assert (t1["state"], t1["pid"]) == ("inactive", None)
    assert wait_until(lambda: not pid_alive(before["t1"]), what="the re-adopted t1 is gone")
