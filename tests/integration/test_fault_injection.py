"""Faults the daemon must survive (issue 8 part 3), against a real daemon and real processes.

* SIGKILL at random points of start, stop and restart: a seeded schedule of kill
  points (``ZSVC_FAULT_SEED`` replays one, ``ZSVC_FAULT_ROUNDS`` runs more). After
  each kill a successor daemon's table must agree with the processes: every task
  it says is up has a live process carrying that task's identity, every live task
  process is in the table under its pid, and every change acknowledged to a
  client before the kill is still there (``docs/states.md``, durability);
* the state directory full (a tiny tmpfs) or read-only (remounted ro): a change
  fails with a clear ``storage`` error and changes nothing, ``status`` and the
  running tasks carry on, and the daemon recovers once space or write access
  is back;
* a task flooding stdout: its log stays bounded by the cap, and the daemon answers;
* a bus subscriber that never reads: the daemon's memory stays bounded while a
  flood passes through the bus (the high-water marks of :mod:`zsvc.daemon.bus`).

Waits are for answers, exits or conditions with a deadline. The kill points are
delays drawn from a seeded generator: they choose *where* to inject the fault,
they never stand in for waiting on an outcome.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from tests.integration.conftest import Daemon, TaskDef, pid_alive, wait_until
from zsvc import protocol
from zsvc.daemon.server import LOG_CAP_BYTES
from zsvc.errors import ErrorCode, ZsvcError
from zsvc.paths import StateLayout

pytestmark = pytest.mark.integration

QUICK_NOTIFY = """\
import contextlib, os, socket, time
with contextlib.suppress(OSError):  # as sd_notify(3): a daemon that went away is no error
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
time.sleep(600)
"""
"""A task that reports ready at once and ends on SIGTERM (the default action)."""
SETTLED = {"active", "inactive", "failed"}
UP = {"active", "activating", "deactivating", "reloading"}


def _is_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------- helpers


def task_processes(workdir: Path) -> dict[tuple[str, str], int]:
    """Every live process that is a task of a daemon in *workdir*: (transaction, task) → pid.

    A task is recognised by what the runner puts in its environment (``ZSVC_TRANSACTION``,
    ``ZSVC_TASK_ID``, and the runtime dir in ``NOTIFY_SOCKET``), not by what any daemon says.
    """
    needle = str(workdir).encode()
    found: dict[tuple[str, str], int] = {}
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            with open(f"/proc/{proc.pid}/environ", "rb") as handle:
                environ = handle.read()
            if needle not in environ:
                continue
            env = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
            transaction, task = env.get(b"ZSVC_TRANSACTION"), env.get(b"ZSVC_TASK_ID")
            if transaction is None or task is None:
                continue
            key = (transaction.decode(), task.decode())
            assert key not in found, f"two live processes for {key}: {found[key]}, {proc.pid}"
            found[key] = proc.pid
    return found


def table_of(daemon: Daemon) -> dict[str, dict[str, dict[str, Any]]]:
    """transaction → task id → its status row, as the daemon reports it."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for row in daemon.call("status")["transactions"]:
        name = row["transaction"]
        tasks = daemon.call("status", transaction=name)["tasks"]
        table[name] = {task["id"]: task for task in tasks}
    return table


def settled_table(daemon: Daemon) -> dict[str, dict[str, dict[str, Any]]]:
    """The table once no task is between states (a re-adopted stop finishes first)."""

    def settled() -> list[dict[str, dict[str, dict[str, Any]]]]:
        table = table_of(daemon)
        states = {task["state"] for tasks in table.values() for task in tasks.values()}
        return [table] if states <= SETTLED else []  # a list: an empty table is an answer too

    return wait_until(settled, 30.0, "every task settled", daemon.log)[0]


def assert_table_agrees_with_reality(daemon: Daemon, workdir: Path) -> dict[str, Any]:
    """The settled table names exactly the live task processes, pid for pid.

    Checked until it holds, with a deadline: a task that ends just now is in the table
    until the daemon reaps it, a matter of milliseconds; a disagreement that lasts is a bug.
    """
    deadline = time.monotonic() + 10.0
    while True:
        table = settled_table(daemon)
        said_up = {
            (name, task_id): task["pid"]
            for name, tasks in table.items()
            for task_id, task in tasks.items()
            if task["state"] in UP
        }
        live = task_processes(workdir)
        if live == said_up:
            return table
        if time.monotonic() > deadline:
            pytest.fail(f"processes {live}, table {said_up}\n{daemon.log()[-3000:]}")
        time.sleep(0.05)


class Call:
    """One control command run in a thread, so the daemon can be killed while it runs."""

    def __init__(self, daemon: Daemon, command: str, **args: Any):
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(daemon, command, args))
        self.thread.start()

    def _run(self, daemon: Daemon, command: str, args: dict[str, Any]) -> None:
        try:
            self.result = daemon.call(command, **args)
        except BaseException as exc:  # noqa: BLE001 - recorded: the kill makes most calls fail
            self.error = exc

    def join(self) -> bool:
        """Wait for the answer (or the client noticing the daemon is gone); True if it succeeded.

        The client polls the control socket file, so a killed daemon is noticed within
        about a second; the deadline is for a client that would hang instead.
        """
        self.thread.join(40.0)
        assert not self.thread.is_alive(), "the client did not notice the daemon died"
        return self.error is None


# --------------------------------------------------------------------------- SIGKILL


def kill_schedule(default_rounds: int) -> tuple[int, int, random.Random]:
    """The seed (``ZSVC_FAULT_SEED`` replays one), the rounds and the generator of kill points."""
    seed = int(os.environ.get("ZSVC_FAULT_SEED", random.randrange(1 << 32)))
    rounds = int(os.environ.get("ZSVC_FAULT_ROUNDS", str(default_rounds)))
    print(f"kill schedule: ZSVC_FAULT_SEED={seed} ZSVC_FAULT_ROUNDS={rounds}")
    return seed, rounds, random.Random(seed)


def quick_notify_command(workdir: Path) -> str:
    """The command of a task that is ready at once (:data:`QUICK_NOTIFY`)."""
    program = workdir / "quick_notify.py"
    program.write_text(QUICK_NOTIFY)
    return f"python3 {program}"


def test_sigkill_at_random_points_of_start_and_stop_loses_nothing_acknowledged(
    daemons: Callable[..., Daemon], make_context: Callable[..., Path], workdir: Path
) -> None:
    seed, rounds, rng = kill_schedule(12)
    command = quick_notify_command(workdir)
    contexts: dict[str, Path] = {}
    daemon = daemons()
    for number in range(rounds):
        table = settled_table(daemon)
        running = sorted(name for name, tasks in table.items() if _any_up(tasks))
        stopped = sorted(name for name, tasks in table.items() if not _any_up(tasks))
        choices = ["start-new"] * (len(table) < 4) + ["stop", "restart"] * bool(running)
        choices += ["start-again"] * bool(stopped)
        operation = rng.choice(choices)
        if operation == "start-new":
            name = f"K{number}"
            contexts[name] = make_context(
                [TaskDef(f"t{i}", command=command, notify=True, location=None) for i in "abc"]
            )
            text = contexts[name].read_text()
            call = Call(daemon, "start", transaction=name, context_path=str(contexts[name]),
                        context_text=text)  # fmt: skip
            outcome = "up"
        elif operation == "start-again":
            name = rng.choice(stopped)
            call, outcome = Call(daemon, "start", transaction=name), "up"
        else:
            name = rng.choice(running)
            call, outcome = (
                Call(daemon, operation, transaction=name),
                ("down" if operation == "stop" else "up"),
            )
        delay = rng.uniform(0.0, 0.4)
        call.thread.join(delay)  # the kill point: this far into the command, if it still runs
        daemon.kill9()
        acknowledged = call.join()
        what = f"round {number} (seed {seed}): {operation} {name}, kill after {delay:.3f} s"
        print(what, "acknowledged" if acknowledged else f"not acknowledged: {call.error!r}")

        daemon = daemons(root=workdir)
        after = assert_table_agrees_with_reality(daemon, workdir)
        if acknowledged:
            assert name in after, f"{what}: acknowledged transaction {name} is gone"
            if outcome == "up":
                assert _all(after[name], "active"), f"{what}: acknowledged start lost: {after}"
            else:
                assert not _any_up(after[name]), f"{what}: acknowledged stop lost: {after}"
        # What the command did not touch is as it was: same states, same processes.
        for other, tasks in table.items():
            if other != name:
                assert _essence(after.get(other, {})) == _essence(tasks), f"{what}: {other}"
    for name in table_of(daemon):
        daemon.call("stop", transaction=name)
    assert task_processes(workdir) == {}


def test_sigkill_during_a_stop_forget_start_race_leaves_no_untracked_task(
    daemons: Callable[..., Daemon], make_context: Callable[..., Path], workdir: Path
) -> None:
    """Issue 19, finding 1, under random kills: ``stop``, ``forget`` and ``start`` (no
    context) of one transaction sent together. Whatever the order they are served in
    and wherever the daemon dies, no task runs that the table does not know, and a
    transaction whose forget was acknowledged never comes back."""
    seed, rounds, rng = kill_schedule(6)
    command = quick_notify_command(workdir)
    tasks = [TaskDef(f"t{i}", command=command, notify=True, location=None) for i in "ab"]
    daemon = daemons()
    for number in range(rounds):
        name = f"F{number}"
        context = make_context(tasks)
        daemon.call("start", transaction=name, context_path=str(context),
                    context_text=context.read_text())  # fmt: skip
        calls = [Call(daemon, command, transaction=name) for command in ("stop", "forget")]
        calls.append(Call(daemon, "start", transaction=name))
        delay = rng.uniform(0.0, 0.3)
        calls[0].thread.join(delay)  # the kill point, as in the test above
        daemon.kill9()
        stopped, forgotten, started = (call.join() for call in calls)
        what = f"round {number} (seed {seed}): stop {stopped}, forget {forgotten}, start {started}"
        print(what, f"(kill after {delay:.3f} s)")
        daemon = daemons(root=workdir)
        after = assert_table_agrees_with_reality(daemon, workdir)
        if forgotten and not started:
            assert name not in after, f"{what}: the forgotten transaction came back: {after}"
        for other in after:
            daemon.call("stop", transaction=other)
    assert task_processes(workdir) == {}


def _essence(tasks: dict[str, dict[str, Any]]) -> dict[str, tuple[str, int | None]]:
    return {task_id: (task["state"], task["pid"]) for task_id, task in tasks.items()}


def _all(tasks: dict[str, dict[str, Any]], state: str) -> bool:
    return bool(tasks) and all(task["state"] == state for task in tasks.values())


def _any_up(tasks: dict[str, dict[str, Any]]) -> bool:
    return any(task["state"] in UP for task in tasks.values())


# --------------------------------------------------------------------------- state dir


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at *path* for the test's state dir; always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: a task the fixture has not killed yet may still hold its log open.
        subprocess.run(["umount", "-l", str(path)], check=False)


needs_root = pytest.mark.skipif(not _is_root(), reason="mounting a tmpfs needs root")


def _fill(path: Path) -> Path:
    """Fill the file system of *path* to the last block; returns the filler file."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: close() has nothing left
        for size in (64 << 10, 1):  # then the last partial chunk, byte by byte
            with contextlib.suppress(OSError):
                while handle.write(b"\0" * size):
                    pass
    return filler


def _start(daemon: Daemon, name: str, context: Path) -> Any:
    return daemon.call(
        "start", transaction=name, context_path=str(context), context_text=context.read_text()
    )


def _assert_storage_error(caught: pytest.ExceptionInfo[ZsvcError], state: Path) -> None:
    assert caught.value.code == ErrorCode.STORAGE, caught.value
    message = caught.value.message
    assert "transaction table" in message and str(state) in message, message


@contextlib.contextmanager
def ext4(path: Path, image: Path) -> Iterator[Path]:
    """A small ext4 file system at *path* that turns read-only on its first error, as a real
    disk does (``errors=remount-ro``); always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, check=False)
    done = subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0 or done.returncode != 0:
        pytest.skip(f"cannot mount an ext4 image: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)  # the loop device autoclears


def go_read_only(path: Path) -> None:
    """What the kernel does on an I/O error: the file system becomes read-only at once, open
    files included (``mount -o remount,ro`` would refuse while the table is open)."""
    device = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip(f"{trigger} does not exist (kernel without ext4 error injection)")
    trigger.write_text("1")
    with pytest.raises(OSError):
        (path / "probe").write_text("x")


def _status(daemon: Daemon) -> dict[str, str]:
    return {r["transaction"]: r["state"] for r in daemon.call("status")["transactions"]}


def _refused_and_still_serving(
    daemon: Daemon, make_context: Callable[..., Path], workdir: Path, pid: int
) -> Path:
    """With the state dir unwritable: a change is refused with a clear storage error and
    changes nothing; status answers and the running task runs on. Returns the context."""
    context = make_context([TaskDef("t1", command="sleep 600", location=None)])
    with pytest.raises(ZsvcError) as caught:
        _start(daemon, "DURING", context)
    _assert_storage_error(caught, daemon.state)
    assert _status(daemon) == {"BEFORE": "running"}
    assert pid_alive(pid)
    assert ("DURING", "t1") not in task_processes(workdir)
    with pytest.raises(ZsvcError) as caught:
        daemon.call("stop", transaction="BEFORE")
    _assert_storage_error(caught, daemon.state)
    assert pid_alive(pid), "a stop that could not be recorded must not kill the task"
    assert daemon.call("ping")["pid"] == daemon.pid()
    assert daemon.call("status", transaction="BEFORE")["tasks"][0]["pid"] == pid
    return context


def _start_before(daemon: Daemon, make_context: Callable[..., Path]) -> int:
    _start(daemon, "BEFORE", make_context([TaskDef("t1", command="sleep 600", location=None)]))
    return int(daemon.call("status", transaction="BEFORE")["tasks"][0]["pid"])


@needs_root
def test_a_full_state_dir_gives_a_clear_error_and_the_daemon_recovers(
    daemons: Callable[..., Daemon], make_context: Callable[..., Path], workdir: Path
) -> None:
    with tmpfs(workdir / "state", "2m") as state:
        daemon = daemons()
        try:
            assert daemon.state == state
            pid = _start_before(daemon, make_context)
            filler = _fill(state)
            try:
                context = _refused_and_still_serving(daemon, make_context, workdir, pid)
            finally:
                filler.unlink()
            # Space is back: the same daemon works again, and what it then did is stored.
            _start(daemon, "AFTER", context)
            daemon.call("stop", transaction="BEFORE")
            assert not pid_alive(pid)
            daemon.kill9()
            successor = daemons(root=workdir)
            assert _status(successor) == {"BEFORE": "stopped", "AFTER": "running"}
            assert_table_agrees_with_reality(successor, workdir)
            successor.terminate()
        finally:
            daemon.terminate()


@needs_root
def test_a_state_dir_gone_read_only_gives_a_clear_error_and_status_still_works(
    daemons: Callable[..., Daemon], make_context: Callable[..., Path], workdir: Path
) -> None:
    with ext4(workdir / "state", workdir / "state.img") as state:
        daemon = daemons()
        try:
            pid = _start_before(daemon, make_context)
            go_read_only(state)
            _refused_and_still_serving(daemon, make_context, workdir, pid)
            # A shutdown does not hang on it: the daemon exits, leaving the task it could not
            # record as stopped running, as its table says (a successor re-adopts it).
            assert daemon.terminate() is not None, "the daemon did not exit on SIGTERM"
            assert pid_alive(pid)
            assert "BEFORE was not stopped: cannot write the transaction table" in daemon.log()
        finally:
            daemon.terminate()


# --------------------------------------------------------------------------- floods


FLOOD = "python3 -c '{}'".format(
    "import os, socket, sys, time;"
    " socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto("
    'b"READY=1", os.environ["NOTIFY_SOCKET"]);'
    ' chunk = (b"x" * 1023 + b"\\n") * 1024;'
    " [(sys.stdout.buffer.write(chunk), sys.stdout.flush(), time.sleep(1 / 64))"
    " for _ in iter(int, 1)]"
)
"""A task that writes 1 KiB lines to stdout, 1 MiB at a time, up to 64 MiB/s, forever.

Bounded, so that the test's limit on the log (the cap + 64 MiB) means "the daemon
looked at it at least every second": an unbounded writer (GB/s) made the limit a
timing assertion (1.1 GB once, under load). The cap is 8 MiB: the flood still fills
it eight times a second, and the daemon's schedule (zsvc.daemon.logs.CapSchedule)
looks every 0.125 s; a daemon that looked every 2 s (CHECK_INTERVAL) would let
it reach 136 MiB."""


def test_a_task_flooding_stdout_has_its_log_capped_and_the_daemon_answers(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    context = make_context([TaskDef("loud", command=FLOOD, notify=True, location=None)])
    _start(daemon, "FLOOD", context)
    log = StateLayout(daemon.state).task_log("FLOOD", "loud")
    backup = log.with_name(log.name + ".1")
    wait_until(backup.exists, 60.0, "the flood's log rotated at least once", daemon.log)
    # While the flood goes on the daemon answers, and the log is cut again and again. (Before
    # the first cut it grew for up to CHECK_INTERVAL at the writer's full speed.)
    rotations, last, peak, answered = 0, _size(log), 0, 0
    deadline = time.monotonic() + 30.0
    while rotations < 20:
        assert time.monotonic() < deadline, f"rotated {rotations} times only; peak {peak}"
        assert daemon.call("status", transaction="FLOOD")["tasks"][0]["state"] == "active"
        answered += 1
        size = _size(log)
        assert _size(backup) <= LOG_CAP_BYTES  # a rotation keeps the tail only
        if rotations:
            peak = max(peak, size)
        rotations, last = rotations + (size < last), size
    print(
        f"{answered} status answers during {rotations} rotations; log peaked at {peak >> 20} MiB"
        f" once rotating"
    )
    # The cap plus what the flood writes in a second (see FLOOD).
    assert peak < LOG_CAP_BYTES + (64 << 20), peak
    daemon.call("stop", transaction="FLOOD")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def test_a_bus_subscriber_that_never_reads_costs_bounded_memory(daemon: Daemon) -> None:
    """About 100 MiB go through the bus while one subscriber never reads.

    Without high-water marks ZMQ would queue all of it in the daemon (its XPUB side)
    for the stuck subscriber. With them, each of the device's two sides queues at most
    HIGH_WATER_MARK messages per peer (about 10 MiB each of these 1 KiB messages), the
    rest is dropped for that subscriber, and a subscriber that reads still gets
    messages afterwards.

    On Debian 12's pyzmq 24 the device used to await one Future per message,
    and the daemon grew by about 1.9 times the bytes sent (246 MiB here); it
    drains its sockets with non-blocking receives since, and grows by about
    35 MiB on both stacks.
    """
    ctx = zmq.Context()
    try:
        stuck = ctx.socket(zmq.SUB)
        stuck.setsockopt(zmq.RCVHWM, 1)  # its own queue small: the backlog builds in the daemon
        stuck.setsockopt(zmq.RCVBUF, 4096)
        stuck.setsockopt(zmq.LINGER, 0)
        stuck.setsockopt(zmq.SUBSCRIBE, b"")
        stuck.connect(f"ipc://{daemon.runtime / 'bus-sub'}")
        publisher = ctx.socket(zmq.PUB)
        publisher.setsockopt(zmq.LINGER, 0)
        publisher.setsockopt(zmq.SNDHWM, 0)  # never drop on our side: all of it reaches the daemon
        publisher.connect(f"ipc://{daemon.runtime / 'bus-pub'}")
        reader = daemon.bus("flood-end")
        probe = protocol.encode(protocol.make_message("_probe.stuck", "probe"))

        def stuck_subscribed() -> bool:
            """Its subscription reached the daemon: it receives (this once) what we publish."""
            publisher.send_multipart(probe)
            return bool(stuck.poll(200))

        wait_until(stuck_subscribed, 20.0, "the stuck subscriber's subscription reached the bus")
        body = protocol.encode(protocol.make_message("flood", "tick", content={"pad": "x" * 1000}))
        process = psutil.Process(daemon.pid())
        baseline = process.memory_info().rss
        peak = baseline
        messages = 100_000
        for number in range(messages):
            publisher.send_multipart(body)
            if number % 2000 == 0:
                peak = max(peak, process.memory_info().rss)
        end = protocol.encode(protocol.make_message("flood-end", "done"))

        def delivered() -> bool:
            """The device worked through the flood: a message sent after it arrives."""
            publisher.send_multipart(end)
            peak_now[0] = max(peak_now[0], process.memory_info().rss)
            return reader.receive(0.2) is not None

        peak_now = [peak]
        wait_until(delivered, 120.0, "the daemon forwarded the flood", daemon.log)
        growth = peak_now[0] - baseline
        print(f"daemon RSS {baseline >> 20} MiB before, peak growth {growth / (1 << 20):.1f} MiB")
        assert growth < 64 << 20, f"daemon RSS grew by {growth >> 20} MiB"
        assert daemon.call("ping")["pid"] == daemon.pid()
    finally:
        ctx.destroy(0)
