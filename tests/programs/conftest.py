"""The real-program tier: Debian's redis, haproxy, uwsgi and nginx as zsvc tasks, on both runners.

Each test runs once per stack (the ``stack`` fixture): a local daemon on
this machine (the local runner; one per tier, as zsvc.service is one per
box) and zsvc.service in a throwaway systemd box (the systemd runner). Each
test gets a :class:`Case`: its own transaction, directory, marker and users;
at its end the transaction is stopped and nothing it started may be left
(no marked process; the test checks its own ports). At the end of the tier
no process of the tier may be left on the machine (the box's included).

The programs are installed by ``./dev test`` (PROGRAMS_TIER_PACKAGES). Where
one is missing the tier is skipped, with the packages to install; under
CI=true a missing program is a failure, as a box that cannot boot is.

The box is the tier's own (package scope), powered off when the tier ends:
tests/system boots its own afterwards, and two boxes cannot run at once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.programs.checks import kill_marked
from tests.programs.contexts import ProgramTask, render
from tests.programs.stacks import BoxStack, LocalStack, Stack
from tests.system import box as boxes

PROGRAMS = {
    "redis-server": "redis-server",
    "haproxy": "haproxy",
    "uwsgi": "uwsgi-core",
    "/usr/lib/uwsgi/plugins/python3_plugin.so": "uwsgi-plugin-python3",
    "nginx": "nginx-light",
    "setpriv": "util-linux",
    "useradd": "passwd",
    "python3": "python3",
}
"""Each program the tier runs, and the Debian package that brings it."""
TOKEN = secrets.token_hex(4)
"""This session's part of every marker: the end-of-tier check looks for it."""
SESSION_MARK = f"zprog-{TOKEN}-"


def missing_programs() -> list[str]:
    """The packages to install for the programs this machine lacks."""
    return sorted(
        {
            package
            for program, package in PROGRAMS.items()
            if not (Path(program).exists() if program.startswith("/") else shutil.which(program))
        }
    )


def _require(why: str | None) -> None:
    """Skip the tier for *why*; under CI=true fail instead: CI must run it."""
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the real-program tier must run in CI, but {why}")
        pytest.skip(why)


@pytest.fixture(scope="package", autouse=True)
def programs_installed() -> Iterator[None]:
    """The programs are here; and when the tier ends, none of its processes is left."""
    missing = missing_programs()
    _require(f"apt-get install {' '.join(missing)} (./dev test does)" if missing else None)
    yield
    left = kill_marked(SESSION_MARK)
    assert not left, f"processes of the real-program tier survived it: {left}"


@pytest.fixture(scope="package")
def local_stack() -> Iterator[LocalStack]:
    root = Path(tempfile.mkdtemp(prefix=f"zpd-{TOKEN}-", dir="/tmp"))
    # A task run as a throwaway user must reach the daemon's notify socket: mkdtemp's 0700
    # would shut it out before the daemon's own (searchable) runtime directory does not.
    root.chmod(0o711)
    stack = LocalStack(root)
    try:
        yield stack.start()
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def box_stack() -> Iterator[BoxStack]:
    _require(boxes.missing_prerequisites())
    box = boxes.SystemdBox(binds=boxes.checkout_binds())
    try:
        box.start()
        boxes.install_zsvc(box)
        boxes.start_zsvc(box)
        yield BoxStack(box)
    finally:
        box.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pending(*stacks, reason): a feature not built yet on these stacks: the test is"
        " expected to fail there (strictly: once it passes, the mark must go)",
    )


@pytest.fixture(params=["local", "systemd"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each test once per runner; ``@pytest.mark.pending("local", reason=…)`` makes it a
    strict xfail on the stacks it names."""
    for mark in request.node.iter_markers("pending"):
        if request.param in mark.args:
            request.applymarker(pytest.mark.xfail(strict=True, reason=mark.kwargs["reason"]))
    name = "local_stack" if request.param == "local" else "box_stack"
    return request.getfixturevalue(name)


@dataclass
class Case:
    """One test on one stack: a transaction, a directory, a marker, throwaway users."""

    stack: Stack
    mark: str
    directory: str
    transaction: str
    users: list[str] = field(default_factory=list)
    contexts: int = 0

    def path(self, name: str) -> str:
        """A file of this test, as the tasks see it."""
        return f"{self.directory}/{name}"

    def write(self, name: str, text: str) -> str:
        self.stack.write(self.path(name), text)
        return self.path(name)

    def user(self) -> tuple[str, int, int]:
        """A throwaway user, removed at the test's end: (name, uid, gid)."""
        if self.stack.name == "local" and os.geteuid() != 0:
            pytest.skip("a throwaway user needs root (useradd)")
        name = f"zsvc-prog-{secrets.token_hex(3)}"
        self.users.append(name)
        uid, gid = self.stack.add_user(name)
        return name, uid, gid

    def context(self, tasks: list[ProgramTask]) -> str:
        self.contexts += 1
        text = render(tasks, self.directory, self.mark, f"{self.mark}-{self.contexts}")
        return self.write(f"Context-{self.contexts}.xml", text)

    def start(self, tasks: list[ProgramTask]) -> str:
        """``zsvc start --context …`` of *tasks*, which must succeed."""
        return self.stack.ok("start", "--context", self.context(tasks), self.transaction)

    def task(self, task_id: str) -> dict:
        return self.stack.task(self.transaction, task_id)

    def logs(self, task_id: str) -> str:
        return self.stack.ok("logs", self.transaction, "--service", task_id, "-n", "200")


_counter = iter(range(1, 1000))


@contextlib.contextmanager
def open_case(stack: Stack) -> Iterator[Case]:
    """A :class:`Case` on *stack*; at its end the transaction is stopped, its users
    removed, its directory deleted, and no process of it may be left."""
    number = next(_counter)
    mark = f"{SESSION_MARK}{number:03d}"
    parent = "/tmp" if stack.name == "local" else boxes.WORK
    directory = f"{parent}/{mark}"
    stack.mkdir(directory)
    case = Case(stack, mark, directory, transaction=f"prog{number:03d}")
    try:
        yield case
    finally:
        try:
            stack.zsvc("stop", case.transaction)
            left = kill_marked(mark)
        finally:  # the users go whatever the stop did
            for name in case.users:
                stack.remove_user(name)
            stack.run("rm", "-rf", directory)
        assert not left, f"[{stack.name}] processes left after the stop: {left}"


@pytest.fixture
def case(stack: Stack) -> Iterator[Case]:
    """This test's :class:`Case` on each stack."""
    with open_case(stack) as opened:
        yield opened
