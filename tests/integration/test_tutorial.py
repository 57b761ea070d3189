"""docs/tutorial.md, run as written: every ``sh`` block, in order, in one shell, in a temp dir.

The blocks run in one ``bash`` (``set -e -o pipefail``), so ``export`` and
``cd`` carry over as they would for a reader, and the first failing command
fails the test with the block and its output. Between blocks the test
watches the bus (``control`` topic, on the daemon the tutorial started) and
checks what the tutorial says happens: the generated services start,
report ready, publish updates, call each other through their triggers, and
stop; at the end no process of the tutorial is left.

The tutorial uses the seed's ports (5556/5557), so runs of this test on one
machine take turns (a lock file), and the test is skipped when something
else listens there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, _kill_leftovers, wait_message
from zsvc import protocol
from zsvc.client import BusClient

TUTORIAL = REPO / "docs" / "tutorial.md"
SEED_PORTS = (5556, 5557)
LOCK = Path("/tmp/zsvc-tutorial-ports.lock")
LOCK_WAIT = 120.0
BLOCK_TIMEOUT = 60.0
ECHO_TX = "6FDAHH3WPRVV7FGZCRIN"
MACHINE_TX = "5HGAHZ3WPZUI71PACRPP"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def shell_blocks(markdown: str) -> list[str]:
    """The fenced blocks whose info string is ``sh``, in document order."""
    return re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.M | re.S)


class Shell:
    """One bash process that runs blocks in turn, each with a deadline."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path):
        self.scratch = scratch
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.count = 0
        self._send("set -e -o pipefail\n")

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, block: str, timeout: float = BLOCK_TIMEOUT) -> str:
        """Run *block*; its output, or the test fails (non-zero status, or the deadline)."""
        self.count += 1
        script = self.scratch / f"block{self.count}.sh"
        script.write_text(block)
        marker = f"__block_done_{uuid.uuid4().hex}__"
        self._send(f"source {script} </dev/null\nprintf '%s\\n' {marker}\n")
        output = self._read_until(marker, timeout)
        if output is None:
            self.proc.wait(10)
            pytest.fail(f"block {self.count} failed (exit {self.proc.returncode}):\n{block}")
        return output

    def _read_until(self, marker: str, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while marker.encode() not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"block {self.count} did not finish within {timeout} s:\n{data!r}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:  # the shell exited: set -e saw a failure
                    print(data.decode(errors="replace"))
                    return None
                data += chunk
        return data.decode(errors="replace").split(marker)[0]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def seed_ports() -> Iterator[None]:
    """Take turns with other runs of this test, and skip when another program has the ports."""
    with open(LOCK, "a+") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another tutorial run held {LOCK} for {LOCK_WAIT} s")
                time.sleep(0.1)  # a lock held by another process: nothing to wait on but time
        for port in SEED_PORTS:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    pytest.skip(f"port {port} is in use: the tutorial needs the seed's ports")
        yield


def tutorial_env(workdir: Path) -> dict[str, str]:
    """A clean environment with ``zsvc`` on PATH (this interpreter, this checkout)."""
    bindir = workdir / ".bin"
    bindir.mkdir()
    shim = bindir / "zsvc"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m zsvc "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZSVC_", "NOTIFY_SOCKET"))}
    env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = str(REPO)
    env["HOME"] = str(workdir)
    return env


def matching(transaction: str, action: str, task: str):
    return lambda m: m.transaction == transaction and m.action == action and m.service_id == task


def test_tutorial_runs_as_written(workdir: Path) -> None:
    blocks = shell_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 10, "the tutorial lost its sh blocks"
    home = workdir / "tutorial"
    home.mkdir()
    scratch = workdir / "blocks"
    scratch.mkdir()
    runtime = home / ".zsvc" / "run"
    bus: BusClient | None = None
    with seed_ports():
        shell = Shell(home, tutorial_env(workdir), scratch)
        try:
            for block in blocks:
                output = shell.run(block)
                bus = check_after(block, output, home, runtime, bus)
            assert bus is None, "the tutorial did not end with 'zsvc shutdown --wait'"
        finally:
            if bus is not None:
                bus.close()
            shell.close()
            _kill_leftovers(workdir)


def check_after(
    block: str, output: str, home: Path, runtime: Path, bus: BusClient | None
) -> BusClient | None:
    """What the tutorial says after *block*, checked; returns the bus watcher (or None)."""
    if "--task_service='EchoAction'" in block:
        files = sorted(p.name for p in (home / "Services" / "EchoAction").iterdir())
        assert files == ["EchoAction.py", "ServiceEchoAction.py", "__init__.py"]
        assert "created    Conf/Context-EchoAction.xml" in output
    elif block.startswith("zsvc validate"):
        assert "ok (1 tasks)" in output
    elif block.startswith("zsvc daemon --detach"):
        bus = BusClient(
            f"ipc://{runtime / 'bus-pub'}", f"ipc://{runtime / 'bus-sub'}", topics=["control"]
        )
        bus.handshake(10.0)
    elif block.startswith("zsvc start --context Conf/Context-EchoAction.xml"):
        assert bus is not None
        started = wait_message(bus, matching(ECHO_TX, "started", "ts_100"))
        assert started.content["status"]["device_action"] == "shout"
        update = wait_message(bus, matching(ECHO_TX, "updated", "ts_100"))
        assert update.content["status"]["steps"] >= 1
    elif block.startswith("zsvc send --service-name state"):
        assert '"reply_context"' in output and '"ts_100"' in output
    elif block.startswith("zsvc status 6FDA"):
        assert "ts_100" in output and "running" in output
    elif block.startswith("zsvc stop 6FDA"):
        assert bus is not None
        assert f"{ECHO_TX} stopped: 1 inactive/dead" in output
        wait_message(bus, matching(ECHO_TX, "stopped", "ts_100"))
    elif "--xml_file=Conf/Services-StateMachine.xml" in block:
        assert output.split().count("created") == 13
        for name, task_file in (
            ("Stand", "Stand"),
            ("Walk", "Walker"),
            ("DrinkCoffee", "CoffeeDrinker"),
            ("Run", "Runner"),
        ):
            files = sorted(p.name for p in (home / "Services" / name).iterdir())
            assert files == sorted([f"{task_file}.py", f"Service{name}.py", "__init__.py"])
    elif "--service_name='context'" in block:
        assert bus is not None
        check_state_machine(bus)
    elif block.startswith("zsvc send --endpoint='tcp://127.0.0.1:5557' --service_name='state'"):
        assert '"reply_context"' in output and '"ts_103"' in output
    elif block.startswith("zsvc stop 5HGA"):
        assert bus is not None
        wait_all(bus, MACHINE_TX, {("ts_101", "stopped"), ("ts_103", "stopped")})
    elif block.startswith("zsvc shutdown --wait"):
        assert bus is not None and "daemon stopped" in output
        bus.close()
        bus = None
        assert not (runtime / "control").exists()
    return bus


def wait_all(bus: BusClient, transaction: str, wanted: set[tuple[str, str]]) -> list:
    """Wait until every (task id, action) of *wanted* was seen, in any order; all seen, in order."""
    seen: list[tuple[str, str]] = []

    def record(message: protocol.Message) -> bool:
        if message.transaction == transaction and message.service_id.startswith("ts_"):
            seen.append((message.service_id, message.action))
        return wanted <= set(seen)

    wait_message(bus, record, timeout=30.0)
    return seen


def check_state_machine(bus: BusClient) -> None:
    """Stand exits → Walk starts → DrinkCoffee runs once → Run starts; Walk and Run update."""
    wanted = {
        ("ts_100", "started"), ("ts_100", "exited"),
        ("ts_101", "started"), ("ts_101", "updated"),
        ("ts_102", "started"), ("ts_102", "exited"),
        ("ts_103", "started"), ("ts_103", "updated"),
    }  # fmt: skip
    seen = wait_all(bus, MACHINE_TX, wanted)
    order = [event for event in seen if event[1] in ("started", "exited")]
    assert order.index(("ts_100", "exited")) < order.index(("ts_101", "started"))
    assert order.index(("ts_101", "started")) < order.index(("ts_102", "started"))
    assert order.index(("ts_102", "exited")) < order.index(("ts_103", "started"))
    assert ("ts_101", "failed") not in seen and ("ts_103", "failed") not in seen
