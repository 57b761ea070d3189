"""The monitor's pure parts and its process reading, without a daemon.

Aggregation and options are pure; the sampler reads this test's own
process and short-lived children, whose end is waited for (never slept on).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from zsvc.daemon.monitor import MonitorService, top_options
from zsvc.monitor import sampler
from zsvc.monitor.aggregate import CpuTracker, ProcReading, totals, usage
from zsvc.monitor.options import (
    NO_OPTIONS,
    MonitorConfigError,
    MonitorOptions,
    endpoint_problem,
    parse_options,
    parse_settings,
)


def reading(pid: int, cpu_time: float = 0.0, **fields: Any) -> ProcReading:
    values: dict[str, Any] = {
        "ppid": 1,
        "create_time": 1000.0,
        "name": "python",
        "status": "sleeping",
        "rss": 10,
        "vms": 20,
        "threads": 2,
        "fds": 5,
        "files": 1,
        "sockets": 2,
    }
    values.update(fields)
    return ProcReading(pid=pid, cpu_time=cpu_time, **values)


# --- aggregation -------------------------------------------------------------------------


def test_cpu_percent_between_two_readings() -> None:
    tracker = CpuTracker()
    tracker.percent(reading(7, cpu_time=1.0), now=1010.0)
    assert tracker.percent(reading(7, cpu_time=1.5), now=1011.0) == 50.0


def test_cpu_percent_of_a_first_reading_is_its_average_since_start() -> None:
    assert CpuTracker().percent(reading(7, cpu_time=2.0, create_time=1000.0), now=1010.0) == 20.0


def test_a_reused_pid_does_not_inherit_cpu_time() -> None:
    tracker = CpuTracker()
    tracker.percent(reading(7, cpu_time=50.0, create_time=1000.0), now=1100.0)
    fresh = reading(7, cpu_time=1.0, create_time=1099.0)
    assert tracker.percent(fresh, now=1101.0) == 50.0  # 1 s in its own 2 s, not -49 s


def test_tracker_forgets_processes_not_read_for_long() -> None:
    tracker = CpuTracker()
    tracker.percent(reading(7), now=1000.0)
    tracker.percent(reading(8), now=2000.0)
    tracker.prune(now=2000.0, max_age=100.0)
    assert len(tracker) == 1


def test_usage_sums_the_tree_and_lists_children() -> None:
    readings = [reading(10, threads=3), reading(11, ppid=10, rss=5), reading(12, ppid=10)]
    result = usage(readings, 10, {10: 1.5, 11: 2.0, 12: 0.0})
    assert result["cpu_percent"] == 3.5
    assert result["rss"] == 25
    assert result["threads"] == 7
    assert result["processes"] == 3
    assert result["fds"] == 15 and result["files"] == 3 and result["sockets"] == 6
    assert [child["pid"] for child in result["children"]] == [11, 12]
    assert result["status"] == "sleeping"


def test_usage_of_a_main_process_that_vanished_mid_sample() -> None:
    result = usage([reading(11, ppid=10)], 10, {11: 1.0})
    assert result["status"] == "vanished"
    assert result["processes"] == 1


def test_unreadable_counts_stay_unknown() -> None:
    result = usage([reading(10, fds=None, files=None, sockets=None)], 10, {})
    assert result["fds"] is None and result["files"] is None


def test_totals_count_a_shared_thread_host_once() -> None:
    host = {"pid": 50, "cpu_percent": 10.0, "rss": 100, "processes": 1, "threads": 4}
    tasks = [
        {"id": "a", "usage": host},
        {"id": "b", "usage": host},
        {"id": "c", "usage": {"pid": 60, "cpu_percent": 1.0, "rss": 5, "processes": 1}},
        {"id": "d", "usage": None},
    ]
    result = totals(tasks, shared=["a", "b"])
    assert result["tasks_up"] == 3
    assert result["rss"] == 105
    assert result["cpu_percent"] == 11.0
    assert result["processes"] == 2


# --- options -------------------------------------------------------------------------------


def test_options_accept_booleans_and_zero_one_only() -> None:
    options = parse_options({"opened_files": 1, "open_connections": 0, "memory_maps": True})
    assert options == MonitorOptions(opened_files=True, open_connections=False, memory_maps=True)
    with pytest.raises(MonitorConfigError, match="memory_maps"):
        parse_options({"memory_maps": "0"})  # the original's bool("0") was True
    with pytest.raises(MonitorConfigError, match="unknown option"):
        parse_options({"threads": 1})
    with pytest.raises(MonitorConfigError, match="not supported"):
        parse_options({"store_records": 1})
    assert parse_options({"store_records": 0}) == NO_OPTIONS


def test_seed_monitor_settings() -> None:
    settings = parse_settings(
        {
            "service": {"endpoint": "tcp://127.0.0.1:6558", "frequency_s": 30.0, "type": "pub"},
            "monitor_options": {"opened_files": 1, "open_connections": 1, "memory_maps": 1},
        }
    )
    assert settings.frequency_s == 30.0
    assert settings.options.memory_maps


def test_settings_errors_name_every_key() -> None:
    with pytest.raises(MonitorConfigError) as caught:
        parse_settings({"service": {"endpoint": "tcp://10.1.1.1:1", "frequency_s": 0, "x": 1}})
    keys = [key for key, _ in caught.value.problems]
    assert keys == ["service.endpoint", "service.frequency_s", "service.x"]
    with pytest.raises(MonitorConfigError, match="needs <service>"):
        parse_settings({})


def test_the_original_publisher_key_is_accepted() -> None:
    assert parse_settings({"publisher": {"endpoint": "ipc:///tmp/m"}}).endpoint == "ipc:///tmp/m"


@pytest.mark.parametrize(
    ("endpoint", "ok"),
    [("tcp://*:6558", True), ("tcp://127.0.0.1:6558", True), ("tcp://0.0.0.0:99999", False),
     ("tcp://192.168.1.2:6558", False), ("udp://x", False), ("ipc:///run/m", True)],
)  # fmt: skip
def test_endpoint_rules(endpoint: str, ok: bool) -> None:
    assert (endpoint_problem(endpoint) is None) is ok


def test_top_options_ignore_other_configuration_keys() -> None:
    content = {"configuration": {"device_action": "x", "memory_maps": 1, "service": {}}}
    assert top_options(content) == MonitorOptions(memory_maps=True)
    assert top_options({}) == NO_OPTIONS
    with pytest.raises(MonitorConfigError):
        top_options({"configuration": {"opened_files": "yes please"}})


# --- reading processes ------------------------------------------------------------------------


def test_read_this_process() -> None:
    found = sampler.read_process(os.getpid())
    assert found is not None
    assert found.pid == os.getpid() and found.rss > 0 and found.threads >= 1
    assert found.fds is not None and found.fds >= 3
    assert not found.extras


def test_lists_only_when_asked() -> None:
    with open(__file__) as handle:
        found = sampler.read_process(os.getpid(), MonitorOptions(True, True, True))
        assert found is not None
        assert any(item["fd"] == handle.fileno() for item in found.extras["open_files"])
    assert set(found.extras) == {"open_files", "connections", "memory_maps"}
    assert found.uss is not None  # read with the maps, never without


def test_a_vanished_pid_is_left_out() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)  # reaped: the pid no longer exists
    assert sampler.read_process(child.pid) is None
    assert [r.pid for r in sampler.read_processes([child.pid, os.getpid()])] == [os.getpid()]


def test_a_process_vanishing_while_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(self: psutil.Process) -> None:
        raise psutil.NoSuchProcess(self.pid)

    monkeypatch.setattr(psutil.Process, "num_threads", gone)
    assert sampler.read_process(os.getpid()) is None


def test_fd_kinds_counts_files_and_sockets() -> None:
    import socket

    before = sampler.fd_kinds(os.getpid())
    assert before is not None
    with open(__file__) as _, socket.socket() as _sock:
        after = sampler.fd_kinds(os.getpid())
    assert after is not None
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (2, 1, 1)


@pytest.mark.parametrize("method", ["connections", "net_connections"])
def test_connections_under_psutil_5_and_7(method: str) -> None:
    calls = []

    def listing(kind: str) -> list[str]:
        calls.append(kind)
        return ["c"]

    fake = SimpleNamespace(connections=None, net_connections=None)
    setattr(fake, method, listing)
    assert sampler.connections_of(fake) == ["c"]  # type: ignore[arg-type]
    assert calls == ["inet"]


# --- the daemon's loop ---------------------------------------------------------------------


def test_the_loop_samples_only_while_watched() -> None:
    async def scenario() -> None:
        published: list[Any] = []
        watchers = [0]
        manager = SimpleNamespace(transactions={})
        service = MonitorService(
            manager,  # type: ignore[arg-type]
            published.append,
            lambda topic: watchers[0],
            interval=0.01,
        )
        loop_task = asyncio.get_running_loop().create_task(service.run())
        try:
            await asyncio.wait_for(service.idle.wait(), 10)
            assert service.passes == 0
            watchers[0] = 1
            service.subscriptions_changed(b"control")  # not ours: no wake-up
            assert service.idle.is_set()
            service.subscriptions_changed(b"mon")  # a prefix of "monitor": ours
            await asyncio.wait_for(_until(lambda: service.passes >= 2), 10)
            watchers[0] = 0
            service.subscriptions_changed(b"monitor")
            await asyncio.wait_for(service.idle.wait(), 10)
            stopped_at = service.passes
            await asyncio.sleep(0)  # let the loop run: it stays idle
            assert service.passes == stopped_at and service.idle.is_set()
        finally:
            loop_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await loop_task

    asyncio.run(scenario())


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.001)
