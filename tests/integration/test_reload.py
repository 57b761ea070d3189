"""A reload (SIGHUP) executes the daemon anew in the same process; every task keeps running.

This is how a package upgrade takes effect (``systemctl reload zsvc``): the new
code re-adopts the tasks from the table, and goes on noticing their ends.
"""

from __future__ import annotations

import os
import signal

from tests.integration.conftest import (
    LOW_FD_LIMIT,
    TaskDef,
    fd_limit,
    pid_alive,
    soft_fd_limit,
    wait_message,
    wait_until,
    zygote_of,
)
from zsvc.errors import DaemonUnreachable, ZsvcError


def reload_and_wait(daemon) -> dict:
    """SIGHUP *daemon*; return its ping once it answers again as a new execution."""
    since = daemon.call("ping")["since"]
    os.kill(daemon.pid(), signal.SIGHUP)

    def reloaded() -> dict | None:
        try:
            answer = daemon.call("ping")
        except (DaemonUnreachable, ZsvcError):  # closed while the daemon executes anew
            return None
        return answer if answer["since"] != since else None

    return wait_until(reloaded, what="the daemon answers again, executed anew", log=daemon.log)


def test_sighup_reexecutes_the_daemon_and_keeps_every_task(daemon, make_context) -> None:
    context = make_context([TaskDef("t1"), TaskDef("t2", command="sleep 3600", location=None)])
    assert daemon.cli("start", "--context", str(context), "RELOAD").code == 0
    before = {t["id"]: t["pid"] for t in daemon.call("status", transaction="RELOAD")["tasks"]}
    ping = daemon.call("ping")
    after = reload_and_wait(daemon)
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


def test_a_reload_keeps_giving_tasks_the_original_open_files_limit(daemons, make_context) -> None:
    """The daemon raised its soft open-files limit; its tasks get the one it was started
    with. A reload executes it anew with that original limit, so the new daemon knows
    it too: a task started after the reload, and the new zygote, get it as well."""
    with soft_fd_limit() as hard:
        daemon = daemons()
    context = make_context([TaskDef("py"), TaskDef("cmd", command="sleep 3600", location=None)])
    assert daemon.cli("start", "--context", str(context), "BEFORE").code == 0
    before = {t["id"]: t["pid"] for t in daemon.call("status", transaction="BEFORE")["tasks"]}
    reload_and_wait(daemon)
    soft, daemon_hard = fd_limit(daemon.pid())
    assert soft > LOW_FD_LIMIT and daemon_hard == hard, "the new daemon raised its limit again"
    zygote = zygote_of(daemon.pid())
    assert zygote is not None, "the new daemon runs a zygote"
    assert fd_limit(zygote.pid) == (LOW_FD_LIMIT, hard)
    assert daemon.cli("start", "--context", str(context), "AFTER").code == 0
    after = {t["id"]: t["pid"] for t in daemon.call("status", transaction="AFTER")["tasks"]}
    for pid in [*before.values(), *after.values()]:
        assert fd_limit(pid) == (LOW_FD_LIMIT, hard)
    assert daemon.cli("stop", "BEFORE").code == 0
    assert daemon.cli("stop", "AFTER").code == 0


def test_a_reload_that_would_read_invalid_settings_is_refused(daemons, workdir) -> None:
    """The new daemon would exit on the file: the running one refuses to go and says why."""
    settings = workdir / "zsvc.conf"
    settings.write_text("[daemon]\nlog_level = info\n")
    daemon = daemons(args=["--config", str(settings)])
    ping = daemon.call("ping")
    settings.write_text("[daemon]\nlog_level = loud\n")
    os.kill(daemon.pid(), signal.SIGHUP)
    wait_until(
        lambda: "reload refused, the daemon goes on as it was: invalid settings" in daemon.log(),
        what="the refusal in the daemon's log",
        log=daemon.log,
    )
    assert f"{settings}:2:1: log_level: 'loud' is not one of" in daemon.log()
    assert daemon.call("ping")["since"] == ping["since"], "the daemon did not execute anew"
    # Mended, the file is read by the next reload.
    settings.write_text("[daemon]\nlog_level = warning\n")
    reload_and_wait(daemon)


def test_zsvc_reexec_returns_once_the_new_daemon_answers(daemon, make_context) -> None:
    """``zsvc reexec`` (what ``systemctl reload zsvc`` runs): when it returns, the new
    daemon answers at once — a SIGHUP returned before the new one listened."""
    context = make_context([TaskDef("cmd", command="sleep 3600", location=None)])
    assert daemon.cli("start", "--context", str(context), "REEXEC").code == 0
    before = daemon.call("status", transaction="REEXEC")["tasks"][0]["pid"]
    ping = daemon.call("ping")
    done = daemon.cli("reexec", "--timeout", "30")
    assert done.code == 0, done.stderr
    assert f"daemon executed anew (pid {ping['pid']})" in done.stdout
    after = daemon.call("ping")  # no wait: it must already listen
    assert (after["pid"], after["since"] != ping["since"]) == (ping["pid"], True)
    assert daemon.call("status", transaction="REEXEC")["tasks"][0]["pid"] == before
    assert daemon.cli("stop", "REEXEC").code == 0


def test_zsvc_reexec_with_invalid_settings_fails_and_names_them(daemons, workdir) -> None:
    settings = workdir / "zsvc.conf"
    settings.write_text("[daemon]\nlog_level = info\n")
    daemon = daemons(args=["--config", str(settings)])
    ping = daemon.call("ping")
    settings.write_text("[daemon]\nlog_level = loud\n")
    done = daemon.cli("reexec")
    assert done.code == 1
    assert "reload refused, the daemon goes on as it was: invalid settings" in done.stderr
    assert f"{settings}:2:1: log_level: 'loud' is not one of" in done.stderr
    assert daemon.call("ping")["since"] == ping["since"], "the daemon did not execute anew"
