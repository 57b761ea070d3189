"""``zsvc create-service``: the command's body, kept out of ``app.py`` (typer-free, testable).

Input (flags or ``--xml-file``) → :class:`~zsvc.scaffold.model.Request` →
:func:`~zsvc.scaffold.plan.make_plan` → print (``--dry-run``) or
:func:`~zsvc.scaffold.write.apply`. Refusals exit 2 and write nothing; a
write that fails exits 1 and leaves the files as they were.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from zsvc.errors import ExitCode
from zsvc.scaffold.flags import Flags, request_from_flags
from zsvc.scaffold.metaconf import load_metaconf
from zsvc.scaffold.model import Problem, Request, ScaffoldError
from zsvc.scaffold.plan import Change, Plan, make_plan
from zsvc.scaffold.write import WriteError, apply, read_file

Echo = Callable[..., None]

_DONE = {Change.CREATE: "created", Change.UPDATE: "updated", Change.UNCHANGED: "unchanged"}
_WOULD = {
    Change.CREATE: "would create",
    Change.UPDATE: "would overwrite",
    Change.UNCHANGED: "unchanged",
}


def create_service(
    flags: Flags, xml_file: Path | None, *, force: bool, dry_run: bool, echo: Echo
) -> int:
    """Run the command; the return value is the exit status."""
    try:
        plan = make_plan(_request(flags, xml_file), read_file, force=force)
    except ScaffoldError as exc:
        echo(str(exc), err=True)
        echo("zsvc: create-service wrote nothing", err=True)
        return ExitCode.BAD_INPUT
    if dry_run:
        _show(plan, _WOULD, echo)
        return ExitCode.OK
    try:
        apply(plan)
    except WriteError as exc:
        echo(f"zsvc: {exc.message}", err=True)
        return ExitCode.FAILED
    _show(plan, _DONE, echo)
    context = _shown(plan.request.context_file)
    echo(f"check it with 'zsvc validate {context}', run it with 'zsvc start --context {context}'")
    return ExitCode.OK


def _request(flags: Flags, xml_file: Path | None) -> Request:
    if xml_file is None:
        return request_from_flags(flags)
    extra = flags.given()
    if extra:
        message = "--xml-file gives the services; leave out " + ", ".join(extra)
        raise ScaffoldError([Problem("--xml-file", message)])
    return load_metaconf(xml_file, flags.service_path)


def _show(plan: Plan, words: dict[Change, str], echo: Echo) -> None:
    width = max(len(word) for word in words.values())
    for change in plan.files:
        echo(f"{words[change.change]:<{width}}  {_shown(change.path)}")


def _shown(path: Path) -> str:
    """*path* relative to the working directory when it is inside it."""
    try:
        return str(path.relative_to(Path(os.getcwd())))
    except ValueError:
        return str(path)
