"""A real systemd 252 in a throwaway container, for the system tier and the systemd benches.

Follows ``shared/tools/systemd-box.md`` to the letter, because the one way
to get it wrong is costly: systemd booted on the machine's own filesystem
wipes the machine's /tmp. So the container's root is an overlay whose upper
layer is a tmpfs (nothing it writes reaches the machine), the checkout is
bound in (a CI clone may live under /tmp, which the box does not share),
and teardown runs on every path: :meth:`SystemdBox.close` is idempotent, is
called by the fixture's ``finally`` and by ``atexit``, and
:func:`remove_stale_boxes` clears what a killed earlier run left behind.

Only one box at a time: systemd-nspawn creates ``payload``/``supervisor``
cgroups at the root of the hierarchies, and two boxes would share them.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

MACHINE = "zsvcbox"
BOX_PREFIX = "zsvc-box."
BOX_PARENT = Path("/var/tmp")  # not /tmp: the box has its own /tmp and /run
SYSTEMD_EXE = "/usr/lib/systemd/systemd"
MASKED = (
    "postgresql.service",
    "console-getty.service",
    "getty@.service",
    "systemd-timesyncd.service",
)
CGROUP_LEFTOVERS = tuple(
    Path("/sys/fs/cgroup") / tree / name
    for tree in ("systemd", "unified")
    for name in ("payload", "supervisor")
)
LOCK_FILE = BOX_PARENT / "zsvc-box.lock"
LOCK_WAIT = 300.0
"""How long to queue behind another test run's box (one box at a time) before giving up."""
BOOT_TIMEOUT = 60.0
POWEROFF_TIMEOUT = 30.0
BOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REPO = Path(__file__).resolve().parents[2]
UNIT_FILE = REPO / "units" / "zsvc.service"
WORK = "/srv/zsvc-tests"
"""Inside the box: context files and pid files of the tests and benches (in the box's tmpfs)."""
ZSVC_START_TIMEOUT = 30.0
WRAPPER = """#!/bin/sh
# /usr/bin/zsvc as the .deb installs it, for this checkout and interpreter.
export PYTHONPATH={repo}
exec {python} -m zsvc "$@"
"""


class BoxError(Exception):
    """The box cannot be booted here (the message says why)."""


def missing_prerequisites() -> str | None:
    """Why a box cannot boot on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "booting a systemd box needs root"
    for tool in ("systemd-nspawn", "nsenter", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install systemd-container util-linux)"
    if not Path(SYSTEMD_EXE).exists():
        return f"{SYSTEMD_EXE} is not installed (apt-get install systemd)"
    if Path("/run/systemd/system").exists():
        return "this machine runs systemd as PID 1: test on it directly, not in a box"
    return None


def _run(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _is_mounted(path: Path) -> bool:
    return _run(["findmnt", "-n", str(path)]).returncode == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SystemdBox:
    """One booted container; run commands in it with :meth:`run`, end it with :meth:`close`."""

    def __init__(self, binds: Sequence[Path] = ()):
        self.binds = [Path(path).resolve() for path in binds]
        self.dir: Path | None = None
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self._closed = False
        self._lock: int | None = None

    # --- paths ----------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The container's / as seen from the machine (writes land in the tmpfs)."""
        assert self.dir is not None
        return self.dir / "root"

    def host_path(self, inside: str | Path) -> Path:
        """The machine's path of a file at *inside* in the box (not for bound paths)."""
        return self.root / str(inside).lstrip("/")

    # --- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = BOOT_TIMEOUT) -> SystemdBox:
        why = missing_prerequisites()
        if why:
            raise BoxError(why)
        self._take_lock()
        atexit.register(self.close)
        try:
            remove_stale_boxes()  # the lock is ours: a box left behind has no owner
            if _run(["pgrep", "-x", "systemd-nspawn"]).returncode == 0:
                raise BoxError("another systemd-nspawn runs on this machine: one box at a time")
            leftovers = [str(path) for path in CGROUP_LEFTOVERS if path.exists()]
            if leftovers:
                raise BoxError(f"cgroups of another box exist: {', '.join(leftovers)}")
            self.dir = Path(tempfile.mkdtemp(prefix=BOX_PREFIX, dir=BOX_PARENT))
            self._boot(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _take_lock(self) -> None:
        """One box at a time on this machine: queue (bounded) behind another run's box."""
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise BoxError(
                        f"another test run's box held {LOCK_FILE} for {LOCK_WAIT:g} s"
                    ) from None
                time.sleep(0.2)  # the other box's owner releases it at its teardown
        self._lock = fd

    def _boot(self, timeout: float) -> None:
        assert self.dir is not None
        upper = self.dir / "t"
        upper.mkdir()
        self.root.mkdir()
        _check(_run(["mount", "-t", "tmpfs", "tmpfs", str(upper)]))
        (upper / "u").mkdir()
        (upper / "w").mkdir()
        options = f"lowerdir=/,upperdir={upper}/u,workdir={upper}/w"
        _check(_run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)]))
        for unit in MASKED:
            link = self.host_path(f"/etc/systemd/system/{unit}")
            link.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to("/dev/null")
        argv = ["systemd-nspawn", "-D", str(self.root), "--register=no", "--keep-unit"]
        argv += ["-M", MACHINE, "-b", *(f"--bind={path}" for path in self.binds)]
        with open(self.dir / "nspawn.log", "wb") as log:
            self.nspawn = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.dir / "nspawn.pid").write_text(str(self.nspawn.pid))
        deadline = time.monotonic() + timeout
        self.leader = self._await_leader(deadline)
        (self.dir / "leader.pid").write_text(str(self.leader))
        state, why = "", ""
        while time.monotonic() < deadline:
            # Fails with "Failed to connect to bus" until PID 1 has set up its socket.
            done = self.run(
                "systemctl", "is-system-running", "--wait",
                timeout=max(1.0, deadline - time.monotonic()),
            )  # fmt: skip
            state, why = done.stdout.strip(), done.stderr.strip()
            if state not in ("", "offline"):  # offline: PID 1 does not answer yet
                break
            time.sleep(0.1)  # PID 1 not listening yet: a bounded retry, not synchronisation
        if state not in ("running", "degraded"):
            raise BoxError(f"the box did not boot ({state!r}, {why}):\n{self.nspawn_log()}")

    def _await_leader(self, deadline: float) -> int:
        """The container's PID 1: the child of systemd-nspawn running systemd."""
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise BoxError(f"systemd-nspawn exited:\n{self.nspawn_log()}")
            for child in _children(self.nspawn.pid):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{child}/exe") == SYSTEMD_EXE:
                        return child
            time.sleep(0.05)  # polling a fact no event announces, bounded by the deadline
        raise BoxError(f"no systemd in the box after the boot timeout:\n{self.nspawn_log()}")

    def nspawn_log(self) -> str:
        if self.dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.dir / "nspawn.log").read_text(errors="replace")[-4000:]
        return ""

    def close(self) -> None:
        """Power the box off and remove every trace of it; safe to call any number of times."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        try:
            if self.dir is not None:
                teardown(self.dir, self.nspawn)
        finally:
            if self._lock is not None:
                os.close(self._lock)  # releases the flock: the next box may boot
                self._lock = None

    def __enter__(self) -> SystemdBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inside -----------------------------------------------------------------------

    def command(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        """*argv* as run inside the box, with a clean environment (plus *env*)."""
        assert self.leader is not None
        assignments = [f"PATH={BOX_PATH}", "HOME=/root", "LANG=C.UTF-8"]
        assignments += [f"{key}={value}" for key, value in (env or {}).items()]
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *assignments, *argv]

    def run(
        self,
        *argv: str,
        timeout: float = 60.0,
        check: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = _run(self.command(*argv, env=env), timeout=timeout)
        if check:
            _check(done)
        return done

    def start_units(
        self, prefix: str, count: int, command: str, properties: str = "", timeout: float = 120.0
    ) -> None:
        """``systemd-run --no-block`` of *count* transient units ``<prefix>NN`` running
        *command* (shell words) with *properties* (``-p K=V`` options): one shell loop."""
        loop = (
            f"for i in $(seq -w 0 {count - 1}); do systemd-run --no-block -q"
            f" --unit={prefix}$i {properties} {command}; done"
        )
        self.run("sh", "-c", loop, check=True, timeout=timeout)

    def remove_units(self, prefix: str) -> None:
        """Stop the units ``<prefix>*`` and forget that they failed."""
        units = f"'{prefix}*'"
        self.run("sh", "-c", f"systemctl stop {units}; systemctl reset-failed {units}", timeout=120)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(child) for child in f.read().split())
    return found


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise BoxError(f"{' '.join(done.args)} failed ({done.returncode}): {done.stderr.strip()}")


def teardown(box: Path, nspawn: subprocess.Popen[bytes] | None = None) -> None:
    """The recipe's teardown; each step runs even when an earlier one failed.

    SIGTERM makes systemd-nspawn power the container off. If that does not
    end within the timeout, the container's PID 1 is SIGKILLed: that ends its
    whole pid namespace (killing systemd-nspawn alone would leave the
    container running, re-parented to the machine's init).
    """
    pid = nspawn.pid if nspawn is not None else _recorded_pid(box)
    leader = _recorded_pid(box, "leader.pid")
    if pid is not None and _is_nspawn(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the container powers off cleanly
        if not _wait_gone(pid, nspawn, POWEROFF_TIMEOUT):
            if leader is not None and _is_systemd(leader):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGKILL)
            if not _wait_gone(pid, nspawn, 10.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, nspawn, 10.0)
    if leader is not None and _is_systemd(leader):  # nspawn gone, the container not
        with contextlib.suppress(ProcessLookupError):
            os.kill(leader, signal.SIGKILL)
        _wait_gone(leader, None, 10.0)
    for mount in (box / "root", box / "t"):
        if _is_mounted(mount):
            done = _run(["umount", str(mount)])
            if done.returncode != 0:
                _run(["umount", "-l", str(mount)])
    for name in ("nspawn.log", "nspawn.pid", "leader.pid", ".#root.lck"):
        with contextlib.suppress(FileNotFoundError):
            (box / name).unlink()
    for directory in (box / "t", box / "root", box):  # never rm -r while mounted
        with contextlib.suppress(OSError):
            directory.rmdir()
    _remove_cgroups(time.monotonic() + 10.0)
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{MACHINE}", ignore_errors=True)


def _wait_gone(pid: int, child: subprocess.Popen[bytes] | None, seconds: float) -> bool:
    """Wait (bounded) until *pid* has ended; our own child is reaped on the way."""
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(seconds)
        return child.poll() is not None
    deadline = time.monotonic() + seconds
    while _pid_alive(pid) and not _is_zombie(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # not our child: nothing to wait() on
    return True


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def _is_systemd(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/exe") == SYSTEMD_EXE and not _is_zombie(pid)
    return False


def _remove_cgroups(deadline: float) -> None:
    """Remove nspawn's payload/supervisor cgroups, once their last process has gone."""
    for path in CGROUP_LEFTOVERS:
        while path.is_dir():
            for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()
            if not path.is_dir() or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # dying processes still hold it: bounded retry


def _recorded_pid(box: Path, name: str = "nspawn.pid") -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((box / name).read_text())
    return None


def _is_nspawn(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip() == "systemd-nspawn"
    return False


def remove_stale_boxes() -> list[Path]:
    """Tear down boxes an earlier run left (killed before its teardown); returns them.

    A box whose systemd-nspawn still runs is someone's live box: it is left alone
    (and :meth:`SystemdBox.start` then refuses to boot a second one).
    """
    stale = []
    for box in BOX_PARENT.glob(f"{BOX_PREFIX}*"):
        pid = _recorded_pid(box)
        if box.is_dir() and not (pid is not None and _is_nspawn(pid)):
            teardown(box)
            stale.append(box)
    return stale


# --- zsvc.service in a box (the system tier's and bench/systemd.py's) ---------------------


def checkout_binds() -> list[Path]:
    """The checkout and the interpreter, where the box would not see them (under /tmp, /run)."""
    paths = [REPO]
    for prefix in {Path(sys.prefix), Path(sys.base_prefix)}:
        hidden = any(prefix.is_relative_to(p) for p in (Path("/tmp"), Path("/run")))
        if hidden and not any(prefix.is_relative_to(p) for p in paths):
            paths.append(prefix)
    return paths


def install_zsvc(box: SystemdBox) -> None:
    """Install ``units/zsvc.service`` in *box* as the .deb would (``/usr/bin/zsvc``, group
    ``zsvc``), running this checkout with the running interpreter (see checkout_binds)."""
    wrapper = box.host_path("/usr/bin/zsvc")
    wrapper.write_text(WRAPPER.format(repo=REPO, python=sys.executable))
    wrapper.chmod(0o755)
    unit = box.host_path("/etc/systemd/system/zsvc.service")
    unit.write_text(UNIT_FILE.read_text())
    box.host_path(WORK).mkdir(parents=True, exist_ok=True)
    ensure_group(box, "zsvc")
    box.run("systemctl", "daemon-reload", check=True)


def ensure_group(box: SystemdBox, name: str) -> None:
    """Group *name* in *box*: a system group, created only when it is missing.

    Every set-up step must succeed when its work is already done: the box's
    root is an overlay of the machine's, so a group the machine has (zsvc was
    installed there once, or another check made it) is in the box too, and a
    bare ``groupadd`` failed on it, erroring the whole tier (issue 19, finding 20).
    """
    script = 'getent group "$1" >/dev/null || groupadd --system "$1"'
    box.run("sh", "-c", script, "sh", name, check=True)


def start_zsvc(box: SystemdBox) -> None:
    """``systemctl start zsvc.service`` in *box*; BoxError, with its journal, if it fails."""
    done = box.run("systemctl", "start", "zsvc.service", timeout=ZSVC_START_TIMEOUT)
    if done.returncode != 0:
        raise BoxError(f"zsvc.service did not start: {done.stderr}\n{zsvc_log(box)}")


def zsvc_log(box: SystemdBox, lines: int = 60) -> str:
    """The last *lines* of zsvc.service's journal in *box*."""
    return box.run("journalctl", "-u", "zsvc.service", "--no-pager", "-n", str(lines)).stdout
