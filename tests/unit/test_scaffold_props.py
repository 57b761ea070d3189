"""Properties of create-service's escaping: any value comes back as it went in, or is refused.

- every XML-safe value survives the generated context file (read by zsvc's
  own loader) and a MetaServiceConf written with it (read by create-service);
- every string survives a generated docstring, and the Python stays valid;
- a value XML cannot hold is refused with a problem naming its flag, never
  an exception or a broken file.
"""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from zsvc.config.loader import load_context_text
from zsvc.scaffold.contextxml import new_context
from zsvc.scaffold.metaconf import parse_metaconf
from zsvc.scaffold.model import (
    ContextSpec,
    ScaffoldError,
    ServiceSpec,
    TaskType,
    service_problems,
    xml_unsafe,
)
from zsvc.scaffold.templates import docstring_text, render_service, render_task

ROOT = Path("/nonexistent/tree")
CONTEXT = ROOT / "Conf" / "Context-P.xml"

xml_text = st.text(st.characters(blacklist_categories=("Cs",))).filter(
    lambda value: xml_unsafe(value) is None
)
stripped_text = xml_text.map(str.strip)
token = stripped_text.filter(lambda value: value and not any(ch.isspace() for ch in value))
python_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True).filter(
    lambda name: name not in ("Task", "SingleTask", "__init__") and not name.startswith("Service")
)
task_id = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


def spec(desc: str = "", device_action: str = "", service_name: str = "svc") -> ServiceSpec:
    return ServiceSpec(
        task_service="Prop",
        task_id="ts_1",
        service_name=service_name,
        task_file="prop",
        task_class="PropTask",
        task_desc=desc,
        device_action=device_action,
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(desc=stripped_text, device_action=stripped_text, service_name=token)
def test_values_round_trip_through_the_context_file(
    desc: str, device_action: str, service_name: str
) -> None:
    service = spec(desc, device_action, service_name)
    assert service_problems(service) == []
    data = new_context(ContextSpec(name="P"), (service,))
    (task,) = load_context_text(data, CONTEXT).tasks
    assert (task.description, task.device_action, task.service_name) == (
        desc,
        device_action,
        service_name,
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    desc=stripped_text,
    device_action=stripped_text,
    service_name=token,
    names=st.tuples(python_name, python_name, python_name),
    ident=task_id,
    single=st.booleans(),
)
def test_values_round_trip_through_a_metaconf_file(
    desc: str,
    device_action: str,
    service_name: str,
    names: tuple[str, str, str],
    ident: str,
    single: bool,
) -> None:
    root = etree.Element("MetaServiceConf")
    values = {"context_name": "P", "service_path": "/x"}
    for tag, text in values.items():
        etree.SubElement(root, tag).text = text
    service = etree.SubElement(root, "Service", task_type="Single" if single else "Looped")
    fields = {
        "task_service": names[0],
        "task_file": names[1],
        "task_class": names[2],
        "task_desc": desc,
        "device_action": device_action,
        "service_name": service_name,
        "task_id": ident,
    }
    for tag, text in fields.items():
        etree.SubElement(service, tag).text = text
    request = parse_metaconf(etree.tostring(root, encoding="UTF-8"), Path("/m.xml"))
    (parsed,) = request.services
    assert (parsed.task_service, parsed.task_file, parsed.task_class) == names
    assert (parsed.task_desc, parsed.device_action) == (desc, device_action)
    assert (parsed.service_name, parsed.task_id) == (service_name, ident)
    assert parsed.task_type is (TaskType.SINGLE if single else TaskType.LOOPED)


@given(st.text())
def test_docstring_text_evaluates_back(value: str) -> None:
    assert ast.literal_eval(f'"""{docstring_text(value)}"""') == value


@settings(max_examples=100)
@given(desc=xml_text.map(str.strip), single=st.booleans())
def test_generated_modules_stay_valid_python(desc: str, single: bool) -> None:
    service = spec(desc)
    if single:
        service = ServiceSpec(**{**service.__dict__, "task_type": TaskType.SINGLE})
    task = ast.parse(render_task(service))
    docstring = ast.get_docstring(task, clean=False) or ""
    if desc:
        assert f"\n\n{desc}\n\n" in docstring
    assert [node.name for node in task.body if isinstance(node, ast.ClassDef)] == ["PropTask"]
    module = ast.parse(render_service(service))
    assert [n.name for n in module.body if isinstance(n, ast.ClassDef)] == ["ServiceProp"]


@given(st.text(min_size=1).filter(lambda value: xml_unsafe(value) is not None))
def test_values_xml_cannot_hold_are_refused_by_name(value: str) -> None:
    problems = service_problems(spec(desc=value))
    assert [p.where for p in problems] == ["task_desc"]
    assert "which an XML file cannot hold" in problems[0].message
    assert str(ScaffoldError(problems)).startswith("task_desc: contains U+")
