"""The zygote's client heals it: restarts with a backoff, refuses oversized requests unsent.

Issue 19, finding 9: a 3 MB configuration made the send fail (EMSGSIZE), the
zygote was marked broken and never replaced, and every later Python task was
executed until the daemon restarted. These tests run a real zygote process
(``python -m zsvc.runners.zygote``); the tasks it forks have no ``$ZSVC_TASK``
and exit at once, which is all a fork needs here.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from zsvc.runners.zygote_client import Backoff, Zygote

WAIT = 10.0
"""Bound on every wait for a new zygote."""


# --------------------------------------------------------------------------- Backoff


def test_backoff_doubles_up_to_its_limit() -> None:
    backoff = Backoff(0.1, 30.0)
    delays = [backoff.next() for _ in range(12)]
    assert delays[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert max(delays) == 30.0
    assert delays[-3:] == [30.0, 30.0, 30.0]


def test_backoff_starts_over_after_a_success() -> None:
    backoff = Backoff(0.1, 30.0)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)
    assert backoff.next() == pytest.approx(0.2)


@pytest.mark.parametrize(("first", "limit"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_backoff_refuses_a_nonsense_policy(first: float, limit: float) -> None:
    with pytest.raises(ValueError, match="first"):
        Backoff(first, limit)


# --------------------------------------------------------------------------- a real zygote


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded by WAIT) until *predicate* holds, letting the loop run timers."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.01)


async def fork(zygote: Zygote, tmp_path: Path, env: dict[str, str] | None = None) -> int:
    return await zygote.spawn(env or {}, str(tmp_path), str(tmp_path / "task.log"), None)


def request_of(tmp_path: Path, env: dict[str, str]) -> bytes:
    """The request :func:`fork` sends (as :meth:`Zygote.spawn` encodes it)."""
    fields = {"env": env, "cwd": str(tmp_path), "log": str(tmp_path / "task.log")}
    return json.dumps(fields | {"marker": None, "cgroup": None}).encode()


def test_an_oversized_request_is_refused_unsent_and_the_zygote_keeps_serving(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        zygote = Zygote(backoff=Backoff(0.01, 0.05))
        try:
            first = zygote.proc.pid
            huge = {"ZSVC_TASK": "x" * 3_000_000}
            with pytest.raises(OSError) as info:
                await fork(zygote, tmp_path, huge)
            assert info.value.errno == errno.EMSGSIZE
            assert not isinstance(info.value, ConnectionError), "the zygote is not to blame"
            assert "more than its socket takes" in str(info.value)
            just_over = {"X": "y" * zygote.max_request}
            with pytest.raises(OSError, match="more than its socket takes"):
                await fork(zygote, tmp_path, just_over)
            assert not zygote.broken
            assert zygote.proc.poll() is None and zygote.proc.pid == first
            # The largest request the client lets through is one the kernel takes.
            base = len(request_of(tmp_path, {"X": ""}))
            exactly = {"X": "y" * (zygote.max_request - base)}
            assert len(request_of(tmp_path, exactly)) == zygote.max_request
            assert await fork(zygote, tmp_path, exactly) > 0
            assert await fork(zygote, tmp_path) > 0, "the same zygote still forks"
            assert zygote.restarts == 0
        finally:
            zygote.close()

    asyncio.run(scenario())


def test_a_killed_zygote_is_replaced_and_forks_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        zygote = Zygote(backoff=Backoff(0.01, 0.05))
        try:
            old = zygote.proc.pid
            os.kill(old, signal.SIGKILL)
            zygote.proc.wait(WAIT)
            with pytest.raises(ConnectionError, match="the zygote is gone"):
                await fork(zygote, tmp_path)
            assert zygote.broken, "tasks are executed meanwhile"
            await until(lambda: not zygote.broken, "a new zygote")
            assert zygote.restarts == 1
            assert zygote.proc.pid != old and zygote.proc.poll() is None
            assert await fork(zygote, tmp_path) > 0
        finally:
            zygote.close()

    asyncio.run(scenario())


def test_a_zygote_that_the_subreaper_saw_exit_is_replaced_after_a_growing_delay(
    tmp_path: Path,
) -> None:
    """The subreaper sets ``broken`` when it reaped the zygote; each death in a row waits
    twice as long; a fork that succeeds starts the delays over."""

    async def scenario() -> None:
        zygote = Zygote(backoff=Backoff(0.01, 10.0))
        try:
            for restarts in (1, 2, 3):
                os.kill(zygote.proc.pid, signal.SIGKILL)
                zygote.proc.wait(WAIT)
                zygote.broken = True  # as the subreaper does
                await until(lambda: not zygote.broken, "a new zygote")
                assert zygote.restarts == restarts
            assert zygote.backoff.next() == pytest.approx(0.08), "0.01, 0.02, 0.04 were used"
            assert await fork(zygote, tmp_path) > 0
            assert zygote.backoff.next() == pytest.approx(0.01), "reset by the fork"
        finally:
            zygote.close()

    asyncio.run(scenario())


def test_closing_cancels_a_pending_restart() -> None:
    async def scenario() -> None:
        zygote = Zygote(backoff=Backoff(0.05, 0.05))
        os.kill(zygote.proc.pid, signal.SIGKILL)
        zygote.proc.wait(WAIT)
        zygote.broken = True
        pending = zygote._restart
        assert pending is not None, "a restart was scheduled"
        zygote.close()
        assert pending.cancelled() and zygote._restart is None

    asyncio.run(scenario())
