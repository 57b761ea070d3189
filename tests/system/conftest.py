"""The system tier: zsvc under a real systemd 252, booted in a throwaway container.

One box per test session (:mod:`tests.system.box`): it boots in about a
second, ``units/zsvc.service`` is installed in it as the .deb would
(``/usr/bin/zsvc``, group ``zsvc``) and started as a real unit, running
this checkout with the interpreter of the test run (so the PyPI run tests
dbus-fast 5 and the Debian run dbus-fast 1.84). The box is torn down on
every path: the fixture's ``finally``, plus ``atexit``.

Where a box cannot boot (not root, no systemd-nspawn) the tier is skipped,
except in CI (``CI=true``), where that is a failure: CI must run it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import TaskDef, free_port, render_context
from tests.system.box import (
    WORK,
    SystemdBox,
    checkout_binds,
    install_zsvc,
    missing_prerequisites,
    start_zsvc,
    zsvc_log,
)

__all__ = ["WORK", "Zsvc", "wait_for"]


class Zsvc:
    """zsvc.service in a box, and the commands the tests run against it."""

    def __init__(self, box: SystemdBox):
        self.box = box
        self.contexts = 0

    # --- set-up -------------------------------------------------------------------------

    def install(self) -> None:
        install_zsvc(self.box)

    def start_daemon(self) -> None:
        start_zsvc(self.box)

    def daemon_log(self, lines: int = 60) -> str:
        return zsvc_log(self.box, lines)

    # --- commands -------------------------------------------------------------------------

    def zsvc(self, *args: str, timeout: float = 60.0) -> Any:
        """``zsvc ARGS`` in the box; the CompletedProcess."""
        return self.box.run("zsvc", *args, timeout=timeout)

    def ok(self, *args: str, timeout: float = 60.0) -> str:
        done = self.zsvc(*args, timeout=timeout)
        assert done.returncode == 0, (
            f"zsvc {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}\n"
            f"{self.daemon_log()}"
        )
        return done.stdout

    def status(self, transaction: str) -> dict[str, Any]:
        return json.loads(self.ok("status", transaction, "--json"))

    def task(self, transaction: str, task_id: str) -> dict[str, Any]:
        tasks = self.status(transaction)["tasks"]
        return next(task for task in tasks if task["id"] == task_id)

    def ping(self) -> dict[str, Any]:
        return json.loads(self.ok("ping"))

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show UNIT -p …`` as a dict."""
        argv = ["systemctl", "show", unit, "--no-pager"] + [f"--property={p}" for p in props]
        out = self.box.run(*argv).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def context(self, tasks: list[TaskDef]) -> str:
        """Write a context file into the box; its path inside."""
        self.contexts += 1
        inside = f"{WORK}/Context-{self.contexts}.xml"
        text = render_context(tasks, free_port(), free_port(), context_id=f"ctx{self.contexts}")
        self.box.host_path(inside).write_text(text)
        return inside

    def read(self, inside: str) -> str:
        return self.box.host_path(inside).read_text()

    def alive(self, pid: int) -> bool:
        """Is *pid* (of the box's pid namespace) a live process in the box?"""
        done = self.box.run(
            "sh", "-c", f"test -d /proc/{pid} && ! grep -q '^State:.*Z' /proc/{pid}/status"
        )
        return done.returncode == 0


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, what: str = "", step: float = 0.1
) -> Any:
    """Poll a fact no event announces (a state in another process), with a deadline.

    A string from *predicate* means "not yet, and here is why" (shown on failure).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last and not isinstance(last, str):
            return last
        time.sleep(step)
    pytest.fail(f"not within {timeout} s: {what or predicate} (last: {last!r})")


@pytest.fixture(scope="session")
def box() -> Iterator[SystemdBox]:
    why = missing_prerequisites()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the system tier must run in CI, but {why}")
        pytest.skip(why)
    box = SystemdBox(binds=checkout_binds())
    try:
        box.start()
        yield box
    finally:
        box.close()


@pytest.fixture(scope="session")
def zsvc_service(box: SystemdBox) -> Zsvc:
    """zsvc.service, installed and running in the box (the runner: systemd)."""
    service = Zsvc(box)
    service.install()
    service.start_daemon()
    return service
