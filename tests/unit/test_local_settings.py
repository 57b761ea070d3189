"""The local runner carries out a task's process settings (issue 14), or refuses the start.

Checked from inside the task, with real processes: /proc/<pid>/status (Uid, Gid, Groups,
NoNewPrivs, Umask), /proc/<pid>/limits, the nice level, the task's own /tmp (through
/proc/<pid>/root, which shows its mount namespace). The tests that change a user need
root and a throwaway account (``useradd``, removed again whatever the test's outcome);
they skip otherwise. The pure rules (names to ids, refusals, cgroup values) are checked
without a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.users import throwaway_user
from zsvc.config.model import ProcessSettings
from zsvc.hostwire import INVOCATION_ENV, SPEC_ENV, HostSpec
from zsvc.paths import RuntimeLayout
from zsvc.runners.base import ExitInfo, LaunchError, LaunchSpec, TaskKey
from zsvc.runners.cgroup import CgroupTree, find_hierarchy
from zsvc.runners.exitcodes import EXIT_GROUP, EXIT_USER
from zsvc.runners.local import LocalRunner
from zsvc.runners.localsettings import Host, cgroup_limits, cgroup_refusal, refusal, resolve
from zsvc.runners.localtask import LocalTask
from zsvc.runners.procsettings import NOTHING, Resolved
from zsvc.states import Result, StartType

REPO = Path(__file__).resolve().parents[2]
CGROUPS = find_hierarchy() if os.environ.get("ZSVC_CGROUPS", "1") != "0" else None
LIMIT_CONTROLLERS = frozenset({"memory", "cpu", "pids"})
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setuid, mounts)")
WAIT = 10.0
"""The bound on every wait for a task (it takes milliseconds)."""


# --- the pure rules ------------------------------------------------------------------------


def test_no_settings_resolve_to_nothing_and_wrap_nothing() -> None:
    assert resolve("t", ProcessSettings()) is NOTHING and NOTHING.empty


def test_root_resolves_to_its_ids_and_groups() -> None:
    resolved = resolve("t", ProcessSettings(user="root", supplementary_groups=("0",)))
    assert (resolved.uid, resolved.gid) == (0, 0)
    assert resolved.groups is not None and resolved.groups[0] == 0
    assert len(set(resolved.groups)) == len(resolved.groups)  # no gid twice
    group_only = resolve("t", ProcessSettings(group="0"))
    assert (group_only.uid, group_only.gid, group_only.groups) == (None, 0, ())
    numeric = resolve("t", ProcessSettings(user="4242424", group="4242424"))
    assert (numeric.uid, numeric.gid) == (4242424, 4242424)  # ids without an entry: as given


@pytest.mark.parametrize(
    ("settings", "code", "words"),
    [
        (ProcessSettings(user="zsvc-no-such-user"), EXIT_USER, "unknown user zsvc-no-such-user"),
        (ProcessSettings(group="zsvc-no-such-group"), EXIT_GROUP, "unknown group"),
        (ProcessSettings(user="root", supplementary_groups=("zsvc-nope",)), EXIT_GROUP, "nope"),
        (ProcessSettings(user="4242424"), EXIT_USER, "no passwd entry: set group"),
    ],
)
def test_an_unknown_user_or_group_is_systemds_exit_status_naming_the_task(
    settings: ProcessSettings, code: int, words: str
) -> None:
    with pytest.raises(LaunchError) as caught:
        resolve("web", settings)
    assert str(caught.value).startswith("task 'web': ") and words in str(caught.value)
    assert (caught.value.info.result, caught.value.info.exit_code) == (Result.EXIT_CODE, code)


USER = Host(root=False, nice=0, hard_nofile=4096, groups=(1000,), uid=1000, gid=1000)
"""An unprivileged daemon."""


@pytest.mark.parametrize(
    ("settings", "resolved", "words"),
    [
        (ProcessSettings(user="x"), Resolved(uid=1001, gid=1000, groups=(1000,)), "need root"),
        (ProcessSettings(group="x"), Resolved(gid=4, groups=()), "need root"),
        (ProcessSettings(private_tmp=True), Resolved(private_tmp=True), "private_tmp needs root"),
        (ProcessSettings(nice=-1), Resolved(nice=-1), "nice -1 is below the daemon's 0"),
        (ProcessSettings(limit_nofile=8192), Resolved(nofile=8192), "above the daemon's hard"),
    ],
)
def test_what_an_unprivileged_daemon_cannot_do_is_refused_saying_how(
    settings: ProcessSettings, resolved: Resolved, words: str
) -> None:
    why = refusal("web", settings, resolved, USER)
    assert why is not None and why.startswith("task 'web': ") and words in why
    assert "run the daemon as root" in why and "--runner systemd" in why
    assert refusal("web", settings, resolved, Host(root=True, nice=0, hard_nofile=1)) is None


def test_what_an_unprivileged_daemon_can_do_is_done() -> None:
    """Its own user, a higher nice level, a lower limit, a umask, no_new_privileges."""
    same = Resolved(uid=1000, gid=1000, groups=(1000,), umask=0o77, nice=5, nofile=100)
    settings = ProcessSettings(user="me", umask=0o77, nice=5, limit_nofile=100)
    assert refusal("web", settings, same, USER) is None
    assert refusal("web", ProcessSettings(no_new_privileges=True), same, USER) is None


@given(
    memory=st.none() | st.integers(1, 1 << 50),
    cpu=st.none() | st.floats(0.001, 10_000, allow_nan=False),
    tasks=st.none() | st.integers(1, 1 << 22),
)
def test_cgroup_limits_are_systemds_values(
    memory: int | None, cpu: float | None, tasks: int | None
) -> None:
    """memory.max in bytes, cpu.max per 100 ms (CPUQuota=50% is "50000 100000", never below
    the kernel's 1 ms), pids.max; a file only for a limit that is set."""
    limits = cgroup_limits(ProcessSettings(memory_max=memory, cpu_quota=cpu, tasks_max=tasks))
    assert limits.get("memory.max") == (None if memory is None else str(memory))
    assert limits.get("pids.max") == (None if tasks is None else str(tasks))
    if cpu is None:
        assert "cpu.max" not in limits
    else:
        quota, period = map(int, limits["cpu.max"].split())
        assert period == 100_000 and quota >= 1000
        assert quota == 1000 or abs(quota - cpu * 1000) <= 0.5


def test_cgroup_limits_without_their_controller_are_refused_saying_why() -> None:
    limits = cgroup_limits(ProcessSettings(memory_max=256 << 20, tasks_max=10))
    assert limits == {"memory.max": str(256 << 20), "pids.max": "10"}
    none = cgroup_refusal("web", limits, "ZSVC_CGROUPS=0", frozenset())
    assert none == (
        "task 'web': memory_max needs a cgroup2 with the memory controller; the local runner"
        " has none here (ZSVC_CGROUPS=0) (run the daemon as root on a cgroup2 host, or under"
        " systemd with --runner systemd)"
    )
    hybrid = cgroup_refusal("web", limits, None, frozenset({"hugetlb", "memory"}))
    assert hybrid is not None and "tasks_max needs the pids controller" in hybrid
    assert "offered: hugetlb memory" in hybrid
    assert cgroup_refusal("web", limits, None, frozenset({"memory", "pids"})) is None


def test_the_tree_enables_a_controller_at_each_level_once(tmp_path: Path) -> None:
    """Made of plain files (no cgroup2 here may offer a controller): each level from the
    root down to the instance's directory gets the controllers it lacks, only those."""
    instance = tmp_path / "zsvc.slice" / "zsvc-i.slice"
    instance.mkdir(parents=True)
    levels = [tmp_path, tmp_path / "zsvc.slice", instance]
    for level in levels:
        (level / "cgroup.subtree_control").write_text("memory\n" if level == tmp_path else "")
    CgroupTree(tmp_path, instance, tmp_path / "zsvc.slice").enable({"memory", "pids"})
    written = [(level / "cgroup.subtree_control").read_text() for level in levels]
    assert written == ["+pids", "+memory +pids", "+memory +pids"]


def test_a_group_made_with_limits_has_them_before_anyone_joins(tmp_path: Path) -> None:
    """The same plain-file tree: the run's group is made with its limit files written
    (in cgroupfs the kernel makes them when the controller is enabled in the parent)."""
    instance = tmp_path / "zsvc.slice" / "zsvc-i.slice"
    instance.mkdir(parents=True)
    for level in (tmp_path, tmp_path / "zsvc.slice", instance):
        (level / "cgroup.subtree_control").write_text("")
    tree = CgroupTree(tmp_path, instance, tmp_path / "zsvc.slice")
    limits = cgroup_limits(ProcessSettings(memory_max=1 << 30, cpu_quota=150, tasks_max=9))
    group = tree.create("u.service", "u.service-2", limits)
    written = {name: (group.path / name).read_text() for name in limits}
    assert written == {"memory.max": str(1 << 30), "cpu.max": "150000 100000", "pids.max": "9"}
    assert (instance / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"


# --- real processes -------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.exits: list[ExitInfo] = []

    def on_ready(self, key: TaskKey) -> None:
        self.ready.set()

    def on_status(self, key: TaskKey, text: str) -> None:
        pass

    def on_stopping(self, key: TaskKey) -> None:
        pass

    def on_main_pid(self, key: TaskKey, pid: int, description: object) -> None:
        pass

    def on_exit(self, key: TaskKey, info: ExitInfo) -> None:
        self.exits.append(info)


def _spec(tmp: Path, argv: list[str], settings: ProcessSettings, **extra: object) -> LaunchSpec:
    fields: dict[str, object] = {
        "transaction": "TX",
        "task_id": "t1",
        "unit": f"zsvc-TX-t1-{uuid.uuid4().hex[:8]}.service",
        "argv": tuple(argv),
        "env": dict(os.environ, PYTHONPATH=str(REPO), **{INVOCATION_ENV: uuid.uuid4().hex}),
        "cwd": "/",
        "start_type": StartType.EXEC,
        "start_timeout": WAIT,
        "stop_timeout": 2.0,
        "log_path": tmp / "t1.log",
        "process": settings,
    }
    fields.update(extra)
    return LaunchSpec(**fields)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    tmp: Path, spec: LaunchSpec, *, zygote: bool = False, cgroups: bool = True
) -> AsyncIterator[tuple[LocalRunner, LocalTask, Recorder]]:
    """A runner of its own with *spec* started; everything stopped and closed after."""
    events = Recorder()
    runner = LocalRunner(
        RuntimeLayout(tmp), use_zygote=zygote, use_cgroups=cgroups, task_fd_limit=1024
    )
    await runner.open(events)
    try:
        task = await runner.start(spec)
        try:
            yield runner, task, events
        finally:
            await asyncio.wait_for(task.stop(), WAIT)
    finally:
        await runner.close()


async def became(pid: int, program: str) -> None:
    """Wait (bounded) until the task's main process has exec'd *program*: the chain of
    wrappers (sh, setpriv, unshare) each exec the next, so the pid stays the same."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while Path(f"/proc/{pid}/comm").read_text().strip() != program:
        assert loop.time() < deadline, f"pid {pid} did not become {program}"
        await asyncio.sleep(0.005)


def proc_status(pid: int | str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def nofile_limits(limits: str) -> list[str]:
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    return line.split()[3:5]


@dataclass(frozen=True)
class Account:
    user: str
    uid: int
    gid: int
    group: str
    """A second group, not the user's: a supplementary one."""
    extra_gid: int


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def account() -> Iterator[Account]:
    """A throwaway system user and group, removed again whatever the test did."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    group = f"zsvc-test-g{uuid.uuid4().hex[:8]}"
    _run("groupadd", "--system", group)
    try:
        with throwaway_user(system=True) as entry:
            extra = grp.getgrnam(group).gr_gid
            yield Account(entry.pw_name, entry.pw_uid, entry.pw_gid, group, extra)
    finally:
        _run("groupdel", group)


def identity(status: dict[str, str], limits: str, nice: int) -> dict[str, object]:
    """What a process is, from its /proc/<pid>/status and /proc/<pid>/limits."""
    return {
        "uid": status["Uid"].split(),
        "gid": status["Gid"].split(),
        "groups": sorted(int(g) for g in status["Groups"].split()),
        "no_new_privs": status["NoNewPrivs"],
        "umask": status["Umask"],
        "nofile": nofile_limits(limits),
        "nice": nice,
    }


def as_account(account: Account, umask: int, nice: int, nofile: int) -> ProcessSettings:
    """Settings that run a task as *account* (with its extra group), no_new_privileges."""
    return ProcessSettings(
        user=account.user,
        supplementary_groups=(account.group,),
        umask=umask,
        nice=nice,
        limit_nofile=nofile,
        no_new_privileges=True,
    )


def expected(account: Account, umask: int, nice: int, nofile: int) -> dict[str, object]:
    """The identity of a process run with :func:`as_account`."""
    return {
        "uid": [str(account.uid)] * 4,
        "gid": [str(account.gid)] * 4,
        "groups": sorted({account.gid, account.extra_gid}),
        "no_new_privs": "1",
        "umask": f"{umask:04o}",
        "nofile": [str(nofile)] * 2,
        "nice": nice,
    }


@needs_root
@pytest.mark.parametrize("nice", [7, -3])
def test_a_command_runs_as_its_user_with_its_groups_umask_nice_and_limits(
    tmp_path: Path, account: Account, nice: int
) -> None:
    spec = _spec(tmp_path, ["sleep", "60"], as_account(account, 0o027, nice, 2048))

    async def scenario() -> tuple[dict[str, object], ExitInfo]:
        async with running(tmp_path, spec) as (_, task, _events):
            await became(task.pid, "sleep")  # the wrapper's pid is the program's
            stat = Path(f"/proc/{task.pid}/stat").read_text()
            seen = identity(
                proc_status(task.pid),
                Path(f"/proc/{task.pid}/limits").read_text(),
                int(stat.rsplit(")", 1)[1].split()[16]),
            )
        assert task.exit_info is not None
        return seen, task.exit_info

    seen, info = asyncio.run(scenario())
    assert seen == expected(account, 0o027, nice, 2048)
    assert info.result is Result.SUCCESS


@needs_root
def test_a_private_tmp_is_the_tasks_own(tmp_path: Path) -> None:
    """A file the task writes in /tmp is in its /tmp only; it starts empty."""
    probe = f"settings-probe-{uuid.uuid4().hex}"
    script = f"ls -A /tmp > /dev/stderr; echo x > /tmp/{probe} && exec sleep 60"
    spec = _spec(tmp_path, ["sh", "-c", script], ProcessSettings(private_tmp=True))

    async def scenario() -> bool:
        async with running(tmp_path, spec) as (_, task, _events):
            await became(task.pid, "sleep")
            return Path(f"/proc/{task.pid}/root/tmp/{probe}").exists()

    try:
        assert asyncio.run(scenario()), "the task's own /tmp holds its file"
        assert not Path("/tmp", probe).exists(), "the host's /tmp does not"
        assert spec.log_path.read_text() == "", "the task's /tmp started empty"
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path("/tmp", probe).unlink()


PROBE = textwrap.dedent(
    """
    import json, os
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print("PROBE " + json.dumps({
        "status": {key: value.strip() for key, value in status.items()},
        "limits": open("/proc/self/limits").read(),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "tmp": sorted(os.listdir("/tmp")),
        "cmdline": open("/proc/self/cmdline").read().replace("\\0", " "),
    }), flush=True)
    """
)
"""A task module that shows, when it is imported, what its process is."""


@pytest.fixture
def probe_location() -> Iterator[Path]:
    """A task package another user may read, outside /tmp (which private_tmp hides)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    location = Path(tempfile.mkdtemp(prefix="settings-probe-", dir="/dev/shm"))
    try:
        location.chmod(0o755)
        (location / "Probe").mkdir(mode=0o755)
        (location / "Probe" / "ServiceProbe.py").write_text(PROBE)
        (location / "Probe" / "ServiceProbe.py").chmod(0o644)
        yield location
    finally:
        shutil.rmtree(location)


@needs_root
@pytest.mark.parametrize("zygote", [True, False], ids=["forked", "executed"])
def test_a_python_task_takes_its_settings_before_its_module_is_imported(
    tmp_path: Path, account: Account, probe_location: Path, zygote: bool
) -> None:
    """Forked by the zygote (procsettings.apply in the child) or executed (the wrapper,
    as a command): the same identity, seen by the task's module as it is imported."""
    if not zygote:
        _skip_unless_runnable_by(account)
    settings = dataclasses.replace(as_account(account, 0o077, 4, 512), private_tmp=True)
    host = HostSpec("TX", "t1", "Probe", "Probe", str(probe_location), "ipc://@p", "ipc://@s")
    spec = _spec(tmp_path, [sys.executable, "-m", "zsvc.task"], settings, host_entry=True)
    spec = _with_env(spec, {SPEC_ENV: host.to_json()})

    async def scenario() -> ExitInfo:
        events = Recorder()
        runner = LocalRunner(RuntimeLayout(tmp_path), use_zygote=zygote)
        await runner.open(events)
        try:
            assert (runner.zygote is not None) is zygote
            task = await runner.start(spec)
            return await asyncio.wait_for(task.wait(), WAIT)
        finally:
            await runner.close()

    info = asyncio.run(scenario())
    log = spec.log_path.read_text()
    assert "PROBE " in log, log
    seen = json.loads(log.split("PROBE ", 1)[1].splitlines()[0])
    assert identity(seen["status"], seen["limits"], seen["nice"]) == expected(
        account, 0o077, 4, 512
    )
    assert ("zsvc.runners.zygote" in seen["cmdline"]) is zygote, seen["cmdline"]
    assert seen["tmp"] == []
    assert info.result is Result.EXIT_CODE  # the probe defines no task class: a setup error


def _skip_unless_runnable_by(account: Account) -> None:
    """Skip unless *account* may run this interpreter with zsvc (not from a 0700 checkout).
    Executed by a shell as the account, as the wrapper does: setpriv looks its program up
    with root's rights still (a venv linked into /root passed here, then failed)."""
    probe = subprocess.run(
        ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups", "--",
         "/bin/sh", "-c", 'exec "$@"', "sh", sys.executable, "-c", "import zsvc.task.host"],
        env={"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"},
        cwd="/",
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"{account.user} cannot run {sys.executable} with zsvc")


def _with_env(spec: LaunchSpec, extra: dict[str, str]) -> LaunchSpec:
    return dataclasses.replace(spec, env={**spec.env, **extra})


def refused_start(tmp: Path, spec: LaunchSpec, *, cgroups: bool) -> LaunchError:
    """The LaunchError a runner's start of *spec* raises (and nothing left running)."""

    async def scenario() -> LaunchError:
        runner = LocalRunner(RuntimeLayout(tmp), use_zygote=False, use_cgroups=cgroups)
        await runner.open(Recorder())
        try:
            with pytest.raises(LaunchError) as caught:
                await runner.start(spec)
            return caught.value
        finally:
            await runner.close()

    return asyncio.run(scenario())


def test_an_unknown_user_fails_the_start_naming_the_task(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["true"], ProcessSettings(user="zsvc-no-such-user"))
    error = refused_start(tmp_path, spec, cgroups=True)
    assert str(error) == "task 't1': unknown user zsvc-no-such-user"
    assert error.info.exit_code == EXIT_USER


@pytest.mark.parametrize("cgroups", [False, True], ids=["no-cgroups", "cgroups"])
def test_a_cgroup_limit_the_runner_cannot_set_refuses_the_start(
    tmp_path: Path, cgroups: bool
) -> None:
    """Never silently ignored: without cgroups, or without the controller (a hybrid host)."""
    if cgroups and (CGROUPS is None or CGROUPS.controllers() >= LIMIT_CONTROLLERS):
        pytest.skip("needs a cgroup2 hierarchy without the memory controller")
    spec = _spec(tmp_path, ["true"], ProcessSettings(memory_max=256 << 20))
    error = refused_start(tmp_path, spec, cgroups=cgroups)
    assert str(error).startswith("task 't1': memory_max needs ")
    assert ("ZSVC_CGROUPS=0" in str(error)) is not cgroups
    assert error.info.result is Result.RESOURCES


@pytest.mark.skipif(
    CGROUPS is None or not CGROUPS.controllers() >= LIMIT_CONTROLLERS,
    reason="needs a writable cgroup2 hierarchy with the memory, cpu and pids controllers",
)
def test_cgroup_limits_are_in_the_runs_group(tmp_path: Path) -> None:
    settings = ProcessSettings(memory_max=256 << 20, cpu_quota=50, tasks_max=64)
    spec = _spec(tmp_path, ["sleep", "60"], settings)

    async def scenario() -> dict[str, str]:
        async with running(tmp_path, spec) as (_, task, _events):
            assert task.cgroup is not None
            files = ("memory.max", "cpu.max", "pids.max")
            return {name: (task.cgroup.path / name).read_text().strip() for name in files}

    assert asyncio.run(scenario()) == {
        "memory.max": str(256 << 20),
        "cpu.max": "50000 100000",
        "pids.max": "64",
    }


# --- the stop signals --------------------------------------------------------------------

STUBBORN = textwrap.dedent(
    """
    import signal, sys
    from zsvc.notify import sd_notify
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))
    sd_notify("READY=1")
    while True:
        signal.pause()
    """
)
"""Ignores SIGTERM, ends at SIGUSR1, dies of SIGUSR2 (its default action)."""


@pytest.mark.parametrize(
    ("kill", "final", "result", "ending"),
    [
        (signal.SIGUSR1, signal.SIGKILL, Result.SUCCESS, ("exit", 0)),
        (signal.SIGUSR2, signal.SIGKILL, Result.SUCCESS, ("signal", signal.SIGUSR2)),
        (signal.SIGTERM, signal.SIGUSR2, Result.TIMEOUT, ("signal", signal.SIGUSR2)),
    ],
    ids=["kill-signal-handled", "killed-by-kill-signal", "final-kill-signal"],
)
def test_a_stop_sends_the_tasks_kill_signal_then_its_final_one(
    tmp_path: Path, kill: int, final: int, result: Result, ending: tuple[str, int]
) -> None:
    """KillSignal= first (a task killed by it ended cleanly), FinalKillSignal= after the
    stop timeout (result ``timeout``, as with SIGKILL)."""
    spec = _spec(
        tmp_path,
        [sys.executable, "-c", STUBBORN],
        ProcessSettings(),
        start_type=StartType.NOTIFY,
        stop_timeout=0.5,
        kill_signal=kill,
        final_kill_signal=final,
    )

    async def scenario() -> ExitInfo:
        async with running(tmp_path, spec) as (_, task, events):
            await asyncio.wait_for(events.ready.wait(), WAIT)
            return await asyncio.wait_for(task.stop(), WAIT)

    info = asyncio.run(scenario())
    assert info.result is result, info
    how = ("exit", info.exit_code) if info.exit_code is not None else ("signal", info.signal)
    assert how == ending
