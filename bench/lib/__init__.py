"""The benchmarks' small library; the scenarios are the scripts one level up (bench/*.py).

* :mod:`lib.procs`: subprocesses with deadlines, process CPU, and the clean-up of what
  outlives a manager;
* :mod:`lib.watch`: threads that watch what processes send (READY=1 on the bench's own
  notify socket, samples on a bus);
* :mod:`lib.taskpkg`: the zsvc task classes of the benchmarks, written as a task package,
  and their contexts on free loopback ports;
* :mod:`lib.daemon`: one zsvc daemon of this checkout, started and always shut down;
* :mod:`lib.managers`: the managers under test (zsvc, circus, supervisord, systemd) behind
  one adapter hierarchy, and the peers' virtualenv;
* :mod:`lib.report`: metrics, tables, the JSON result files and the machine's description.

The scenarios run with bench/ on ``sys.path`` (a script's own directory), so they import
``lib.…``; the library imports zsvc's public client API and nothing of the scenarios.
"""
