"""The benchmarks' zsvc tasks: their classes, written as a task package, and their contexts.

A task package is ``<root>/Services/<instance>/Service<instance>.py`` (plus an empty
``__init__.py``): where a context file in ``<root>/Conf/`` finds its tasks by default
(``../Services``). Each context gets free loopback TCP ports for its bus endpoints,
since a daemon binds the endpoints of every context it runs.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

SLEEP = "BenchSleep"
"""setup() sleeps ``delay_s`` (the peers' workload: 0.2 s), then the task idles."""
NOOP = "BenchNoop"
"""No set-up work; reports the host's CPU time up to setup() as its STATUS= line."""
IDLE = "BenchIdle"
"""Nothing to set up; after READY the host only waits for messages."""
CRASH = "BenchCrash"
"""setup() raises at once, so every run fails before READY."""
COUNT_CRASH = "BenchCountCrash"
"""setup() appends one byte to the file ``counter`` (the runs, counted), then raises."""

# How the task host's cost is measured (bench/core.py, target: <= 60 ms CPU from exec
# to READY): BenchNoop reads its process CPU time at the start of setup(), which the
# host calls after everything it does before READY=1: interpreter start-up, imports,
# loading the task class, joining the bus and the subscription handshake.
# time.process_time() is CLOCK_PROCESS_CPUTIME_ID: user+system time of all the
# process's threads (pyzmq's I/O thread included) with nanosecond resolution, counted
# from fork (so the daemon-side child work before exec is in it too: a slight
# overestimate). Left out: the READY=1 datagram itself (one sendto, microseconds).
# getrusage(RUSAGE_SELF) is read as well, right after. The figures travel to the bench
# as the task's STATUS= line, which the host sends before READY=1, so `start` cannot
# return before they are in the table.
SOURCES = {
    SLEEP: '''\
"""Bench task: the peers' workload. setup() sleeps, then the task idles."""

import time

from zsvc import Task


class ServiceBenchSleep(Task):
    interval = 3600.0  # step() runs once after READY, then the host just waits

    def setup(self, delay_s: float = 0.2, **config):
        time.sleep(delay_s)
''',
    NOOP: '''\
"""Bench task: no set-up work; reports the host's CPU time up to setup()."""

import time

from zsvc import Task


class ServiceBenchNoop(Task):
    interval = 3600.0

    def setup(self, **config):
        cpu = time.process_time()  # first: nothing below is part of the host's cost
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.set_status(f"cpu_s={cpu!r} ru_s={usage.ru_utime + usage.ru_stime!r}")
''',
    IDLE: '''\
"""Bench task: nothing to set up; after READY the host only waits for messages."""

from zsvc import Task


class ServiceBenchIdle(Task):
    interval = 3600.0
''',
    CRASH: '''\
"""Bench task: setup() raises at once, so the run fails before READY."""

from zsvc import Task


class ServiceBenchCrash(Task):
    def setup(self, **config):
        raise RuntimeError("bench: crash in setup()")
''',
    COUNT_CRASH: '''\
"""Bench task: setup() counts itself and raises."""

import os

from zsvc import Task


class ServiceBenchCountCrash(Task):
    def setup(self, counter: str = "", **config):
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        raise RuntimeError("bench: crash in setup()")
''',
}


def write_task_package(root: Path, *instances: str) -> Path:
    """Write the task classes *instances* (names above) under ``<root>/Services``; that path."""
    services = root / "Services"
    for instance in instances:
        folder = services / instance
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / f"Service{instance}.py").write_text(SOURCES[instance])
    return services


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on loopback (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def task_ids(count: int, prefix: str = "t") -> list[str]:
    """``t000``, ``t001``, …: the task ids of a context of *count* tasks."""
    return [f"{prefix}{i:03d}" for i in range(count)]


def context_xml(
    context_id: str,
    instance: str,
    ids: list[str],
    config: dict[str, Any] | None = None,
    attributes: dict[str, str] | None = None,
    command: str | None = None,
    notify: bool = False,
) -> str:
    """A context of one TaskService per id, all of one task class, on free TCP ports.

    *config* is each task's ``<configuration>``; *attributes* are added to (or
    replace) each TaskService's attributes (restart policy, timeouts); *command*
    makes every task a command task, which sends READY=1 itself when *notify*.
    """
    sub_port, pub_port = free_ports(2)
    attrs = {"start_timeout": "30", "stop_timeout": "10", **(attributes or {})}
    extra = "".join(f' {key}="{value}"' for key, value in attrs.items())
    settings = "".join(f"<{key}>{value}</{key}>" for key, value in (config or {}).items())
    flag = "true" if notify else "false"
    body = f'<command notify="{flag}">{command}</command>' if command else ""
    services = "\n".join(
        f"""  <TaskService id="{task_id}" instance="{instance}" serviceType="Process"
               topic="process"{extra}>
    <Task>
      <description>bench task {task_id}</description>{body}
      <message>
        <header><action>start</action><service_name>n{task_id}</service_name></header>
        <content><configuration>{settings}</configuration></content>
      </message>
      <state type="on_start"/>
    </Task>
  </TaskService>"""
        for task_id in ids
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Context>
  <FrontEndEndpoint>tcp://127.0.0.1:{sub_port}</FrontEndEndpoint>
  <BackendEndpoint>tcp://127.0.0.1:{pub_port}</BackendEndpoint>
  <FrontBind>tcp://127.0.0.1:{pub_port}</FrontBind>
  <BackendBind>tcp://127.0.0.1:{sub_port}</BackendBind>
  <ContextID>{context_id}</ContextID>
  <TaskLogName>{context_id}</TaskLogName>
{services}
</Context>
"""


def write_context(path: Path, *args: Any, **kw: Any) -> tuple[Path, str]:
    """Write :func:`context_xml` (*args*, *kw*) to *path*; the path and the text."""
    text = context_xml(*args, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, text
