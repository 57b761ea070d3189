"""What the local runner makes of a task's process settings, decided in the daemon.

A :class:`~zsvc.config.model.ProcessSettings` becomes, before anything is started:

* a :class:`~zsvc.runners.procsettings.Resolved` (names looked up once, here: an
  unknown user or group fails the start with systemd's EXIT_USER/EXIT_GROUP and the
  task's name, not a crash in a child), which the shell wrapper or the zygote's
  child carries out;
* the cgroup limits to write in the run's group before the task joins it
  (:func:`cgroup_limits`: ``memory.max``, ``cpu.max``, ``pids.max``);
* or a refusal (:func:`refusal`): a setting the local runner cannot honour here
  (not root, no cgroup2 controller) fails the start with a message that says what
  is missing and how to get it. A setting is never silently ignored.

:func:`refusal`, :func:`cgroup_limits` and :func:`resolve` (given its lookups) are
functions of their arguments; :class:`Host` is the only look at the daemon's own
process (its uid, nice level, open-files limit).
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
from collections.abc import Mapping
from dataclasses import dataclass

from zsvc.config.model import ProcessSettings
from zsvc.runners.base import ExitInfo, LaunchError
from zsvc.runners.cgroup import CgroupTree
from zsvc.runners.exitcodes import EXIT_GROUP, EXIT_USER
from zsvc.runners.procsettings import NOTHING, Resolved
from zsvc.states import Result

CPU_PERIOD_USEC = 100_000
"""``cpu.max``'s period, systemd's (CPUQuotaPeriodSec= unset): CPUQuota=50% is 50000/100000."""
MIN_CPU_QUOTA_USEC = 1000
"""The kernel's smallest ``cpu.max`` quota (1 ms); systemd rounds up to it too."""
CONTROLLERS = {"memory.max": "memory", "cpu.max": "cpu", "pids.max": "pids"}
"""The cgroup2 controller that provides each limit's file."""
SETTING_OF = {"memory.max": "memory_max", "cpu.max": "cpu_quota", "pids.max": "tasks_max"}
"""The context's name of each limit, for messages."""
ELSEWHERE = "or under systemd with --runner systemd"
NO_SETTINGS = ProcessSettings()


@dataclass(frozen=True)
class Host:
    """What the daemon's process may do: the facts :func:`refusal` judges against."""

    root: bool
    nice: int
    hard_nofile: int
    groups: tuple[int, ...] = ()
    uid: int = 0
    gid: int = 0

    @classmethod
    def now(cls) -> Host:
        """This process, now (a few system calls: cheap enough for every start)."""
        return cls(
            root=os.geteuid() == 0,
            nice=os.getpriority(os.PRIO_PROCESS, 0),
            hard_nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            groups=tuple(os.getgroups()),
            uid=os.geteuid(),
            gid=os.getegid(),
        )


def cgroup_limits(settings: ProcessSettings) -> dict[str, str]:
    """The cgroup2 files and values that carry out *settings*' limits (empty: none)."""
    limits = {}
    if settings.memory_max is not None:
        limits["memory.max"] = str(settings.memory_max)
    if settings.cpu_quota is not None:
        quota = max(MIN_CPU_QUOTA_USEC, round(settings.cpu_quota * CPU_PERIOD_USEC / 100))
        limits["cpu.max"] = f"{quota} {CPU_PERIOD_USEC}"
    if settings.tasks_max is not None:
        limits["pids.max"] = str(settings.tasks_max)
    return limits


def cgroup_refusal(
    task: str, limits: Mapping[str, str], no_cgroup: str | None, controllers: frozenset[str]
) -> str | None:
    """Why the cgroup *limits* cannot be set: *no_cgroup* says why the runner has no
    cgroups (None: it has), *controllers* what its hierarchy offers; None when they can."""
    for name in limits:
        controller, setting = CONTROLLERS[name], SETTING_OF[name]
        if no_cgroup is not None:
            return (
                f"task {task!r}: {setting} needs a cgroup2 with the {controller} controller;"
                f" the local runner has none here ({no_cgroup}) (run the daemon as root on a"
                f" cgroup2 host, {ELSEWHERE})"
            )
        if controller not in controllers:
            return (
                f"task {task!r}: {setting} needs the {controller} controller of cgroup2,"
                f" which this host's cgroup2 hierarchy does not offer (offered:"
                f" {' '.join(sorted(controllers)) or 'none'}; on a hybrid host the controllers"
                f" belong to cgroup1: boot with systemd.unified_cgroup_hierarchy=1, {ELSEWHERE})"
            )
    return None


def refusal(task: str, settings: ProcessSettings, resolved: Resolved, host: Host) -> str | None:
    """Why the local runner, running as *host*, cannot honour *settings*; None when it can."""
    if host.root:
        return None
    how = f"(run the daemon as root, {ELSEWHERE})"
    changes = (
        (resolved.uid is not None and resolved.uid != host.uid)
        or (resolved.gid is not None and resolved.gid != host.gid)
        or (resolved.groups is not None and set(resolved.groups) != set(host.groups))
    )
    if changes:
        return f"task {task!r}: user, group and supplementary_groups need root {how}"
    if settings.private_tmp:
        return f"task {task!r}: private_tmp needs root (a mount namespace) {how}"
    if settings.nice is not None and settings.nice < host.nice:
        return f"task {task!r}: nice {settings.nice} is below the daemon's {host.nice}: {how}"
    if settings.limit_nofile is not None and settings.limit_nofile > host.hard_nofile:
        return (
            f"task {task!r}: limit_nofile {settings.limit_nofile} is above the daemon's hard"
            f" limit {host.hard_nofile}: {how}"
        )
    return None


def resolve(task: str, settings: ProcessSettings) -> Resolved:
    """*settings* with users and groups as numbers; LaunchError (systemd's EXIT_USER or
    EXIT_GROUP) when one is unknown."""
    if settings == NO_SETTINGS:
        return NOTHING
    uid = gid = None
    groups: list[int] | None = None
    if settings.user is not None:
        entry = _user(settings.user)
        if entry is None and not settings.user.isdigit():
            raise _unknown(task, "user", settings.user, EXIT_USER)
        uid = entry.pw_uid if entry is not None else int(settings.user)
        if entry is not None:
            gid = entry.pw_gid
            groups = os.getgrouplist(entry.pw_name, gid)
        elif settings.group is None:
            raise _unknown(task, "user", f"{settings.user} (no passwd entry: set group)", EXIT_USER)
    if settings.group is not None:
        gid = _group(task, settings.group)
    if uid is not None or gid is not None or settings.supplementary_groups:
        # Group= or SupplementaryGroups= alone replace the daemon's groups, as in systemd.
        extra = [_group(task, name) for name in settings.supplementary_groups]
        groups = list(dict.fromkeys([*(groups or []), *extra]))
    return Resolved(
        uid=uid,
        gid=gid,
        groups=None if groups is None else tuple(groups),
        umask=settings.umask,
        nice=settings.nice,
        nofile=settings.limit_nofile,
        no_new_privs=settings.no_new_privileges,
        private_tmp=settings.private_tmp,
    )


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        return None


def _group(task: str, name: str) -> int:
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():  # a gid without an entry is a gid all the same (systemd too)
            return int(name)
        raise _unknown(task, "group", name, EXIT_GROUP) from None


def _unknown(task: str, what: str, name: str, code: int) -> LaunchError:
    message = f"task {task!r}: unknown {what} {name}"
    return LaunchError(message, ExitInfo(Result.EXIT_CODE, exit_code=code, detail=message))


def refused(message: str) -> LaunchError:
    """The start refused: the runner cannot honour a setting (see :func:`refusal`)."""
    return LaunchError(message, ExitInfo(Result.RESOURCES, detail=message))


def prepare(
    task: str, settings: ProcessSettings, tree: CgroupTree | None, no_cgroup: str | None
) -> Resolved:
    """What the task's first process must do, for a runner with cgroups *tree* (or none,
    for the reason *no_cgroup*); LaunchError when the runner cannot honour *settings* or
    a user or group is unknown. A launch without settings costs one comparison."""
    if settings == NO_SETTINGS:
        return NOTHING
    resolved = resolve(task, settings)
    why = refusal(task, settings, resolved, Host.now())
    limits = cgroup_limits(settings)
    if why is None and limits:
        offered = tree.controllers() if tree is not None else frozenset()
        why = cgroup_refusal(task, limits, no_cgroup, offered)
    if why is not None:
        raise refused(why)
    return resolved
