"""create-service's pure core: inputs, generated files (golden), the context file, the plan.

Golden files live in ``tests/unit/golden/scaffold``; after an intended
change of the templates, rewrite them with ``ZSVC_UPDATE_GOLDEN=1`` and
read the diff.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from zsvc.config.loader import load_context_text
from zsvc.scaffold.flags import Flags, request_from_flags
from zsvc.scaffold.metaconf import parse_metaconf
from zsvc.scaffold.model import Request, ScaffoldError, TaskType
from zsvc.scaffold.plan import Change, Plan, make_plan, service_files
from zsvc.states import TaskAction, TriggerEvent
from zsvc.task.api import SingleTask, Task
from zsvc.task.host import load_task_class

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "scaffold"
SEED = Path("/work/shared/seed/000_2c67366327e4d130.txt")
TUTORIAL = REPO / "docs" / "tutorial.md"

SEED_FLAGS = dict(
    task_service="EchoAction",
    task_file="EchoAction",
    task_class="EchoShouting",
    task_desc="An echo action is for shouting the time after counting 10s",
    context_name="EchoAction",
    service_name="echo_action",
    server_ip="127.0.0.1",
    sub_port=5556,
    pub_port=5557,
    task_id="ts_100",
    device_action="shout",
)


def tutorial_metaconf() -> bytes:
    """The MetaServiceConf of docs/tutorial.md (its heredoc), so the test and the doc agree."""
    match = re.search(r"<<'EOF'\n(.*?)^EOF$", TUTORIAL.read_text(), flags=re.S | re.M)
    assert match is not None
    return match.group(1).encode()


def seed_metaconf() -> bytes:
    """The seed's own MetaServiceConf sample, verbatim (stray </Service> tags included)."""
    text = SEED.read_text() if SEED.exists() else ""
    if "<MetaServiceConf>" not in text:
        pytest.skip("the seed text is not available here")
    start = text.index("<MetaServiceConf>")
    end = text.index("</MetaServiceConf>") + len("</MetaServiceConf>")
    return (text[start:end] + "\n").encode()


def reader(files: dict[Path, bytes]):
    return lambda path: files.get(path)


def plan_for(request: Request, files: dict[Path, bytes] | None = None, force=False) -> Plan:
    return make_plan(request, reader(files or {}), force=force)


def echo_request(root: Path, **changes: object) -> Request:
    return request_from_flags(Flags(service_path=root, **{**SEED_FLAGS, **changes}))


def messages(exc: pytest.ExceptionInfo[ScaffoldError]) -> list[str]:
    return [str(problem) for problem in exc.value.problems]


# --------------------------------------------------------------------------- golden files


def check_golden(name: str, content: bytes) -> None:
    path = GOLDEN / f"{name}.golden"
    if os.environ.get("ZSVC_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    assert path.exists(), f"{path} is missing: run with ZSVC_UPDATE_GOLDEN=1"
    assert content.decode() == path.read_text(), f"{name} differs from {path}"


def test_golden_echo_action_from_the_seeds_flags(tmp_path: Path) -> None:
    plan = plan_for(echo_request(tmp_path))
    names = [str(change.path.relative_to(tmp_path)) for change in plan.files]
    assert names == [
        "Services/EchoAction/__init__.py",
        "Services/EchoAction/ServiceEchoAction.py",
        "Services/EchoAction/EchoAction.py",
        "Conf/Context-EchoAction.xml",
    ]
    for change in plan.files:
        check_golden(f"EchoAction/{change.path.name}", change.content)
    assert all(change.change is Change.CREATE for change in plan.files)


def test_golden_state_machine_from_the_tutorial(tmp_path: Path) -> None:
    path = tmp_path / "Conf" / "Services-StateMachine.xml"
    plan = plan_for(parse_metaconf(tutorial_metaconf(), path))
    contents = {str(change.path.relative_to(tmp_path)): change.content for change in plan.files}
    check_golden("StateMachine/Context-StateMachine.xml", contents["Conf/Context-StateMachine.xml"])
    check_golden("StateMachine/Stand.py", contents["Services/Stand/Stand.py"])
    check_golden("StateMachine/ServiceStand.py", contents["Services/Stand/ServiceStand.py"])
    context = load_context_text(contents["Conf/Context-StateMachine.xml"], path)
    assert [task.id for task in context.tasks] == ["ts_100", "ts_101", "ts_102", "ts_103"]
    stand, walk, coffee, run = context.tasks
    assert stand.triggers[TriggerEvent.ON_EXIT].call == "ts_101"
    assert walk.triggers[TriggerEvent.ON_START].call == "ts_102"
    assert coffee.triggers[TriggerEvent.ON_EXIT].call == "ts_103"
    assert [t.starts_with_transaction for t in context.tasks] == [True, False, False, False]
    assert (run.instance, run.service_name, run.device_action) == ("Run", "run", "pass_state4")


@pytest.mark.parametrize("task_type", list(TaskType))
def test_generated_services_load_in_the_task_host(tmp_path: Path, task_type: TaskType) -> None:
    """The host's own loader finds Service<name>, a subclass of the stub, from the files."""
    name = f"Gen{task_type.value}"
    request = echo_request(tmp_path, task_service=name, task_type=task_type.value)
    for change in plan_for(request).files:
        change.path.parent.mkdir(parents=True, exist_ok=True)
        change.path.write_bytes(change.content)
    cls = load_task_class(name, str(tmp_path / "Services"))
    assert cls.__name__ == f"Service{name}" and cls.__mro__[1].__name__ == "EchoShouting"
    expected = SingleTask if task_type is TaskType.SINGLE else Task
    assert issubclass(cls, expected)
    assert cls.single is (task_type is TaskType.SINGLE)


# --------------------------------------------------------------------------- flags


def test_flags_default_like_the_seed(tmp_path: Path) -> None:
    request = request_from_flags(
        Flags(
            service_path=tmp_path / "x" / "..",
            task_service="Echo",
            context_name="Echo",
            service_name="echo",
            task_id="ts_1",
        )
    )
    assert request.service_path == tmp_path
    (spec,) = request.services
    assert (spec.task_file, spec.task_class, spec.task_type) == ("Echo", "Echo", TaskType.LOOPED)
    assert spec.entry_action is TriggerEvent.ON_START
    context = request.context
    assert (context.sub_endpoint, context.pub_endpoint) == (
        "tcp://127.0.0.1:5556",
        "tcp://127.0.0.1:5557",
    )


def test_missing_flags_are_all_named(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError) as exc:
        request_from_flags(Flags(task_service="Echo", task_type="Loop"))
    assert messages(exc) == [
        "--service-path: is required (or give --xml-file)",
        "--context-name: is required (or give --xml-file)",
        "--service-name: is required (or give --xml-file)",
        "--task-id: is required (or give --xml-file)",
        "--task-type: 'Loop' is not Looped or Single (or Simple)",
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"task_service": "../../etc"}, "--task-service: '../../etc' is not a valid task service"),
        ({"task_service": "Echo Action"}, "--task-service: 'Echo Action' is not a valid"),
        ({"task_service": "1Echo"}, "--task-service: '1Echo' is not a valid"),
        ({"task_service": "Écho"}, "--task-service: 'Écho' is not a valid"),
        ({"task_file": "class"}, "--task-file: 'class' is a Python keyword"),
        ({"task_file": "sub/mod"}, "--task-file: 'sub/mod' is not a valid task file"),
        ({"task_file": "__init__"}, "--task-file: '__init__' is taken"),
        ({"task_file": "ServiceEchoAction"}, "--task-file: 'ServiceEchoAction' is taken"),
        ({"task_class": "Task"}, "--task-class: 'Task' is taken"),
        ({"task_class": "ServiceEchoAction"}, "--task-class: 'ServiceEchoAction' is taken"),
        ({"context_name": "../Evil"}, "--context-name: '../Evil' is not a valid context name"),
        ({"context_name": "a/b"}, "--context-name: 'a/b' is not a valid context name"),
        ({"task_id": "ts 100"}, "--task-id: 'ts 100' is not a valid task id"),
        ({"service_name": "echo action"}, "--service-name: 'echo action' is not a valid"),
        ({"task_desc": "bell \x07"}, "--task-desc: contains U+0007, which an XML file cannot"),
        ({"server_ip": "*"}, "--server-ip: '*' is not an IP address or host name"),
        ({"sub_port": 0}, "--sub-port: 0 is not a TCP port (1-65535)"),
        ({"pub_port": 5556}, "--pub-port: sub_port and pub_port must differ"),
        ({"entry_action": "now"}, "--entry-action: 'now' is not one of on_start"),
    ],
)
def test_bad_values_name_their_flag(tmp_path: Path, changes: dict, expected: str) -> None:
    with pytest.raises(ScaffoldError) as exc:
        plan_for(echo_request(tmp_path, **changes))
    assert any(message.startswith(expected) for message in messages(exc)), messages(exc)


def test_ipv6_server_ip_is_bracketed(tmp_path: Path) -> None:
    plan = plan_for(echo_request(tmp_path, server_ip="::1"))
    context = load_context_text(plan.files[-1].content, plan.files[-1].path)
    assert context.endpoints.sub_connect == "tcp://[::1]:5556"


def test_simple_is_the_seed_readmes_word_for_single(tmp_path: Path) -> None:
    (spec,) = echo_request(tmp_path, task_type="Simple").services
    assert spec.task_type is TaskType.SINGLE


# --------------------------------------------------------------------------- MetaServiceConf


def test_the_seeds_own_sample_is_refused_at_its_stray_closing_tag(tmp_path: Path) -> None:
    path = tmp_path / "Services-StateMachine.xml"
    with pytest.raises(ScaffoldError) as exc:
        parse_metaconf(seed_metaconf(), path)
    assert messages(exc) == [
        f"{path}:69:1: XML syntax: closing tag </Service> does not close <MetaServiceConf> "
        "(opened at line 1): a stray </Service>, or a missing <Service>"
    ]


def test_a_stray_closing_tag_is_located_without_the_seed(tmp_path: Path) -> None:
    """The same defect as the seed's sample, for machines without the seed's text."""
    path = tmp_path / "m.xml"
    stray = META.format(extra="").replace("  </Service>\n", "  </Service>\n    </Service>\n")
    with pytest.raises(ScaffoldError) as exc:
        parse_metaconf(stray.encode(), path)
    assert messages(exc) == [
        f"{path}:9:5: XML syntax: closing tag </Service> does not close <MetaServiceConf> "
        "(opened at line 1): a stray </Service>, or a missing <Service>"
    ]


def test_the_seeds_sample_without_stray_tags_is_read_as_written(tmp_path: Path) -> None:
    text = seed_metaconf().decode().replace("</Service>\n</Service>", "</Service>")
    request = parse_metaconf(text.encode(), tmp_path / "Conf" / "m.xml")
    assert request.service_path == Path("/path-to-services-home")
    assert request.context.name == "StateMachineSample"
    assert [s.task_id for s in request.services] == ["ts_100", "ts_101", "ts_102", "ts_103"]
    assert [(s.task_file, s.task_class) for s in request.services][1] == ("Walker", "Walking")
    assert all(s.triggers == () for s in request.services)  # every <state> is empty


META = """<MetaServiceConf>
  <context_name>M</context_name>
  <service_path>.</service_path>
  <Service>
    <task_service>A</task_service>
    <service_name>a</service_name>
    <task_id>ts_1</task_id>{extra}
  </Service>
</MetaServiceConf>
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("\n    <task_idd>x</task_idd>", ":8:1: Element 'task_idd': This element is not expected."),
        (
            "\n    <state><trigger>on_stop</trigger></state>",
            ":8:1: Element 'trigger': [facet 'enumeration'] The value 'on_stop' is not an element",
        ),
        ("\n    <task_id>ts_2</task_id>", ":8:1: <task_id> is given twice in <Service> (first at"),
        (
            "\n    <state><trigger>on_exit</trigger><action>start</action></state>",
            ":8:1: trigger on_exit needs both <action> and <state_id>; <state_id> (the task id",
        ),
        (
            "\n    <state><trigger>on_exit</trigger><action>start</action>"
            "<state_id>ts_9</state_id></state>",
            ":8:1: trigger on_exit of task 'ts_1' calls 'ts_9', which is neither in this file",
        ),
        ("\n    <task_class>Service A</task_class>", ":8:1: 'Service A' is not a valid task class"),
        ("\n    <sub_port>x</sub_port>", ":8:1: Element 'sub_port': This element is not expected"),
    ],
)
def test_bad_metaconf_is_reported_at_its_line(tmp_path: Path, extra: str, expected: str) -> None:
    path = tmp_path / "m.xml"
    with pytest.raises(ScaffoldError) as exc:
        plan_for(parse_metaconf(META.format(extra=extra).encode(), path))
    assert any(m.startswith(f"{path}{expected}") for m in messages(exc)), messages(exc)


def test_metaconf_required_elements(tmp_path: Path) -> None:
    path = tmp_path / "m.xml"
    data = b"<MetaServiceConf>\n<Service><task_service>A</task_service></Service>\n"
    data += b"</MetaServiceConf>"
    with pytest.raises(ScaffoldError) as exc:
        parse_metaconf(data, path)
    assert messages(exc) == [
        f"{path}:1:1: <MetaServiceConf> has no <context_name>; it is required",
        f"{path}:1:1: <MetaServiceConf> has no <service_path>; it is required",
        f"{path}:2:1: <Service> has no <service_name>; it is required",
        f"{path}:2:1: <Service> has no <task_id>; it is required",
    ]


def test_metaconf_refuses_doctype_and_other_roots(tmp_path: Path) -> None:
    path = tmp_path / "m.xml"
    doctype = b'<!DOCTYPE x [<!ENTITY e "boom">]>\n<MetaServiceConf>&e;</MetaServiceConf>'
    with pytest.raises(ScaffoldError, match="DOCTYPE is not allowed"):
        parse_metaconf(doctype, path)
    with pytest.raises(ScaffoldError, match=r"root element is <Context>; expected"):
        parse_metaconf(b"<Context/>", path)


def test_metaconf_service_path_is_relative_to_the_file_and_overridable(tmp_path: Path) -> None:
    path = tmp_path / "Conf" / "m.xml"
    data = META.format(extra="").replace("<service_path>.</", "<service_path>..</").encode()
    assert parse_metaconf(data, path).service_path == tmp_path
    assert parse_metaconf(data, path, tmp_path / "elsewhere").service_path == tmp_path / "elsewhere"


def test_duplicate_task_ids_in_one_metaconf(tmp_path: Path) -> None:
    path = tmp_path / "m.xml"
    second = "</Service><Service><task_service>B</task_service><service_name>b</service_name>"
    data = META.format(extra=f"\n  {second}<task_id>ts_1</task_id>").encode()
    with pytest.raises(ScaffoldError) as exc:
        plan_for(parse_metaconf(data, path))
    assert messages(exc) == [f"{path}:8:1: task id 'ts_1' is given twice (first at {path}:7:1)"]


# --------------------------------------------------------------------------- plans


def written(plan: Plan) -> dict[Path, bytes]:
    return {change.path: change.content for change in plan.files}


def test_the_same_request_twice_changes_nothing(tmp_path: Path) -> None:
    first = written(plan_for(echo_request(tmp_path)))
    again = plan_for(echo_request(tmp_path), first)
    assert {change.change for change in again.files} == {Change.UNCHANGED}
    assert again.writes == ()


def test_an_edited_file_is_kept_unless_forced(tmp_path: Path) -> None:
    files = written(plan_for(echo_request(tmp_path)))
    task_file = tmp_path / "Services" / "EchoAction" / "EchoAction.py"
    files[task_file] = b"# my code\n"
    with pytest.raises(ScaffoldError) as exc:
        plan_for(echo_request(tmp_path), files)
    assert messages(exc) == [
        f"{task_file}: exists and differs from what create-service generates (your edits?); "
        "it is kept: --force overwrites it"
    ]
    forced = plan_for(echo_request(tmp_path), files, force=True)
    assert [change.path for change in forced.writes] == [task_file]


def test_adding_a_service_keeps_the_others_and_the_users_comments(tmp_path: Path) -> None:
    files = written(plan_for(echo_request(tmp_path)))
    context_path = tmp_path / "Conf" / "Context-EchoAction.xml"
    files[context_path] = files[context_path].replace(
        b"<TaskLogName>", b"<!-- my note & more -->\n  <TaskLogName>"
    )
    plan = plan_for(
        echo_request(tmp_path, task_service="Second", task_id="ts_101", task_class="Two"), files
    )
    new_context = written(plan)[context_path]
    assert b"<!-- my note & more -->" in new_context
    context = load_context_text(new_context, context_path)
    assert [(t.id, t.instance) for t in context.tasks] == [
        ("ts_100", "EchoAction"),
        ("ts_101", "Second"),
    ]
    assert new_context.startswith(files[context_path].split(b"</TaskService>")[0])
    check_golden("EchoAction/Context-EchoAction.xml+Second", new_context)


def test_a_taken_task_id_is_refused_with_its_line(tmp_path: Path) -> None:
    files = written(plan_for(echo_request(tmp_path)))
    context_path = tmp_path / "Conf" / "Context-EchoAction.xml"
    with pytest.raises(ScaffoldError) as exc:
        plan_for(echo_request(tmp_path, task_service="Other", task_class="Other"), files)
    assert messages(exc) == [
        f"{context_path}:14:1: task id 'ts_100' already exists, for task service 'EchoAction'; "
        "choose another task id (--task-id), or --force to replace it"
    ]
    with pytest.raises(ScaffoldError, match="for the same service, configured differently"):
        plan_for(echo_request(tmp_path, device_action="whisper"), files)
    forced = written(plan_for(echo_request(tmp_path, device_action="whisper"), files, force=True))
    (task,) = load_context_text(forced[context_path], context_path).tasks
    assert task.device_action == "whisper"


def test_endpoints_given_for_an_existing_context_must_agree(tmp_path: Path) -> None:
    files = written(plan_for(echo_request(tmp_path)))
    second = dict(task_service="Second", task_id="ts_101", task_class="Two")
    with pytest.raises(ScaffoldError) as exc:
        plan_for(echo_request(tmp_path, sub_port=6000, **second), files)
    assert messages(exc) == [
        "--sub-port: the context's endpoint would be tcp://127.0.0.1:6000, but "
        f"{tmp_path}/Conf/Context-EchoAction.xml has tcp://127.0.0.1:5556; "
        "leave server_ip and sub_port out to keep the file's"
    ]
    plan = plan_for(request_from_flags(Flags(service_path=tmp_path, context_name="EchoAction",
        service_name="s", **second)), files)  # fmt: skip
    assert len(load_context_text(plan.files[-1].content, plan.files[-1].path).tasks) == 2


def test_an_invalid_existing_context_is_not_touched(tmp_path: Path) -> None:
    context_path = tmp_path / "Conf" / "Context-EchoAction.xml"
    with pytest.raises(ScaffoldError) as exc:
        plan_for(echo_request(tmp_path), {context_path: b"<Context>\n<Nope/>\n</Context>\n"})
    assert messages(exc)[-1] == f"{context_path}: the existing context is invalid; fix it first"
    assert any(m.startswith(f"{context_path}:2:1: ") for m in messages(exc))


def test_one_service_per_directory(tmp_path: Path) -> None:
    path = tmp_path / "m.xml"
    other = "</Service><Service><task_service>A</task_service><service_name>b</service_name>"
    data = META.format(extra=f"<task_desc>x</task_desc>\n  {other}<task_id>ts_2</task_id>")
    with pytest.raises(ScaffoldError, match="would be generated twice with different content"):
        plan_for(parse_metaconf(data.encode(), path))


def test_service_files_depend_on_the_service_only(tmp_path: Path) -> None:
    one = echo_request(tmp_path).services[0]
    two = echo_request(tmp_path, task_id="ts_9", service_name="other", context_name="X")
    assert service_files(echo_request(tmp_path), one) == service_files(two, two.services[0])


def test_triggers_round_trip_into_the_context(tmp_path: Path) -> None:
    request = parse_metaconf(tutorial_metaconf(), tmp_path / "Conf" / "m.xml")
    stand = request.services[0]
    assert [(t.event, t.action, t.call) for t in stand.triggers] == [
        (TriggerEvent.ON_EXIT, TaskAction.START, "ts_101")
    ]
    assert stand.task_type is TaskType.SINGLE


def test_generated_python_is_valid_and_documented(tmp_path: Path) -> None:
    for task_type in TaskType:
        spec = echo_request(tmp_path, task_type=task_type.value).services[0]
        for path, content in service_files(echo_request(tmp_path), spec).items():
            tree = ast.parse(content, str(path))
            assert ast.get_docstring(tree), path
