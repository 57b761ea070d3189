"""nginx in the foreground (``daemon off``, type exec) and putting itself in the background
(``daemon on``, type forking with its PID file)."""

from __future__ import annotations

from tests.integration.conftest import free_port
from tests.programs.checks import http_get, listening, poll
from tests.programs.conftest import Case
from tests.programs.contexts import ProgramTask
from tests.programs.flows import ready_at_once, restarted_after_sigkill, stopped_cleanly

CONFIG = """daemon {daemon};
pid {dir}/nginx.pid;
error_log stderr notice;
worker_processes 2;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "nginx ok\\n"; }} }}
}}
"""


def nginx(case: Case, port: int, daemon: str) -> str:
    """nginx's command line, with its configuration written in the test's directory."""
    config = case.write("nginx.conf", CONFIG.format(daemon=daemon, dir=case.directory, port=port))
    return f"/usr/sbin/nginx -c {config} -p {case.directory}"


def test_nginx_in_the_foreground(case: Case) -> None:
    port = free_port()
    attrs = {"restart": "always", "restart_sec": "0"}
    case.start([ProgramTask("nginx", nginx(case, port, "off"), attrs=attrs)])
    probe = lambda: b"nginx ok" in http_get(port)  # noqa: E731
    # Type exec: ready once executed, not once listening (nginx cannot say when it is).
    poll(probe, 10.0, "nginx answers", case.stack.daemon_log)
    ready_at_once(case, "nginx", probe)
    restarted_after_sigkill(case, "nginx", probe)
    last = stopped_cleanly(case, "nginx", (port,))
    assert "signal 15 (SIGTERM) received" in case.logs("nginx")
    assert last["result"] == "success", last


def test_nginx_forking_with_a_pid_file(case: Case) -> None:
    port = free_port()
    task = ProgramTask(
        "nginx",
        nginx(case, port, "on"),
        type="forking",
        pid_file=case.path("nginx.pid"),
        attrs={"restart": "always", "restart_sec": "0"},
    )
    case.start([task])
    probe = lambda: b"nginx ok" in http_get(port)  # noqa: E731
    first = ready_at_once(case, "nginx", probe)  # ready: the starter exited, nginx listens
    assert first["pid"] == int(case.stack.sh(f"cat {case.path('nginx.pid')}"))
    restarted_after_sigkill(case, "nginx", probe)
    stopped_cleanly(case, "nginx", (port,))
    assert "signal 15 (SIGTERM) received" in case.logs("nginx")


def test_nginx_forking_without_type_forking_is_explained(case: Case) -> None:
    """nginx that puts itself in the background, declared type exec: its starter exits 0
    and the daemon it left is killed as a leftover; zsvc says so and names the fix."""
    port = free_port()
    case.start([ProgramTask("nginx", nginx(case, port, "on"))])
    task = poll(
        lambda: (t := case.task("nginx"))["state"] != "active" and t,
        10.0,
        "the task ended",
        case.stack.daemon_log,
    )
    said = f"{task['last_exit']} {task['status_text']}"
    assert "leftover" in said and 'type="forking"' in said, task
    poll(lambda: not listening(port), 10.0, "nginx's port closed", case.stack.daemon_log)
