"""haproxy ``-Ws``: master-worker mode, notifying; the master answers for its worker."""

from __future__ import annotations

from tests.integration.conftest import free_port
from tests.programs.checks import http_get
from tests.programs.conftest import Case
from tests.programs.contexts import ProgramTask
from tests.programs.flows import ready_at_once, restarted_after_sigkill, stopped_cleanly
from tests.programs.recipes import HAPROXY_CONFIG


def test_haproxy_ready_restart_stop(case: Case) -> None:
    port = free_port()
    config = case.write("haproxy.cfg", HAPROXY_CONFIG.format(port=port))
    command = f"/usr/sbin/haproxy -Ws -f {config}"
    attrs = {"restart": "on-failure", "restart_sec": "0"}
    case.start([ProgramTask("haproxy", command, type="notify", attrs=attrs)])
    probe = lambda: b"haproxy ok" in http_get(port)  # noqa: E731
    first = ready_at_once(case, "haproxy", probe)
    assert first["status_text"] in (None, ""), first  # haproxy 2.6 sends READY=1 alone
    restarted_after_sigkill(case, "haproxy", probe)
    last = stopped_cleanly(case, "haproxy", (port,))
    # The master saw its worker end by the stop's SIGTERM (128 + 15), then exited 0.
    assert "exited with code 143 (Terminated)" in case.logs("haproxy")
    assert last["last_exit"] == "exited with status 0 (success)", last
