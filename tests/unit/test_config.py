"""Tests of the context loader (zsvc.config): samples, typing, every error kind, fuzzing.

Most documents are built from TEMPLATE, whose placeholders each sit on one
line, so the line numbers asserted below stay fixed whatever is put in.
"""

from __future__ import annotations

import keyword
import math
import string
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsvc.builtin import BUILTIN_LOCATION
from zsvc.config import BusEndpoints, Context, TaskSpec, Trigger, load_context, load_context_text
from zsvc.config.model import RestartPolicy
from zsvc.errors import ConfigError
from zsvc.hostwire import MAX_CONFIGURATION_BYTES, SPEC_ENV, HostSpec, configuration_size
from zsvc.states import RestartMode, ServiceType, StartType, TaskAction, TriggerEvent

CONF = Path(__file__).resolve().parents[2] / "Conf"
ECHO = CONF / "Context-EchoAction.xml"
STATE_MACHINE = CONF / "Context-StateMachine.xml"

# Line numbers:     1, 2: {top}, 4: TaskService, 6: {task}, 8: {header},
#                   10: {config}, 13: {state}, 16: {more}
TEMPLATE = """\
<Context>
  {top}
  <ContextID>c1</ContextID>
  <TaskService {attrs}>
    <Task>
      {task}
      <message>
        <header><service_name>echo</service_name>{header}</header>
        <content><configuration>
          {config}
        </configuration></content>
      </message>
      {state}
    </Task>
  </TaskService>
  {more}
</Context>
"""
ALLOWED_IN_TASK = "<description>, <command>, <exec>, <message>, <state>"
ALLOWED_IN_CONTEXT = (
    "<FrontEndEndpoint>, <BackendEndpoint>, <FrontBind>, <BackendBind>, "
    "<ContextID>, <TaskLogName>, <TaskService>"
)
TASK_ATTRS = (
    "'id', 'instance', 'serviceType', 'topic', 'start_timeout', 'stop_timeout', "
    "'restart', 'restart_sec', 'restart_max_sec', 'restart_stable_sec', "
    "'start_limit_burst', 'start_limit_interval_sec', 'after', 'watchdog_sec', "
    "'start_secs', 'kill_signal', 'final_kill_signal'"
)


def ctx(**parts: str) -> str:
    """TEMPLATE with the given one-line parts (the rest empty, attrs a valid default)."""
    fields = {"top": "", "attrs": 'id="ts_1" instance="Echo"', "task": "", "header": ""}
    fields |= {"config": "", "state": "", "more": ""}
    return TEMPLATE.format(**(fields | parts))


def load(text: str | bytes, path: str | Path = "ctx.xml") -> Context:
    return load_context_text(text, path)


def task_of(**parts: str) -> TaskSpec:
    return load(ctx(**parts)).tasks[0]


def config_of(xml: str) -> dict[str, Any]:
    return dict(task_of(config=xml).configuration)


def errors(text: str | bytes, path: str = "ctx.xml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_context_text(text, path)
    return [str(issue) for issue in info.value.issues]


def other_task(task_id: str, extra: str = "") -> str:
    """A complete one-line <TaskService> for {more}."""
    return (
        f'<TaskService id="{task_id}" instance="Other"><Task>{extra}<message><header>'
        f"<service_name>other</service_name></header></message></Task></TaskService>"
    )


# --------------------------------------------------------------------------- samples


def test_echo_sample_loads_with_the_seed_values() -> None:
    context = load_context(ECHO)
    assert context.path == ECHO
    assert context.context_id == "context001"
    assert context.log_name == "EchoAction"
    assert context.endpoints == BusEndpoints(
        sub_connect="tcp://127.0.0.1:5556",
        pub_connect="tcp://127.0.0.1:5557",
        sub_bind="tcp://*:5556",
        pub_bind="tcp://*:5557",
    )
    (task,) = context.tasks
    assert task.id == "ts_100"
    assert task.instance == "EchoAction"
    assert task.service_name == "echo_action"
    assert task.service_type is ServiceType.PROCESS
    assert task.topic == "process"
    assert task.description == "An echo action is for shouting the time after counting 10s"
    assert task.device_action == "shout"
    assert task.entry is TriggerEvent.ON_START and task.starts_with_transaction
    assert task.triggers == {}
    assert task.configuration == {"period_s": 1.0, "shout": True}
    assert type(task.configuration["period_s"]) is float
    assert task.configuration["shout"] is True
    assert task.location == (CONF / ".." / "Services").resolve()
    assert task.command is None and not task.is_command
    assert (task.start_timeout, task.stop_timeout) == (30.0, 10.0)
    assert (task.restart, task.after, task.watchdog_sec) == (RestartPolicy(), (), None)
    assert task.line == 26


def test_state_machine_sample_chains_four_tasks() -> None:
    context = load_context(STATE_MACHINE)
    assert (context.context_id, context.log_name) == ("context002", "StateMachineSample")
    assert context.task_ids == ("ts_100", "ts_101", "ts_102", "ts_103")
    summary = [
        (t.instance, t.service_name, t.device_action, t.entry, dict(t.configuration))
        for t in context.tasks
    ]
    assert summary == [
        ("Stand", "stand", "pass_state1", TriggerEvent.ON_START, {"duration_s": 0.2}),
        ("Walk", "walk", "pass_state2", TriggerEvent.ON_UPDATE, {"period_s": 3.0}),
        ("DrinkCoffee", "drink_coffee", "pass_state3", TriggerEvent.ON_UPDATE, {"duration_s": 0.2}),
        ("Run", "run", "pass_state4", TriggerEvent.ON_UPDATE, {"period_s": 0.5}),
    ]
    start = TaskAction.START
    assert [dict(t.triggers) for t in context.tasks] == [
        {TriggerEvent.ON_EXIT: Trigger(start, "ts_101")},
        {TriggerEvent.ON_UPDATE: Trigger(start, "ts_102")},
        {TriggerEvent.ON_EXIT: Trigger(start, "ts_103")},
        {},
    ]
    assert context.task("ts_102").description == "Stop and take a coffee"
    assert len({t.service_name for t in context.tasks}) == 4
    assert [t.restart.mode for t in context.tasks] == [
        RestartMode.NO,
        RestartMode.ON_FAILURE,
        RestartMode.NO,
        RestartMode.NO,
    ]
    assert all(t.restart == RestartPolicy(mode=t.restart.mode) for t in context.tasks)
    assert all(t.after == () and t.watchdog_sec is None for t in context.tasks)


def test_samples_load_from_stored_text_too() -> None:
    assert load_context_text(ECHO.read_bytes(), ECHO) == load_context(ECHO)
    text = STATE_MACHINE.read_text(encoding="utf-8")
    assert load_context_text(text, STATE_MACHINE) == load_context(STATE_MACHINE)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("count", [1, 3])
def test_tasks_are_always_a_tuple(count: int) -> None:
    more = " ".join(other_task(f"ts_{n}") for n in range(2, count + 1))
    context = load(ctx(more=more))
    assert isinstance(context.tasks, tuple)
    assert context.task_ids == tuple(f"ts_{n}" for n in range(1, count + 1))


def test_children_may_come_in_any_order() -> None:
    text = """\
<Context>
  <TaskService instance="Echo" id="ts_1">
    <Task>
      <state type="on_update"><on_fail><call>ts_1</call><action>restart</action></on_fail></state>
      <message>
        <content><configuration><a>1</a></configuration></content>
        <header><service_name>echo</service_name><action>start</action></header>
      </message>
      <description> late </description>
    </Task>
  </TaskService>
  <TaskLogName>log</TaskLogName>
  <ContextID>c1</ContextID>
</Context>"""
    context = load(text)
    task = context.tasks[0]
    assert (context.log_name, task.description, dict(task.configuration)) == (
        "log",
        "late",
        {"a": 1},
    )
    assert task.entry is TriggerEvent.ON_UPDATE
    assert task.triggers == {TriggerEvent.ON_FAIL: Trigger(TaskAction.RESTART, "ts_1")}


def test_defaults() -> None:
    text = """\
<Context><ContextID>c9</ContextID>
<TaskService id="t" instance="T"><Task><message><header><service_name>s</service_name>
</header></message></Task></TaskService></Context>"""
    context = load(text, "/srv/app/Conf/c.xml")
    task = context.tasks[0]
    assert context.log_name == "c9"
    assert context.endpoints == BusEndpoints()
    assert (task.service_type, task.topic, task.description, task.device_action) == (
        ServiceType.PROCESS,
        "process",
        "",
        "",
    )
    assert (task.entry, dict(task.triggers), dict(task.configuration)) == (
        TriggerEvent.ON_START,
        {},
        {},
    )
    assert task.location == Path("/srv/app/Services").resolve()
    assert (task.command, task.start_type) == (None, StartType.NOTIFY)  # its host notifies


def test_task_attributes() -> None:
    attrs = 'id="ts_1" instance="Echo" serviceType="Thread" topic="jobs" start_timeout="2.5" '
    task = task_of(attrs=attrs + 'stop_timeout="1"')
    assert (task.service_type, task.topic) == (ServiceType.THREAD, "jobs")
    assert (task.start_timeout, task.stop_timeout) == (2.5, 1.0)


@pytest.mark.parametrize(
    ("state", "entry"),
    [
        ("", TriggerEvent.ON_START),
        ("<state/>", TriggerEvent.ON_START),
        ('<state type="start_now"/>', TriggerEvent.ON_START),
        ('<state type="on_update"/>', TriggerEvent.ON_UPDATE),
        ('<state type="on_fail"/>', TriggerEvent.ON_FAIL),
        ('<state type="on_exit"/>', TriggerEvent.ON_EXIT),
    ],
)
def test_entry_trigger(state: str, entry: TriggerEvent) -> None:
    assert task_of(state=state).entry is entry


def test_triggers_empty_ones_are_dropped() -> None:
    state = (
        "<state><on_start><action/><call/></on_start><on_update><action> </action></on_update>"
        "<on_fail><action>stop</action><call>ts_2</call></on_fail>"
        "<on_exit><action>restart</action><call>ts_1</call></on_exit></state>"
    )
    task = task_of(state=state, more=other_task("ts_2"))
    assert task.triggers == {
        TriggerEvent.ON_FAIL: Trigger(TaskAction.STOP, "ts_2"),
        TriggerEvent.ON_EXIT: Trigger(TaskAction.RESTART, "ts_1"),
    }


def test_command_task() -> None:
    command = '<command notify="yes">/usr/bin/env python3 -u "my job.py" --flag</command>'
    task = task_of(attrs='id="job-1"', task=command)
    assert task.command == ("/usr/bin/env", "python3", "-u", "my job.py", "--flag")
    assert task.is_command and task.notify is True
    assert task.instance == "job-1"


@pytest.mark.parametrize(("word", "value"), [("true", True), ("0", False), ("No", False)])
def test_command_notify_words(word: str, value: bool) -> None:
    assert task_of(task=f'<command notify="{word}">run</command>').notify is value


def test_command_task_may_name_its_instance_freely() -> None:
    assert task_of(attrs='id="j" instance="my-job"', task="<command>run</command>").instance == (
        "my-job"
    )


def test_location_relative_absolute_and_default(tmp_path: Path) -> None:
    path = tmp_path / "Conf" / "c.xml"
    relative = load(ctx(config="<location>svc/x</location>"), path).tasks[0]
    absolute = load(ctx(config="<location>/opt/svc</location>"), path).tasks[0]
    default = load(ctx(), path).tasks[0]
    assert relative.location == (tmp_path / "Conf" / "svc" / "x").resolve()
    assert absolute.location == Path("/opt/svc").resolve()
    assert default.location == (tmp_path / "Services").resolve()
    assert "location" not in relative.configuration


MONITOR = 'id="ts000" instance="Monitor"'
MONITOR_SERVICE = "<service><endpoint>tcp://127.0.0.1:5999</endpoint>{}</service>"


def test_a_builtin_instance_is_zsvcs_own_task(tmp_path: Path) -> None:
    """instance="Monitor" names zsvc's built-in Monitor (zsvc.builtin), not a user package."""
    task = load(ctx(attrs=MONITOR, config=MONITOR_SERVICE.format("")), tmp_path / "Conf" / "c.xml")
    assert task.tasks[0].location == BUILTIN_LOCATION


def test_a_package_of_that_name_in_the_task_location_wins(tmp_path: Path) -> None:
    """The user's own Monitor is theirs: neither replaced nor held to the built-in's settings."""
    own = tmp_path / "Services" / "Monitor"
    own.mkdir(parents=True)
    (own / "ServiceMonitor.py").write_text("")
    task = load(ctx(attrs=MONITOR), tmp_path / "Conf" / "c.xml").tasks[0]
    assert task.location == (tmp_path / "Services").resolve()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "",
            "ctx.xml:9:1: task 'ts000': Monitor configuration.service: a Monitor needs"
            " <service> with <endpoint>, <frequency_s> and <type>",
        ),
        (
            MONITOR_SERVICE.format("<frequency_s>0</frequency_s>"),
            "ctx.xml:10:1: task 'ts000': Monitor configuration.service.frequency_s:"
            " 0 is out of range; expected 0.1 to 86400 s",
        ),
    ],
)
def test_a_builtin_tasks_configuration_is_checked_at_its_line(config: str, expected: str) -> None:
    assert errors(ctx(attrs=MONITOR, config=config)) == [expected]


def test_device_action_is_lifted_and_stays_text() -> None:
    task = task_of(config="<device_action>007</device_action><x>1</x>")
    assert (task.device_action, dict(task.configuration)) == ("007", {"x": 1})


# --------------------------------------------------------------------------- endpoints


def endpoints_of(top: str) -> BusEndpoints:
    return load(ctx(top=top)).endpoints


def test_endpoints_all_given() -> None:
    top = (
        "<FrontEndEndpoint>tcp://10.0.0.1:7001</FrontEndEndpoint>"
        "<BackendEndpoint>tcp://10.0.0.1:7002</BackendEndpoint>"
        "<FrontBind>tcp://*:7002</FrontBind><BackendBind>tcp://*:7001</BackendBind>"
    )
    assert endpoints_of(top) == BusEndpoints(
        sub_connect="tcp://10.0.0.1:7001",
        pub_connect="tcp://10.0.0.1:7002",
        sub_bind="tcp://*:7001",
        pub_bind="tcp://*:7002",
    )


def test_missing_binds_follow_the_connect_endpoints() -> None:
    top = (
        "<FrontEndEndpoint>ipc:///run/z/sub</FrontEndEndpoint>"
        "<BackendEndpoint>tcp://[::1]:7002</BackendEndpoint>"
    )
    assert endpoints_of(top) == BusEndpoints(
        sub_connect="ipc:///run/z/sub",
        pub_connect="tcp://[::1]:7002",
        sub_bind="ipc:///run/z/sub",
        pub_bind="tcp://[::1]:7002",
    )


def test_missing_connects_follow_the_binds_with_a_local_host() -> None:
    top = "<FrontBind>tcp://*:7002</FrontBind><BackendBind>tcp://0.0.0.0:7001</BackendBind>"
    assert endpoints_of(top) == BusEndpoints(
        sub_connect="tcp://127.0.0.1:7001",
        pub_connect="tcp://127.0.0.1:7002",
        sub_bind="tcp://0.0.0.0:7001",
        pub_bind="tcp://*:7002",
    )


def test_one_side_given_other_side_defaults() -> None:
    endpoints = endpoints_of("<BackendEndpoint>tcp://127.0.0.1:9000</BackendEndpoint>")
    assert endpoints == BusEndpoints(
        sub_connect="tcp://127.0.0.1:5556",
        pub_connect="tcp://127.0.0.1:9000",
        sub_bind="tcp://127.0.0.1:5556",
        pub_bind="tcp://127.0.0.1:9000",
    )


def test_a_context_without_endpoints_has_none_and_binds_nothing() -> None:
    endpoints = load(ctx()).endpoints
    assert endpoints == BusEndpoints(None, None, None, None)
    assert endpoints.bind_pair is None


def test_a_context_with_one_side_binds_both_sides() -> None:
    endpoints = load(ctx(top="<FrontBind>tcp://*:7002</FrontBind>")).endpoints
    assert endpoints.bind_pair == ("tcp://*:7002", "tcp://127.0.0.1:5556")


def test_only_invalid_endpoints_are_issues_not_defaults() -> None:
    assert errors(ctx(top="<FrontBind>udp://x</FrontBind>")) == [
        f"{E}:2:1: <FrontBind> 'udp://x' is not a valid bind endpoint: "
        "expected tcp://HOST:PORT or ipc://PATH"
    ]


# --------------------------------------------------------------------------- typing


@pytest.mark.parametrize(
    ("xml", "value"),
    [
        ("<v>0</v>", 0),
        ("<v>-12</v>", -12),
        ("<v>+7</v>", 7),
        ("<v>007</v>", 7),
        ("<v>1.5</v>", 1.5),
        ("<v>.5</v>", 0.5),
        ("<v>1e3</v>", 1000.0),
        ("<v>-2.5E-1</v>", -0.25),
        ("<v>true</v>", True),
        ("<v>false</v>", False),
        ("<v>Yes</v>", True),
        ("<v>no</v>", False),
        ("<v>ON</v>", True),
        ("<v>off</v>", False),
        ("<v/>", ""),
        ("<v>   </v>", ""),
        ("<v>  hello world </v>", "hello world"),
        ("<v>nan</v>", "nan"),
        ("<v>inf</v>", "inf"),
        ("<v>1.2.3</v>", "1.2.3"),
        ("<v>0x10</v>", "0x10"),
        ('<v type="str">007</v>', "007"),
        ('<v type="str">true</v>', "true"),
        ('<v type="str"/>', ""),
        ('<v type="int"> 42 </v>', 42),
        ('<v type="float">3</v>', 3.0),
        ('<v type="bool">1</v>', True),
        ('<v type="bool">0</v>', False),
        ('<v type="bool">off</v>', False),
    ],
)
def test_scalar_typing(xml: str, value: Any) -> None:
    got = config_of(xml)["v"]
    assert got == value
    assert type(got) is type(value)


def test_zero_is_falsy_unlike_the_original() -> None:
    options = config_of("<opts><opened_files>0</opened_files><maps>1</maps></opts>")["opts"]
    assert not options["opened_files"] and options["maps"]


def test_nested_dicts_and_lists() -> None:
    xml = (
        "<service><endpoint>tcp://127.0.0.1:6558</endpoint><frequency_s>30.0</frequency_s>"
        "</service><hosts>a</hosts><hosts>b</hosts><one list='true'>x</one>"
        "<items><item><n>1</n></item><item><n>2</n></item></items>"
        '<single list="1"><n>1</n></single>'
    )
    assert config_of(xml) == {
        "service": {"endpoint": "tcp://127.0.0.1:6558", "frequency_s": 30.0},
        "hosts": ["a", "b"],
        "one": ["x"],
        "items": {"item": [{"n": 1}, {"n": 2}]},
        "single": [{"n": 1}],
    }


def test_one_occurrence_stays_scalar() -> None:
    assert config_of("<hosts>a</hosts>") == {"hosts": "a"}


# --------------------------------------------------------------------------- errors, one kind each

E = "ctx.xml"


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (
            {"attrs": 'id="ts_1" instance="Echo" stop_timeout="-3"'},
            f"{E}:4:1: element <TaskService> attribute 'stop_timeout': '-3' "
            "is not a positive number of seconds",
        ),
        (
            {"attrs": 'id="ts_1" instance="Echo" start_timeout="nan"'},
            f"{E}:4:1: element <TaskService> attribute 'start_timeout': 'nan' "
            "is not a positive number of seconds",
        ),
        (
            {"attrs": 'id="ts_1" instance="Echo" start_timeout="0"'},
            f"{E}:4:1: element <TaskService> attribute 'start_timeout': '0' "
            "is not a positive number of seconds",
        ),
        (
            {"attrs": 'id="ts_1" instance="Echo" stop_timeout="1e999"'},
            f"{E}:4:1: element <TaskService> attribute 'stop_timeout': '1e999' "
            "is not a positive number of seconds",
        ),
        (
            {"attrs": 'instance="Echo"'},
            f"{E}:4:1: element <TaskService> requires attribute 'id'",
        ),
        (
            {"attrs": 'id="ts 1" instance="Echo"'},
            f"{E}:4:1: element <TaskService> attribute 'id': 'ts 1' is not a valid task id; "
            "expected 1-64 characters of A-Z a-z 0-9 _ -",
        ),
        (
            {"attrs": 'id="ts_1"'},
            f"{E}:4:1: element <TaskService> requires attribute 'instance' "
            "(or a <command> in <Task>)",
        ),
        (
            {"attrs": 'id="ts_1" instance="echo-action"'},
            f"{E}:4:1: element <TaskService> attribute 'instance': 'echo-action' "
            "is not a valid Python identifier",
        ),
        (
            {"attrs": 'id="ts_1" instance="Echo" serviceType="Fork"'},
            f"{E}:4:1: element <TaskService> attribute 'serviceType': 'Fork' "
            "is not a service type; expected 'Process' or 'Thread'",
        ),
        (
            {"attrs": 'id="ts_1" instance="Echo" topic="a b"'},
            f"{E}:4:1: element <TaskService> attribute 'topic': 'a b' "
            "is not a topic; expected a word without whitespace",
        ),
        (
            {"attrs": 'id="ts_1" instance="Echo" colour="red"'},
            f"{E}:4:1: element <TaskService>: unknown attribute 'colour'; "
            f"expected one of {TASK_ATTRS}",
        ),
        (
            {"task": "<bogus/>"},
            f"{E}:6:1: element <bogus> is not allowed in <Task>; expected one of {ALLOWED_IN_TASK}",
        ),
        (
            {"top": "<Bogus>x</Bogus>"},
            f"{E}:2:1: element <Bogus> is not allowed in <Context>; "
            f"expected one of {ALLOWED_IN_CONTEXT}",
        ),
        (
            {"header": "<service_id>x</service_id>"},
            f"{E}:8:1: element <service_id> is not allowed in <header>; "
            "expected one of <action>, <service_name>",
        ),
        (
            {"task": "stray text"},
            f"{E}:5:1: element <Task> must contain only child elements, not text",
        ),
        (
            {"top": "<TaskLogName>x<b/></TaskLogName>"},
            f"{E}:2:1: element <TaskLogName> must contain only text, not child elements",
        ),
        (
            {"top": "<ContextID>c2</ContextID>"},
            f"{E}:3:1: <ContextID> given twice in <Context> (first at line 2); "
            "expected at most one",
        ),
        (
            {"task": "<description>a</description><description>b</description>"},
            f"{E}:6:1: <description> given twice in <Task> (first at line 6); expected at most one",
        ),
        (
            {"top": "<TaskLogName/>"},
            f"{E}:2:1: <TaskLogName> is empty; leave it out to use the default",
        ),
        (
            {"header": "<action>stop</action>"},
            f"{E}:8:1: task 'ts_1': <header><action> 'stop' must be 'start' (or left out)",
        ),
        (
            {
                "state": "<state><on_exit><action>start</action>"
                "<call>ts_999</call></on_exit></state>"
            },
            f"{E}:13:1: task 'ts_1': trigger on_exit calls unknown task 'ts_999'",
        ),
        (
            {"state": "<state><on_fail><action>kill</action><call>ts_1</call></on_fail></state>"},
            f"{E}:13:1: task 'ts_1': trigger on_fail action 'kill' is not one of "
            "start, stop, restart",
        ),
        (
            {"state": "<state><on_update><action>start</action><call/></on_update></state>"},
            f"{E}:13:1: task 'ts_1': trigger on_update has action 'start' but no <call> task id",
        ),
        (
            {"state": "<state><on_start><call>ts_1</call></on_start></state>"},
            f"{E}:13:1: task 'ts_1': trigger on_start calls 'ts_1' but has no <action>",
        ),
        (
            {"state": '<state type="sometimes"/>'},
            f"{E}:13:1: task 'ts_1': <state> attribute 'type': 'sometimes' is not a trigger; "
            "expected one of on_start, on_update, on_fail, on_exit, start_now",
        ),
        (
            {"state": "<state><on_exit/><on_exit/></state>"},
            f"{E}:13:1: <on_exit> given twice in <state> (first at line 13); expected at most one",
        ),
        (
            {"more": other_task("ts_1")},
            f"{E}:16:1: duplicate task id 'ts_1' (first defined at line 4)",
        ),
        (
            {"task": "<command>prog 'unbalanced</command>"},
            f"{E}:6:1: task 'ts_1': <command> cannot be split into arguments: No closing quotation",
        ),
        (
            {"task": "<command>   </command>"},
            f"{E}:6:1: task 'ts_1': <command> is empty; expected a program and its arguments",
        ),
        (
            {"task": '<command notify="maybe">run</command>'},
            f"{E}:6:1: task 'ts_1': <command> attribute 'notify': 'maybe' is not a boolean; "
            "expected true/false/1/0/yes/no",
        ),
        (
            {"attrs": 'id="ts_1" serviceType="Thread"', "task": "<command>run</command>"},
            f"{E}:4:1: task 'ts_1': a <command> runs as a process; serviceType must be 'Process'",
        ),
        (
            {"top": "<FrontEndEndpoint>tcp://*:5556</FrontEndEndpoint>"},
            f"{E}:2:1: <FrontEndEndpoint> 'tcp://*:5556' is not a valid connect endpoint: "
            "host '*' is only allowed in binds (FrontBind, BackendBind)",
        ),
        (
            {"top": "<FrontBind>udp://host:1</FrontBind>"},
            f"{E}:2:1: <FrontBind> 'udp://host:1' is not a valid bind endpoint: "
            "expected tcp://HOST:PORT or ipc://PATH",
        ),
        (
            {"top": "<BackendBind>tcp://*:0</BackendBind>"},
            f"{E}:2:1: <BackendBind> 'tcp://*:0' is not a valid bind endpoint: "
            "the port must be 1-65535",
        ),
        (
            {"top": "<FrontEndEndpoint>tcp://127.0.0.1:5557</FrontEndEndpoint>"},
            f"{E}:2:1: sub and pub endpoints must differ: both connect to 'tcp://127.0.0.1:5557'",
        ),
        (
            {"top": "<FrontBind>tcp://*:6000</FrontBind><BackendBind>tcp://*:6000</BackendBind>"},
            f"{E}:2:1: sub and pub endpoints must differ: both bind to 'tcp://*:6000'",
        ),
    ],
)
def test_each_error_kind(parts: dict[str, str], expected: str) -> None:
    assert errors(ctx(**parts)) == [expected]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('<x unit="s">30</x>', "configuration.x: unknown attribute 'unit'; only 'type' and 'list'"),
        ("<z>text<a>1</a></z>", "configuration.z mixes text and elements; expected one or the"),
        ("<_x>1</_x>", "configuration._x: '_x' is not a valid key; expected a Python identifier"),
        ("<class>1</class>", "configuration.class: 'class' is not a valid key"),
        ('<y type="int">abc</y>', "configuration.y: 'abc' is not an integer (type=\"int\")"),
        ('<y type="int">1.5</y>', "configuration.y: '1.5' is not an integer"),
        ('<y type="float">inf</y>', "configuration.y: 'inf' is not a finite number"),
        ("<y>1e999</y>", "configuration.y: '1e999' is not a finite number"),
        ('<y type="bool">maybe</y>', "configuration.y: 'maybe' is not a boolean (type=\"bool\")"),
        ('<y type="complex">1</y>', "configuration.y: type='complex' is not one of str, int,"),
        ('<y type="str"><z>1</z></y>', "configuration.y: type='str' applies to text values only"),
        ('<y list="maybe">1</y>', "configuration.y: list='maybe' is not a boolean"),
        ('<y list="false">1</y><y>2</y>', "configuration.y: list='false' but the key is repeated"),
        ("<a><b><_c>1</_c></b></a>", "configuration.a.b._c: '_c' is not a valid key"),
        ("<location/>", "configuration 'location' is empty; leave it out for the default"),
        (
            "<device_action>a</device_action><device_action>b</device_action>",
            "configuration 'device_action' must be given once, as plain text",
        ),
    ],
)
def test_configuration_errors(config: str, message: str) -> None:
    (issue,) = errors(ctx(config=config))
    assert issue.startswith(f"{E}:10:1: task 'ts_1': {message}")


def test_configuration_text_at_the_top_is_an_error() -> None:
    assert errors(ctx(config="just text")) == [
        f"{E}:9:1: task 'ts_1': configuration mixes text and elements; expected one or the other"
    ]


def test_missing_required_elements() -> None:
    text = """\
<Context>
  <TaskLogName>log</TaskLogName>
</Context>"""
    assert errors(text) == [
        f"{E}:1:1: <Context> requires a <ContextID> element",
        f"{E}:1:1: <Context> requires at least one <TaskService> element",
    ]
    text = """\
<Context>
  <ContextID>c</ContextID>
  <TaskService id="a" instance="A"/>
  <TaskService id="b" instance="B"><Task/></TaskService>
  <TaskService id="c" instance="C"><Task><message/></Task></TaskService>
  <TaskService id="d" instance="D"><Task><message><header/></message></Task></TaskService>
  <TaskService id="e" instance="E"><Task><message><header>
    <service_name> </service_name></header></message></Task></TaskService>
</Context>"""
    assert errors(text) == [
        f"{E}:3:1: task 'a': <TaskService> requires a <Task> element",
        f"{E}:4:1: task 'b': <Task> requires a <message> element",
        f"{E}:5:1: task 'c': <message> requires a <header> element",
        f"{E}:6:1: task 'd': <header> requires a <service_name> element",
        f"{E}:8:1: task 'e': <service_name> '' must be a non-empty word without spaces",
    ]


def test_root_must_be_context() -> None:
    assert errors("<MetaServiceConf/>") == [
        f"{E}:1:1: root element is <MetaServiceConf>; expected <Context> (no namespace)"
    ]
    assert errors('<Context xmlns="urn:x"/>') == [
        f"{E}:1:1: root element is <{{urn:x}}Context>; expected <Context> (no namespace)"
    ]


def test_syntax_errors_carry_line_and_column() -> None:
    (issue,) = errors("<Context>\n  <ContextID>c</Wrong>\n</Context>")
    assert issue.startswith(f"{E}:2:23: XML syntax: Opening and ending tag mismatch")
    (issue,) = errors(b"")
    assert issue.startswith(f"{E}:1:1: XML syntax: ")
    (issue,) = errors("<Context>\ud800</Context>")
    assert issue == f"{E}:1:10: text is not valid Unicode (lone surrogate); expected UTF-8 text"


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.xml"
    with pytest.raises(ConfigError) as info:
        load_context(missing)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.column) == (str(missing), 0, 0)
    assert "No such file or directory" in issue.message
    with pytest.raises(ConfigError) as info:
        load_context(str(tmp_path))
    assert "Is a directory" in info.value.issues[0].message


def test_load_context_reports_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(ctx(attrs='id="ts_1" instance="Echo" stop_timeout="-3"'), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_context(str(path))
    assert str(info.value).startswith(f"{path}:4:1: element <TaskService>")
    assert info.value.to_wire()["details"][0]["line"] == 4


# --------------------------------------------------------------------------- restart/after/watchdog

ATTRS = 'id="ts_1" instance="Echo"'
NOTIFYING = '<command notify="true">run</command>'


def policy_of(extra: str) -> RestartPolicy:
    return task_of(attrs=f"{ATTRS} {extra}").restart


def chain(*afters: str) -> str:
    """A context whose task ts_N, on line N + 2, has after="afters[N - 1]" (none when "")."""
    lines = ["<Context>", "<ContextID>c</ContextID>"]
    for number, after in enumerate(afters, 1):
        attr = f' after="{after}"' if after else ""
        lines.append(
            f'<TaskService id="ts_{number}" instance="T"{attr}><Task><message><header>'
            f"<service_name>s{number}</service_name></header></message></Task></TaskService>"
        )
    return "\n".join([*lines, "</Context>"])


def test_new_attributes_default_to_the_model() -> None:
    task = task_of()
    assert task.restart == RestartPolicy()
    assert task.restart == RestartPolicy(RestartMode.NO, 0.1, 30.0, 0.1, 10.0, 5, 10.0)
    assert (task.after, task.watchdog_sec) == ((), None)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('restart="no"', RestartPolicy(mode=RestartMode.NO)),
        ('restart="on-failure"', RestartPolicy(mode=RestartMode.ON_FAILURE)),
        ('restart="always"', RestartPolicy(mode=RestartMode.ALWAYS)),
        ('restart_sec="0"', RestartPolicy(delay_min=0.0)),
        ('restart_sec="2.5"', RestartPolicy(delay_min=2.5)),
        ('restart_sec=" 1e1 "', RestartPolicy(delay_min=10.0)),
        ('restart_sec="45"', RestartPolicy(delay_min=45.0, delay_max=45.0)),
        ('restart_max_sec="60"', RestartPolicy(delay_max=60.0)),
        ('restart_max_sec="0.1"', RestartPolicy(delay_max=0.1)),
        ('restart_sec="0" restart_max_sec="0"', RestartPolicy(delay_min=0.0, delay_max=0.0)),
        ('restart_sec="5" restart_max_sec="5"', RestartPolicy(delay_min=5.0, delay_max=5.0)),
        ('restart_sec="1" restart_max_sec="300"', RestartPolicy(delay_min=1.0, delay_max=300.0)),
        ('restart_stable_sec="30"', RestartPolicy(stable_sec=30.0)),
        ('restart_stable_sec=".5"', RestartPolicy(stable_sec=0.5)),
        ('start_limit_burst="1"', RestartPolicy(limit_burst=1)),
        ('start_limit_burst=" +12 "', RestartPolicy(limit_burst=12)),
        ('start_limit_interval_sec="60"', RestartPolicy(limit_interval=60.0)),
        ('start_limit_interval_sec="0.25"', RestartPolicy(limit_interval=0.25)),
    ],
)
def test_restart_attributes_map_to_the_policy(extra: str, expected: RestartPolicy) -> None:
    policy = policy_of(extra)
    assert policy == expected
    assert type(policy.limit_burst) is int and type(policy.delay_min) is float


def test_restart_sec_minus_zero_is_zero() -> None:
    assert math.copysign(1.0, policy_of('restart_sec="-0"').delay_min) == 1.0


def test_all_restart_attributes_together() -> None:
    extra = (
        'restart="always" restart_sec="0.5" restart_max_sec="20" restart_stable_sec="15" '
        'start_limit_burst="3" start_limit_interval_sec="30"'
    )
    assert policy_of(extra) == RestartPolicy(RestartMode.ALWAYS, 0.5, 20.0, 0.1, 15.0, 3, 30.0)


@pytest.mark.parametrize(
    ("extra", "task", "seconds"),
    [
        ('watchdog_sec="5"', "", 5.0),
        ('watchdog_sec="0.5"', "", 0.5),
        ('watchdog_sec=" 2e1 "', NOTIFYING, 20.0),
        ('watchdog_sec="3"', '<command notify="yes">run</command>', 3.0),
    ],
)
def test_watchdog_sec(extra: str, task: str, seconds: float) -> None:
    assert task_of(attrs=f"{ATTRS} {extra}", task=task).watchdog_sec == seconds


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("ts_2", ("ts_2",)),
        ("ts_3 ts_2", ("ts_3", "ts_2")),
        ("  ts_2\t\n ts_3  ", ("ts_2", "ts_3")),
    ],
)
def test_after_lists_other_tasks_in_order(after: str, expected: tuple[str, ...]) -> None:
    more = other_task("ts_2") + other_task("ts_3")
    assert task_of(attrs=f'{ATTRS} after="{after}"', more=more).after == expected


def test_after_may_form_any_acyclic_graph() -> None:
    # A diamond plus a task that nothing orders: ts_1 after ts_2 and ts_3, both after ts_4.
    context = load(chain("ts_2 ts_3", "ts_4", "ts_4", "", "ts_1 ts_4"))
    assert [t.after for t in context.tasks] == [
        ("ts_2", "ts_3"),
        ("ts_4",),
        ("ts_4",),
        (),
        ("ts_1", "ts_4"),
    ]


A4 = f"{E}:4:1: element <TaskService> attribute"
NO_NEGATIVE = "is not a number of seconds, 0 or more"
NO_ZERO = "is not a positive number of seconds"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            'restart="sometimes"',
            f"{A4} 'restart': 'sometimes' is not a restart mode; "
            "expected 'no', 'on-failure' or 'always'",
        ),
        (
            'restart="On-Failure"',
            f"{A4} 'restart': 'On-Failure' is not a restart mode; "
            "expected 'no', 'on-failure' or 'always'",
        ),
        (
            'restart=""',
            f"{A4} 'restart': '' is not a restart mode; expected 'no', 'on-failure' or 'always'",
        ),
        ('restart_sec="-1"', f"{A4} 'restart_sec': '-1' {NO_NEGATIVE}"),
        ('restart_sec="inf"', f"{A4} 'restart_sec': 'inf' {NO_NEGATIVE}"),
        ('restart_sec="1e999"', f"{A4} 'restart_sec': '1e999' {NO_NEGATIVE}"),
        ('restart_sec="1s"', f"{A4} 'restart_sec': '1s' {NO_NEGATIVE}"),
        ('restart_sec=""', f"{A4} 'restart_sec': '' {NO_NEGATIVE}"),
        ('restart_max_sec="nan"', f"{A4} 'restart_max_sec': 'nan' {NO_NEGATIVE}"),
        ('restart_max_sec="-30"', f"{A4} 'restart_max_sec': '-30' {NO_NEGATIVE}"),
        (
            'restart_sec="5" restart_max_sec="1"',
            f"{A4} 'restart_max_sec': '1' is less than restart_sec (5); "
            "expected a number of seconds, restart_sec or more",
        ),
        (
            'restart_max_sec="0.05"',
            f"{A4} 'restart_max_sec': '0.05' is less than restart_sec (0.1, the default); "
            "expected a number of seconds, restart_sec or more",
        ),
        ('restart_sec="x" restart_max_sec="0.05"', f"{A4} 'restart_sec': 'x' {NO_NEGATIVE}"),
        ('restart_stable_sec="0"', f"{A4} 'restart_stable_sec': '0' {NO_ZERO}"),
        ('restart_stable_sec="-10"', f"{A4} 'restart_stable_sec': '-10' {NO_ZERO}"),
        ('restart_stable_sec="inf"', f"{A4} 'restart_stable_sec': 'inf' {NO_ZERO}"),
        *(
            (
                f'start_limit_burst="{value}"',
                f"{A4} 'start_limit_burst': '{value}' is not a whole number, 1 or more",
            )
            for value in ("0", "-2", "1.5", "5e0", "five", "")
        ),
        (
            f'start_limit_burst="{"9" * 5000}"',
            f"{A4} 'start_limit_burst': '{'9' * 20}...' is too long a number",
        ),
        ('start_limit_interval_sec="0"', f"{A4} 'start_limit_interval_sec': '0' {NO_ZERO}"),
        ('start_limit_interval_sec="1e999"', f"{A4} 'start_limit_interval_sec': '1e999' {NO_ZERO}"),
        ('watchdog_sec="0"', f"{A4} 'watchdog_sec': '0' {NO_ZERO}"),
        ('watchdog_sec="-5"', f"{A4} 'watchdog_sec': '-5' {NO_ZERO}"),
        ('watchdog_sec="nan"', f"{A4} 'watchdog_sec': 'nan' {NO_ZERO}"),
        ('watchdog_sec="5 s"', f"{A4} 'watchdog_sec': '5 s' {NO_ZERO}"),
        (
            'after=" "',
            f"{A4} 'after': ' ' is empty; expected task ids separated by spaces (or leave it out)",
        ),
        (
            'after="ts_9"',
            f"{A4} 'after': 'ts_9' is not a task of this context; "
            "expected ids of other <TaskService> elements",
        ),
        (
            'after="bad!id"',
            f"{A4} 'after': 'bad!id' is not a task of this context; "
            "expected ids of other <TaskService> elements",
        ),
        (
            'after="ts_1"',
            f"{A4} 'after': 'ts_1' is the task itself; expected ids of other tasks",
        ),
        (
            'after="ts_2 ts_2"',
            f"{A4} 'after': 'ts_2' is given twice; expected each task id once",
        ),
    ],
)
def test_each_wrong_new_attribute(extra: str, expected: str) -> None:
    assert errors(ctx(attrs=f"{ATTRS} {extra}", more=other_task("ts_2"))) == [expected]


def test_wrong_new_attributes_are_reported_together() -> None:
    extra = (
        'restart="never" restart_sec="-1" restart_max_sec="x" restart_stable_sec="0" '
        'start_limit_burst="0" start_limit_interval_sec="-1" after="ts_1 ts_9 ts_2 ts_2" '
        'watchdog_sec="0"'
    )
    assert errors(ctx(attrs=f"{ATTRS} {extra}", more=other_task("ts_2"))) == [
        f"{A4} 'restart': 'never' is not a restart mode; expected 'no', 'on-failure' or 'always'",
        f"{A4} 'restart_sec': '-1' {NO_NEGATIVE}",
        f"{A4} 'restart_max_sec': 'x' {NO_NEGATIVE}",
        f"{A4} 'restart_stable_sec': '0' {NO_ZERO}",
        f"{A4} 'start_limit_burst': '0' is not a whole number, 1 or more",
        f"{A4} 'start_limit_interval_sec': '-1' {NO_ZERO}",
        f"{A4} 'after': 'ts_1' is the task itself; expected ids of other tasks",
        f"{A4} 'after': 'ts_9' is not a task of this context; "
        "expected ids of other <TaskService> elements",
        f"{A4} 'after': 'ts_2' is given twice; expected each task id once",
        f"{A4} 'watchdog_sec': '0' {NO_ZERO}",
    ]


WATCHDOG_NEEDS_NOTIFY = (
    "task 'ts_1': watchdog_sec needs a program that notifies; "
    'expected <command notify="true"> (a program that does not notify cannot send WATCHDOG=1)'
)


@pytest.mark.parametrize(
    "command",
    [
        "<command>run</command>",
        '<command notify="false">run</command>',
        '<command notify="0">run</command>',
        '<command notify=" No ">run</command>',
    ],
)
def test_watchdog_needs_a_notifying_command(command: str) -> None:
    text = ctx(attrs=f'{ATTRS} watchdog_sec="5"', task=command)
    assert errors(text) == [f"{E}:4:1: {WATCHDOG_NEEDS_NOTIFY}"]


def test_watchdog_with_a_wrong_notify_reports_only_the_notify() -> None:
    text = ctx(attrs=f'{ATTRS} watchdog_sec="5"', task='<command notify="maybe">run</command>')
    assert errors(text) == [
        f"{E}:6:1: task 'ts_1': <command> attribute 'notify': 'maybe' is not a boolean; "
        "expected true/false/1/0/yes/no"
    ]


def cycle(*members: str) -> str:
    return f"tasks {' → '.join(members)} form an ordering cycle in 'after'"


@pytest.mark.parametrize(
    ("afters", "expected"),
    [
        # ts_N is on line N + 2; a cycle is named from its first-defined member, at its line.
        (("ts_2", "ts_1"), [f"{E}:3:1: {cycle('ts_1', 'ts_2', 'ts_1')}"]),
        (("ts_3", "", "ts_1"), [f"{E}:3:1: {cycle('ts_1', 'ts_3', 'ts_1')}"]),
        (("ts_2", "ts_3", "ts_1"), [f"{E}:3:1: {cycle('ts_1', 'ts_2', 'ts_3', 'ts_1')}"]),
        (("ts_3", "ts_1", "ts_2"), [f"{E}:3:1: {cycle('ts_1', 'ts_3', 'ts_2', 'ts_1')}"]),
        # Entered from a task outside it, the cycle is still named from its own first member.
        (("ts_3", "ts_3", "ts_2"), [f"{E}:4:1: {cycle('ts_2', 'ts_3', 'ts_2')}"]),
        (("ts_4", "ts_3", "ts_4", "ts_2"), [f"{E}:4:1: {cycle('ts_2', 'ts_3', 'ts_4', 'ts_2')}"]),
        # Two separate cycles: one issue each.
        (
            ("ts_2", "ts_1", "ts_4", "ts_3"),
            [
                f"{E}:3:1: {cycle('ts_1', 'ts_2', 'ts_1')}",
                f"{E}:5:1: {cycle('ts_3', 'ts_4', 'ts_3')}",
            ],
        ),
        # Two cycles through ts_1 (ts_1 → ts_2 → ts_1 and ts_1 → ts_2 → ts_3 → ts_1).
        (
            ("ts_2", "ts_3 ts_1", "ts_1"),
            [
                f"{E}:3:1: {cycle('ts_1', 'ts_2', 'ts_3', 'ts_1')}",
                f"{E}:3:1: {cycle('ts_1', 'ts_2', 'ts_1')}",
            ],
        ),
    ],
)
def test_after_cycles_are_reported_once(afters: tuple[str, ...], expected: list[str]) -> None:
    assert errors(chain(*afters)) == expected


def test_after_cycle_beside_wrong_entries() -> None:
    assert errors(chain("ts_9 ts_2", "ts_1 ts_2")) == [
        f"{E}:3:1: element <TaskService> attribute 'after': 'ts_9' is not a task of this "
        "context; expected ids of other <TaskService> elements",
        f"{E}:3:1: {cycle('ts_1', 'ts_2', 'ts_1')}",
        f"{E}:4:1: element <TaskService> attribute 'after': 'ts_2' is the task itself; "
        "expected ids of other tasks",
    ]


def test_a_long_after_chain_is_no_cycle_and_needs_no_recursion() -> None:
    count = 3000
    afters = [f"ts_{n + 1}" for n in range(1, count)] + [""]
    context = load(chain(*afters))
    assert context.tasks[0].after == ("ts_2",) and context.tasks[-1].after == ()
    afters[-1] = "ts_1"
    (issue,) = errors(chain(*afters))
    assert issue.startswith(f"{E}:3:1: tasks ts_1 → ts_2 → ts_3 → ")
    assert issue.endswith(f"ts_{count} → ts_1 form an ordering cycle in 'after'")


_NEW_ATTRIBUTES = (
    "restart",
    "restart_sec",
    "restart_max_sec",
    "restart_stable_sec",
    "start_limit_burst",
    "start_limit_interval_sec",
    "watchdog_sec",
)
_ATTRIBUTE_TEXT = st.one_of(
    st.sampled_from(["no", "on-failure", "always", "0", "-0", "1", "2.5", "1e3", "inf", "nan"]),
    st.text(string.digits + "+-.eE x", max_size=6),
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(_NEW_ATTRIBUTES), _ATTRIBUTE_TEXT, max_size=4))
def test_property_new_attributes_give_a_sound_policy_or_issues(values: dict[str, str]) -> None:
    extra = " ".join(f'{name}="{escape(value)}"' for name, value in values.items())
    try:
        task = task_of(attrs=f"{ATTRS} {extra}")
    except ConfigError as error:
        assert all(issue.line == 4 for issue in error.issues)
        return
    policy = task.restart
    assert 0 <= policy.delay_min <= policy.delay_max < math.inf
    assert 0 < policy.stable_sec < math.inf and 0 < policy.limit_interval < math.inf
    assert policy.limit_burst >= 1
    assert task.watchdog_sec is None or 0 < task.watchdog_sec < math.inf


# --------------------------------------------------------------------------- many errors at once


def test_every_problem_is_reported_together() -> None:
    text = """\
<Context>
  <Bogus/>
  <Bogus2/>
  <ContextID>bad id!</ContextID>
  <ContextID>again</ContextID>
  <TaskService id="ts_1" instance="1st" wat="1" stop_timeout="x">
    <Task>
      <Nope/>
      <message><header><service_name>s</service_name></header>
        <content><configuration><v type="int">x</v><w unit="s">1</w></configuration></content>
      </message>
      <state><on_exit><action>start</action><call>ts_9</call></on_exit></state>
    </Task>
  </TaskService>
  <TaskService id="ts_1"/>
</Context>"""
    assert errors(text) == [
        f"{E}:2:1: element <Bogus> is not allowed in <Context>; "
        f"expected one of {ALLOWED_IN_CONTEXT}",
        f"{E}:3:1: element <Bogus2> is not allowed in <Context>; "
        f"expected one of {ALLOWED_IN_CONTEXT}",
        f"{E}:4:1: <ContextID> 'bad id!' is not a valid id; "
        "expected 1-64 characters of A-Z a-z 0-9 _ -",
        f"{E}:5:1: <ContextID> given twice in <Context> (first at line 4); expected at most one",
        f"{E}:6:1: element <TaskService>: unknown attribute 'wat'; expected one of {TASK_ATTRS}",
        f"{E}:6:1: element <TaskService> attribute 'instance': '1st' "
        "is not a valid Python identifier",
        f"{E}:6:1: element <TaskService> attribute 'stop_timeout': 'x' "
        "is not a positive number of seconds",
        f"{E}:8:1: element <Nope> is not allowed in <Task>; expected one of {ALLOWED_IN_TASK}",
        f"{E}:10:1: task 'ts_1': configuration.v: 'x' is not an integer (type=\"int\")",
        f"{E}:10:1: task 'ts_1': configuration.w: unknown attribute 'unit'; "
        "only 'type' and 'list' are allowed",
        f"{E}:12:1: task 'ts_1': trigger on_exit calls unknown task 'ts_9'",
        f"{E}:15:1: duplicate task id 'ts_1' (first defined at line 6)",
        f"{E}:15:1: element <TaskService> requires attribute 'instance' (or a <command> in <Task>)",
        f"{E}:15:1: task 'ts_1': <TaskService> requires a <Task> element",
    ]


# --------------------------------------------------------------------------- hostile input

BOMB = """\
<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Context><ContextID>&lol9;</ContextID></Context>
"""
DOCTYPE_REFUSED = "DOCTYPE is not allowed (no DTDs or entities in context files)"


def test_entity_bomb_is_refused() -> None:
    assert errors(BOMB) == [f"{E}:2:1: {DOCTYPE_REFUSED}"]


def test_external_entity_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret", encoding="utf-8")
    text = f'<!DOCTYPE Context [<!ENTITY x SYSTEM "file://{secret}">]>\n' + ctx(
        top="<TaskLogName>&x;</TaskLogName>"
    ).replace("<Context>", "<Context>", 1)
    found = errors(text)
    assert found == [f"{E}:1:1: {DOCTYPE_REFUSED}"]
    assert "s3cret" not in "".join(found)


def test_plain_doctype_is_refused_in_any_encoding() -> None:
    text = ctx().replace("<Context>", "<!DOCTYPE Context>\n<Context>", 1)
    assert errors(text) == [f"{E}:1:1: {DOCTYPE_REFUSED}"]
    utf16 = ('<?xml version="1.0" encoding="UTF-16"?>\n' + text).encode("utf-16")
    assert errors(utf16) == [f"{E}:2:1: {DOCTYPE_REFUSED}"]


def test_text_with_an_encoding_declaration() -> None:
    text = '<?xml version="1.0" encoding="ISO-8859-1"?>\n' + ctx(
        task="<description>café</description>"
    )
    assert load(text).tasks[0].description == "café"
    assert load(text.encode("iso-8859-1")).tasks[0].description == "café"


# --------------------------------------------------------------------------- task spec size

LIMIT_TEXT = f"at most {MAX_CONFIGURATION_BYTES} bytes (64 KiB) reach a task"
OVERHEAD = len('{"a":""}')
"""What ``<a>TEXT</a>`` adds to TEXT in the configuration's JSON."""


def sized(length: int, char: str = "x") -> str:
    """A configuration ``{"a": char * length}``."""
    return f"<a>{char * length}</a>"


def test_a_3_mb_configuration_is_refused_at_validation() -> None:
    """Issue 19, finding 9: it passed, then broke the zygote at start."""
    size = 3_000_000 + OVERHEAD
    assert errors(ctx(config=sized(3_000_000))) == [
        f"{E}:9:1: task 'ts_1': <configuration> is {size} bytes as JSON; {LIMIT_TEXT}"
    ]


def test_the_configuration_limit_is_exact() -> None:
    at_limit = MAX_CONFIGURATION_BYTES - OVERHEAD
    assert len(config_of(sized(at_limit))["a"]) == at_limit
    assert errors(ctx(config=sized(at_limit + 1))) == [
        f"{E}:9:1: task 'ts_1': <configuration> is {MAX_CONFIGURATION_BYTES + 1} bytes as "
        f"JSON; {LIMIT_TEXT}"
    ]


def test_the_configuration_is_measured_as_it_travels() -> None:
    """Non-ASCII text is escaped in ``$ZSVC_TASK`` (``\\u00e9``: 6 bytes), so it is counted so."""
    count = MAX_CONFIGURATION_BYTES // 6 + 1
    assert len(sized(count, "é").encode()) < MAX_CONFIGURATION_BYTES
    assert errors(ctx(config=sized(count, "é"))) == [
        f"{E}:9:1: task 'ts_1': <configuration> is {count * 6 + OVERHEAD} bytes as JSON; "
        f"{LIMIT_TEXT}"
    ]


def test_the_thread_tasks_configurations_are_bounded_together() -> None:
    """They share the thread host's ``$ZSVC_TASK``: reported once, where the sum goes over."""
    half = MAX_CONFIGURATION_BYTES // 2

    def thread(task_id: str) -> str:
        return (
            f'<TaskService id="{task_id}" instance="Other" serviceType="Thread"><Task><message>'
            "<header><service_name>other</service_name></header><content><configuration>"
            f"{sized(half)}</configuration></content></message></Task></TaskService>"
        )

    attrs = 'id="ts_1" instance="Echo" serviceType="Thread"'
    total = 2 * (half + OVERHEAD)
    found = errors(ctx(attrs=attrs, config=sized(half), more=thread("t2") + thread("t3")))
    assert found == [
        f"{E}:16:1: task 't2': the <configuration>s of the Thread tasks up to this one come to "
        f"{total} bytes as JSON, and they travel together to the thread host; {LIMIT_TEXT}"
    ]
    # As processes, each has its own $ZSVC_TASK: no sum.
    assert len(load(ctx(config=sized(half), more=other_task("t2"))).tasks) == 2


def test_a_command_tasks_configuration_is_not_measured() -> None:
    """A command task gets no ``$ZSVC_TASK``: nothing of its configuration travels."""
    spec = task_of(task="<command>sleep 1</command>", config=sized(MAX_CONFIGURATION_BYTES))
    assert spec.is_command


def test_a_spec_at_the_limit_fits_one_environment_string() -> None:
    """MAX_ARG_STRLEN (128 KiB, ``ZSVC_TASK=`` and the NUL included) with room to spare for
    the other fields at their longest (ids of 64 characters, paths of 4096)."""
    long_path = "/" + "p" * 4095
    spec = HostSpec(
        transaction="T" * 64,
        task_id="t" * 64,
        service_name="s" * 64,
        instance="I" * 64,
        location=long_path,
        bus_pub="ipc://" + long_path,
        bus_sub="ipc://" + long_path,
        device_action="d" * 1000,
        configuration={"a": "\\" * ((MAX_CONFIGURATION_BYTES - OVERHEAD) // 2)},
    )
    assert configuration_size(spec.configuration) == MAX_CONFIGURATION_BYTES
    assert len(f"{SPEC_ENV}={spec.to_json()}".encode()) + 1 < 128 * 1024


# --------------------------------------------------------------------------- properties

_BOOL_WORDS = ["true", "false", "yes", "no", "on", "off"]
keys = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_lowercase),
    st.text(string.ascii_lowercase + string.digits + "_", max_size=7),
).filter(lambda k: not keyword.iskeyword(k))
top_keys = keys.filter(lambda k: k not in ("device_action", "location"))

# A scalar is (expected value, text, extra attributes).
ints = st.integers(-(10**15), 10**15).map(lambda i: (i, str(i), ""))
floats = st.floats(allow_nan=False, allow_infinity=False).map(lambda f: (f, repr(f), ""))
bools = st.sampled_from(
    [
        (True, "true", ""),
        (True, "Yes", ""),
        (True, "ON", ""),
        (False, "false", ""),
        (False, "No", ""),
        (False, "off", ""),
        (True, "1", ' type="bool"'),
    ]
)
words = st.text(string.ascii_letters + "_.-", min_size=1, max_size=10).filter(
    lambda w: w.lower() not in _BOOL_WORDS
)
plain_strings = words.map(lambda w: (w, w, ""))
xml_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Co")), max_size=20
).filter(lambda s: s == s.strip())
typed_strings = xml_text.map(lambda s: (s, s, ' type="str"'))
scalars = st.one_of(ints, floats, bools, plain_strings, typed_strings)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    value = st.one_of(children, st.lists(children, min_size=1, max_size=3))
    return st.dictionaries(keys, value, min_size=1, max_size=3)


nodes = st.recursive(scalars, _extend, max_leaves=6)
configs = st.dictionaries(
    top_keys, st.one_of(nodes, st.lists(nodes, min_size=1, max_size=2)), max_size=4
)


def render(key: str, value: Any) -> str:
    """XML for one key: a list renders as repeated siblings (list="true" when single)."""
    if isinstance(value, list):
        if len(value) == 1:
            return _render_one(key, value[0], ' list="true"')
        return "".join(_render_one(key, item, "") for item in value)
    return _render_one(key, value, "")


def _render_one(key: str, value: Any, extra: str) -> str:
    if isinstance(value, dict):
        body = "".join(render(k, v) for k, v in value.items())
        return f"<{key}{extra}>{body}</{key}>"
    _, text, attrs = value
    return f"<{key}{extra}{attrs}>{escape(text)}</{key}>"


def expected(value: Any) -> Any:
    if isinstance(value, list):
        return [expected(item) for item in value]
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    return value[0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_property_configuration_round_trips_typed_values(tree: dict[str, Any]) -> None:
    xml = "".join(render(k, v) for k, v in tree.items())
    got = config_of(xml)
    assert got == expected(tree)
    assert _types(got) == _types(expected(tree))


def _types(value: Any) -> Any:
    """The same shape with each scalar replaced by its type (1 == 1.0 == True otherwise)."""
    if isinstance(value, list):
        return [_types(item) for item in value]
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    return type(value)


def _mutations() -> st.SearchStrategy[str]:
    """The Echo sample with a slice replaced by random text: near-valid documents."""
    base = ctx(config="<a>1</a>", state="<state><on_exit><action/><call/></on_exit></state>")

    def mutate(args: tuple[int, int, str]) -> str:
        start, length, insert = args
        return base[:start] + insert + base[start + length :]

    chars = st.sampled_from(list("<>/=\"' &;!?-_:abcxyzCT01\n")) | st.characters()
    return st.tuples(
        st.integers(0, len(base)), st.integers(0, 12), st.text(chars, max_size=12)
    ).map(mutate)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), _mutations()))
def test_property_any_input_gives_a_context_or_config_error(data: bytes | str) -> None:
    try:
        context = load_context_text(data, "fuzz.xml")
    except ConfigError as error:
        assert error.issues
        for issue in error.issues:
            assert issue.file == "fuzz.xml" and issue.line >= 1 and issue.column >= 1
            assert issue.message and "\n" not in issue.message
    else:
        assert isinstance(context, Context) and context.tasks
        assert all(math.isfinite(t.start_timeout) for t in context.tasks)
