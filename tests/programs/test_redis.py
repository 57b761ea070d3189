"""redis-server ``--supervised systemd``: a notifying program with a status line."""

from __future__ import annotations

from tests.integration.conftest import free_port
from tests.programs.checks import redis_ping
from tests.programs.conftest import Case
from tests.programs.flows import ready_at_once, restarted_after_sigkill, stopped_cleanly
from tests.programs.recipes import redis


def test_redis_ready_status_restart_stop(case: Case) -> None:
    port = free_port()
    case.start([redis(port, case.directory, restart="always", restart_sec="0")])
    first = ready_at_once(case, "redis", lambda: redis_ping(port))
    assert first["status_text"] == "Ready to accept connections"
    restarted_after_sigkill(case, "redis", lambda: redis_ping(port))
    last = stopped_cleanly(case, "redis", (port,))
    assert "Received SIGTERM scheduling shutdown" in case.logs("redis")
    assert last["last_exit"] == "exited with status 0 (success)", last
