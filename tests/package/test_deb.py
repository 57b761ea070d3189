"""The .deb, installed with apt into a freshly booted systemd box, as a user would.

Builds the package twice from this checkout (``packaging/build-deb``, tests
skipped: they ran in the main build), the second time as a newer version,
then in one throwaway box (:mod:`tests.system.box`): install, the daemon
active, a member of group ``zsvc`` runs the sample transaction and a user
outside it is refused, the tasks' output in the journal, non-ASCII text in a
context under Debian's dbus-fast 1.84, an upgrade that keeps the running
tasks, and a purge that leaves nothing behind.

The packages are written under /var/tmp before the box boots: the box's root
is an overlay of the machine's, so they are visible inside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port
from tests.system.box import SystemdBox, missing_prerequisites

REPO = Path(__file__).resolve().parents[2]
UPGRADE_VERSION = "0.1.0+upgrade1"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
DEMO = "/srv/demo"


def build(out: Path, version: str | None = None) -> Path:
    env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck")
    if version:
        env["ZSVC_DEB_VERSION"] = version
    done = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"build-deb failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (deb,) = out.glob("zsvc_*_all.deb")
    return deb


@pytest.fixture(scope="module")
def debs() -> Iterator[tuple[Path, Path]]:
    why = missing_prerequisites() or (None if shutil.which("dpkg-buildpackage") else "no dpkg")
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the package tier must run in CI, but {why}")
        pytest.skip(why)
    where = Path(tempfile.mkdtemp(prefix="zsvc-debs.", dir="/var/tmp"))
    try:
        yield build(where / "first"), build(where / "upgrade", UPGRADE_VERSION)
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def box(debs: tuple[Path, Path]) -> Iterator[SystemdBox]:
    box = SystemdBox()
    try:
        box.start()
        yield box
    finally:
        box.close()


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll a fact in the box that no event announces, with a deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"not within {timeout} s: {what} (last: {last!r})")


class Inside:
    """Commands in the box, as root or as a user."""

    def __init__(self, box: SystemdBox):
        self.box = box

    def run(self, *argv: str, user: str | None = None, timeout: float = 120.0) -> Any:
        if user is not None:
            argv = ("runuser", "-u", user, "--", *argv)
        return self.box.run(*argv, env=APT_ENV, timeout=timeout)

    def ok(self, *argv: str, user: str | None = None, timeout: float = 120.0) -> str:
        done = self.run(*argv, user=user, timeout=timeout)
        assert done.returncode == 0, (
            f"{' '.join(argv)} (as {user or 'root'}) exited {done.returncode}:\n"
            f"{done.stdout}\n{done.stderr}\n{self.journal('-u', 'zsvc.service')}"
        )
        return done.stdout

    def fresh_user(self, name: str, *groups: str) -> None:
        """User *name*, new, in *groups* only: one the machine has is in the box too (its
        root is an overlay of the machine's), so it is made again rather than assumed."""
        self.ok("sh", "-c", 'if id -u "$1" >/dev/null 2>&1; then userdel "$1"; fi', "sh", name)
        self.ok(
            "useradd", "--create-home", *(["--groups", ",".join(groups)] if groups else []), name
        )

    def without_group(self, name: str) -> None:
        """No group *name* in the box, as on a machine the package never touched, whatever
        the machine has (the package must create it, and its purge remove it)."""
        self.ok("sh", "-c", 'if getent group "$1" >/dev/null; then groupdel "$1"; fi', "sh", name)

    def journal(self, *match: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", *match).stdout

    def status(self, transaction: str, user: str | None = None) -> dict[str, Any]:
        return json.loads(self.ok("zsvc", "status", transaction, "--json", user=user))

    def pids(self, transaction: str) -> dict[str, int]:
        tasks = self.status(transaction)["tasks"]
        return {task["id"]: task["pid"] for task in tasks if task["state"] == "active"}


def with_free_ports(text: str) -> str:
    """*text* (a context file) with each of its TCP ports replaced by a free one."""
    for port in dict.fromkeys(re.findall(r":(\d{4,5})<", text)):
        text = text.replace(f":{port}<", f":{free_port()}<")
    return text


def demo_context(inside: Inside, box: SystemdBox) -> str:
    """The packaged EchoAction sample on free ports, and a copy whose texts are not ASCII."""
    inside.ok("cp", "-r", "/usr/share/doc/zsvc/examples", DEMO)
    inside.ok("chmod", "-R", "a+rX", DEMO)
    sample = box.host_path(f"{DEMO}/Conf/Context-EchoAction.xml")
    text = sample.read_text()
    sample.write_text(with_free_ports(text))
    unicode = re.sub(
        r"<description>.*?</description>", "<description>Café ☕ naïve</description>", text, count=1
    )
    unicode = unicode.replace('id="ts_100"', 'id="ts_utf"', 1).replace(
        "<configuration>", "<configuration><greeting>héllo wörld ✓</greeting>", 1
    )
    unicode_path = box.host_path(f"{DEMO}/Conf/Context-Unicode.xml")
    unicode_path.write_text(with_free_ports(unicode), encoding="utf-8")
    return f"{DEMO}/Conf/Context-EchoAction.xml"


@pytest.mark.timeout(900)  # two apt installs in a fresh box: past the suite's 120 s when busy
def test_install_run_upgrade_and_purge(box: SystemdBox, debs: tuple[Path, Path]) -> None:
    first, upgrade = debs
    inside = Inside(box)

    # This machine's image forbids starting services from maintainer scripts (a Docker-style
    # /usr/sbin/policy-rc.d that exits 101); a real host has none, and the box is a copy.
    inside.ok("rm", "-f", "/usr/sbin/policy-rc.d")
    inside.without_group("zsvc")  # set-up that holds on a machine where zsvc was installed

    # --- install: the daemon runs, enabled, with its group, settings, manual, completion ---
    inside.ok("apt-get", "install", "-y", "--no-install-recommends", str(first), timeout=300)
    assert inside.run("systemctl", "is-active", "zsvc.service").stdout.strip() == "active"
    assert inside.run("systemctl", "is-enabled", "zsvc.service").stdout.strip() == "enabled"
    inside.ok("getent", "group", "zsvc")
    for path in ("/etc/zsvc/zsvc.conf", "/usr/share/bash-completion/completions/zsvc"):
        inside.ok("test", "-f", path)
    assert "zsvc start" in inside.ok("man", "-P", "cat", "zsvc")

    # --- a member of group zsvc runs the sample; a user outside it is refused -------------
    inside.fresh_user("alice", "zsvc")
    inside.fresh_user("bob")
    context = demo_context(inside, box)
    inside.ok("zsvc", "start", "--context", context, "DEMO", user="alice")
    demo = inside.status("DEMO", user="alice")
    tasks = demo["tasks"]
    assert tasks and {task["state"] for task in tasks} == {"active"}, tasks
    # Hers, and her tasks run as her: membership of zsvc is not root (issue 15).
    alice_uid = inside.ok("id", "-u", "alice").strip()
    assert demo["owner"] == "alice", demo
    for task in tasks:
        uids = inside.ok("awk", "/^Uid:/ {print $2}", f"/proc/{task['pid']}/status").strip()
        assert uids == alice_uid, (task["id"], uids, alice_uid)
    refused = inside.run("zsvc", "status", user="bob")
    assert refused.returncode == 3, refused
    assert "permission denied" in refused.stderr
    assert "members of group zsvc" in refused.stderr

    # --- the tasks' output is in the journal, under the transaction's field ---------------
    lines = wait_for(
        lambda: "ready" in (out := inside.journal("ZSVC_TRANSACTION=DEMO")) and out,
        "the task host's 'ready' line in journalctl ZSVC_TRANSACTION=DEMO",
    )
    assert "DEMO/ts_100 ready" in lines

    # --- non-ASCII description and configuration value under Debian's dbus-fast ----------
    inside.ok("zsvc", "start", "--context", f"{DEMO}/Conf/Context-Unicode.xml", "UTF")
    utf = {task["id"]: task for task in inside.status("UTF")["tasks"]}
    assert utf["ts_utf"]["state"] == "active", utf
    unit = inside.ok(
        "systemctl", "list-units", "--plain", "--no-legend", "zsvc-*-UTF-ts_utf*"
    ).split()[0]
    description = inside.ok("systemctl", "show", unit, "--property=Description").strip()
    assert description.isascii() and "Caf" in description, description

    # --- upgrade: the daemon reloads into the new code; the tasks keep running ------------
    before = inside.pids("DEMO")
    inside.ok("apt-get", "install", "-y", "--no-install-recommends", str(upgrade), timeout=300)
    version = inside.ok("dpkg-query", "-W", "-f=${Version}", "zsvc")
    assert version == UPGRADE_VERSION
    wait_for(lambda: inside.run("zsvc", "ping").returncode == 0, "the upgraded daemon answers")
    after = inside.pids("DEMO")
    assert after == before, (
        f"an upgrade restarted running tasks: {after}\n{inside.status('DEMO')}\n"
        f"{inside.journal('-u', 'zsvc.service', '-n', '60')}"
    )
    assert inside.run("systemctl", "is-active", "zsvc.service").stdout.strip() == "active"
    assert inside.status("DEMO")["owner"] == "alice", "an upgrade keeps the owners"

    # --- CURVE keys: made by 'zsvc keys', read by the hardened unit after a reload ----------
    inside.ok("zsvc", "keys", "--client", "alice")
    inside.ok("test", "-f", "/etc/zsvc/keys/clients/alice.key_secret")
    conf = "/etc/zsvc/zsvc.conf"
    inside.ok("sed", "-i", "s|^#curve_keys =.*|curve_keys = /etc/zsvc/keys|", conf)
    assert "\ncurve_keys = /etc/zsvc/keys\n" in inside.ok("cat", conf)
    inside.ok("systemctl", "reload", "zsvc")
    wait_for(
        lambda: "clients admitted: alice" in inside.journal("-u", "zsvc.service", "-n", "40"),
        "the reloaded daemon's 'clients admitted: alice' line",
    )
    wait_for(lambda: inside.run("zsvc", "ping").returncode == 0, "the reloaded daemon answers")
    assert inside.pids("DEMO") == before, "a reload with keys restarted running tasks"

    # --- a reload that would read an invalid file is refused; the daemon goes on -----------
    inside.ok("sed", "-i", "s|^#log_level =.*|log_level = loud|", conf)
    refused = inside.run("systemctl", "reload", "zsvc")  # ExecReload=zsvc reexec says why
    assert refused.returncode != 0, refused
    wait_for(
        lambda: "reload refused" in inside.journal("-u", "zsvc.service", "-n", "40"),
        "the daemon's 'reload refused' line",
    )
    assert inside.run("systemctl", "is-active", "zsvc.service").stdout.strip() == "active"
    inside.ok("zsvc", "ping")
    inside.ok("sed", "-i", "s|^log_level = loud|#log_level = INFO|", conf)

    # --- purge: nothing of the package is left (the keys neither) --------------------------
    inside.ok("gpasswd", "--delete", "alice", "zsvc")  # a group with members is kept
    inside.ok("apt-get", "purge", "-y", "zsvc", timeout=300)
    assert inside.run("getent", "group", "zsvc").returncode != 0, "group zsvc is left"
    for path in ("/etc/zsvc", "/var/lib/zsvc", "/usr/bin/zsvc", "/lib/systemd/system/zsvc.service"):
        assert inside.run("test", "-e", path).returncode != 0, f"{path} is left after purge"
    units = inside.ok("systemctl", "list-units", "--all", "--plain", "--no-legend", "zsvc-*")
    assert units.strip() == "", f"task units left after purge:\n{units}"
