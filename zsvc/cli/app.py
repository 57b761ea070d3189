"""The ``zsvc`` command line: parse, call the daemon, render.

Each command is thin: it builds a control request (:mod:`zsvc.commands`),
sends it with :class:`zsvc.client.ControlClient`, and renders the result
(:mod:`zsvc.cli.render`). Exit statuses are documented and stable:
0 ok, 1 operation failed, 2 bad usage or input, 3 daemon unreachable,
4 unknown transaction or task.

Written for typer 0.7 (Debian 12) as well as today's: default-value
options, no ``Annotated``, and never ``import click``. The seed's
underscore spellings (``--context_file``, ``--service_id``, …) are aliases.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from zsvc import __version__
from zsvc.cli import actions, values
from zsvc.cli.text import printable
from zsvc.client import CONNECT_ENV, KEYS_ENV
from zsvc.errors import ConfigError, DaemonUnreachable, ExitCode, ZsvcError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="zsvc: transactions of small task services.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, Any] = {"runtime_dir": None}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zsvc {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    runtime_dir: Path = typer.Option(
        None, "--runtime-dir", envvar="ZSVC_RUNTIME_DIR", help="The daemon's runtime directory."
    ),
    connect: str = typer.Option(
        None,
        "--connect",
        envvar=CONNECT_ENV,
        metavar="tcp://HOST:PORT",
        help="A daemon on another host: its [control] listen endpoint (CURVE).",
    ),
    keys: Path = typer.Option(
        None,
        "--keys",
        envvar=KEYS_ENV,
        help="With --connect: your NAME.key_secret (server.key beside it), or their directory.",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """zsvc: transactions of small task services on a ZeroMQ bus."""
    _state["runtime_dir"] = runtime_dir
    # Every control client of this command reads them (zsvc.client.open_control).
    for name, value in ((CONNECT_ENV, connect), (KEYS_ENV, keys)):
        if value is not None:
            os.environ[name] = str(value)


def _seconds(param: typer.CallbackParam, value: float | None) -> float | None:
    """A timeout or interval option: positive and finite (:func:`zsvc.cli.values.seconds`),
    else a usage error naming the option (exit 2)."""
    try:
        return values.seconds(value)
    except values.BadValue as exc:
        raise typer.BadParameter(str(exc), param=param) from None


def _count(param: typer.CallbackParam, value: int | None) -> int | None:
    """A count option: 0 or more (:func:`zsvc.cli.values.count`), else a usage error (exit 2)."""
    try:
        return values.count(value)
    except values.BadValue as exc:
        raise typer.BadParameter(str(exc), param=param) from None


def _call(command: str, wait: float = 10.0, **args: Any) -> Any:
    """Run *command* in the daemon (:func:`zsvc.cli.actions.call`: one way to report errors)."""
    try:
        return actions.call(_state["runtime_dir"], command, wait, **args)
    except actions.CommandFailed as failed:
        raise typer.Exit(failed.code) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


# --- transactions ----------------------------------------------------------------------


@app.command()
def start(
    transaction: str = typer.Argument(None, help="Transaction id (generated for a new one)."),
    context: Path = typer.Option(None, *actions.CONTEXT_OPTION, help="Context file."),
    service: list[str] = typer.Option(
        [], *actions.SERVICE_OPTION, help="Start only these task ids."
    ),
    no_block: bool = typer.Option(False, "--no-block", help="Do not wait for readiness."),
    timeout: float = typer.Option(
        None, "--timeout", callback=_seconds, help="Seconds to wait for readiness."
    ),
    keep_going: bool = typer.Option(
        False, "--keep-going", help="When a task fails to start, leave the others running."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the transaction as JSON."),
) -> None:
    """Start a transaction: a new one from --context, or a known one again.

    Tasks start in their 'after' order and the command returns once every
    one is ready. If one fails, what was started is stopped again (in
    reverse order) and the command exits 1 naming the task and why.
    """
    raise typer.Exit(
        actions.start(
            _state["runtime_dir"],
            transaction,
            context,
            list(service),
            no_block,
            timeout,
            keep_going,
            as_json,
        )
    )


@app.command()
def stop(
    transaction: str = typer.Argument(..., help="Transaction id."),
    service: list[str] = typer.Option(
        [], *actions.SERVICE_OPTION, help="Stop only these task ids."
    ),
    timeout: float = typer.Option(
        None, "--timeout", callback=_seconds, help="Stop timeout per task (seconds)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the transaction as JSON."),
) -> None:
    """Stop a transaction, or some of its tasks."""
    raise typer.Exit(
        actions.stop(_state["runtime_dir"], transaction, list(service), timeout, as_json)
    )


@app.command()
def restart(
    transaction: str = typer.Argument(..., help="Transaction id."),
    service: list[str] = typer.Option(
        [], *actions.SERVICE_OPTION, help="Restart only these task ids."
    ),
    timeout: float = typer.Option(
        None, "--timeout", callback=_seconds, help="Seconds to wait per phase."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the transaction as JSON."),
) -> None:
    """Stop, then start, a transaction or some of its tasks."""
    raise typer.Exit(
        actions.restart(_state["runtime_dir"], transaction, list(service), timeout, as_json)
    )


@app.command()
def status(
    transaction: str = typer.Argument(None, help="Only this transaction."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a stable interface)."),
) -> None:
    """Show transactions and their tasks."""
    from zsvc.cli.fast import show_status

    raise typer.Exit(show_status(_state["runtime_dir"], transaction, as_json))


@app.command()
def monitor(
    transaction: str = typer.Argument(None, help="Only this transaction."),
    interval: float = typer.Option(
        1.0,
        "--interval",
        "-i",
        min=0.5,
        callback=_seconds,
        help="Seconds between two updates of the view.",
    ),
    once: bool = typer.Option(False, "--once", help="Print one sample and exit."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line and sample."),
    count: int = typer.Option(
        None, "--count", min=1, callback=_count, help="Exit after this many samples."
    ),
) -> None:
    """Live CPU, memory, threads, children and fds of every task, per transaction.

    The daemon samples only while something watches (this command, or any
    subscriber of the bus topic 'monitor'); see docs/monitor.md.
    """
    from zsvc.cli.monitor import run_monitor

    _not_remote("monitor", "reads the daemon's bus")

    raise typer.Exit(
        run_monitor(_state["runtime_dir"], transaction, interval, once, as_json, count)
    )


@app.command()
def forget(transaction: str = typer.Argument(..., help="Transaction id.")) -> None:
    """Remove a stopped transaction from the table."""
    _call("forget", transaction=transaction)
    typer.echo(f"forgot {transaction}")


@app.command()
def logs(
    transaction: str = typer.Argument(..., help="Transaction id."),
    service: list[str] = typer.Option(
        [], "--service", "-s", "--service_id", "--service-id", help="Only these task ids."
    ),
    lines: int = typer.Option(
        20, "-n", "--lines", callback=_count, help="How many last lines per task."
    ),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
) -> None:
    """Print the tasks' output (journald under the systemd runner, else the log files)."""
    from zsvc.cli.logview import show_journal, show_logs

    result = _call("logs", transaction=transaction, services=list(service))
    if os.environ.get(CONNECT_ENV):  # the output is on the daemon's host, not on this one
        where = os.environ[CONNECT_ENV]
        if "journal" in result:
            typer.echo(f"on the daemon's host ({where}): journalctl ZSVC_TRANSACTION={transaction}")
        for entry in result.get("logs", []):
            typer.echo(f"on the daemon's host ({where}): {entry['task']}: {entry['path']}")
        return
    if "journal" in result:
        raise typer.Exit(show_journal(result["journal"], lines, follow))
    show_logs(result["logs"], lines, follow)


# --- the seed's conf_command ------------------------------------------------------------


@app.command()
def send(
    action: str = typer.Option(..., "--action", help="start, stop, restart, exit, request, …"),
    service_name: str = typer.Option(
        "context", "--service-name", "--service_name", help="context, state, or a task's name."
    ),
    transaction: str = typer.Option(None, "--transaction", help="Transaction id."),
    context_file: Path = typer.Option(
        None, "--context-file", "--context_file", help="Context file (context start)."
    ),
    service_id: str = typer.Option(
        None, "--service-id", "--service_id", help="The context id or a task id."
    ),
    task_id: list[str] = typer.Option(
        [], "--task-id", "--task_id", help="Only these tasks (context actions)."
    ),
    endpoint: str = typer.Option(
        None,
        "--endpoint",
        help="Bus endpoint to publish to (default: the daemon's); a question on 'state'"
        " always goes to the daemon's, the only bus it answers on.",
    ),
    topic: str = typer.Option("process", "--topic", help="Topic for a task message."),
    device_action: str = typer.Option(
        None, "--device-action", "--device_action", help="content.configuration.device_action"
    ),
    timeout: float = typer.Option(
        5.0, "--timeout", callback=_seconds, help="Seconds to wait for a reply."
    ),
) -> None:
    """Send a message as the seed's conf_command did; context actions use the control socket."""
    from zsvc.cli import send as sender

    if service_name == "context":
        _context_command(action, transaction, task_id, context_file)
        return
    _not_remote("send", f"--service-name {service_name} publishes on the daemon's bus")
    try:
        reply = sender.send_on_bus(
            runtime=_state["runtime_dir"],
            endpoint=endpoint,
            topic="state" if service_name == "state" else topic,
            action=action,
            service_name=service_name,
            service_id=service_id or "",
            transaction=transaction or "",
            device_action=device_action,
            timeout=timeout,
        )
    except (TimeoutError, DaemonUnreachable) as exc:
        typer.echo(f"zsvc: {exc}", err=True)
        raise typer.Exit(ExitCode.UNREACHABLE) from None
    if reply is not None:
        _print_json(reply)


def _context_command(
    action: str, transaction: str | None, task_ids: list[str], context_file: Path | None
) -> None:
    """``send --service_name context``: the control request it stands for, run and shown."""
    from zsvc.commands import context_request
    from zsvc.errors import BadRequest

    context = None
    if action == "start" and context_file is not None:
        try:
            context = actions.read_context(context_file)
        except actions.CommandFailed as failed:
            raise typer.Exit(failed.code) from None
    try:
        command, args = context_request(action, transaction, task_ids, context)
    except BadRequest as exc:
        typer.echo(f"zsvc: {exc.message}", err=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    if command.name == "shutdown":
        _call("shutdown")
        typer.echo("daemon stopping")
        return
    actions.show_transaction(_call(command.name, wait=310.0, **args), as_json=False)


# --- files and the daemon ------------------------------------------------------------------


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Context files to check.")) -> None:
    """Check context files without a daemon (exit 2 when any is invalid)."""
    bad = sum(not _validate_one(path) for path in files)
    if bad:
        raise typer.Exit(ExitCode.BAD_INPUT)


def _validate_one(path: Path) -> bool:
    """Check one file, read as ``zsvc start`` reads it (a regular file, at most
    MAX_CONTEXT_BYTES); print ``ok`` or its ``file:line:column`` issues."""
    from zsvc.config.loader import load_context_text
    from zsvc.errors import ConfigIssue

    try:
        context = load_context_text(actions.read_limited(path), path)
    except actions.FileRefused as exc:
        typer.echo(printable(str(ConfigIssue(str(path), 0, 0, exc.reason))), err=True)
        return False
    except OSError as exc:
        issue = ConfigIssue(str(path), 0, 0, f"cannot read file: {exc.strerror or exc}")
        typer.echo(printable(str(issue)), err=True)
        return False
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        return False
    typer.echo(f"{path}: ok ({len(context.tasks)} tasks)")
    return True


def _opt(help_text: str, *names: str) -> Any:
    """A create-service option in zsvc's spelling and the seed's (``--task-id``, ``--task_id``)."""
    spellings = [f"--{n}" for name in names for n in dict.fromkeys((name, name.replace("-", "_")))]
    return typer.Option(None, *spellings, help=help_text, show_default=False)


@app.command("create-service")
def create_service(
    service_path: Path = _opt("Root of Conf/ and Services/ (seed: service_path).", "service-path"),
    task_service: str = _opt("Service name: Services/<it>/, class Service<it>.", "task-service"),
    task_file: str = _opt("Module of the task class (default: the task service).", "task-file"),
    task_class: str = _opt("Task class name (default: the task service).", "task-class"),
    task_desc: str = _opt("Human-readable description.", "task-desc"),
    context_name: str = _opt("Context: Conf/Context-<it>.xml, its log name.", "context-name"),
    context_id: str = _opt("ContextID of a new context file (default context001).", "context-id"),
    service_name: str = _opt("The task's service_name on the bus.", "service-name"),
    server_ip: str = _opt("Bus address (default 127.0.0.1).", "server-ip"),
    sub_port: int = _opt("Port subscribers connect to (default 5556).", "sub-port"),
    pub_port: int = _opt("Port publishers connect to (default 5557).", "pub-port"),
    task_id: str = _opt("Task id in the context, e.g. ts_100.", "task-id"),
    device_action: str = _opt("The task's device_action.", "device-action"),
    task_type: str = _opt("Looped (default) or Single.", "task-type"),
    entry_action: str = _opt(
        "on_start (default): starts with its transaction; on_update, on_fail, on_exit: waits.",
        "entry-action",
    ),
    task_topic: str = _opt("Topic the task listens on (default process).", "task-topic"),
    xml_file: Path = _opt("Generate the services of a MetaServiceConf file instead.", "xml-file"),
    force: bool = typer.Option(False, "--force", help="Overwrite files that differ (your edits)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be written."),
) -> None:
    """Generate task services (Services/<name>/) and their context file (Conf/), ready to run."""
    from zsvc.cli.create import create_service as run
    from zsvc.scaffold.flags import Flags

    flags = Flags(
        service_path=service_path, task_service=task_service, task_file=task_file,
        task_class=task_class, task_desc=task_desc, context_name=context_name,
        context_id=context_id, service_name=service_name, server_ip=server_ip,
        sub_port=sub_port, pub_port=pub_port, task_id=task_id, device_action=device_action,
        task_type=task_type, entry_action=entry_action, task_topic=task_topic,
    )  # fmt: skip
    raise typer.Exit(run(flags, xml_file, force=force, dry_run=dry_run, echo=typer.echo))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def daemon(ctx: typer.Context) -> None:
    """Run the daemon (see 'zsvc daemon --help'); --detach runs it in the background."""
    argv = [sys.executable, "-m", "zsvc.daemon", *ctx.args]
    if _state["runtime_dir"] is not None and "--runtime-dir" not in ctx.args:
        argv += ["--runtime-dir", str(_state["runtime_dir"])]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


@app.command()
def shutdown(
    wait: bool = typer.Option(False, "--wait", help="Return once the daemon has exited."),
    timeout: float = typer.Option(
        120.0, "--timeout", callback=_seconds, help="Seconds to wait with --wait."
    ),
) -> None:
    """Stop every task, then the daemon."""
    import time

    from zsvc.client import socket_listening
    from zsvc.paths import RuntimeLayout, client_runtime_dir

    _call("shutdown")
    if not wait:
        typer.echo("daemon stopping")
        return
    deadline = time.monotonic() + timeout
    if os.environ.get(CONNECT_ENV):  # no socket file to watch on another host
        still_there = _answers_ping
    else:
        control = RuntimeLayout(client_runtime_dir(_state["runtime_dir"])).control
        still_there = functools.partial(socket_listening, control)
    while still_there():  # the daemon closes its sockets last, after every task stopped
        if time.monotonic() > deadline:
            typer.echo(f"zsvc: the daemon is still running after {timeout:g} s", err=True)
            raise typer.Exit(ExitCode.FAILED)
        time.sleep(0.05)
    typer.echo("daemon stopped")


def _not_remote(command: str, why: str) -> None:
    """Refuse (exit 2) what --connect cannot carry: the bus is not the control endpoint."""
    if os.environ.get(CONNECT_ENV):
        typer.echo(
            f"zsvc: {command} {why}, not the control endpoint: run it on the daemon's host"
            " (--connect carries the control commands only)",
            err=True,
        )
        raise typer.Exit(ExitCode.BAD_INPUT)


def _answers_ping() -> bool:
    """Whether the daemon of ``--connect`` still answers (within a second)."""
    from zsvc.client import open_control

    try:
        with open_control(None, 1.0) as client:
            client.call("ping")
    except DaemonUnreachable:
        return False
    except ZsvcError:  # answered, if only to say that it is closing
        return True
    return True


@app.command()
def reexec(
    timeout: float = typer.Option(
        60.0, "--timeout", callback=_seconds, help="Seconds to wait for the new daemon."
    ),
) -> None:
    """Execute the daemon anew, with its code and settings from disk; every task keeps
    running. Returns once the new daemon answers ('systemctl reload zsvc' runs this)."""
    try:
        new = actions.reexec(_state["runtime_dir"], timeout)
    except actions.CommandFailed as failed:
        raise typer.Exit(failed.code) from None
    typer.echo(f"daemon executed anew (pid {new.get('pid')}): {new.get('status', '')}")


@app.command()
def keys(
    directory: Path = typer.Argument(
        None, help="Keys directory (default /etc/zsvc/keys as root, else ~/.config/zsvc/keys)."
    ),
    client: list[str] = typer.Option(
        [], "--client", help="Create keys for this client and admit it (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace keys that exist."),
) -> None:
    """Create CURVE keys, so the bus may be bound beyond loopback for admitted clients."""
    from zsvc import curve
    from zsvc.paths import keys_dir

    where = keys_dir(directory)
    names = list(client) or ([] if curve.admitted(where) else ["client"])
    try:
        created = curve.create(where, names, force)
    except curve.KeysError as exc:
        typer.echo(f"zsvc: {exc}", err=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    server = "created" if created.server else "kept"
    typer.echo(f"{where}/server.key: the daemon's public key ({server}); clients need it")
    for name in created.clients:
        typer.echo(
            f"{where}/clients/{name}.key_secret: client {name!r}, admitted; copy it and"
            " server.key to its machine"
        )
    typer.echo(f"admitted clients: {', '.join(curve.admitted(where)) or 'none'}")
    typer.echo(
        f"the daemon uses them with, in its settings:\n  [bus]\n  curve_keys = {where}\n"
        "then 'systemctl reload zsvc' (or restart 'zsvc daemon')"
    )


@app.command()
def ping() -> None:
    """Check that the daemon answers."""
    _print_json(_call("ping"))
