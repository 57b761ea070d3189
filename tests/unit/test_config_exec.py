"""Issue 14 in the context file: <exec>, the command's start type and PID file, start_secs,
the kill signals, and a context without endpoints. Each rule with good values and each
wrong value's exact issue; the value parsers' properties are in test_exec_values.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.unit.test_config import ctx, errors, load, other_task, task_of
from zsvc.config.model import EnvironmentFile, ExecSettings, ProcessSettings
from zsvc.states import StartType

E = "ctx.xml"
A4 = f"{E}:4:1: element <TaskService> attribute"
T4 = f"{E}:4:1: task 'ts_1': "
T6 = f"{E}:6:1: task 'ts_1': "
CMD = "<command>/bin/true</command>"
EXEC_ATTRS = (
    "'user', 'group', 'supplementary_groups', 'working_directory', 'umask', 'nice', "
    "'limit_nofile', 'memory_max', 'cpu_quota', 'tasks_max', 'no_new_privileges', 'private_tmp'"
)


def command_task(command: str = CMD, attrs: str = "", exec_: str = "") -> str:
    return ctx(attrs=f'id="ts_1" {attrs}', task=f"{command}{exec_}")


# --------------------------------------------------------------------------- <exec>: good


def test_the_whole_example_of_the_issue_loads() -> None:
    """The brief's example, without its start_secs (refused on forking, tested below)."""
    exec_ = (
        '<exec user="www-data" group="www-data" supplementary_groups="adm audio" '
        'working_directory="/srv/app" umask="0027" nice="5" limit_nofile="4096" '
        'memory_max="256M" cpu_quota="50%" tasks_max="64" no_new_privileges="true" '
        'private_tmp="true"><environment name="FOO">bar</environment>'
        '<environment_file optional="true">/etc/default/app</environment_file></exec>'
    )
    command = '<command type="forking" pid_file="/run/nginx.pid">nginx -c /e/n.conf</command>'
    attrs = 'kill_signal="SIGINT" final_kill_signal="SIGKILL" stop_timeout="5"'
    spec = load(ctx(attrs=f'id="web" {attrs}', task=command + exec_)).tasks[0]
    assert spec.start_type is StartType.FORKING
    assert spec.pid_file == Path("/run/nginx.pid")
    assert spec.kill_signal == signal.SIGINT and spec.final_kill_signal == signal.SIGKILL
    assert spec.exec == ExecSettings(
        process=ProcessSettings(
            user="www-data",
            group="www-data",
            supplementary_groups=("adm", "audio"),
            umask=0o027,
            nice=5,
            limit_nofile=4096,
            memory_max=256 * 1024 * 1024,
            cpu_quota=50.0,
            tasks_max=64,
            no_new_privileges=True,
            private_tmp=True,
        ),
        environment=(("FOO", "bar"),),
        environment_files=(EnvironmentFile(Path("/etc/default/app"), optional=True),),
        working_directory=Path("/srv/app"),
    )


def test_the_example_s_start_secs_on_a_forking_command_is_an_issue() -> None:
    """The issue's example combines start_secs with type="forking": that is refused."""
    text = command_task('<command type="forking">nginx</command>', 'start_secs="1"')
    assert errors(text) == [
        f'{T4}start_secs applies to <command type="simple"> or type="exec"; '
        "a forking task is ready when its first process exits"
    ]


def test_no_exec_is_the_model_s_defaults() -> None:
    spec = task_of()
    assert spec.exec == ExecSettings()
    assert (spec.kill_signal, spec.final_kill_signal) == (signal.SIGTERM, signal.SIGKILL)
    assert spec.start_secs == 0.0 and spec.pid_file is None


@pytest.mark.parametrize(
    ("attr", "value", "field", "expected"),
    [
        ("user", "0", "user", "0"),
        ("user", "007", "user", "7"),
        ("user", "4294967294", "user", "4294967294"),
        ("user", "Debian-exim", "user", "Debian-exim"),
        ("user", " _apt ", "user", "_apt"),
        ("group", "65534", "group", "65534"),
        (
            "supplementary_groups",
            " adm\t27  audio ",
            "supplementary_groups",
            ("adm", "27", "audio"),
        ),
        ("umask", "027", "umask", 0o27),
        ("umask", "0", "umask", 0),
        ("umask", "0777", "umask", 0o777),
        ("nice", "-20", "nice", -20),
        ("nice", "+19", "nice", 19),
        ("limit_nofile", "1048576", "limit_nofile", 1 << 20),
        ("memory_max", "1", "memory_max", 1),
        ("memory_max", "2k", "memory_max", 2048),
        ("memory_max", "1G", "memory_max", 1 << 30),
        ("memory_max", "3T", "memory_max", 3 << 40),
        ("memory_max", "infinity", "memory_max", None),
        ("cpu_quota", "200%", "cpu_quota", 200.0),
        ("cpu_quota", "0.5%", "cpu_quota", 0.5),
        ("tasks_max", "1", "tasks_max", 1),
        ("no_new_privileges", "yes", "no_new_privileges", True),
        ("private_tmp", "0", "private_tmp", False),
    ],
)
def test_exec_values(attr: str, value: str, field: str, expected: object) -> None:
    spec = task_of(task=f'{CMD}<exec {attr}="{value}"/>')
    assert getattr(spec.exec.process, field) == expected


def test_environment_keeps_order_and_exact_text() -> None:
    exec_ = (
        '<exec><environment name="B"> two  words </environment>'
        '<environment name="A"></environment><environment name="_x1">$HOME</environment></exec>'
    )
    spec = task_of(task=CMD + exec_)
    assert spec.exec.environment == (("B", " two  words "), ("A", ""), ("_x1", "$HOME"))


def test_working_directory_and_files() -> None:
    exec_ = (
        '<exec working_directory=" /srv "><environment_file>/a</environment_file>'
        '<environment_file optional="no">/b</environment_file></exec>'
    )
    spec = task_of(task=CMD + exec_)
    assert spec.exec.working_directory == Path("/srv")
    assert spec.exec.environment_files == (EnvironmentFile(Path("/a")), EnvironmentFile(Path("/b")))


def test_a_python_task_may_have_exec() -> None:
    spec = task_of(task='<exec user="nobody" umask="077"/>')
    assert spec.exec.process.user == "nobody" and spec.start_type is StartType.NOTIFY


# --------------------------------------------------------------------------- <exec>: wrong


X6 = f"{T6}<exec> attribute"
ID_RULE = (
    "expected a name of up to 32 characters of A-Z a-z 0-9 _ . - "
    "(not starting with a digit, '.' or '-') or a number 0-4294967294"
)
SIZE_RULE = (
    "is not a memory size; expected a number of bytes, 1 or more, with an optional "
    "K, M, G or T suffix (1024-based, such as 256M), or 'infinity'"
)
UMASK_RULE = "is not a umask; expected an octal number 0000-0777, such as 0027"
RESERVED = (
    "is set by zsvc; expected a name that does not start with ZSVC_ and is none of "
    "LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID, NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC"
)


@pytest.mark.parametrize(
    ("exec_", "expected"),
    [
        ('<exec user=""/>', f"{X6} 'user': '' is not a user name or uid; {ID_RULE}"),
        ('<exec user="-x"/>', f"{X6} 'user': '-x' is not a user name or uid; {ID_RULE}"),
        ('<exec user="a b"/>', f"{X6} 'user': 'a b' is not a user name or uid; {ID_RULE}"),
        ('<exec user="1x"/>', f"{X6} 'user': '1x' is not a user name or uid; {ID_RULE}"),
        (
            '<exec user="4294967295"/>',
            f"{X6} 'user': '4294967295' is not a user name or uid; {ID_RULE}",
        ),
        (
            f'<exec user="{"a" * 33}"/>',
            f"{X6} 'user': '{'a' * 33}' is not a user name or uid; {ID_RULE}",
        ),
        ('<exec group="-1"/>', f"{X6} 'group': '-1' is not a group name or gid; {ID_RULE}"),
        (
            '<exec supplementary_groups="adm -x 27"/>',
            f"{X6} 'supplementary_groups': '-x' is not a group name or gid; {ID_RULE}",
        ),
        (
            '<exec supplementary_groups="  "/>',
            f"{X6} 'supplementary_groups': '  ' is empty; "
            "expected group names or gids separated by spaces (or leave it out)",
        ),
        (
            '<exec umask="0999"/>',
            f"{X6} 'umask': '0999' {UMASK_RULE}",
        ),
        (
            '<exec umask="1000"/>',
            f"{X6} 'umask': '1000' {UMASK_RULE}",
        ),
        (
            '<exec umask="0o22"/>',
            f"{X6} 'umask': '0o22' {UMASK_RULE}",
        ),
        (
            '<exec nice="20"/>',
            f"{X6} 'nice': '20' is not a nice level; expected a whole number from -20 to 19",
        ),
        (
            '<exec nice="1.5"/>',
            f"{X6} 'nice': '1.5' is not a nice level; expected a whole number from -20 to 19",
        ),
        (
            '<exec limit_nofile="0"/>',
            f"{X6} 'limit_nofile': '0' is not an open-files limit; "
            "expected a whole number from 1 to 1048576",
        ),
        (
            '<exec limit_nofile="infinity"/>',
            f"{X6} 'limit_nofile': 'infinity' is not an open-files limit; "
            "expected a whole number from 1 to 1048576",
        ),
        ('<exec memory_max="0"/>', f"{X6} 'memory_max': '0' {SIZE_RULE}"),
        ('<exec memory_max="1.5G"/>', f"{X6} 'memory_max': '1.5G' {SIZE_RULE}"),
        ('<exec memory_max="10%"/>', f"{X6} 'memory_max': '10%' {SIZE_RULE}"),
        ('<exec memory_max="8E"/>', f"{X6} 'memory_max': '8E' {SIZE_RULE}"),
        ('<exec memory_max="9999999T"/>', f"{X6} 'memory_max': '9999999T' {SIZE_RULE}"),
        (
            '<exec cpu_quota="50"/>',
            f"{X6} 'cpu_quota': '50' is not a CPU quota; "
            "expected a percentage above 0 such as 50% (200% is two CPUs)",
        ),
        (
            '<exec cpu_quota="0%"/>',
            f"{X6} 'cpu_quota': '0%' is not a CPU quota; "
            "expected a percentage above 0 such as 50% (200% is two CPUs)",
        ),
        (
            '<exec tasks_max="0"/>',
            f"{X6} 'tasks_max': '0' is not a tasks limit; expected a whole number, 1 or more",
        ),
        (
            '<exec private_tmp="maybe"/>',
            f"{X6} 'private_tmp': 'maybe' is not a boolean; expected true/false/1/0/yes/no",
        ),
        (
            '<exec no_new_privileges=""/>',
            f"{X6} 'no_new_privileges': '' is not a boolean; expected true/false/1/0/yes/no",
        ),
        (
            '<exec working_directory="srv/app"/>',
            f"{X6} 'working_directory': 'srv/app' is not an absolute path",
        ),
        (
            "<exec><environment>x</environment></exec>",
            f"{T6}<environment> requires attribute 'name'",
        ),
        (
            '<exec><environment name="1X">x</environment></exec>',
            f"{T6}<environment> attribute 'name': '1X' is not a variable name; "
            "expected [A-Za-z_][A-Za-z0-9_]*",
        ),
        (
            '<exec><environment name="A-B">x</environment></exec>',
            f"{T6}<environment> attribute 'name': 'A-B' is not a variable name; "
            "expected [A-Za-z_][A-Za-z0-9_]*",
        ),
        (
            '<exec><environment name="ZSVC_TASK_ID">x</environment></exec>',
            f"{T6}<environment> attribute 'name': 'ZSVC_TASK_ID' {RESERVED}",
        ),
        (
            '<exec><environment name="NOTIFY_SOCKET">x</environment></exec>',
            f"{T6}<environment> attribute 'name': 'NOTIFY_SOCKET' {RESERVED}",
        ),
        (
            '<exec><environment name="A">1</environment>'
            '<environment name="A">2</environment></exec>',
            f"{T6}<environment> 'A' given twice (first at line 6); expected each name once",
        ),
        (
            "<exec><environment_file> </environment_file></exec>",
            f"{T6}<environment_file> is empty; expected an absolute path",
        ),
        (
            "<exec><environment_file>etc/app</environment_file></exec>",
            f"{T6}<environment_file> 'etc/app' is not an absolute path",
        ),
        (
            '<exec><environment_file optional="-">/etc/app</environment_file></exec>',
            f"{T6}<environment_file> attribute 'optional': '-' is not a boolean; "
            "expected true/false/1/0/yes/no",
        ),
        (
            '<exec colour="red"/>',
            f"{E}:6:1: element <exec>: unknown attribute 'colour'; expected one of {EXEC_ATTRS}",
        ),
        (
            "<exec><env>x</env></exec>",
            f"{E}:6:1: element <env> is not allowed in <exec>; "
            "expected one of <environment>, <environment_file>",
        ),
        (
            "<exec>text</exec>",
            f"{E}:6:1: element <exec> must contain only child elements, not text",
        ),
        (
            '<exec><environment name="A" value="1"/></exec>',
            f"{E}:6:1: element <environment>: unknown attribute 'value'; expected one of 'name'",
        ),
    ],
)
def test_each_wrong_exec_value(exec_: str, expected: str) -> None:
    assert errors(ctx(task=CMD + exec_)) == [expected]


def test_wrong_exec_values_are_reported_together() -> None:
    exec_ = '<exec user="-" umask="8" nice="99"><environment name="1"/></exec>'
    found = errors(ctx(task=CMD + exec_))
    assert len(found) == 4
    assert all(issue.startswith(T6) for issue in found)


def test_each_wrong_supplementary_group_is_one_issue() -> None:
    found = errors(ctx(task=f'{CMD}<exec supplementary_groups="adm -x 9999999999 .y"/>'))
    assert [issue.split("': '")[1].split("'")[0] for issue in found] == ["-x", "9999999999", ".y"]


def test_exec_given_twice() -> None:
    assert errors(ctx(task=f"{CMD}<exec/><exec/>")) == [
        f"{E}:6:1: <exec> given twice in <Task> (first at line 6); expected at most one"
    ]


def test_exec_on_a_thread_task() -> None:
    text = ctx(attrs='id="ts_1" instance="Echo" serviceType="Thread"', task='<exec nice="1"/>')
    assert errors(text) == [
        f"{T6}a Thread task runs in its transaction's shared host process; "
        "<exec> needs serviceType 'Process'"
    ]


def test_kill_signal_on_a_thread_task() -> None:
    attrs = 'id="ts_1" instance="Echo" serviceType="Thread" kill_signal="INT"'
    assert errors(ctx(attrs=attrs)) == [
        f"{T4}a Thread task runs in its transaction's shared host process; "
        "kill_signal needs serviceType 'Process'"
    ]


# --------------------------------------------------------------------------- <command type>


@pytest.mark.parametrize(
    ("command", "start_type"),
    [
        ("<command>x</command>", StartType.EXEC),
        ('<command type="simple">x</command>', StartType.SIMPLE),
        ('<command type="exec">x</command>', StartType.EXEC),
        ('<command type="notify">x</command>', StartType.NOTIFY),
        ('<command type="forking">x</command>', StartType.FORKING),
        ('<command notify="true">x</command>', StartType.NOTIFY),
        ('<command notify="false">x</command>', StartType.EXEC),
        ('<command type="notify" notify="yes">x</command>', StartType.NOTIFY),
        ('<command type="simple" notify="0">x</command>', StartType.SIMPLE),
    ],
)
def test_command_start_types(command: str, start_type: StartType) -> None:
    assert task_of(task=command).start_type is start_type


def test_forking_without_a_pid_file_is_fine() -> None:
    assert task_of(task='<command type="forking">x</command>').pid_file is None


C6 = f"{T6}<command> attribute"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            '<command type="oneshot">x</command>',
            f"{C6} 'type': 'oneshot' is not a start type; "
            "expected 'simple', 'exec', 'notify' or 'forking'",
        ),
        (
            '<command type="Notify">x</command>',
            f"{C6} 'type': 'Notify' is not a start type; "
            "expected 'simple', 'exec', 'notify' or 'forking'",
        ),
        (
            '<command type="exec" notify="true">x</command>',
            f"{T6}<command> attributes 'type' and 'notify' disagree: type='exec' but "
            'notify=\'true\'; give only type (notify="true" means type="notify")',
        ),
        (
            '<command type="notify" notify="off">x</command>',
            f"{T6}<command> attributes 'type' and 'notify' disagree: type='notify' but "
            'notify=\'off\'; give only type (notify="true" means type="notify")',
        ),
        (
            '<command pid_file="/run/x.pid">x</command>',
            f"{T6}<command> attribute 'pid_file' needs type=\"forking\"; this command's type "
            "is 'exec' (a program that stays in the foreground is its own main process)",
        ),
        (
            '<command type="notify" pid_file="/run/x.pid">x</command>',
            f"{T6}<command> attribute 'pid_file' needs type=\"forking\"; this command's type "
            "is 'notify' (a program that stays in the foreground is its own main process)",
        ),
        (
            '<command type="forking" pid_file="x.pid">x</command>',
            f"{C6} 'pid_file': 'x.pid' is not an absolute path",
        ),
    ],
)
def test_each_wrong_command_attribute(command: str, expected: str) -> None:
    assert errors(ctx(task=command)) == [expected]


def test_a_wrong_type_does_not_also_complain_about_the_pid_file() -> None:
    text = ctx(task='<command type="daemon" pid_file="/run/x.pid">x</command>')
    assert len(errors(text)) == 1


@pytest.mark.parametrize("command", ['<command type="notify">x</command>'])
def test_watchdog_accepts_type_notify(command: str) -> None:
    assert task_of(attrs='id="ts_1" watchdog_sec="5"', task=command).watchdog_sec == 5


@pytest.mark.parametrize("kind", ["simple", "exec", "forking"])
def test_watchdog_refuses_other_types(kind: str) -> None:
    text = ctx(attrs='id="ts_1" watchdog_sec="5"', task=f'<command type="{kind}">x</command>')
    assert errors(text) == [
        f'{T4}watchdog_sec needs a program that notifies; expected <command notify="true"> '
        "(a program that does not notify cannot send WATCHDOG=1)"
    ]


# --------------------------------------------------------------------------- start_secs


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("1.5", 1.5), ("-0", 0.0)])
@pytest.mark.parametrize("kind", ["simple", "exec"])
def test_start_secs(value: str, seconds: float, kind: str) -> None:
    text = command_task(f'<command type="{kind}">x</command>', f'start_secs="{value}"')
    assert load(text).tasks[0].start_secs == seconds


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "1s", ""])
def test_start_secs_wrong_values(value: str) -> None:
    text = command_task(attrs=f'start_secs="{value}"')
    assert errors(text) == [f"{A4} 'start_secs': '{value}' is not a number of seconds, 0 or more"]


def test_start_secs_on_a_notify_command() -> None:
    text = command_task('<command notify="true">x</command>', 'start_secs="2"')
    assert errors(text) == [
        f'{T4}start_secs applies to <command type="simple"> or type="exec"; '
        "a notify task is ready at its READY=1"
    ]


def test_start_secs_on_a_python_task() -> None:
    assert errors(ctx(attrs='id="ts_1" instance="Echo" start_secs="2"')) == [
        f"{T4}start_secs applies to command tasks (type 'simple' or 'exec'); "
        "a Python task is ready at its READY=1"
    ]


# --------------------------------------------------------------------------- kill signals


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("SIGINT", signal.SIGINT),
        ("INT", signal.SIGINT),
        ("sigquit", signal.SIGQUIT),
        ("9", signal.SIGKILL),
        ("SIGKILL", signal.SIGKILL),
        (" HUP ", signal.SIGHUP),
        ("SIGRTMIN", signal.SIGRTMIN),
        ("64", 64),
    ],
)
@pytest.mark.parametrize("attr", ["kill_signal", "final_kill_signal"])
def test_signals(attr: str, value: str, number: int) -> None:
    assert getattr(task_of(attrs=f'id="ts_1" instance="Echo" {attr}="{value}"'), attr) == number


@pytest.mark.parametrize("value", ["0", "65", "SIGFOO", "", "-15", "SIG", "SIG_DFL", "TERM2"])
def test_wrong_signals(value: str) -> None:
    text = ctx(attrs=f'id="ts_1" instance="Echo" kill_signal="{value}"')
    assert errors(text) == [
        f"{A4} 'kill_signal': '{value}' is not a signal; "
        "expected a name such as SIGTERM or TERM, or a number from 1 to 64"
    ]


def test_two_tasks_one_with_exec() -> None:
    text = ctx(task=CMD + '<exec nice="3"/>', more=other_task("ts_2"))
    first, second = load(text).tasks
    assert first.exec.process.nice == 3 and second.exec == ExecSettings()


# --------------------------------------------------------------------------- the docs


def test_every_exec_and_command_attribute_has_a_row_in_the_docs() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "context-format.md").read_text()
    attributes = [name.strip("'") for name in EXEC_ATTRS.split(", ")]
    attributes += ["type", "pid_file", "start_secs", "kill_signal", "final_kill_signal"]
    missing = [name for name in attributes if f"\n| `{name}` |" not in docs]
    assert not missing, f"docs/context-format.md has no row for {missing}"
