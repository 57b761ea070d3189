"""Issue 14 under a real systemd 252: every execution setting reaches the task.

The systemd runner turns a task's settings into its transient unit's properties
(:func:`zsvc.runners.transient.transient_properties`). Here each one is checked
twice, in the box: as systemd shows the unit (``systemctl show``) and as the
task's process lives it (``/proc/<pid>/status``, ``limits``, ``stat``,
``mountinfo``, ``environ``, its cwd). The probe drives the runner itself (no
daemon), so what is tested is exactly what the runner sends.

The box boots systemd in cgroup hybrid mode and is not delegated the v1
memory/cpu/pids controllers, so ``MemoryMax``/``CPUQuota``/``TasksMax`` are read
back from the unit, and from the cgroup's own files only where they exist.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import free_port
from tests.system.box import REPO, WORK, SystemdBox
from tests.system.conftest import Zsvc, wait_for
from zsvc.naming import instance_id, unit_name

pytestmark = pytest.mark.system

USER = "zsvc-settings"
"""A throwaway user, made in the box for these tests and removed after."""
WORKDIR = "/srv/zsvc-settings"
UWSGI_LIKE = (
    "/usr/bin/python3 -c 'import signal, time;"
    ' signal.signal(signal.SIGTERM, lambda *a: print("reload", flush=True)); time.sleep(600)\''
)
"""A program that reloads on SIGTERM and ends by SIGINT (its kill_signal), as uWSGI."""
FORKER = "#!/bin/sh\n(setsid sleep 600 & echo $! > {pid_file})\nsleep 0.3\nexit 0\n"
"""A forking program: its daemon writes a PID file, its starter exits 0 after 0.3 s."""

PROBE = r"""
import asyncio, json, os, signal, subprocess, sys
from pathlib import Path
from zsvc.config.model import ProcessSettings
from zsvc.naming import unit_name
from zsvc.runners.base import LaunchSpec
from zsvc.runners.systemd import SystemdRunner
from zsvc.states import StartType

SHOWN = (
    "User Group SupplementaryGroups UMask Nice LimitNOFILE LimitNOFILESoft MemoryMax"
    " CPUQuotaPerSecUSec TasksMax NoNewPrivileges PrivateTmp KillSignal FinalKillSignal"
    " Type PIDFile ControlGroup MainPID"
).split()


class Events:
    def __init__(self):
        self.seen = []

    def on_ready(self, key): self.seen.append(["ready"])
    def on_status(self, key, text): self.seen.append(["status", text])
    def on_stopping(self, key): self.seen.append(["stopping"])
    def on_main_pid(self, key, pid, description): self.seen.append(["main_pid", pid])
    def on_exit(self, key, info): self.seen.append(["exit", info.describe()])


def launch(task, argv, **changes):
    fields = dict(
        transaction="settings", task_id=task, unit=unit_name("settings", task, "5e771265"),
        argv=tuple(argv), env={"PATH": "/usr/bin:/bin", "FOO": "bar"}, cwd=sys.argv[2],
        start_type=StartType.EXEC, start_timeout=10.0, stop_timeout=2.0,
        log_path=Path("/dev/null"),
    )
    fields.update(changes)
    return LaunchSpec(**fields)


def show(unit):
    out = subprocess.run(
        ["systemctl", "show", unit, *(f"--property={p}" for p in SHOWN)],
        capture_output=True, text=True, check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def inside(pid, group):
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    limits = [l for l in Path(f"/proc/{pid}/limits").read_text().splitlines() if "open files" in l]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    cgroup_files = {}
    for name in ("memory.max", "cpu.max", "pids.max"):
        for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            path = Path(root + group) / name
            if path.exists():
                cgroup_files[name] = path.read_text().strip()
    return {
        "uid": status["Uid"].split(), "gid": status["Gid"].split(),
        "groups": status["Groups"].split(), "umask": status["Umask"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "nofile": limits[0].split()[3:5],
        "nice": int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16]),
        "cwd": os.readlink(f"/proc/{pid}/cwd"),
        "foo": [e.decode() for e in environ if e.startswith(b"FOO=")],
        "private_tmp": any(" /tmp " in m and "systemd-private-" in m for m in mounts),
        "cgroup_files": cgroup_files,
    }


async def every_setting(runner, events):
    settings = ProcessSettings(
        user=sys.argv[3], group=sys.argv[3], supplementary_groups=("adm", "audio"),
        umask=0o027, nice=5, limit_nofile=4096, memory_max=256 * 1024 * 1024,
        cpu_quota=50.0, tasks_max=64, no_new_privileges=True, private_tmp=True,
    )
    # uWSGI-like: SIGTERM means "reload", SIGINT (its kill_signal) ends it.
    program = (
        "import signal, time; signal.signal(signal.SIGTERM, lambda *a: print('reload'));"
        " time.sleep(600)"
    )
    spec = launch(
        "every", ["/usr/bin/python3", "-c", program], process=settings,
        kill_signal=signal.SIGINT, final_kill_signal=signal.SIGKILL,
    )
    # The box's systemd has no controller for the limits (the runner would refuse them):
    # sent all the same, they are accepted and read back, which checks their signatures.
    runner.controllers = None
    task = await runner.start(spec)
    await asyncio.sleep(0.3)  # the task's exec; the facts below are read once, not awaited
    shown = show(spec.unit)
    facts = {"shown": shown, "inside": inside(task.pid, shown["ControlGroup"])}
    facts["stop"] = (await task.stop()).describe()
    facts["events"] = events.seen
    return facts


async def forking(runner, events):
    pid_file = "/run/zsvc-settings-fork.pid"
    script = Path(sys.argv[2]) / "forker.sh"
    script.write_text(
        "#!/bin/sh\n(setsid sleep 600 & echo $! > " + pid_file + ")\nsleep 0.3\nexit 0\n"
    )
    script.chmod(0o755)
    spec = launch("fork", [str(script)], start_type=StartType.FORKING, pid_file=pid_file)
    task = await runner.start(spec)
    starter = task.pid
    deadline = asyncio.get_running_loop().time() + 10
    while ["ready"] not in events.seen and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)  # the runner's own event, polled with a deadline
    facts = {"starter": starter, "pid": task.pid, "pid_file": int(Path(pid_file).read_text())}
    facts["shown"] = show(spec.unit)
    facts["stop"] = (await task.stop()).describe()
    facts["daemon_alive"] = Path(f"/proc/{facts['pid_file']}").exists()
    facts["events"] = events.seen
    return facts


async def controllers(runner, events):
    return {"usable": sorted(runner.controllers)}


async def main():
    runner = SystemdRunner(user=False, instance="5e771265")
    events = Events()
    await runner.open(events)
    try:
        scenarios = {"every": every_setting, "forking": forking, "controllers": controllers}
        facts = await scenarios[sys.argv[1]](runner, events)
    finally:
        await runner.close()
    print(json.dumps(facts))


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def settings_box(box: SystemdBox) -> Iterator[SystemdBox]:
    """The session's box with a throwaway user and a working directory, removed after."""
    setup = f"useradd --no-create-home --shell /usr/sbin/nologin {USER}; mkdir -p {WORKDIR}"
    box.run("sh", "-c", setup, check=True)
    try:
        yield box
    finally:
        box.run("sh", "-c", f"userdel {USER}; rm -rf {WORKDIR}")


def probe(box: SystemdBox, scenario: str) -> dict[str, Any]:
    """Run the probe's *scenario* in the box (as root: the system manager); its facts."""
    done = box.run(
        sys.executable, "-c", PROBE, scenario, WORKDIR, USER,
        env={"PYTHONPATH": str(REPO)}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def ids(box: SystemdBox, *argv: str) -> str:
    return box.run(*argv, check=True).stdout.strip()


def test_every_setting_is_a_unit_property_and_reaches_the_process(settings_box) -> None:
    facts = probe(settings_box, "every")
    shown, inside = facts["shown"], facts["inside"]
    assert {
        key: value for key, value in shown.items() if key not in ("ControlGroup", "MainPID")
    } == {
        "User": USER,
        "Group": USER,
        "SupplementaryGroups": "adm audio",
        "UMask": "0027",
        "Nice": "5",
        "LimitNOFILE": "4096",
        "LimitNOFILESoft": "4096",
        "MemoryMax": str(256 * 1024 * 1024),
        "CPUQuotaPerSecUSec": "500ms",
        "TasksMax": "64",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "KillSignal": str(int(signal.SIGINT)),
        "FinalKillSignal": str(int(signal.SIGKILL)),
        "Type": "exec",
        "PIDFile": "",
    }
    uid = ids(settings_box, "id", "-u", USER)
    gid = ids(settings_box, "id", "-g", USER)
    groups = {ids(settings_box, "getent", "group", g).split(":")[2] for g in ("adm", "audio")}
    assert inside["uid"] == [uid] * 4 and inside["gid"] == [gid] * 4
    assert set(inside["groups"]) == {gid, *groups}
    assert (inside["umask"], inside["no_new_privs"], inside["nice"]) == ("0027", "1", 5)
    assert inside["nofile"] == ["4096", "4096"]
    assert (inside["cwd"], inside["foo"], inside["private_tmp"]) == (WORKDIR, ["FOO=bar"], True)
    expected_files = {"memory.max": str(256 * 1024 * 1024), "cpu.max": "50000 100000"}
    expected_files["pids.max"] = "64"
    for name, value in inside["cgroup_files"].items():  # where the box has the controller
        assert value == expected_files[name], name
    # Stopped by its kill signal (SIGINT) within the stop timeout: a clean stop; with
    # SIGTERM it would only "reload" and end by SIGKILL after 2 s ("timeout").
    assert facts["stop"] == "killed by SIGINT (success)"
    assert facts["events"] == [["ready"], ["exit", "killed by SIGINT (success)"]]


def test_a_forking_program_is_followed_to_its_daemon_and_stopped(settings_box) -> None:
    facts = probe(settings_box, "forking")
    assert facts["shown"]["Type"] == "forking"
    assert facts["shown"]["PIDFile"] == "/run/zsvc-settings-fork.pid"
    assert facts["shown"]["MainPID"] == str(facts["pid_file"]) == str(facts["pid"])
    assert facts["starter"] != facts["pid"]  # start() returned with the starter's pid
    assert facts["events"][:2] == [["main_pid", facts["pid_file"]], ["ready"]]
    assert facts["stop"] == "killed by SIGTERM (success)"
    assert not facts["daemon_alive"]


def exec_context(box: SystemdBox, tx: str) -> str:
    """A context (the issue's syntax) with one task of every setting and one forking task."""
    forker, pid_file = f"{WORKDIR}/forker.sh", f"{WORKDIR}/fork.pid"
    box.host_path(forker).write_text(FORKER.format(pid_file=pid_file))
    box.host_path(forker).chmod(0o755)
    message = (
        "<message><header><action>start</action><service_name>{0}</service_name></header>"
        "<content><configuration/></content></message><state type='on_start'/>"
    )
    text = f"""<?xml version="1.0"?>
<Context>
  <FrontEndEndpoint>tcp://127.0.0.1:{free_port()}</FrontEndEndpoint>
  <BackendEndpoint>tcp://127.0.0.1:{free_port()}</BackendEndpoint>
  <ContextID>{tx}</ContextID>
  <TaskLogName>tests</TaskLogName>
  <TaskService id="app" instance="App" serviceType="Process" topic="process"
               kill_signal="SIGINT" stop_timeout="3">
    <Task>
      <command type="exec">{UWSGI_LIKE}</command>
      <exec user="{USER}" group="{USER}" supplementary_groups="adm audio"
            working_directory="{WORKDIR}" umask="0027" nice="5" limit_nofile="4096"
            no_new_privileges="true" private_tmp="true">
        <environment name="FOO">bar</environment>
      </exec>
      {message.format("app")}
    </Task>
  </TaskService>
  <TaskService id="forker" instance="Forker" serviceType="Process" topic="process">
    <Task>
      <command type="forking" pid_file="{pid_file}">{forker}</command>
      {message.format("forker")}
    </Task>
  </TaskService>
</Context>
"""
    inside = f"{WORK}/Context-{tx}.xml"
    box.host_path(WORK).mkdir(parents=True, exist_ok=True)
    box.host_path(inside).write_text(text)
    return inside


def test_a_context_with_exec_settings_runs_as_written(
    zsvc_service: Zsvc, settings_box: SystemdBox
) -> None:
    """The whole way: XML, loader, launch spec, runner, systemd, the task's process."""
    tx = "sys-exec"
    zsvc_service.ok("start", "--context", exec_context(settings_box, tx), tx)
    instance = instance_id("/var/lib/zsvc")
    app = zsvc_service.task(tx, "app")
    shown = zsvc_service.show(
        unit_name(tx, "app", instance), "User", "SupplementaryGroups", "KillSignal",
        "PrivateTmp", "MainPID",
    )  # fmt: skip
    assert shown == {
        "User": USER,
        "SupplementaryGroups": "adm audio",
        "KillSignal": str(int(signal.SIGINT)),
        "PrivateTmp": "yes",
        "MainPID": str(app["pid"]),
    }
    proc = f"/proc/{app['pid']}"
    facts = settings_box.run(
        "sh", "-c",
        f"grep -E '^(Uid|Umask|NoNewPrivs):' {proc}/status; grep 'open files' {proc}/limits",
    ).stdout.split()  # fmt: skip
    uid = ids(settings_box, "id", "-u", USER)
    assert facts == [
        *("Umask:", "0027", "Uid:", uid, uid, uid, uid, "NoNewPrivs:", "1"),
        *("Max", "open", "files", "4096", "4096", "files"),
    ]
    place = settings_box.run(
        "sh", "-c", f"readlink {proc}/cwd; tr '\\0' '\\n' < {proc}/environ | grep '^FOO='"
    ).stdout.split()
    forker = zsvc_service.task(tx, "forker")
    daemon = int(zsvc_service.read(f"{WORKDIR}/fork.pid"))
    assert (forker["state"], forker["pid"]) == ("active", daemon)
    zsvc_service.ok("stop", tx)
    app = zsvc_service.task(tx, "app")
    assert (app["result"], app["last_exit"]) == ("success", "killed by SIGINT (success)")
    wait_for(lambda: not zsvc_service.alive(daemon), what="the forking program's daemon gone")
    assert place == [WORKDIR, "FOO=bar"]  # resolved by the daemon's launch, as locally


def test_an_unknown_user_fails_the_start_naming_the_task(
    zsvc_service: Zsvc, settings_box: SystemdBox
) -> None:
    """Refused by the daemon before any runner is asked (its preflight), as locally."""
    tx = "sys-nouser"
    inside = exec_context(zsvc_service.box, tx)
    written = zsvc_service.read(inside).replace(f'user="{USER}"', 'user="zsvc-nobody"')
    zsvc_service.box.host_path(inside).write_text(written)
    done = zsvc_service.zsvc("start", "--context", inside, tx)
    assert done.returncode == 1, done.stderr
    assert "task app: user 'zsvc-nobody' does not exist on this host" in done.stderr


def test_a_cgroup_limit_is_enforced_or_refused_never_ignored(
    zsvc_service: Zsvc, settings_box: SystemdBox
) -> None:
    """Where systemd has the controllers (cgroup2), the limits are in the unit's cgroup;
    where it has none (this box: cgroup1 hierarchies read-only), zsvc start fails and
    says so, as the local runner does: systemd would accept them and enforce nothing."""
    usable = set(probe(settings_box, "controllers")["usable"])
    tx = "sys-limits"
    inside = exec_context(zsvc_service.box, tx)
    limits = 'umask="0027" memory_max="256M" cpu_quota="50%" tasks_max="64"'
    written = zsvc_service.read(inside).replace('umask="0027"', limits)
    zsvc_service.box.host_path(inside).write_text(written)
    done = zsvc_service.zsvc("start", "--context", inside, tx)
    if {"memory", "cpu", "pids"} <= usable:
        assert done.returncode == 0, done.stderr
        unit = unit_name(tx, "app", instance_id("/var/lib/zsvc"))
        shown = zsvc_service.show(unit, "MemoryMax", "CPUQuotaPerSecUSec", "TasksMax")
        assert shown == {
            "MemoryMax": str(256 * 1024 * 1024),
            "CPUQuotaPerSecUSec": "500ms",
            "TasksMax": "64",
        }
        zsvc_service.ok("stop", tx)
    else:
        assert done.returncode == 1, done.stdout
        missing = next(c for c in ("memory", "cpu", "pids") if c not in usable)
        assert f"needs the {missing} controller, which systemd does not have here" in (
            done.stdout + done.stderr
        )
        zsvc_service.zsvc("stop", tx)
