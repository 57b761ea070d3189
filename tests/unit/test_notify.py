"""zsvc.notify: the sd_notify client, the wire format and the daemon's notify socket.

Real sockets throughout. Every wait goes through select() with a timeout, so a
regression fails the test instead of hanging it.
"""

from __future__ import annotations

import array
import errno
import os
import select
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc import notify
from zsvc.notify import (
    Notification,
    NotifyProtocolError,
    NotifyServer,
    RawNotification,
    parse_notification,
    sd_notify,
    tell_supervisor,
    watchdog_interval,
)

WAIT = 2.0
"""Upper bound of any single wait; everything here normally takes milliseconds."""


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NotifyServer]:
    with NotifyServer(tmp_path / "notify") as srv:
        yield srv


def abstract_name() -> str:
    return f"@zsvc-test-{uuid.uuid4().hex}"


def env_for(server: NotifyServer) -> dict[str, str]:
    return {"NOTIFY_SOCKET": server.path}


def wait_readable(fd: int, timeout: float = WAIT) -> None:
    readable, _, _ = select.select([fd], [], [], timeout)
    assert readable, f"fd {fd} not readable within {timeout}s"


def is_readable(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def receive_one(server: NotifyServer) -> Notification:
    wait_readable(server.fileno())
    notification = server.receive()
    assert notification is not None
    return notification


def receive_error(server: NotifyServer) -> NotifyProtocolError:
    wait_readable(server.fileno())
    with pytest.raises(NotifyProtocolError) as info:
        server.receive()
    return info.value


def send_raw(server: NotifyServer, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send bytes that sd_notify() would refuse to build, optionally with SCM_RIGHTS."""
    address = notify._socket_address(server.path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # Not socket.send_fds(): Python 3.11's version ignores its address argument.
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sock.sendmsg([data], ancillary, 0, address)


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- client → server


def test_round_trip_reports_sender_pid_and_uid(server: NotifyServer) -> None:
    assert sd_notify("READY=1", "STATUS=up and running", environ=env_for(server)) is True

    notification = receive_one(server)

    assert notification.pid == os.getpid()
    assert notification.uid == os.getuid()
    assert notification.fields == {"READY": "1", "STATUS": "up and running"}
    assert notification.ready
    assert notification.status == "up and running"
    assert server.receive() is None  # one call, one datagram


def test_sd_notify_reads_os_environ_by_default(
    server: NotifyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", server.path)

    assert sd_notify("STATUS=from os.environ")

    assert receive_one(server).status == "from os.environ"


def test_notification_from_child_process_has_child_pid(server: NotifyServer) -> None:
    code = textwrap.dedent(
        """
        import os
        from zsvc.notify import sd_notify
        sd_notify("READY=1", f"MAINPID={os.getpid()}")
        """
    )
    repo_root = Path(notify.__file__).resolve().parents[1]
    env = {**os.environ, "NOTIFY_SOCKET": server.path, "PYTHONPATH": str(repo_root)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        notification = receive_one(server)
        assert child.wait(timeout=WAIT) == 0
    finally:
        child.kill()
        child.wait(timeout=WAIT)

    assert notification.pid == child.pid != os.getpid()
    assert notification.main_pid == child.pid
    assert notification.ready


def test_abstract_namespace_address() -> None:
    name = abstract_name()
    with NotifyServer(name) as server:
        assert server.path == name
        assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": name})
        assert receive_one(server).pid == os.getpid()
    assert not Path(name).exists()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_no_notify_socket_returns_false(environ: dict[str, str]) -> None:
    assert sd_notify("READY=1", environ=environ) is False


def test_no_notify_socket_in_os_environ_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_send_to_missing_socket_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "absent")})


@pytest.mark.parametrize("address", ["relative/path", "@", "vsock:2:1234"])
def test_unsupported_address_raises_einval(address: str) -> None:
    with pytest.raises(OSError) as info:
        sd_notify("READY=1", environ={"NOTIFY_SOCKET": address})
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        ((), "at least one"),
        (("READY=1\nSTATUS=x",), "newline"),
        (("READY",), "no '='"),
        (("READY=1", "STATUS"), "no '='"),
        (("=1",), "invalid key ''"),
        (("ready=1",), "invalid key 'ready'"),
        (("STATUS=a\0b",), "NUL"),
    ],
)
def test_invalid_assignments_raise_and_send_nothing(
    server: NotifyServer, assignments: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sd_notify(*assignments, environ=env_for(server))
    assert not is_readable(server.fileno())


# --------------------------------------------------------------------------- the daemon's policy


def test_tell_supervisor_sends_one_datagram(
    server: NotifyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", server.path)
    tell_supervisor("READY=1", "STATUS=2 transactions, 3 tasks up")
    assert receive_one(server).fields == {"READY": "1", "STATUS": "2 transactions, 3 tasks up"}


def test_tell_supervisor_without_a_supervisor_is_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    tell_supervisor("READY=1")
    assert not caplog.records


def test_a_supervisor_gone_away_is_not_the_daemons_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """'zsvc daemon --detach' returned (its socket removed) or no longer reads (refused)."""
    refusing = tmp_path / "refusing"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(refusing))  # closed at once: the file stays, connect() is refused
    for path in (tmp_path / "absent", refusing):
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        tell_supervisor("WATCHDOG=1")
    assert not caplog.records


def test_any_other_failure_is_logged_and_the_daemon_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")  # EINVAL
    tell_supervisor("STOPPING=1")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "sd_notify failed" in caplog.records[0].getMessage()


def test_an_assignment_the_protocol_cannot_carry_is_a_bug_and_raises(
    server: NotifyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", server.path)
    with pytest.raises(ValueError, match="newline"):
        tell_supervisor("STATUS=two\nlines")
    assert not is_readable(server.fileno())


# --------------------------------------------------------------------------- server


def test_socket_file_mode_is_0660(server: NotifyServer) -> None:
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_close_unlinks_and_is_idempotent(tmp_path: Path) -> None:
    server = NotifyServer(tmp_path / "notify")
    assert server.fileno() >= 0

    server.close()
    server.close()

    assert server.fileno() == -1
    assert not (tmp_path / "notify").exists()


def test_close_leaves_a_newer_servers_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    old = NotifyServer(path)
    with NotifyServer(path) as new:  # replaces the file old bound
        old.close()
        assert path.exists()
        assert sd_notify("READY=1", environ=env_for(new))
        assert receive_one(new).ready


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stale:
        stale.bind(str(path))  # closed below without unlinking, like a crashed daemon

    with NotifyServer(path) as server:
        assert sd_notify("READY=1", environ=env_for(server))
        assert receive_one(server).ready


def test_refuses_to_replace_a_non_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    path.write_text("precious")

    with pytest.raises(FileExistsError):
        NotifyServer(path)
    assert path.read_text() == "precious"


def test_receive_returns_none_when_nothing_is_waiting(server: NotifyServer) -> None:
    assert server.receive() is None
    assert server.drain() == []


def test_burst_of_500_is_drained_in_order(server: NotifyServer) -> None:
    count = 500
    failures: list[BaseException] = []

    def send_all() -> None:
        # A thread: with the default net.unix.max_dgram_qlen (10) a blocking
        # sender waits for the reader, so sender and reader must run concurrently.
        try:
            for number in range(count):
                sd_notify(f"STATUS={number}", environ=env_for(server))
        except OSError as exc:
            failures.append(exc)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    received: list[Notification | NotifyProtocolError] = []
    while len(received) < count and not failures:
        wait_readable(server.fileno())
        received.extend(server.drain())
    sender.join(WAIT)

    assert not failures
    assert not sender.is_alive()
    assert [item.status for item in received if isinstance(item, Notification)] == [
        str(number) for number in range(count)
    ]
    assert server.receive() is None


def test_drain_respects_max_count(server: NotifyServer) -> None:
    for number in range(3):
        sd_notify(f"STATUS={number}", environ=env_for(server))
    wait_readable(server.fileno())

    first = server.drain(max_count=2)
    rest = server.drain()

    assert [item.status for item in first if isinstance(item, Notification)] == ["0", "1"]
    assert [item.status for item in rest if isinstance(item, Notification)] == ["2"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"STATUS=caf\xe9!", "not valid UTF-8: invalid continuation byte at byte 10 (b'\\xe9')"),
        (b"READY=1\nSTATUS", "line 2: no '=' in 'STATUS'"),
        (b"ready=1", "line 1: invalid key 'ready' (expected A-Z, 0-9 and '_')"),
        (b"READY=1\n=1", "line 2: empty key in '=1'"),
        (b"READY=1\0", "NUL byte at character 7"),
    ],
)
def test_malformed_datagram_raises_and_server_keeps_working(
    server: NotifyServer, data: bytes, reason: str
) -> None:
    send_raw(server, data)

    error = receive_error(server)

    assert error.reason == reason
    assert error.pid == os.getpid()
    assert str(error) == f"notification from pid {os.getpid()}: {reason}"
    assert sd_notify("READY=1", environ=env_for(server))
    assert receive_one(server).ready


def test_drain_keeps_errors_in_arrival_order(server: NotifyServer) -> None:
    sd_notify("STATUS=first", environ=env_for(server))
    send_raw(server, b"STATUS")
    sd_notify("STATUS=last", environ=env_for(server))
    wait_readable(server.fileno())

    first, error, last = server.drain()

    assert isinstance(first, Notification) and first.status == "first"
    assert isinstance(error, NotifyProtocolError) and "no '='" in str(error)
    assert isinstance(last, Notification) and last.status == "last"


def test_drain_raw_names_the_sender_before_anything_is_parsed(server: NotifyServer) -> None:
    # Issue 19, finding 14: a runner applies a per-task budget before paying for parsing.
    send_raw(server, b"STATUS=caf\xe9!")
    sd_notify("STATUS=fine", environ=env_for(server))
    wait_readable(server.fileno())

    bad, good = server.drain_raw(max_count=5)

    assert isinstance(bad, RawNotification) and isinstance(good, RawNotification)
    assert (bad.pid, bad.uid, bad.data) == (os.getpid(), os.getuid(), b"STATUS=caf\xe9!")
    with pytest.raises(NotifyProtocolError) as info:
        bad.parse()
    assert info.value.pid == os.getpid() and "UTF-8" in info.value.reason
    assert good.parse().status == "fine"
    assert server.receive_raw() is None


def test_oversized_datagram_is_reported_as_truncated(server: NotifyServer) -> None:
    send_raw(server, b"STATUS=" + b"x" * notify.MAX_DATAGRAM_BYTES)

    error = receive_error(server)

    assert "truncated" in str(error)
    assert error.pid == os.getpid()


def test_datagram_without_credentials_is_an_error(server: NotifyServer) -> None:
    # The same open socket through a second descriptor: turning SO_PASSCRED off
    # is the only way to get a datagram without SCM_CREDENTIALS.
    with socket.socket(fileno=os.dup(server.fileno())) as alias:
        alias.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
        send_raw(server, b"READY=1")
        error = receive_error(server)
        alias.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    assert "without SCM_CREDENTIALS" in str(error)
    assert error.pid is None
    assert sd_notify("READY=1", environ=env_for(server))
    assert receive_one(server).pid == os.getpid()


def test_descriptors_passed_with_fdstore_are_closed(server: NotifyServer) -> None:
    before = open_fd_count()
    read_end, write_end = os.pipe()
    extra = os.open(os.devnull, os.O_RDONLY)
    try:
        send_raw(server, b"FDSTORE=1\nFDNAME=pipe", fds=[write_end, extra])
        os.close(write_end)
        os.close(extra)

        notification = receive_one(server)

        assert notification.fields == {"FDSTORE": "1", "FDNAME": "pipe"}
        assert open_fd_count() == before + 1  # only our read_end is left
        # The only other write end was the server's copy: EOF proves it was closed.
        wait_readable(read_end)
        assert os.read(read_end, 1) == b""
    finally:
        os.close(read_end)
    assert open_fd_count() == before


def test_descriptors_are_closed_even_when_the_datagram_is_malformed(
    server: NotifyServer,
) -> None:
    before = open_fd_count()
    fd = os.open(os.devnull, os.O_RDONLY)
    send_raw(server, b"fdstore=1", fds=[fd])
    os.close(fd)

    receive_error(server)

    assert open_fd_count() == before


# --------------------------------------------------------------------------- watchdog


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "{pid}"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "1.5"}, None),
        ({"WATCHDOG_USEC": " 3000000"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": "{pid}"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    values = {"pid": os.getpid(), "other": os.getpid() + 1}
    resolved = {key: value.format(**values) for key, value in environ.items()}
    assert watchdog_interval(resolved) == expected


def test_watchdog_interval_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 0.5


# --------------------------------------------------------------------------- wire format


def test_parse_skips_empty_lines_and_later_assignments_win() -> None:
    data = b"\nSTATUS=one\n\nREADY=1\nSTATUS=two=2\nERRNO=\n"
    assert parse_notification(data) == {"STATUS": "two=2", "READY": "1", "ERRNO": ""}


def test_parse_empty_datagram() -> None:
    assert parse_notification(b"") == {}


def test_long_offending_line_is_shortened_in_the_message() -> None:
    with pytest.raises(NotifyProtocolError) as info:
        parse_notification(b"X" * 10_000)
    assert len(str(info.value)) < 200
    assert info.value.pid is None


def make(**fields: str) -> Notification:
    return Notification(pid=1234, uid=1000, fields=fields)


def test_flags() -> None:
    assert make(READY="1").ready
    assert not make(READY="0").ready
    assert make(STOPPING="1").stopping
    assert make(RELOADING="1").reloading
    assert make(WATCHDOG="1").watchdog_ping
    assert not make(WATCHDOG="1").watchdog_trigger
    assert make(WATCHDOG="trigger").watchdog_trigger
    assert not make(WATCHDOG="trigger").watchdog_ping
    empty = make()
    assert not (empty.ready or empty.stopping or empty.reloading or empty.watchdog_ping)


def test_status() -> None:
    assert make(STATUS="a = b").status == "a = b"
    assert make(STATUS="").status == ""
    assert make().status is None


@pytest.mark.parametrize(
    ("prop", "key", "value", "expected"),
    [
        ("errno", "ERRNO", "2", 2),
        ("errno", "ERRNO", "0", 0),
        ("errno", "ERRNO", "-2", None),
        ("errno", "ERRNO", "ENOENT", None),
        ("errno", "ERRNO", "99999999999", None),
        ("main_pid", "MAINPID", "4321", 4321),
        ("main_pid", "MAINPID", "0", None),
        ("main_pid", "MAINPID", "+12", None),
        ("main_pid", "MAINPID", "1_000", None),
        ("main_pid", "MAINPID", "١٢", None),  # non-ASCII digits int() would accept
        ("extend_timeout_usec", "EXTEND_TIMEOUT_USEC", "5000000", 5_000_000),
        ("extend_timeout_usec", "EXTEND_TIMEOUT_USEC", "18446744073709551616", None),
        ("extend_timeout_usec", "EXTEND_TIMEOUT_USEC", "", None),
        ("watchdog_usec", "WATCHDOG_USEC", "20000000", 20_000_000),
        ("watchdog_usec", "WATCHDOG_USEC", "20s", None),
    ],
)
def test_numeric_properties(prop: str, key: str, value: str, expected: int | None) -> None:
    assert getattr(make(**{key: value}), prop) == expected
    assert getattr(make(), prop) is None


keys = st.from_regex(r"[A-Z0-9_]+", fullmatch=True)
values = st.text(max_size=40).map(lambda text: text.replace("\n", "").replace("\0", ""))
assignment_lists = st.lists(st.tuples(keys, values), min_size=1, max_size=8)


@given(st.binary(max_size=200))
def test_parse_arbitrary_bytes_returns_dict_or_raises_protocol_error(data: bytes) -> None:
    try:
        fields = parse_notification(data)
    except NotifyProtocolError as exc:
        assert exc.reason
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


@given(assignment_lists)
def test_parse_round_trips_valid_assignments(pairs: list[tuple[str, str]]) -> None:
    assignments = [f"{key}={value}" for key, value in pairs]
    assert parse_notification(notify._encode_assignments(tuple(assignments))) == dict(pairs)


@settings(max_examples=25, deadline=None)
@given(assignment_lists)
def test_socket_round_trips_valid_assignments(pairs: list[tuple[str, str]]) -> None:
    name = abstract_name()
    with NotifyServer(name) as server:
        assert sd_notify(*(f"{key}={value}" for key, value in pairs), environ=env_for(server))
        assert receive_one(server).fields == dict(pairs)
