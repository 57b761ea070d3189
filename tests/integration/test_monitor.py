"""The monitor against a real daemon and real task processes (tests/tasks/Hog).

Values are compared between two Hog tasks that differ only in what is
measured (a baseline and a loaded one), so the task host's own files,
sockets and threads cancel out. Every wait is for a message or a condition,
with a deadline; nothing is timed.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.integration.conftest import (
    REPO,
    TEST_SERVICES,
    Daemon,
    TaskDef,
    free_port,
    render_context,
    wait_message,
)
from zsvc import protocol

pytestmark = pytest.mark.integration

MIB = 1 << 20
HOG = {"memory_mb": 64, "files": 5, "sockets": 3, "threads": 4, "children": 2, "spin": "true"}
BASE = {"memory_mb": 0, "files": 0, "sockets": 0, "threads": 0, "children": 2, "spin": "false"}


def hog_context(make_context: Callable[..., Path]) -> Path:
    return make_context(
        [TaskDef("base", instance="Hog", config=BASE), TaskDef("hog", instance="Hog", config=HOG)]
    )


def tasks_of(message: protocol.Message) -> dict[str, dict[str, Any]]:
    return {task["id"]: task for task in message.content["tasks"]}


def both_up(message: protocol.Message, transaction: str) -> bool:
    if message.action != "sample" or message.transaction != transaction:
        return False
    tasks = tasks_of(message)
    return all(tasks[name]["usage"] for name in ("base", "hog"))


def test_sample_values_match_what_the_task_holds(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    assert daemon.cli("start", "--context", str(hog_context(make_context)), "MON1").code == 0
    bus = daemon.bus("monitor")  # subscribing is what makes the daemon sample
    # The spinning thread shows up once a window has seen it run.
    message = wait_message(
        bus,
        lambda m: both_up(m, "MON1") and tasks_of(m)["hog"]["usage"]["cpu_percent"] >= 30.0,
    )
    tasks = tasks_of(message)
    hog, base = tasks["hog"]["usage"], tasks["base"]["usage"]
    assert hog["pid"] == tasks["hog"]["pid"]
    assert hog["rss"] - base["rss"] >= 64 * MIB
    assert hog["rss"] - base["rss"] < 64 * MIB + 32 * MIB
    assert hog["files"] - base["files"] == 5
    assert hog["sockets"] - base["sockets"] == 3
    assert hog["threads"] - base["threads"] == 4 + 1  # the sleepers and the spinner
    assert len(hog["children"]) == len(base["children"]) == 2
    assert hog["processes"] == 3
    assert all(child["ppid"] == hog["pid"] for child in hog["children"])
    assert hog["cpu_percent"] > base["cpu_percent"]
    totals = message.content["totals"]
    assert totals["tasks_up"] == 2
    assert totals["rss"] == hog["rss"] + base["rss"]
    assert "open_files" not in hog  # lists only when asked


def test_top_with_options_off_and_on(daemon: Daemon, make_context: Callable[..., Path]) -> None:
    assert daemon.cli("start", "--context", str(hog_context(make_context)), "MON2").code == 0
    bus = daemon.bus("state")

    def top(configuration: dict[str, Any] | None, transaction: str = "MON2") -> dict[str, Any]:
        content = {"configuration": configuration} if configuration is not None else {}
        bus.publish(protocol.make_message("state", "top", transaction=transaction, content=content))
        reply = wait_message(bus, lambda m: m.action == "reply_top")
        return dict(reply.content)

    off = top(None)["samples"][0]
    hog = tasks_of_sample(off)["hog"]["usage"]
    assert not {"open_files", "connections", "memory_maps"} & set(hog)
    assert hog["uss"] is None
    on = top({"opened_files": 1, "open_connections": 1, "memory_maps": 1})["samples"][0]
    hog = tasks_of_sample(on)["hog"]["usage"]
    main = str(hog["pid"])
    assert len([f for f in hog["open_files"][main] if "zsvc-hog-" in f["path"]]) == 5
    assert any(c["status"] == "LISTEN" for c in hog["connections"][main])
    assert hog["memory_maps"][main] and hog["uss"] > 0
    assert top({"memory_maps": "0"})["error"].startswith("configuration.memory_maps")
    assert "unknown transaction" in top(None, transaction="NOPE")["error"]


def tasks_of_sample(sample: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["id"]: task for task in sample["tasks"]}


def test_state_request_answers_the_context_info(
    daemon: Daemon, make_context: Callable[..., Path]
) -> None:
    path = make_context([TaskDef("s1", service_name="sleepy")])
    assert daemon.cli("start", "--context", str(path), "MON3").code == 0
    bus = daemon.bus("state")
    bus.publish(protocol.make_message("state", "request", transaction="MON3"))
    reply = wait_message(bus, lambda m: m.action == "reply_context")
    (task,) = reply.content["tasks"]
    assert (task["id"], task["service_name"], task["instance"]) == ("s1", "sleepy", "Sleeper")
    assert task["pid"] > 0 and task["state"] == "active"


def test_cli_json_lines_and_once(daemon: Daemon, make_context: Callable[..., Path]) -> None:
    assert daemon.cli("start", "--context", str(hog_context(make_context)), "MON4").code == 0
    streamed = daemon.cli("monitor", "MON4", "--json", "--count", "2")
    assert streamed.code == 0, streamed.stderr
    lines = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert len(lines) == 2
    for sample in lines:
        assert sample["transaction"] == "MON4"
        assert {t["id"] for t in sample["tasks"]} == {"base", "hog"}
        assert sample["totals"]["tasks_up"] == 2
    once = daemon.cli("monitor", "--once")
    assert once.code == 0 and "MON4" in once.stdout and "total" in once.stdout
    assert daemon.cli("monitor", "--once", "NOPE").code == 4


def test_cli_without_daemon(tmp_path: Path) -> None:
    env = dict(os.environ, ZSVC_RUNTIME_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "zsvc", "monitor", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 3 and "hint" in done.stderr


def test_json_stream_survives_a_daemon_restart(
    daemons: Callable[..., Daemon], make_context: Callable[..., Path], workdir: Path
) -> None:
    first = daemons()
    path = make_context([TaskDef("s1")])
    assert first.cli("start", "--context", str(path), "MON5").code == 0
    env = dict(os.environ, ZSVC_RUNTIME_DIR=str(first.runtime))
    watcher = subprocess.Popen(
        [sys.executable, "-m", "zsvc", "monitor", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in watcher.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        assert json.loads(lines.get(timeout=30))["transaction"] == "MON5"
        first.kill9()  # tasks outlive it; the successor re-adopts them
        daemons(root=workdir)
        ready_at = time.time()
        deadline = time.monotonic() + 30
        while True:  # skip what the first daemon sent; the successor's samples come after
            sample = json.loads(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            if sample["timestamp"] > ready_at:
                break
            assert time.monotonic() < deadline, "no sample from the restarted daemon"
        assert sample["transaction"] == "MON5"
        assert sample["tasks"][0]["usage"]["pid"] == sample["tasks"][0]["pid"]  # re-adopted
    finally:
        watcher.kill()
        watcher.wait(30)


MONITOR_TASK = """
  <TaskService id="ts000" instance="Monitor" serviceType="Process" topic="process">
    <Task>
      <description>Monitors memory and process for context task services</description>
      <message>
        <header><action>start</action><service_name>monitor</service_name></header>
        <content><configuration>
          <device_action>task_monitor</device_action>
          <service><endpoint>tcp://127.0.0.1:{port}</endpoint>
                   <frequency_s>0.2</frequency_s><type>pub</type></service>
          <monitor_options><opened_files>1</opened_files><open_connections>0</open_connections>
                           <memory_maps>0</memory_maps></monitor_options>
        </configuration></content>
      </message>
      <state type="on_start"><on_fail><action>restart</action><call>ts000</call></on_fail></state>
    </Task>
  </TaskService>
"""


def test_the_seed_monitor_publishes_on_its_own_endpoint(daemon: Daemon, workdir: Path) -> None:
    port = free_port()
    text = render_context([TaskDef("s1", location=TEST_SERVICES)], free_port(), free_port())
    text = text.replace("</Context>", MONITOR_TASK.format(port=port) + "</Context>")
    path = workdir / "Context-Monitor.xml"
    path.write_text(text)
    assert daemon.cli("validate", str(path)).code == 0
    started = daemon.cli("start", "--context", str(path), "MON6")
    assert started.code == 0, started.stderr
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"monitor")
    sub.connect(f"tcp://127.0.0.1:{port}")
    try:
        assert sub.poll(30_000), "no sample on the Monitor's endpoint within 30 s"
        message = protocol.decode(sub.recv_multipart())
    finally:
        sub.close()
        context.term()
    assert message.topic == "monitor" and message.transaction == "MON6"
    tasks = tasks_of(message)
    assert tasks["s1"]["usage"]["pid"] == tasks["s1"]["pid"]
    assert "open_files" in tasks["s1"]["usage"]  # its monitor_options
    assert message.content["options"] == {
        "opened_files": True,
        "open_connections": False,
        "memory_maps": False,
    }


def test_an_invalid_monitor_configuration_is_a_file_error(workdir: Path) -> None:
    text = render_context([TaskDef("s1")], free_port(), free_port())
    bad = MONITOR_TASK.format(port=80000).replace("0.2<", "fast<")
    path = workdir / "Context-Bad.xml"
    path.write_text(text.replace("</Context>", bad + "</Context>"))
    done = subprocess.run(
        [sys.executable, "-m", "zsvc", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert "service.endpoint" in done.stderr and "service.frequency_s" in done.stderr
