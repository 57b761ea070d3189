"""create-service beside a hand-written context that writes no endpoints (issue 14: such a
context binds no TCP): asking for ports is refused, leaving them out keeps the file so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_scaffold import echo_request, messages, plan_for, written
from zsvc.config import load_context_text
from zsvc.scaffold.flags import Flags, request_from_flags
from zsvc.scaffold.model import ScaffoldError

SECOND = dict(task_service="Second", task_id="ts_101", task_class="Two")


def without_endpoints(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    files = written(plan_for(echo_request(tmp_path)))
    path = tmp_path / "Conf" / "Context-EchoAction.xml"
    pattern = rb"\s*<(FrontEndEndpoint|BackendEndpoint|FrontBind|BackendBind)>[^<]*</\1>"
    files[path] = re.sub(pattern, b"", files[path])
    assert load_context_text(files[path], path).endpoints.bind_pair is None
    return path, files


def test_ports_for_a_context_without_endpoints_are_refused(tmp_path: Path) -> None:
    path, files = without_endpoints(tmp_path)
    with pytest.raises(ScaffoldError) as exc:
        plan_for(echo_request(tmp_path, sub_port=6000, **SECOND), files)
    assert messages(exc) == [
        f"--{name}-port: {path} writes no bus endpoints; leave server_ip and {name}_port out "
        "to keep it so"
        for name in ("sub", "pub")
    ]


def test_without_ports_the_file_keeps_no_endpoints(tmp_path: Path) -> None:
    _, files = without_endpoints(tmp_path)
    flags = Flags(service_path=tmp_path, context_name="EchoAction", service_name="s", **SECOND)
    plan = plan_for(request_from_flags(flags), files)
    merged = load_context_text(plan.files[-1].content, plan.files[-1].path)
    assert len(merged.tasks) == 2 and merged.endpoints.bind_pair is None
