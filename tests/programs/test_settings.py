"""Execution settings seen from inside the task: ``/proc/<pid>/…`` of the running program,
its cgroup's memory limit and, under systemd, the unit's properties (``systemctl show``)."""

from __future__ import annotations

import pytest

from tests.programs.checks import proc_status
from tests.programs.conftest import Case
from tests.programs.contexts import ProgramTask
from tests.programs.stacks import BoxStack, Stack
from zsvc.naming import instance_id, unit_name

MEMORY_MAX = 256 * 1024 * 1024
MEMORY_LIMIT = """pid={pid}
v2=$(sed -n 's/^0:://p' /proc/$pid/cgroup)
v1=$(sed -n 's/^[0-9]*:memory://p' /proc/$pid/cgroup)
if [ -f "/sys/fs/cgroup$v2/memory.max" ]; then cat "/sys/fs/cgroup$v2/memory.max"
elif [ -f "/sys/fs/cgroup/unified$v2/memory.max" ]; then cat "/sys/fs/cgroup/unified$v2/memory.max"
elif [ -n "$v1" ] && [ "$v1" != / ]; then cat "/sys/fs/cgroup/memory$v1/memory.limit_in_bytes"
else echo none; fi
"""
"""The memory limit of a process's cgroup: cgroup2's memory.max, or cgroup1's on a hybrid;
'none' where the process has no memory cgroup of its own (a box on a cgroup1 machine gets
the memory hierarchy read-only, its processes all in its root: nothing enforces a limit)."""
BOX_INSTANCE = instance_id("/var/lib/zsvc")
"""zsvc.service's instance in the box (its state directory is /var/lib/zsvc)."""


SYSTEMD_MEMORY = """if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    grep -qw memory /sys/fs/cgroup/cgroup.controllers
else findmnt -n -o OPTIONS /sys/fs/cgroup/memory | grep -q '^rw'; fi"""
"""Has systemd a memory controller: cgroup2's, or a writable cgroup1 hierarchy (a box on a
cgroup1 machine gets it read-only, its processes all in its root)?"""


def memory_controller(stack: Stack) -> bool:
    """Can *stack*'s runner enforce memory_max here? The local runner needs cgroup2's memory
    controller where it makes its groups; systemd, see SYSTEMD_MEMORY."""
    if stack.name == "local":
        found = stack.run("sh", "-c", "cat $(findmnt -n -t cgroup2 -o TARGET)/cgroup.controllers")
        return "memory" in found.stdout.split()
    return stack.run("sh", "-c", SYSTEMD_MEMORY).returncode == 0


def settings_task(case: Case, user: str, work: str, memory: bool) -> ProgramTask:
    settings = {"user": user, "group": user, "working_directory": work, "umask": "0027"}
    settings["limit_nofile"] = "4096"
    if memory:
        settings["memory_max"] = "256M"
    return ProgramTask("sleeper", "/usr/bin/sleep 600", exec=settings, chdir=False)


def test_settings_seen_from_inside(case: Case) -> None:
    user, uid, gid = case.user()
    work = case.path("work")
    case.stack.mkdir(work, owner=user)
    memory = memory_controller(case.stack)
    case.start([settings_task(case, user, work, memory)])
    pid = case.task("sleeper")["pid"]
    status = proc_status(case.stack.proc(pid, "status"))
    assert (status["Uid"], status["Gid"], status["Umask"]) == (str(uid), str(gid), "0027")
    limits = case.stack.proc(pid, "limits")
    nofile = [line.split()[3:5] for line in limits.splitlines() if "open files" in line]
    assert nofile == [["4096", "4096"]], limits
    assert case.stack.sh(f"readlink /proc/{pid}/cwd").strip() == work
    if memory:
        assert case.stack.sh(MEMORY_LIMIT.format(pid=pid)).strip() == str(MEMORY_MAX)
    if isinstance(case.stack, BoxStack):
        unit = unit_name(case.transaction, "sleeper", BOX_INSTANCE)
        shown = case.stack.show(unit, "User", "Group", "WorkingDirectory", "UMask")
        assert shown == {"User": user, "Group": user, "WorkingDirectory": work, "UMask": "0027"}
        shown = case.stack.show(unit, "LimitNOFILE", "MemoryMax", "MainPID")
        memory_max = str(MEMORY_MAX) if memory else "infinity"
        assert shown == {"LimitNOFILE": "4096", "MemoryMax": memory_max, "MainPID": str(pid)}
    case.stack.ok("stop", case.transaction)


def test_environment_inline_and_from_a_file(case: Case) -> None:
    """<environment> values and an environment file's reach the program; the file's win
    (as systemd's EnvironmentFile= overrides Environment=)."""
    env_file = case.write("app.env", "# a comment\nFROM_FILE=yes\nEMPTY=from the file\n")
    task = ProgramTask(
        "sleeper",
        "/usr/bin/sleep 600",
        environment={"GREETING": "hello world", "EMPTY": ""},
        exec_children=f"<environment_file>{env_file}</environment_file>",
    )
    case.start([task])
    pid = case.task("sleeper")["pid"]
    environ = set(case.stack.proc(pid, "environ").split("\0"))
    assert {"GREETING=hello world", "EMPTY=from the file", "FROM_FILE=yes"} <= environ, environ
    case.stack.ok("stop", case.transaction)


def test_memory_max_without_a_memory_controller_fails_clearly(case: Case) -> None:
    """Neither runner can enforce memory_max without a memory controller (the local runner:
    cgroup2's; systemd: cgroup2's or a writable cgroup1 one): the start fails and says what
    is missing; the setting is never silently ignored."""
    if memory_controller(case.stack):
        pytest.skip(f"the {case.stack.name} runner has a memory controller here")
    user, _, _ = case.user()
    work = case.path("work")
    case.stack.mkdir(work, owner=user)
    context = case.context([settings_task(case, user, work, memory=True)])
    done = case.stack.zsvc("start", "--context", context, case.transaction)
    assert done.returncode != 0, done.stdout
    assert "memory_max" in done.stderr and "memory" in done.stderr, done.stderr
