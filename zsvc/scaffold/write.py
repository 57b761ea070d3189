"""The I/O shell of create-service: read what exists, then write a plan all or nothing.

:func:`apply` writes in two phases so that an error leaves the tree as it was:

1. create the missing directories and write every new content to a
   temporary file beside its target (flushed with fsync);
2. rename each temporary file over its target (atomic per file).

If phase 1 fails, the temporary files and the directories it created are
removed. If a rename in phase 2 fails, the targets renamed so far get their
previous content back (or are removed when they did not exist), and the
same clean-up follows. Readers never see a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from zsvc.errors import ErrorCode, ZsvcError
from zsvc.scaffold.model import Problem, ScaffoldError
from zsvc.scaffold.plan import FileChange, Plan

FILE_MODE = 0o644


class WriteError(ZsvcError):
    """A file could not be written; nothing was changed (exit status 1)."""

    code = ErrorCode.FAILED


def read_file(path: Path) -> bytes | None:
    """The file's bytes, None when it does not exist; anything else is a clear refusal."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a parent is a file: reported when the directory is created
    except IsADirectoryError:
        problem = Problem(str(path), "is a directory; a file is to be written here")
        raise ScaffoldError([problem]) from None
    except OSError as exc:
        raise ScaffoldError([Problem(str(path), f"cannot read: {exc.strerror or exc}")]) from None


def apply(plan: Plan) -> tuple[FileChange, ...]:
    """Write every changed file of *plan*; return them. :class:`WriteError` leaves nothing."""
    writes = plan.writes
    created_dirs: list[Path] = []
    temporaries: dict[Path, Path] = {}
    try:
        for change in writes:
            _make_dirs(change.path.parent, created_dirs)
            temporaries[change.path] = _write_temporary(change)
    except OSError as exc:
        _discard(temporaries, created_dirs)
        raise WriteError(_describe(exc)) from None
    done: list[FileChange] = []
    try:
        for change in writes:
            os.replace(temporaries[change.path], change.path)
            del temporaries[change.path]
            done.append(change)
    except OSError as exc:
        _restore(done)
        _discard(temporaries, created_dirs)
        raise WriteError(_describe(exc)) from None
    return writes


def _describe(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "a file"
    return f"cannot write {where}: {exc.strerror or exc}; nothing was written"


def _make_dirs(directory: Path, created: list[Path]) -> None:
    """mkdir -p, remembering each directory it made (outermost first) for the clean-up."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


def _write_temporary(change: FileChange) -> Path:
    handle, name = tempfile.mkstemp(
        prefix=f".{change.path.name}.", suffix=".zsvc-new", dir=change.path.parent
    )
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(change.content)
            stream.flush()
            os.fsync(stream.fileno())
        mode = _mode_of(change.path)
        os.chmod(temporary, mode)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _mode_of(path: Path) -> int:
    """Keep an existing file's permissions; new files get 0644 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return FILE_MODE & ~umask


def _restore(done: list[FileChange]) -> None:
    """Undo the renames of phase 2: previous contents back, new files removed."""
    for change in reversed(done):
        with contextlib.suppress(OSError):
            if change.previous is None:
                change.path.unlink()
            else:
                temporary = _write_temporary(FileChange(change.path, change.previous, None))
                os.replace(temporary, change.path)


def _discard(temporaries: dict[Path, Path], created_dirs: list[Path]) -> None:
    for temporary in temporaries.values():
        with contextlib.suppress(OSError):
            temporary.unlink()
    for directory in reversed(created_dirs):
        with contextlib.suppress(OSError):
            directory.rmdir()
