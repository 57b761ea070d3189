"""The man page and the bash completion, generated from the CLI itself.

The commands, their options and their help texts are declared once, in
:mod:`zsvc.cli.app`; the package build (``debian/rules``) and ``zsvc
completion bash`` render them here, so that neither the manual nor the
completion can drift from what the program accepts.

``python3 -m zsvc.cli.docgen man|bash`` prints one of them. Only the
attributes that click 8 commands have in every typer release (``commands``,
``params``, ``opts``, ``help``) are read: typer 0.7 uses click, newer
releases a vendored copy, and zsvc never imports click itself.
"""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zsvc import __version__
from zsvc.errors import ExitCode

EXIT_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the command was carried out and failed (a task did not become ready, …)",
    ExitCode.BAD_INPUT: "bad input: a wrong option, or a context file that does not validate",
    ExitCode.UNREACHABLE: "the daemon cannot be reached (not running, or no permission)",
    ExitCode.UNKNOWN: "an unknown transaction or task",
}

ENVIRONMENT = {
    "ZSVC_RUNTIME_DIR": "the daemon's runtime directory (control socket, bus, lock); "
    "default /run/zsvc for root, $XDG_RUNTIME_DIR/zsvc otherwise",
    "ZSVC_STATE_DIR": "the daemon's state directory (transaction table, task logs); "
    "default /var/lib/zsvc for root, $XDG_STATE_HOME/zsvc otherwise",
    "ZSVC_ZYGOTE": "0: execute every Python task host instead of forking it from a warm process",
    "ZSVC_CGROUPS": "0: the embedded runner tracks task processes without cgroups",
}

FILES = {
    "/etc/zsvc/zsvc.conf": "the daemon's settings (runner, log level, durability)",
    "/run/zsvc/control.sock": "the control socket; group zsvc may use it",
    "/var/lib/zsvc/": "the transaction table (SQLite) and, with the embedded runner, task logs",
    "/lib/systemd/system/zsvc.service": "the daemon's unit",
}


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    metavar: str | None
    help: str


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: tuple[str, ...]
    options: tuple[Option, ...]


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def _describe(name: str, command: Any) -> Command:
    """A click command as plain data: what the man page and the completion need."""
    arguments: list[str] = []
    options: list[Option] = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        names = tuple(n for n in (*param.opts, *param.secondary_opts) if n.startswith("-"))
        # The seed's underscore spellings (--service_name) are accepted, not advertised.
        names = tuple(n for n in names if "_" not in n) or names
        if not names:
            metavar = (param.metavar or param.name or "argument").upper()
            arguments.append(f"[{metavar}]" if not param.required else metavar)
            continue
        takes_value = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
        metavar = (param.metavar or param.name or "value").upper() if takes_value else None
        options.append(Option(names, metavar, _first_paragraph(getattr(param, "help", ""))))
    return Command(name, _first_paragraph(command.help), tuple(arguments), tuple(options))


def commands_of(group: Any) -> list[Command]:
    """Every visible subcommand of the CLI's top-level group, by name."""
    return [
        _describe(name, command)
        for name, command in sorted(group.commands.items())
        if not getattr(command, "hidden", False)
    ]


def cli_group() -> Any:
    """The click group behind the typer app (imported lazily: typer is slow to import)."""
    from typer.main import get_command

    from zsvc.cli.app import app

    return get_command(app)


# --------------------------------------------------------------------------- man page


def _roff(text: str) -> str:
    """Text safe in a roff line: backslashes, hyphens and leading control characters."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text)


def _option_line(option: Option) -> str:
    names = ", ".join(f"\\fB{_roff(name)}\\fR" for name in option.names)
    return f"{names} \\fI{_roff(option.metavar)}\\fR" if option.metavar else names


def man_page(commands: Iterable[Command], date: datetime.date | None = None) -> str:
    """zsvc(1) in roff (man macros)."""
    day = (date or datetime.date.today()).isoformat()
    out = [
        f'.TH ZSVC 1 "{day}" "zsvc {__version__}" "User Commands"',
        ".SH NAME",
        "zsvc \\- transactions of small task services on a ZeroMQ bus",
        ".SH SYNOPSIS",
        ".B zsvc",
        ".I command",
        "[\\fIoptions\\fR] [\\fIarguments\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "zsvc starts transactions: groups of task services declared in an XML context"
            " file, each a supervised process that reports readiness with sd_notify. A"
            " daemon (zsvc daemon, or the unit zsvc.service) owns the bus, the transaction"
            " table and the runner: on a systemd host every task is a transient unit whose"
            " output is in the journal (journalctl ZSVC_TRANSACTION=<id>); otherwise the"
            " daemon runs the tasks itself. Membership of the group zsvc is the permission"
            " to use the system daemon."
        ),
        ".SH COMMANDS",
    ]
    for command in commands:
        usage = " ".join(_roff(argument) for argument in command.arguments)
        out += [".TP", f"\\fBzsvc {_roff(command.name)}\\fR [\\fIoptions\\fR] {usage}".rstrip()]
        out.append(_roff(command.help) if command.help else "")
        for option in command.options:
            out += [".RS", ".TP", _option_line(option), _roff(option.help), ".RE"]
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_MEANINGS.items():
        out += [".TP", f"\\fB{int(code)}\\fR", _roff(meaning)]
    out.append(".SH ENVIRONMENT")
    for name, meaning in ENVIRONMENT.items():
        out += [".TP", f"\\fB{_roff(name)}\\fR", _roff(meaning)]
    out.append(".SH FILES")
    for path, meaning in FILES.items():
        out += [".TP", f"\\fI{_roff(path)}\\fR", _roff(meaning)]
    out += [
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsystemd.service\\fR(5),"
        " /usr/share/doc/zsvc/",
    ]
    return "\n".join(line for line in out if line) + "\n"


# --------------------------------------------------------------------------- bash completion


def bash_completion(commands: Iterable[Command]) -> str:
    """A static bash completion: commands, each command's options, and transaction ids.

    Transaction ids come from ``zsvc status --json`` (the fast path, no typer
    import) with a one-second timeout, so completion never hangs on a daemon
    that does not answer.
    """
    cases = []
    for command in commands:
        words = " ".join(name for option in command.options for name in option.names)
        cases.append(f'        {command.name}) opts="{words} --help" ;;')
    names = " ".join(command.name for command in commands)
    body = "\n".join(cases)
    return f"""# bash completion for zsvc {__version__} (generated by zsvc.cli.docgen)
_zsvc_transactions() {{
    timeout 1 zsvc status --json 2>/dev/null \\
        | python3 -c 'import json, sys
try:
    for t in json.load(sys.stdin).get("transactions", []):
        print(t.get("id", ""))
except Exception:
    pass' 2>/dev/null
}}

_zsvc() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" command="" opts="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${{COMP_WORDS[i]}} != -* ]]; then command=${{COMP_WORDS[i]}}; break; fi
    done
    if [[ -z $command ]]; then
        COMPREPLY=($(compgen -W "{names} --help --version" -- "$cur"))
        return
    fi
    case $command in
{body}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ ${{COMP_WORDS[COMP_CWORD-1]}} == --context* ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_zsvc_transactions)" -- "$cur"))
    fi
}}
complete -o default -F _zsvc zsvc
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["man"], ["bash"]):
        print("usage: python3 -m zsvc.cli.docgen man|bash", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    commands = commands_of(cli_group())
    sys.stdout.write(man_page(commands) if args == ["man"] else bash_completion(commands))
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
