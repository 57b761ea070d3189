"""The CLI against hostile input, without a daemon (issue 19, findings 10, 11, 17 and 18).

- Sizes: a context file is read only when it is a regular file of at most
  ``MAX_CONTEXT_BYTES``; a request over ``MAX_REQUEST_BYTES`` is refused by
  the client before sending and, by the daemon, with the request's own id.
- Output: control characters in text a task provided are escaped in every
  human rendering (status table, stop summary, monitor view, logs, errors).
- Values: timeouts positive and finite, counts 0 or more, exit 2 naming the
  option, on the fast path and through typer alike.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zsvc import commands, protocol
from zsvc.cli import actions, logview, values
from zsvc.cli.monitor_view import MonitorModel, render
from zsvc.cli.render import stop_summary, transaction_table
from zsvc.cli.text import printable
from zsvc.client import ControlClient
from zsvc.errors import ErrorCode, ZsvcError

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "\x1b]0;owned\x07\x1b[31mred\x1b[0m [bold]x[/] \r\x9b2J \u202eevil"
"""Sets the terminal's title, colours, rich markup, a carriage return, a C1 CSI and a bidi
override: each must reach the screen as visible text."""


def zsvc_cli(*args: str, tmp_path: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m zsvc ARGS`` with no daemon (an empty runtime dir), memory capped at 1 GiB:
    a CLI that reads without limit fails here instead of waking the OOM killer."""
    env = dict(os.environ, ZSVC_RUNTIME_DIR=str(tmp_path / "no-daemon"))

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "zsvc", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
        preexec_fn=cap_memory,
    )  # fmt: skip


def no_raw_controls(text: str) -> bool:
    return not any((ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) < 0xA0 for c in text) and (
        "\u202e" not in text
    )


# --------------------------------------------------------------------------- printable


def test_printable_shows_every_control_character_as_an_escape() -> None:
    shown = printable(HOSTILE)
    assert no_raw_controls(shown) and "\n" not in shown
    assert shown.startswith("\\x1b]0;owned\\x07\\x1b[31mred")
    assert "\\r\\x9b2J \\u202eevil" in shown
    assert printable("a\tb\nc\x7f") == "a\\tb\\nc\\x7f"


def test_printable_keeps_ordinary_text_and_what_the_caller_lays_out() -> None:
    text = "héllo wörld ✓ 日本 C:\\path [x]"
    assert printable(text) == text
    assert printable("a\tb\nc\x1b", keep="\t\n") == "a\tb\nc\\x1b"


# --------------------------------------------------------------------------- renderings


def task_view(
    status_text: str = "", last_exit: str = "", result: str = "success"
) -> dict[str, Any]:
    return {
        "id": "ts_1", "pid": 42, "state": "active", "sub_state": "running",
        "result": result, "last_action": "start", "restarts": 0, "since": 0.0,
        "status_text": status_text, "last_exit": last_exit,
    }  # fmt: skip


def rendered(renderable: Any) -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=300, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()


def test_status_table_escapes_a_tasks_status_text_and_last_exit() -> None:
    for task in (task_view(status_text=HOSTILE), task_view(last_exit=HOSTILE)):
        record = {"transaction": "TX", "state": "running", "context_id": "c1", "tasks": [task]}
        text = rendered(transaction_table(record, now=1.0))
        assert no_raw_controls(text), repr(text)
        assert "\\x1b]0;owned\\x07" in text
        assert "[bold]x[/]" in text  # markup in a task's text is shown, not applied


def test_status_table_escapes_the_context_path() -> None:
    record = {"transaction": "TX", "state": "running", "context_id": "c1", "tasks": []}
    record["context"] = "/srv/\x1b[2Jx.xml"
    assert "/srv/\\x1b[2Jx.xml" in rendered(transaction_table(record, now=1.0))


def test_stop_summary_escapes_the_last_words_of_a_task() -> None:
    record = {
        "transaction": "TX",
        "state": "failed",
        "tasks": [task_view("", HOSTILE, "exit-code")],
    }
    lines = stop_summary(record)
    assert all(no_raw_controls(line) for line in lines), lines
    assert lines[1].endswith(printable(HOSTILE))


def test_monitor_view_escapes_status_text() -> None:
    model = MonitorModel()
    sample = {"transaction": "TX", "state": "running", "context_id": "c1"}
    sample["tasks"] = [task_view(status_text=HOSTILE)]
    model.update(sample, now=1.0)
    text = rendered(render(model, now=1.0, width=200))
    assert no_raw_controls(text), repr(text)
    assert "\\x1b]0;owned" in text


def test_logs_escape_control_characters_and_keep_tabs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "task.log"
    log.write_bytes(b"plain\tline\r\n" + HOSTILE.encode() + b"\nlast\n")
    logview.show_logs([{"task": "ts_1", "path": str(log)}], 10, follow=False)
    out = capsys.readouterr().out
    assert out.splitlines() == ["plain\tline", printable(HOSTILE), "last"]
    assert no_raw_controls(out.replace("\t", " "))


def test_a_daemon_error_quoting_a_task_is_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Failing:
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...
        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *exc: object) -> None: ...
        def call(self, command: str, **args: Any) -> Any:
            raise ZsvcError(f"task ts_1 failed: {HOSTILE}", code=ErrorCode.FAILED)

    monkeypatch.setattr("zsvc.client.ControlClient", Failing)
    with pytest.raises(actions.CommandFailed):
        actions.call(None, "status", 1.0)
    err = capsys.readouterr().err
    assert no_raw_controls(err) and printable(HOSTILE) in err


# --------------------------------------------------------------------------- context files


def test_a_context_file_at_the_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    limit = protocol.MAX_CONTEXT_BYTES
    fits, over = tmp_path / "fits.xml", tmp_path / "over.xml"
    fits.write_bytes(b"x" * limit)
    over.write_bytes(b"x" * (limit + 1))
    assert len(actions.read_limited(fits)) == limit
    with pytest.raises(actions.FileRefused, match=rf"too large: {limit + 1} bytes \(limit {limit}"):
        actions.read_limited(over)


def test_start_refuses_a_context_over_the_limit_naming_file_and_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.xml"
    big.write_bytes(b"<Context>" + b" " * protocol.MAX_CONTEXT_BYTES + b"</Context>")
    for args in (("start", "-c", str(big)), ("validate", str(big))):
        done = zsvc_cli(*args, tmp_path=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert f"{big}" in done.stderr and "too large" in done.stderr
        assert f"(limit {protocol.MAX_CONTEXT_BYTES} bytes)" in done.stderr


@pytest.mark.parametrize("command", ["start", "validate"])
def test_dev_zero_is_refused_not_read(command: str, tmp_path: Path) -> None:
    argv = ("start", "-c", "/dev/zero") if command == "start" else ("validate", "/dev/zero")
    done = zsvc_cli(*argv, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "not a regular file (a character device)" in done.stderr
    assert done.stderr.startswith("zsvc: /dev/zero: " if command == "start" else "/dev/zero:0:0: ")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "ctx.xml"
    os.mkfifo(fifo)
    done = zsvc_cli("start", "--context", str(fifo), tmp_path=tmp_path, timeout=20)
    assert done.returncode == 2
    assert f"{fifo}: not a regular file (a FIFO)" in done.stderr


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(actions.FileRefused, match="not a regular file \\(a directory\\)"):
        actions.read_limited(tmp_path)


# --------------------------------------------------------------------------- requests


def test_the_client_refuses_an_oversized_request_before_sending(tmp_path: Path) -> None:
    """No daemon needed: the size is checked before connecting (it used to be sent)."""
    text = "\x01" * protocol.MAX_CONTEXT_BYTES  # six bytes each in JSON
    with ControlClient(tmp_path) as client, pytest.raises(ZsvcError) as caught:
        client.call("start", context_path="/c.xml", context_text=text)
    assert caught.value.code == ErrorCode.BAD_REQUEST and caught.value.exit_code == 2
    assert f"exceeds the limit of {protocol.MAX_REQUEST_BYTES} bytes" in caught.value.message


def test_the_daemon_answers_an_oversized_request_with_its_id() -> None:
    big = {"context_text": "x" * protocol.MAX_REQUEST_BYTES}
    for data in (
        commands.encode_request("r-42", "start", big),
        json.dumps({"id": "r-42", "command": "start", "args": big}).encode(),
        json.dumps({"command": "start", "v": 1, "id": "r-42", "args": big}).encode(),
    ):
        request_id, command, error = commands.decode_request(data)
        assert (request_id, command) == ("r-42", None)
        assert isinstance(error, ZsvcError) and error.code == ErrorCode.BAD_REQUEST
        assert "too large" in error.message


def test_an_id_nested_in_args_is_not_taken_for_the_requests() -> None:
    data = json.dumps({"args": {"id": "not-it"}, "id": "r"}).encode() + b" " * (4 << 20)
    assert commands.decode_request(data)[0] is None


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A ROUTER on ``tmp_path/control`` that answers every request with an id-less error."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path / 'control'}")
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, payload = router.recv_multipart()
                seen.append(payload)
                error = {"code": "bad-request", "message": "request too large"}
                router.send_multipart([identity, commands.encode_reply("", error=error)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield tmp_path, seen
    finally:
        stop.set()
        thread.join()
        router.close(0)
        context.term()


def test_an_error_without_an_id_ends_the_wait_at_once(
    fake_daemon: tuple[Path, list[bytes]],
) -> None:
    """Such an error can only answer a request of this socket that the daemon could not read."""
    runtime, seen = fake_daemon
    with ControlClient(runtime, timeout=20) as client, pytest.raises(ZsvcError) as caught:
        client.call("ping")
    assert caught.value.code == ErrorCode.BAD_REQUEST and len(seen) == 1


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["stop", "TX", "--timeout", "-1"], "--timeout"),
        (["stop", "TX", "--timeout=nan"], "--timeout"),
        (["start", "TX", "--timeout", "inf"], "--timeout"),
        (["restart", "TX", "--timeout", "0"], "--timeout"),
        (["logs", "TX", "-n", "-5"], "-n"),
        (["send", "--action", "request", "--timeout", "-2"], "--timeout"),
        (["shutdown", "--timeout", "nan"], "--timeout"),
        (["monitor", "--interval", "nan"], "--interval"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(
    argv: list[str], option: str, tmp_path: Path
) -> None:
    done = zsvc_cli(*argv, tmp_path=tmp_path)
    assert done.returncode == 2, (argv, done.returncode, done.stderr[-1500:])
    assert option in done.stderr and "Traceback" not in done.stderr


def test_the_value_rules() -> None:
    assert values.seconds(None) is None and values.seconds(0.5) == 0.5
    for bad in (0.0, -1.0, float("nan"), float("inf"), float("-inf")):
        with pytest.raises(values.BadValue, match="positive, finite"):
            values.seconds(bad)
    assert values.count(0) == 0 and values.count(None) is None
    with pytest.raises(values.BadValue, match="0 or more"):
        values.count(-5)


def test_the_fast_path_leaves_a_bad_timeout_to_typer() -> None:
    from zsvc.cli import fast

    for value in ("-1", "0", "nan", "inf"):
        assert fast.parse(["stop", "TX", "--timeout", value]) is None, value
    assert fast.parse(["stop", "TX", "--timeout", "2.5"]) is not None


def test_a_context_within_the_limit_whose_request_is_not_is_refused_at_exit_2(
    tmp_path: Path,
) -> None:
    """Each control character costs six bytes in the request's JSON: the CLI says so."""
    dense = tmp_path / "dense.xml"
    dense.write_bytes(b"\x01" * protocol.MAX_CONTEXT_BYTES)
    done = zsvc_cli("start", "-c", str(dense), tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "zsvc: start: request too large" in done.stderr


def test_logs_under_journald_leave_unprintable_lines_to_journalctl() -> None:
    """``zsvc logs`` under the systemd runner becomes journalctl, which shows a line with
    control characters as ``[N blob data]`` unless told ``--all``: it must never be told."""
    from zsvc.journal import journal_argv

    argv = journal_argv("TX", ["ts_1"], 5, follow=True)
    assert "--all" not in argv and "-a" not in argv
