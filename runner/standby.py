"""Standby runtimes: runtime processes started before any function is assigned to them.

A standby runtime is forked and set up (its own session and IPC namespace, the sandbox's user,
seccomp), then blocks reading one line ``{"env": {...}}`` from fd :data:`STANDBY_FD`; the runner's
``start`` writes the function's environment there, and the process carries on as if it had been
started with it. A cold start then costs that write and the handler's load, not a fork (or an exec
and an interpreter's start-up).

There are two ways of starting one (``Supervisor.start_standby``), and one way of assigning or
dropping it (this module):

* the runner keeps one of the preloaded Python bootstrap in every idle sandbox by itself (wire:
  ``spare`` in ``pong``); it fits any ``fork-python`` runtime;
* the funclet asks for one of an ``exec`` runtime whose configuration says ``Standby`` (``prestart``,
  wire: ``standby`` in ``pong`` and ``exited``); it fits a start of the same ``Bin``, ``Args`` and
  ``Env`` whose variables are not read before the assignment arrives.

Stdlib only (the runner imports it before the zygote forks).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Mapping

from easyfaas.models import LAUNCH_EXEC, LAUNCH_FORK_PYTHON

STANDBY_FD = 5
# Read by the dynamic loader, libc or the runtime's own start-up, before a standby runtime could
# take the function's environment: a function that sets one gets a freshly started runtime.
_START_TIME_ENV_PREFIXES = ("LD_", "MALLOC_", "GLIBC_", "NODE_OPTIONS", "UV_")
_OUTPUT_READ = 65536


class StandbyRuntime:
    """One standby runtime process and the pipes the runner holds to it."""

    __slots__ = ("pid", "assign_fd", "status_fd", "output_fd", "key", "requested")

    def __init__(self, pid: int, *, assign_fd: int, status_fd: int, output_fd: int, key: str,
                 requested: bool) -> None:
        self.pid = pid
        self.assign_fd = assign_fd   # write end of the pipe the process reads its environment from
        self.status_fd = status_fd   # its init-status pipe, handed over with the assignment
        self.output_fd = output_fd   # its stdout/stderr pipe, likewise
        self.key = key               # what it was started as (standby_key)
        # Asked for by the funclet (prestart): the funclet hears of its exit. The runner's own
        # Python standby dies quietly.
        self.requested = requested

    def fits(self, runtime: Mapping[str, Any], env: Mapping[str, str]) -> bool:
        """Whether a start of ``runtime`` with ``env`` can be handed to this process."""
        if self.key != standby_key(runtime):
            return False
        forked = (runtime.get("Launch") or LAUNCH_EXEC) == LAUNCH_FORK_PYTHON
        return forked or not any(key.startswith(_START_TIME_ENV_PREFIXES) for key in env)

    def assign(self, env: Mapping[str, str]) -> bool:
        """Write the function's environment; False if the process is gone (it must be dropped)."""
        line = json.dumps({"env": dict(env)}, separators=(",", ":")).encode() + b"\n"
        try:
            while line:
                line = line[os.write(self.assign_fd, line):]
        except OSError:
            return False
        _close_quietly(self.assign_fd)
        self.assign_fd = -1
        return True

    def read_output(self, limit: int) -> str:
        """The last ``limit`` bytes it wrote (what is in its output pipe now), as text."""
        tail = bytearray()
        while True:
            try:
                chunk = os.read(self.output_fd, _OUTPUT_READ)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            tail += chunk
            del tail[:-limit]
        return tail.decode("utf-8", "replace").strip()

    def close(self) -> None:
        """Close the runner's ends of its pipes (the process itself is killed by whoever calls this)."""
        for name in ("assign_fd", "status_fd", "output_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                _close_quietly(fd)
                setattr(self, name, -1)

    def kill(self) -> None:
        """Drop it: close its pipes, kill and reap it, quietly."""
        self.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def standby_key(runtime: Mapping[str, Any]) -> str:
    """What a standby runtime of ``runtime`` is started as; equal keys are interchangeable."""
    launch = runtime.get("Launch") or LAUNCH_EXEC
    if launch == LAUNCH_FORK_PYTHON:
        return LAUNCH_FORK_PYTHON  # a fork of the preloaded bootstrap, whatever the configuration
    return json.dumps([launch, runtime.get("Bin"), runtime.get("Args") or [], runtime.get("Env") or {}],
                      sort_keys=True)


def await_assignment(fd: int) -> dict[str, str]:
    """In a forked Python standby: block until the runner writes the environment; exit if it never will."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            os._exit(0)  # the runner dropped us
        data += chunk
    os.close(fd)
    env = json.loads(data.split(b"\n", 1)[0])["env"]
    return {str(k): str(v) for k, v in env.items()}


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
