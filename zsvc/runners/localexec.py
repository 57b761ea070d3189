"""The local runner's rules, without a process: how a task is executed, how its end is judged.

Everything here is a function of its arguments (and, for
:func:`executable_error`, of the files it looks at), so the unit tests
check it without starting anything; :mod:`zsvc.runners.local` and
:mod:`zsvc.runners.localtask` do the I/O around it:

* the task's environment (:func:`launch_environment`);
* the command line its first process executes (:func:`wrap_exec`): the
  program itself, or ``/bin/sh -c`` that first joins the task's cgroup, sets its
  open-files limit and its process settings (umask, nice, a private /tmp; the
  user through ``setpriv``), then ``exec``\\ s the program (same pid);
* what exec would say of a program the shell is to execute
  (:func:`executable_error`), and systemd's verdict on a start that failed
  (:func:`exec_failure`, :func:`chdir_failure`);
* systemd's verdict on how the main process ended (:func:`classify_exit`,
  :func:`adopted_exit`).

With the shell wrapper, an executable that cannot be found or run is
refused before the start (exit status 203, EXIT_EXEC, as without it); one
that disappears in between makes the shell exit with 127 (126: not
executable), and a file without a ``#!`` line is run by the shell instead of
failing (ENOEXEC). A task that cannot join its cgroup exits with 219
(EXIT_CGROUP), one whose open-files limit cannot be set with 205
(EXIT_LIMITS): :mod:`zsvc.runners.exitcodes`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from zsvc.runners.base import ExitInfo, LaunchError
from zsvc.runners.exitcodes import (
    EXIT_CGROUP,
    EXIT_CHDIR,
    EXIT_EXEC,
    EXIT_LIMITS,
    EXIT_NAMESPACE,
    EXIT_NICE,
)
from zsvc.runners.procsettings import NOTHING, PRIVATE_TMP_DIRS, TMPFS_OPTIONS, Resolved
from zsvc.states import Result

CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
"""Signals systemd counts as a clean end (systemd.service(5), SuccessExitStatus=)."""
SHELL = "/bin/sh"
SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
"""Where the wrapper's tools are looked for, once: not in the task's own PATH."""


def _tool(name: str) -> str:
    return shutil.which(name, path=SYSTEM_PATH) or name


JOIN_CGROUP = (
    'echo $$ > "$1/cgroup.procs"'
    f' || {{ echo "zsvc: cannot join the cgroup $1" >&2; exit {EXIT_CGROUP}; }}\n'
    "shift\n"
)
"""``sh -c`` step: join the cgroup given as $1 (and drop it from the arguments)."""
SET_FD_LIMIT = (
    'ulimit -S -n "$1"'
    f' || {{ echo "zsvc: cannot set the open-files limit to $1" >&2; exit {EXIT_LIMITS}; }}\n'
    "shift\n"
)
"""``sh -c`` step: set the soft open-files limit given as $1 (and drop it from the arguments)."""
SET_NOFILE = (
    'ulimit -n "$1"'
    f' || {{ echo "zsvc: cannot set the open-files limit to $1" >&2; exit {EXIT_LIMITS}; }}\n'
    "shift\n"
)
"""``sh -c`` step: ``LimitNOFILE=``, the soft and the hard limit (dash: no -S/-H is both)."""
SET_UMASK = 'umask "$1"\nshift\n'
"""``sh -c`` step: ``UMask=`` (the daemon writes it as 4 octal digits: the builtin takes it)."""
SET_NICE = (
    f'{_tool("renice")} -n "$1" -p $$ >/dev/null'
    f' || {{ echo "zsvc: cannot set the nice level to $1" >&2; exit {EXIT_NICE}; }}\n'
    "shift\n"
)
"""``sh -c`` step: ``Nice=``, absolute: util-linux 2.38's ``renice -n`` sets the level
(coreutils' ``nice -n`` adds to the inherited one, and only warns when it cannot)."""
MOUNT_TMP = (
    " && ".join(
        f"{_tool('mount')} -t tmpfs -o {TMPFS_OPTIONS},nosuid,nodev tmpfs {d}"
        for d in PRIVATE_TMP_DIRS
    )
    + f' || {{ echo "zsvc: cannot mount a private /tmp" >&2; exit {EXIT_NAMESPACE}; }}\n'
)
"""``sh -c`` step, in the mount namespace ``unshare`` made: ``PrivateTmp=``."""
UNSHARE = (_tool("unshare"), "--mount", "--propagation", "private", "--")
"""Before the shell, for ``PrivateTmp=``: a mount namespace of the task's own (no fork)."""
SETPRIV = _tool("setpriv")
"""util-linux (essential in Debian): the uid, gid, groups and no_new_privs, then exec."""
EXEC = 'exec "$@"'
"""``sh -c`` last step: become the task (the same pid)."""
CHDIR_AS_USER = (
    f'cd -- "$1" || {{ echo "zsvc: cannot change to $1 as its user" >&2; exit {EXIT_CHDIR}; }}\n'
    "unset OLDPWD\nshift\n"
)
"""After ``setpriv``: enter the working directory again with the task's own rights. The
daemon's process entered it as root, which would keep a task of another user inside a
directory it may not reach (below a 0700 one) and let it read what is there; systemd
too changes directory only after changing user."""
KEPT = "ZSVC_KEPT_"
"""A task run as another user is wrapped by processes that run as root (``unshare``,
``sh``, ``setpriv``): its environment (a group ``zsvc`` member's ``<environment>``, since
issue 15) must not reach them, or ``LD_PRELOAD`` would run the member's code as root, and
``LD_DEBUG_OUTPUT``, ``LANG``/``LC_*`` (message catalogs), ``LIBMOUNT_*`` … would steer
root's libraries. So each variable travels under this prefix, which no program reads,
and the shell that runs as the task's user exports it under its own name again."""
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def wrapped(
    argv: list[str],
    env: dict[str, str],
    cgroup: str | None,
    fd_limit: int | None,
    settings: Resolved,
    cwd: str,
) -> tuple[list[str], dict[str, str]]:
    """:func:`wrap_exec`, and the environment its processes start with: for a task run as
    another user, every variable kept aside (:data:`KEPT`) until the task is that user. A
    name no shell can export (``A-B``) is lost, as through any of the wrapper's shells."""
    if settings.uid is None:
        return wrap_exec(argv, cgroup, fd_limit, settings, cwd), env
    kept = [name for name in env if _SHELL_NAME.match(name)]
    guarded = {name: value for name, value in env.items() if not _SHELL_NAME.match(name)}
    guarded.update((KEPT + name, env[name]) for name in kept)
    return wrap_exec(argv, cgroup, fd_limit, settings, cwd, kept), guarded


def launch_environment(
    env: Mapping[str, str], notify_socket: Path, watchdog_sec: float | None
) -> dict[str, str]:
    """The task's environment: *env* with the runner's ``NOTIFY_SOCKET`` and, with a
    watchdog, ``WATCHDOG_USEC``; a ``WATCHDOG_PID``/``WATCHDOG_USEC`` inherited from
    the daemon's own manager is dropped (it is not this task's watchdog)."""
    result = dict(env)
    result["NOTIFY_SOCKET"] = str(notify_socket)
    result.pop("WATCHDOG_PID", None)
    result.pop("WATCHDOG_USEC", None)
    if watchdog_sec is not None and watchdog_sec > 0:
        result["WATCHDOG_USEC"] = str(max(1, round(watchdog_sec * 1_000_000)))
    return result


def executable_error(program: str, env: Mapping[str, str], cwd: str) -> OSError | None:
    """What exec would say about *program* (ENOENT, EACCES), None when it looks runnable.

    The same lookup as ``subprocess.Popen`` (execvpe with *env*'s PATH, after the
    change to *cwd*): with the cgroup wrapper, the shell, not Popen, executes the
    program, so a missing one is refused here, before the start.
    """
    if "/" in program:
        candidates = [os.path.join(cwd, program)]
    else:
        candidates = [os.path.join(cwd, folder, program) for folder in os.get_exec_path(env)]
    code = errno.ENOENT
    for path in candidates if program else []:
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return None
            code = errno.EACCES
        elif os.path.isdir(path) and "/" in program:
            code = errno.EACCES
    return OSError(code, os.strerror(code), program)


def wrap_exec(
    argv: list[str],
    cgroup: str | None,
    fd_limit: int | None,
    settings: Resolved = NOTHING,
    cwd: str | None = None,
    kept: Sequence[str] = (),
) -> list[str]:
    """*argv* as executed by a task's first process: through ``sh -c`` when that process
    must first join *cgroup*, set its soft open-files limit to *fd_limit* or carry out
    *settings*, else as is. A task run as another user enters *cwd* again once it is
    that user (:data:`CHDIR_AS_USER`), and takes back the variables *kept* aside
    (:func:`wrapped`).

    The chain, each link exec'ing the next (the task keeps its pid, what the runner
    watches): ``unshare --mount`` (private_tmp), ``sh -c`` as root (join the cgroup,
    ``ulimit``, ``umask``, ``renice``, mount the private /tmp), ``setpriv`` (groups,
    gid, uid, no_new_privs: last, once nothing needs root any more), the program. Each
    shell step that fails exits with systemd's status for it; ``setpriv`` itself exits
    127 when it cannot change the ids (the daemon resolved and checked them before).
    Ways to give an executed task its soft ``RLIMIT_NOFILE``, measured on 2
    noisy cores (Python 3.11; ``/bin/true`` spawned the way the local runner
    does from a daemon-like parent: the daemon's modules imported, a zmq I/O
    thread running, its own limit raised; methods in random order, medians
    of 400 rounds). "Blocks" is how long the daemon's event loop waits in
    ``Popen()``, "to exit" the time until ``/bin/true`` ended, i.e. what it
    costs before the task's own code runs:

    ============================  =================  =======  ==========================
    how                           blocks             to exit
    ============================  =================  =======  ==========================
    plain exec (no limit set)     0.13 ms            0.62 ms  the tasks' limit is wrong
    ``preexec_fn=setrlimit``      2.7 ms (14.3 ms)   3.1 ms   daemon RSS 36 (236) MiB
    ``sh -c 'ulimit …; exec'``    0.13 ms            1.20 ms  chosen
    ``sh -c 'exec'``              0.13 ms            1.19 ms  (what a cgroup costs)
    ``prlimit --nofile=N:``       0.13 ms            1.46 ms  util-linux, not everywhere
    Popen, then ``prlimit(pid)``  0.14 ms            0.62 ms  racy: too late
    ============================  =================  =======  ==========================

    ``preexec_fn`` makes ``subprocess`` fork() instead of vfork(): the daemon's
    page tables are copied while its event loop waits, a cost that grows with
    the daemon's size; and Python code between fork and exec is unsafe in a
    process with threads (the daemon's libzmq threads). A ``prlimit()`` on the
    child after Popen returned is cheap but too late: the task may already
    have run under the raised limit. The shell costs one exec of ``/bin/sh``
    (dash: ~0.6 ms, in the child; the daemon does not wait for it). With a
    cgroup the shell runs anyway and ``ulimit``, a builtin, adds nothing
    measurable; without one, it is used only when there is a limit to set
    (the daemon raised its own). An executed Python task host takes ~59 ms
    to start either way (+0.8 ms through the shell, within the noise).
    """
    if cgroup is None and fd_limit is None and settings.empty:
        return argv
    program, args = _shell_steps(cgroup, fd_limit, settings)
    command = [*drop_privileges(settings), *_as_user(argv, settings, cwd, kept)]
    if program:
        command = [SHELL, "-c", program + EXEC, "sh", *args, *command]
    return [*UNSHARE, *command] if settings.private_tmp else command


def _as_user(
    argv: list[str], settings: Resolved, cwd: str | None, kept: Sequence[str]
) -> list[str]:
    """*argv*, first entering *cwd* and taking the variables *kept* back when the task
    changes user (the step after ``setpriv``: :data:`CHDIR_AS_USER`)."""
    if settings.uid is None or cwd is None:
        return argv
    restore = "".join(f'export {name}="${KEPT}{name}"; unset {KEPT}{name}\n' for name in kept)
    return [SHELL, "-c", CHDIR_AS_USER + restore + EXEC, "sh", cwd, *argv]


def _shell_steps(
    cgroup: str | None, fd_limit: int | None, settings: Resolved
) -> tuple[str, list[str]]:
    """The ``sh -c`` program (without its ``exec``) and its arguments, one per step."""
    program, args = "", []
    if cgroup is not None:
        program += JOIN_CGROUP
        args.append(cgroup)
    if settings.nofile is not None:
        program += SET_NOFILE
        args.append(str(settings.nofile))
    elif fd_limit is not None:
        program += SET_FD_LIMIT
        args.append(str(fd_limit))
    if settings.umask is not None:
        program += SET_UMASK
        args.append(f"{settings.umask:04o}")
    if settings.nice is not None:
        program += SET_NICE
        args.append(str(settings.nice))
    if settings.private_tmp:
        program += MOUNT_TMP
    return program, args


def drop_privileges(settings: Resolved) -> list[str]:
    """The ``setpriv`` prefix that sets *settings*' groups, gid, uid and no_new_privs, then
    execs the rest (same pid); empty when there is none of them. Last in the chain: what
    needs root (the cgroup, limits, nice, mounts) is done before."""
    if not settings.credentials:
        return []
    options = []
    if settings.uid is not None:
        options.append(f"--reuid={settings.uid}")
    if settings.gid is not None:
        options.append(f"--regid={settings.gid}")
    if settings.groups:
        options.append("--groups=" + ",".join(str(gid) for gid in settings.groups))
    elif settings.groups is not None or settings.gid is not None:
        options.append("--clear-groups")  # setpriv wants one of them with --regid
    if settings.no_new_privs:
        options.append("--no-new-privs")
    return [SETPRIV, *options, "--"]


def exec_failure(program: str, exc: OSError) -> LaunchError:
    """systemd's verdict on a program that cannot be executed: status 203 (EXIT_EXEC)."""
    return LaunchError(
        f"cannot execute {program}: {exc.strerror}",
        ExitInfo(Result.EXIT_CODE, exit_code=EXIT_EXEC, detail=str(exc)),
    )


def chdir_failure(cwd: str, exc: OSError) -> LaunchError:
    """systemd's verdict on a working directory that cannot be entered: 200 (EXIT_CHDIR)."""
    return LaunchError(
        f"cannot change to {cwd}: {exc.strerror}",
        ExitInfo(Result.EXIT_CODE, exit_code=EXIT_CHDIR, detail=str(exc)),
    )


def classify_exit(
    code: int,
    status: int,
    *,
    reason: Result | None,
    notify: bool,
    ready: bool,
    stop_requested: bool,
    kill_signal: int = signal.SIGTERM,
) -> ExitInfo:
    """systemd's verdict on a ``Type=notify`` (or exec) service's end (systemd.service(5)).

    *code* and *status* are waitid(2)'s ``si_code`` and ``si_status``; *reason*
    is the result zsvc itself caused when it ended the process (a timeout, the
    watchdog), which wins over how the process happened to die. A task killed by
    its own *kill_signal* (``KillSignal=``) when asked to stop ended cleanly, as one
    killed by SIGTERM: the stop signal did what it was chosen for.
    """
    if code == os.CLD_EXITED:
        if reason is not None:
            return ExitInfo(reason, exit_code=status)
        if status != 0:
            return ExitInfo(Result.EXIT_CODE, exit_code=status)
        if notify and not ready and not stop_requested:
            return ExitInfo(Result.PROTOCOL, exit_code=0, detail="exited before READY=1")
        return ExitInfo(Result.SUCCESS, exit_code=0)
    if reason is not None:
        return ExitInfo(reason, signal=status)
    if code == os.CLD_DUMPED:
        return ExitInfo(Result.CORE_DUMP, signal=status)
    if stop_requested and status == kill_signal:
        return ExitInfo(Result.SUCCESS, signal=status)
    if status in CLEAN_SIGNALS and (stop_requested or status != signal.SIGPIPE):
        return ExitInfo(Result.SUCCESS, signal=status)
    return ExitInfo(Result.SIGNAL, signal=status)


def adopted_exit(reason: Result | None, stop_requested: bool) -> ExitInfo:
    """The end of a task adopted after a daemon restart: not our child, so its status
    went to whoever is its parent now. Asked to stop, it stopped; otherwise nobody
    can say how it ended."""
    unknown = "adopted after a daemon restart; its exit status cannot be collected"
    if reason is not None:
        return ExitInfo(reason, detail=unknown)
    return ExitInfo(Result.SUCCESS if stop_requested else Result.LOST, detail=unknown)
