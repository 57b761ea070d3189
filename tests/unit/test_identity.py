"""Tasks never run with more privilege than their transaction's owner (zsvc/daemon/identity.py).

The policy is a function of the owner, the settings, the grants and a user/group table:
the table here is a small fixed one (root, two members, a service user), so that the
property tests can name every identity there is.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pwd
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.config import load_context_text
from zsvc.config.model import Context, ProcessSettings
from zsvc.daemon.access import ROOT, AccessRules, Grant, Principal, Who
from zsvc.daemon.asowner import reader_for
from zsvc.daemon.identity import IdentityRefused, effective_process
from zsvc.daemon.launch import Launcher, MayRunAs
from zsvc.daemon.launch import grants_nothing as launch_grants_nothing
from zsvc.errors import OperationFailed
from zsvc.hostwire import SPEC_ENV
from zsvc.paths import RuntimeLayout, StateLayout
from zsvc.runners.base import LaunchError
from zsvc.runners.localexec import wrapped
from zsvc.runners.procsettings import Resolved
from zsvc.states import Result

USERS = {"root": (0, 0), "alice": (1001, 1001), "bob": (1002, 1002), "www-data": (33, 33)}
GROUPS = {"root": 0, "alice": 1001, "bob": 1002, "www-data": 33, "zsvc": 990, "ops": 991}
MEMBERS = {"alice": {"zsvc", "ops"}, "bob": {"zsvc"}, "www-data": set(), "root": set()}


class Table:
    """The user and group databases of a small imaginary host."""

    def uid_of(self, user: str) -> int | None:
        return int(user) if user.isdigit() else USERS.get(user, (None,))[0]

    def gid_of(self, group: str) -> int | None:
        return int(group) if group.isdigit() else GROUPS.get(group)

    def user_name(self, uid: int) -> str:
        return next((name for name, (u, _) in USERS.items() if u == uid), str(uid))

    def group_name(self, gid: int) -> str:
        return next((name for name, g in GROUPS.items() if g == gid), str(gid))

    def groups_of(self, uid: int, gid: int | None) -> frozenset[int]:
        name = self.user_name(uid)
        own = {gid} if gid is not None else set()
        if name not in USERS:
            return frozenset(own)
        return frozenset({*own, USERS[name][1], *(GROUPS[g] for g in MEMBERS[name])})


ALICE = Principal(1001, 1001, "alice")


def grants_nothing(identity: str, user: bool) -> bool:
    return False


def granting(*names: str) -> Callable[[str, bool], bool]:
    """Grants of *names*, users and groups alike."""
    return lambda identity, user: identity in names


TABLE = Table()


def effective(
    process: ProcessSettings,
    owner: Principal = ALICE,
    may_run_as: Callable[[str, bool], bool] = grants_nothing,
    hard_nofile: int | None = 4096,
) -> ProcessSettings:
    return effective_process(
        owner, process, may_run_as, task="web", transaction="TX", hard_nofile=hard_nofile,
        directory=TABLE,
    )  # fmt: skip


def test_root_runs_as_written() -> None:
    written = ProcessSettings(user="www-data", nice=-5, limit_nofile=1 << 20)
    assert effective(written, owner=ROOT) is written
    assert effective(ProcessSettings(), owner=ROOT) == ProcessSettings()


def test_a_member_runs_as_themselves() -> None:
    assert effective(ProcessSettings()) == ProcessSettings(user="1001", group="1001")
    umask = effective(ProcessSettings(umask=0o077, private_tmp=True, memory_max=1 << 20))
    assert (umask.user, umask.umask, umask.private_tmp) == ("1001", 0o077, True)
    assert effective(ProcessSettings(user="alice")).user == "alice"
    assert effective(ProcessSettings(group="ops", supplementary_groups=("zsvc",))).group == "ops"


def test_anyone_else_is_refused_with_the_way_to_grant_it() -> None:
    with pytest.raises(IdentityRefused) as refused:
        effective(ProcessSettings(user="root"))
    assert refused.value.message == (
        "task web: user 'root' is not yours to run as: transaction TX belongs to alice;"
        " a grant run_as.root = user:alice in /etc/zsvc/zsvc.conf [access] allows it (<exec user>)"
    )
    for process in (
        ProcessSettings(user="0"),
        ProcessSettings(user="bob"),
        ProcessSettings(group="root"),
        ProcessSettings(group="0"),
        ProcessSettings(supplementary_groups=("zsvc", "www-data")),
        ProcessSettings(user="alice", group="bob"),
    ):
        with pytest.raises(IdentityRefused, match="is not yours to run as"):
            effective(process)


def test_a_grant_allows_that_identity_with_its_groups() -> None:
    granted = effective(ProcessSettings(user="www-data"), may_run_as=granting("www-data"))
    assert (granted.user, granted.group) == ("www-data", None)
    both = ProcessSettings(user="www-data", group="www-data")
    assert effective(both, may_run_as=granting("www-data")).group == "www-data"
    assert effective(ProcessSettings(user="0"), may_run_as=granting("root")).user == "0"
    with pytest.raises(IdentityRefused, match="group 'root' is not yours"):
        effective(ProcessSettings(user="www-data", group="root"), ALICE, granting("www-data"))


def test_a_group_of_a_users_name_is_not_that_user() -> None:
    """With the daemon's real rules: alice's own groups are hers to run as, but being in
    group www-data (or root) does not make her user www-data (or root)."""
    rules = AccessRules(groups_of=lambda principal: frozenset({"alice", "www-data", "root"}))
    as_alice = functools.partial(_rule_for, rules, ALICE)
    assert effective(ProcessSettings(group="www-data"), may_run_as=as_alice).group == "www-data"
    for user in ("www-data", "root", "0"):
        with pytest.raises(IdentityRefused, match="is not yours to run as"):
            effective(ProcessSettings(user=user), may_run_as=as_alice)
    granted = dataclasses.replace(rules, run_as=(Grant("www-data", (Who("user", "alice"),)),))
    as_granted = functools.partial(_rule_for, granted, ALICE)
    assert effective(ProcessSettings(user="www-data"), may_run_as=as_granted).user == "www-data"


def _rule_for(rules: AccessRules, owner: Principal, identity: str, user: bool) -> bool:
    return rules.may_run_as(owner, identity, user=user)


def test_privileges_no_grant_gives() -> None:
    with pytest.raises(IdentityRefused, match="nice -1 needs root"):
        effective(ProcessSettings(nice=-1))
    assert effective(ProcessSettings(nice=5)).nice == 5
    with pytest.raises(IdentityRefused, match="limit_nofile 4097 is above the daemon's hard"):
        effective(ProcessSettings(limit_nofile=4097))
    assert effective(ProcessSettings(limit_nofile=4096)).limit_nofile == 4096


def test_unknown_names_and_ownerless_keys_are_refused() -> None:
    with pytest.raises(IdentityRefused, match="user 'nosuch' does not exist"):
        effective(ProcessSettings(user="nosuch"))
    with pytest.raises(IdentityRefused, match="group 'nosuch' does not exist"):
        effective(ProcessSettings(group="nosuch"))
    with pytest.raises(IdentityRefused, match="the new transaction belongs to alice"):
        effective_process(ALICE, ProcessSettings(user="bob"), grants_nothing, task="web",
                          transaction="", directory=TABLE)  # fmt: skip
    with pytest.raises(IdentityRefused, match="acts as no user of this host"):
        effective(ProcessSettings(), owner=Principal(None, None, "key:laptop", key="laptop"))


NAMES = st.sampled_from([*USERS, *GROUPS, "0", "33", "1001", "1002", "990", "4242"])
PROCESSES = st.builds(
    ProcessSettings,
    user=st.none() | NAMES,
    group=st.none() | NAMES,
    supplementary_groups=st.lists(NAMES, max_size=3).map(tuple),
    nice=st.none() | st.integers(-20, 19),
    limit_nofile=st.none() | st.integers(1, 1 << 21),
)
OWNERS = st.builds(
    Principal,
    uid=st.sampled_from([1001, 1002, 33, 4242]),
    gid=st.sampled_from([1001, 1002, 33, 990, 4242]),
    name=st.sampled_from(["alice", "bob", "www-data", "4242"]),
)


@settings(max_examples=400)
@given(owner=OWNERS, process=PROCESSES, grants=st.frozensets(NAMES, max_size=3))
def test_never_more_than_the_owner_or_a_grant(
    owner: Principal, process: ProcessSettings, grants: frozenset[str]
) -> None:
    asked: list[str] = []

    def may_run_as(identity: str, user: bool) -> bool:
        asked.append(identity)
        return identity in grants

    try:
        result = effective(process, owner=owner, may_run_as=may_run_as)
    except IdentityRefused:
        return
    assert owner.uid is not None
    assert result.user is not None, "a non-root owner's task always names its user"
    uid = TABLE.uid_of(result.user)
    assert uid == owner.uid or TABLE.user_name(uid) in grants
    if uid != owner.uid:
        assert TABLE.user_name(uid) in asked
    assert uid != 0 or "root" in grants or "0" in grants
    allowed = TABLE.groups_of(owner.uid, owner.gid) | TABLE.groups_of(uid, None)
    for group in filter(None, (result.group, *result.supplementary_groups)):
        gid = TABLE.gid_of(group)
        assert gid in allowed or TABLE.group_name(gid) in grants
    assert result.nice is None or result.nice >= 0
    assert result.limit_nofile is None or result.limit_nofile <= 4096


# --------------------------------------------------------------------------- the launcher


def _context(tmp_path: Path, tasks: str) -> Context:
    text = f"<Context><ContextID>c</ContextID>{tasks}</Context>"
    return load_context_text(text, tmp_path / "Context-c.xml")


def _task(task_id: str, body: str, attributes: str = "") -> str:
    return (
        f'<TaskService id="{task_id}"{attributes}><Task>{body}'
        f"<message><header><service_name>{task_id}</service_name></header></message>"
        "</Task></TaskService>"
    )


def _launcher(tmp_path: Path, may_run_as: MayRunAs = launch_grants_nothing) -> Launcher:
    runtime, state = RuntimeLayout(tmp_path / "run"), StateLayout(tmp_path / "state")
    return Launcher(runtime, state, {"PATH": "/bin"}, may_run_as=may_run_as)


NOBODY = pwd.getpwnam("nobody")
OWNER = Principal.local(NOBODY.pw_uid, NOBODY.pw_gid)


def test_a_non_root_owners_launches_run_as_the_owner(tmp_path: Path) -> None:
    """Command, Python and Thread tasks alike: the owner's uid and gid, the owner's
    USER/HOME, and for the Python ones the owner's own bus pair."""
    context = _context(
        tmp_path,
        _task("cmd", "<command>/bin/true</command>")
        + _task("py", "", ' instance="Echo"')
        + _task("th", "", ' instance="Echo" serviceType="Thread"'),
    )
    launcher, uid = _launcher(tmp_path), str(NOBODY.pw_uid)
    own_pair = launcher.runtime.user_bus(NOBODY.pw_uid)
    for spec in context.tasks:
        launch = launcher.task("TX", context, spec, "i", crashing=False, owner=OWNER)
        run = launch.thread_host or launch
        assert (run.process.user, run.process.group) == (uid, str(NOBODY.pw_gid)), spec.id
        assert (run.env["USER"], run.env["HOME"]) == ("nobody", NOBODY.pw_dir), spec.id
        if spec.id != "cmd":
            host = json.loads(run.env[SPEC_ENV])
            assert (host["bus_pub"], host["bus_sub"]) == own_pair, spec.id
    for spec in context.tasks:  # root's: as written
        launch = launcher.task("TX", context, spec, "i", crashing=False)
        assert (launch.thread_host or launch).process == ProcessSettings(), spec.id


def test_the_daemons_own_users_transactions_run_as_written(tmp_path: Path) -> None:
    """A user's daemon: its user owns every transaction, whose tasks must not all gain a
    user= (the local runner would need root to set its groups)."""
    context = _context(tmp_path, _task("cmd", "<command>/bin/true</command>"))
    runtime, state = RuntimeLayout(tmp_path / "run"), StateLayout(tmp_path / "state")
    theirs = Launcher(runtime, state, {"PATH": "/bin"}, daemon_uid=NOBODY.pw_uid)
    launch = theirs.task("TX", context, context.tasks[0], "i", crashing=False, owner=OWNER)
    assert launch.process == ProcessSettings()
    other = _launcher(tmp_path).task("TX", context, context.tasks[0], "i", crashing=False,
                                     owner=OWNER)  # fmt: skip
    assert other.process.user == str(NOBODY.pw_uid)


def test_a_refusal_at_start_and_at_launch(tmp_path: Path) -> None:
    context = _context(tmp_path, _task("web", '<command>/bin/true</command><exec user="root"/>'))
    launcher = _launcher(tmp_path)
    with pytest.raises(IdentityRefused, match="task web: user 'root' is not yours to run as"):
        launcher.preflight("TX", context.tasks[0], OWNER)
    with pytest.raises(LaunchError, match="is not yours") as refused:
        launcher.task("TX", context, context.tasks[0], "i", crashing=False, owner=OWNER)
    assert refused.value.info.result is Result.RESOURCES
    launcher.preflight("TX", context.tasks[0])  # root's own
    granted = _launcher(tmp_path, lambda owner, name, user=False: (owner, name) == (OWNER, "root"))
    launch = granted.task("TX", context, context.tasks[0], "i", crashing=False, owner=OWNER)
    assert launch.process.user == "root"


# --------------------------------------------------------------------------- files as the owner


@pytest.mark.skipif(os.geteuid() != 0, reason="reads as another user: needs root")
def test_a_non_root_owners_environment_file_is_read_with_their_rights() -> None:
    """Not the root daemon's: a file only root may read is refused, as it would be to them."""
    with tempfile.TemporaryDirectory(prefix="zt-identity-") as where:  # pytest's is 0700
        _environment_files_as_the_owner(Path(where))


def _environment_files_as_the_owner(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    secret, public = tmp_path / "secret.env", tmp_path / "public.env"
    secret.write_text("TOKEN=root-only\n")
    secret.chmod(0o600)
    public.write_text("GREETING=hello\n")
    public.chmod(0o644)
    read = reader_for(OWNER)
    assert read(public) == b"GREETING=hello\n"
    with pytest.raises(PermissionError):
        read(secret)
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "missing.env")
    assert reader_for(ROOT)(secret) == b"TOKEN=root-only\n"

    xml = f"<command>/bin/true</command><exec><environment_file>{secret}</environment_file></exec>"
    context = _context(tmp_path, _task("web", xml))
    launcher = _launcher(tmp_path)
    with pytest.raises(OperationFailed, match=r"secret\.env: cannot read it: Permission denied"):
        launcher.preflight("TX", context.tasks[0], OWNER)
    with pytest.raises(LaunchError, match="Permission denied"):
        launcher.task("TX", context, context.tasks[0], "i", crashing=False, owner=OWNER)
    launcher.preflight("TX", context.tasks[0])  # root's own transaction reads it


@pytest.mark.skipif(os.geteuid() != 0, reason="changes user: needs root")
def test_the_local_wrapper_gives_the_task_its_environment_and_root_none_of_it() -> None:
    """The root steps of the wrapper (sh, setpriv) see none of a task's variables; the
    task, once it is its user, sees all of them, exactly."""
    env = {"PATH": "/usr/bin:/bin", "LD_DEBUG_OUTPUT": "/nowhere/x", "LANG": "C.UTF-8",
           "ODD-NAME": "lost in any shell", "LINES": "a\nb 'c' \"d\" $e"}  # fmt: skip
    settings = Resolved(uid=NOBODY.pw_uid, gid=NOBODY.pw_gid, groups=())
    argv, guarded = wrapped(["/usr/bin/env", "-0"], env, None, None, settings, "/")
    assert set(guarded) == {"ODD-NAME"} | {
        f"ZSVC_KEPT_{name}" for name in env if name != "ODD-NAME"
    }
    done = subprocess.run(argv, env=guarded, capture_output=True, cwd="/", timeout=30)
    assert done.returncode == 0, done.stderr
    seen = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if item)
    seen.pop("PWD", None)  # the shell's own
    assert seen == {name: value for name, value in env.items() if name != "ODD-NAME"}
