"""``--runner auto|local|systemd``: which runner the daemon uses.

``auto`` picks systemd when it is the service manager here
(``/run/systemd/system`` exists, as sd_booted(3) checks) *and* its bus
answers; otherwise the embedded local runner. The systemd manager is the
system one for root and the user's own (``systemctl --user``) for everybody
else. Without systemd the D-Bus library is not even imported: the local
daemon stays as small as it was.
"""

from __future__ import annotations

import logging
import os

from zsvc.paths import RuntimeLayout
from zsvc.runners.base import Runner, RunnerUnavailable

log = logging.getLogger(__name__)

CHOICES = ("auto", "local", "systemd")


def systemd_booted() -> bool:
    """sd_booted(3): systemd is PID 1 of this (container's) system."""
    return os.path.isdir("/run/systemd/system")


async def choose_runner(
    choice: str,
    layout: RuntimeLayout,
    task_fd_limit: int | None = None,
    instance: str | None = None,
) -> Runner:
    """The runner for *choice*, connected when it is systemd; RunnerUnavailable when the
    choice is ``systemd`` and systemd cannot be reached.

    *task_fd_limit* is the soft open-files limit the local runner gives its tasks
    (:class:`~zsvc.runners.local.LocalRunner`). The systemd runner needs none: its
    units are started by systemd, with systemd's limits, not the daemon's.

    *instance* names the daemon among others on the machine (its units' slice, the local
    runner's cgroup directory: :mod:`zsvc.naming`); None outside a daemon.
    """
    if choice not in CHOICES:
        raise RunnerUnavailable(f"unknown runner {choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "local" or (choice == "auto" and not systemd_booted()):
        return _local(layout, task_fd_limit, instance)
    try:
        from zsvc.runners.systemd import SystemdRunner
    except ImportError as exc:  # dbus-fast is missing
        if choice == "systemd":
            raise RunnerUnavailable(f"the systemd runner needs dbus-fast: {exc}") from exc
        log.warning("systemd runs here, but dbus-fast is missing (%s): local runner", exc)
        return _local(layout, task_fd_limit, instance)
    runner = SystemdRunner(instance=instance)
    try:
        await runner.connect()
    except RunnerUnavailable as exc:
        if choice == "systemd":
            raise
        log.warning("%s: local runner", exc)
        return _local(layout, task_fd_limit, instance)
    return runner


def _local(layout: RuntimeLayout, task_fd_limit: int | None, instance: str | None) -> Runner:
    from zsvc.runners.local import LocalRunner

    return LocalRunner(layout, task_fd_limit=task_fd_limit, instance=instance)
