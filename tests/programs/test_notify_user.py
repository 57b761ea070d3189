"""A notifying program run as an unprivileged user (``setpriv``): its READY=1 and STATUS=
reach the daemon on both runners, as under systemd, where the notify socket takes anyone's
datagram and the sender is known by its credentials."""

from __future__ import annotations

from tests.integration.conftest import free_port
from tests.programs.checks import http_get, proc_status
from tests.programs.conftest import Case
from tests.programs.contexts import ProgramTask
from tests.programs.flows import ready_at_once, restarted_after_sigkill, stopped_cleanly

SERVER = (
    "import http.server, os, socket, sys;"
    " server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])),"
    " http.server.SimpleHTTPRequestHandler);"
    " socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto("
    "b'READY=1\\nSTATUS=serving as ' + str(os.getuid()).encode(), os.environ['NOTIFY_SOCKET']);"
    " server.serve_forever()"
)
"""An HTTP server (Debian's python3) that says READY=1 once it listens."""


def test_a_user_notifies(case: Case) -> None:
    port = free_port()
    _, uid, gid = case.user()
    command = (
        f"/usr/bin/setpriv --reuid={uid} --regid={gid} --clear-groups"
        f' /usr/bin/python3 -c "{SERVER}" {port}'
    )
    attrs = {"restart": "always", "restart_sec": "0"}
    case.start([ProgramTask("web", command, type="notify", attrs=attrs)])
    probe = lambda: http_get(port).startswith(b"HTTP/1.0 200")  # noqa: E731
    first = ready_at_once(case, "web", probe)
    assert first["status_text"] == f"serving as {uid}"
    server = proc_status(case.stack.proc(first["pid"], "status"))
    assert (server["Uid"], server["Gid"]) == (str(uid), str(gid))
    restarted_after_sigkill(case, "web", probe)
    last = stopped_cleanly(case, "web", (port,))
    assert last["last_exit"] == "killed by SIGTERM (success)", last
