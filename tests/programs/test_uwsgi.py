"""uWSGI: notifying, as root or dropping to a throwaway user (``--uid``), and a program
whose SIGTERM means "reload": it stops on SIGINT (``kill_signal="SIGINT"``)."""

from __future__ import annotations

import time

from tests.integration.conftest import free_port
from tests.programs.checks import http_get, proc_status
from tests.programs.conftest import Case
from tests.programs.contexts import ProgramTask
from tests.programs.flows import ready_at_once, restarted_after_sigkill, stopped_cleanly

APP = """def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"uwsgi ok"]
"""
STOP_TIMEOUT = 10.0


def uwsgi(case: Case, port: int, *options: str) -> str:
    app = case.write("app.py", APP)
    return (
        f"/usr/bin/uwsgi --plugin python3 --http-socket 127.0.0.1:{port} --wsgi-file {app}"
        f" --master --processes 2 --need-app {' '.join(options)}"
    )


def test_uwsgi_as_root_dies_on_term(case: Case) -> None:
    """uWSGI told to stop on SIGTERM (``--die-on-term``): the default stop signal works."""
    port = free_port()
    attrs = {"restart": "always", "restart_sec": "0"}
    command = uwsgi(case, port, "--die-on-term")
    case.start([ProgramTask("uwsgi", command, type="notify", attrs=attrs)])
    probe = lambda: b"uwsgi ok" in http_get(port)  # noqa: E731
    first = ready_at_once(case, "uwsgi", probe)
    assert first["status_text"] == "uWSGI is ready"
    restarted_after_sigkill(case, "uwsgi", probe)
    stopped_cleanly(case, "uwsgi", (port,))
    assert "goodbye to uWSGI" in case.logs("uwsgi")


def test_uwsgi_as_a_user_stops_on_sigint(case: Case) -> None:
    """``--uid`` of a throwaway user: its master says READY=1 as that user; SIGTERM would
    reload it, so the task's stop signal is SIGINT, and a stop is quick and clean."""
    port = free_port()
    user, uid, gid = case.user()
    attrs = {"restart": "always", "restart_sec": "0", "kill_signal": "SIGINT"}
    command = uwsgi(case, port, f"--uid {user} --gid {user}")
    task = ProgramTask("uwsgi", command, type="notify", attrs=attrs, stop_timeout=STOP_TIMEOUT)
    case.start([task])
    probe = lambda: b"uwsgi ok" in http_get(port)  # noqa: E731
    first = ready_at_once(case, "uwsgi", probe)
    assert first["status_text"] == "uWSGI is ready"
    master = proc_status(case.stack.proc(first["pid"], "status"))
    assert (master["Uid"], master["Gid"]) == (str(uid), str(gid))
    restarted_after_sigkill(case, "uwsgi", probe)
    began = time.monotonic()
    last = stopped_cleanly(case, "uwsgi", (port,))
    assert time.monotonic() - began < STOP_TIMEOUT / 2, "the stop waited for a SIGKILL"
    log = case.logs("uwsgi")
    assert "goodbye to uWSGI" in log and "reloading" not in log.lower(), log[-2000:]
    assert last["last_exit"] == "exited with status 0 (success)", last
