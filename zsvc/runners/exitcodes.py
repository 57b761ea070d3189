"""systemd's exit statuses, and how long a runner waits for a kill, written once for every runner.

A task that fails before its program runs ends with the status systemd
gives the same failure (systemd.exec(5), "Process exit codes"), whichever
runner started it: the local runner's shell wrapper and zygote, and the
systemd runner's refusals before ``StartTransientUnit``, so that ``zsvc
status`` and a restart policy read the same number for the same cause.

Standard library only, nothing else imported: the zygote imports it.
"""

from __future__ import annotations

EXIT_CHDIR = 200
"""The working directory could not be changed to (systemd's EXIT_CHDIR)."""
EXIT_NICE = 201
"""The nice level could not be set (EXIT_NICE)."""
EXIT_EXEC = 203
"""The program could not be executed: not found, or not executable (EXIT_EXEC)."""
EXIT_LIMITS = 205
"""A resource limit (the open-files one) could not be set (EXIT_LIMITS)."""
EXIT_GROUP = 216
"""The group or the supplementary groups could not be set (EXIT_GROUP)."""
EXIT_USER = 217
"""The user could not be set, or is unknown (EXIT_USER)."""
EXIT_CGROUP = 219
"""The task's first process could not join its cgroup (EXIT_CGROUP)."""
EXIT_NAMESPACE = 226
"""The task's mount namespace (``PrivateTmp=``) could not be set up (EXIT_NAMESPACE)."""
EXIT_NO_NEW_PRIVILEGES = 227
"""``NoNewPrivileges=`` could not be set (EXIT_NO_NEW_PRIVILEGES)."""
SETUP_FAILURES = (EXIT_CHDIR, 243)
"""The range of systemd's statuses for a child that failed before exec, EXIT_CHDIR to
EXIT_CREDENTIALS: such a process never ran the program."""

KILL_WAIT = 5.0
"""How long a runner waits, after SIGKILL, for a task's end to show (its processes gone,
or systemd's report of it) before it gives up on that process."""
