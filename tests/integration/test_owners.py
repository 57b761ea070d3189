"""Transactions have owners, and only the owner, root or a grant may control one (issue 15).

Two throwaway members of group ``zsvc`` drive a root daemon through its control socket
as ``zsvc`` would: the kernel says who each is (SO_PEERCRED), not the request. The first
member's transaction is theirs (``owner`` in every status view, to everyone); the second
member may read it but not stop, restart, start again nor forget it (exit 5, the message
naming the owner), nor shut the daemon down, unless the daemon's ``[access]`` settings
grant it; root may everything; a daemon killed and started again keeps the owners.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, TaskDef, render_context, wait_until
from tests.integration.test_bus_trust import (
    ATTACK_TIMEOUT,
    MARKER_TOPIC,
    attack_as,
    read_line,
)
from tests.integration.test_exec_settings import listening_tcp
from tests.integration.test_group_access import control_group, zsvc_as
from tests.users import throwaway_user
from zsvc import protocol

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates users, runs as them"),
]

NOT_YOURS = 5


@pytest.fixture
def members(workdir: Path) -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd]]:
    """Two throwaway members of group ``zsvc`` who may enter the test's directory."""
    workdir.chmod(0o711)  # the daemon's directories decide, not the test's temp dir
    with (
        control_group() as group,
        throwaway_user(groups=[group.gr_name]) as first,
        throwaway_user(groups=[group.gr_name]) as second,
    ):
        yield first, second


def owners(daemon: Daemon, as_user: pwd.struct_passwd | None = None) -> dict[str, str]:
    """Each transaction's owner in ``zsvc status --json``, asked by root or *as_user*."""
    if as_user is None:
        done = daemon.cli("status", "--json")
        code, out, err = done.code, done.stdout, done.stderr
    else:
        proc = zsvc_as(as_user, daemon, "status", "--json")
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 0, err
    return {view["transaction"]: view["owner"] for view in json.loads(out)["transactions"]}


def start_as(
    user: pwd.struct_passwd, daemon: Daemon, make_context: Callable[..., Path], *ids: str
) -> None:
    """*user* starts a transaction of one long task for each of *ids*."""
    path = make_context([TaskDef("t1", command="sleep 600")])
    for transaction in ids:
        started = zsvc_as(user, daemon, "start", "--context", str(path), transaction)
        assert started.returncode == 0, started.stderr + daemon.log()[-3000:]


def refusal(transaction: str, owner: str, verb: str) -> str:
    return (
        f"transaction {transaction} belongs to {owner}; only {owner}, root, or a grant in"
        f" /etc/zsvc/zsvc.conf [access] may {verb} it"
    )


def test_only_the_owner_or_root_controls_a_members_transaction(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    members: tuple[pwd.struct_passwd, pwd.struct_passwd],
) -> None:
    alice, bob = members
    daemon = daemons()
    start_as(alice, daemon, make_context, "WEB1")
    roots = make_context([TaskDef("t1", command="sleep 600")])
    assert daemon.cli("start", "--context", str(roots), "ROOTS").code == 0

    # Everyone who may connect sees every transaction and its owner.
    expected = {"WEB1": alice.pw_name, "ROOTS": "root"}
    assert owners(daemon) == owners(daemon, bob) == expected
    shown = zsvc_as(bob, daemon, "status", "WEB1")
    assert shown.returncode == 0 and f"owner {alice.pw_name}" in shown.stdout, shown.stderr

    for argv, verb in (
        (["stop", "WEB1"], "stop"),
        (["restart", "WEB1"], "restart"),
        (["start", "WEB1"], "start"),
        (["forget", "WEB1"], "forget"),
        (["stop", "ROOTS"], "stop"),
    ):
        refused = zsvc_as(bob, daemon, *argv)
        owner = "root" if argv[1] == "ROOTS" else alice.pw_name
        assert refused.returncode == NOT_YOURS, (argv, refused.stdout, refused.stderr)
        assert refusal(argv[1], owner, verb) in refused.stderr
        assert f"refused: {bob.pw_name} (uid {bob.pw_uid}) asked to {verb}" in daemon.log()
    down = zsvc_as(bob, daemon, "shutdown")
    assert down.returncode == NOT_YOURS, down.stdout + down.stderr
    assert "only root, or a plain 'control' grant" in down.stderr
    assert daemon.proc is not None and daemon.proc.poll() is None  # still serving
    status = json.loads(daemon.cli("status", "WEB1", "--json").stdout)
    assert status["state"] == "running"  # nothing bob asked for was done

    assert zsvc_as(alice, daemon, "stop", "WEB1").returncode == 0  # hers
    assert zsvc_as(alice, daemon, "start", "WEB1").returncode == 0
    assert zsvc_as(alice, daemon, "stop", "ROOTS").returncode == NOT_YOURS
    assert daemon.cli("stop", "WEB1").code == 0  # root may everything
    assert daemon.cli("forget", "WEB1").code == 0


def test_a_grant_lets_another_member_control_matching_transactions(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    members: tuple[pwd.struct_passwd, pwd.struct_passwd],
    workdir: Path,
) -> None:
    alice, bob = members
    settings = workdir / "zsvc.conf"
    settings.write_text(f"[access]\ncontrol.WEB* = user:{bob.pw_name}\n")
    daemon = daemons(args=["--config", str(settings)])
    start_as(alice, daemon, make_context, "WEB1", "DB1")

    assert zsvc_as(bob, daemon, "stop", "WEB1").returncode == 0  # granted by pattern
    refused = zsvc_as(bob, daemon, "stop", "DB1")
    assert refused.returncode == NOT_YOURS, refused.stderr
    assert zsvc_as(bob, daemon, "shutdown").returncode == NOT_YOURS  # a pattern is not all
    # Bob restarted Alice's transaction: it is still hers (her tasks, her identity).
    assert zsvc_as(bob, daemon, "start", "WEB1").returncode == 0
    assert owners(daemon)["WEB1"] == alice.pw_name


def test_owners_survive_a_daemon_killed_and_started_again(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    members: tuple[pwd.struct_passwd, pwd.struct_passwd],
) -> None:
    alice, bob = members
    first = daemons()
    start_as(alice, first, make_context, "WEB1")
    first.kill9()  # the tasks run on; the next daemon re-adopts them from the table
    second = daemons()
    assert owners(second) == {"WEB1": alice.pw_name}
    assert zsvc_as(bob, second, "stop", "WEB1").returncode == NOT_YOURS
    assert zsvc_as(alice, second, "stop", "WEB1").returncode == 0


def forge_update(member: pwd.struct_passwd, daemon: Daemon, transaction: str) -> None:
    """*member* publishes ``control``/``updated`` for *transaction*'s t1 on the trusted
    bus (``ipc://``, which group zsvc reaches), as ``test_bus_trust``'s attacker does."""
    own = daemon.bus(MARKER_TOPIC)
    attacker = attack_as(member, *daemon_bus(daemon), transaction, groups=True)
    try:
        assert read_line(attacker, time.monotonic() + ATTACK_TIMEOUT) == "sent"
        own.publish(protocol.make_message(MARKER_TOPIC, "done"))
        assert attacker.wait(ATTACK_TIMEOUT) == 0, attacker.stderr.read()
    finally:
        if attacker.poll() is None:
            attacker.kill()
        attacker.wait(10)
        own.close()


def daemon_bus(daemon: Daemon) -> tuple[str, str]:
    return f"ipc://{daemon.runtime}/bus-sub", f"ipc://{daemon.runtime}/bus-pub"


def test_another_member_cannot_fire_a_members_triggers_on_the_bus(
    daemons: Callable[..., Daemon],
    make_context: Callable[..., Path],
    members: tuple[pwd.struct_passwd, pwd.struct_passwd],
) -> None:
    """An ``updated`` report fires the task's triggers: control of the transaction. Both
    members reach the trusted bus; the daemon believes the report from the owner (or
    the task, or root) only, by the kernel's uid of the publisher."""
    alice, bob = members
    daemon = daemons()
    path = make_context(
        [
            TaskDef("t1", command="sleep 600", triggers={"on_update": ("stop", "t2")}),
            TaskDef("t2", command="sleep 600"),
        ]
    )
    started = zsvc_as(alice, daemon, "start", "--context", str(path), "TRIG")
    assert started.returncode == 0, started.stderr

    def task(task_id: str) -> dict:
        tasks = daemon.call("status", transaction="TRIG")["tasks"]
        return next(t for t in tasks if t["id"] == task_id)

    forge_update(bob, daemon, "TRIG")
    assert (task("t1")["last_action"], task("t2")["state"]) == ("started", "active")
    wait_until(lambda: "'updated' from" in daemon.log(), what="the ignored report logged")
    forge_update(alice, daemon, "TRIG")  # hers: believed, the trigger fires
    wait_until(lambda: task("t2")["state"] == "inactive", what="t2 stopped by alice's report")
    assert task("t1")["last_action"] == "updated"


def test_a_members_context_binds_nothing_the_member_could_not(
    daemons: Callable[..., Daemon],
    workdir: Path,
    members: tuple[pwd.struct_passwd, pwd.struct_passwd],
) -> None:
    """The daemon binds as root: a member's context must not make it take a port below
    1024 or put a socket file where the member may not write (here /etc)."""
    alice, _ = members
    daemon = daemons()
    base = render_context([TaskDef("t1", command="sleep 600")], 1, 2)
    for pub, sub, why in (
        ("ipc:///etc/zsvc-test-pub", "ipc:///etc/zsvc-test-sub", "is not yours"),
        ("tcp://127.0.0.1:81", "tcp://127.0.0.1:82", "ports below 1024 are root's"),
    ):
        text = re.sub(
            r"<FrontEndEndpoint>[^<]*</FrontEndEndpoint>\s*<BackendEndpoint>[^<]*</BackendEndpoint>",
            f"<FrontBind>{pub}</FrontBind><BackendBind>{sub}</BackendBind>",
            base,
        )
        path = workdir / f"Context-{why[:3]}.xml"
        path.write_text(text)
        path.chmod(0o644)
        refused = zsvc_as(alice, daemon, "start", "--context", str(path), "BINDS")
        assert refused.returncode == NOT_YOURS, refused.stderr
        assert why in refused.stderr and "only root's transactions may bind it" in refused.stderr
    assert not os.path.exists("/etc/zsvc-test-pub") and not os.path.exists("/etc/zsvc-test-sub")
    assert not {"127.0.0.1:81", "127.0.0.1:82"} & set(listening_tcp(daemon.pid()))
