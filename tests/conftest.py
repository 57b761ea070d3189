"""Settings shared by every test tier.

An illegal move of a task's state (``zsvc/daemon/lifecycle.py``) is only
logged in production; every test runs with ``ZSVC_STRICT_STATES=1`` so that
it raises instead, in this process and in every daemon a test starts (they
inherit the environment): the whole suite checks the transition table.

Hypothesis' default 200 ms deadline and its too-slow health check are timing
assertions: on a loaded CI machine one slow example fails a correct test
("Unreliable test timings"). Speed is measured in ``bench/``, never asserted
in tests, so the profile every run loads switches both off. Examples stay
random (a new run may find a new bug); a failure prints its reproduction blob.

Tiers: every test under ``tests/integration``, ``tests/system``,
``tests/programs`` and ``tests/package`` is marked ``integration`` by its
directory (a new file cannot forget it), so ``-m "not integration"``
(``./dev test --unit``) runs the unit tier alone: no daemon, no box, in under
a minute. ``tests/programs`` (real Debian programs as tasks on both runners)
is also marked ``programs``: ``-m programs`` runs it alone, ``-m "not programs"``
leaves it out.

Throwaway users (``tests/users.py``) are removed by their tests on every path; any a
test left is removed when the session ends, and the run fails naming it.
"""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from zsvc.daemon.lifecycle import STRICT_ENV

os.environ.setdefault(STRICT_ENV, "1")

settings.register_profile(
    "zsvc",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("zsvc")

TESTS = Path(__file__).resolve().parent
INTEGRATION_TIERS = tuple(TESTS / tier for tier in ("integration", "system", "programs", "package"))
"""The tiers that run real daemons, processes or a systemd box."""
PROGRAMS_TIER = TESTS / "programs"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "programs: runs real Debian programs (redis, haproxy, uwsgi, nginx) as tasks"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of an integration tier ``integration`` (and of the real-program
    tier ``programs``), by where its file is."""
    for item in items:
        if any(item.path.is_relative_to(tier) for tier in INTEGRATION_TIERS):
            item.add_marker(pytest.mark.integration)
        if item.path.is_relative_to(PROGRAMS_TIER):
            item.add_marker(pytest.mark.programs)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Throwaway users a test made and did not remove (it crashed between the two) are
    removed here; naming them fails the run, so a leak is mended where it comes from."""
    from tests import users

    left = users.remove_leftovers()
    if left:
        print(f"\nthrowaway users left by their tests, removed now: {', '.join(left)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
