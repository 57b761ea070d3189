"""Real programs' command lines and configurations that more than one test runs."""

from __future__ import annotations

from tests.programs.contexts import ProgramTask

HAPROXY_CONFIG = """global
  log stdout format raw local0
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend web
  bind 127.0.0.1:{port}
  http-request return status 200 content-type text/plain string "haproxy ok"
"""


def redis(port: int, directory: str, **attrs: str) -> ProgramTask:
    """redis-server on 127.0.0.1:*port*, notifying (``--supervised systemd``), nothing saved,
    its log on stdout (the task's log)."""
    command = (
        f"/usr/bin/redis-server --port {port} --bind 127.0.0.1 --supervised systemd"
        f" --save '' --appendonly no --dir {directory} --logfile ''"
    )
    return ProgramTask("redis", command, type="notify", attrs=attrs)
