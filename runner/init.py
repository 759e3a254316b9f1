"""PID 1 of a sandbox: build it (``runner/build.py``), report, then supervise (``runner/supervisor.py``).

The zygote forks this as the first process of a fresh pid namespace and calls :func:`run_sandbox`.
It reports ``ready`` (or ``failed``, naming the step) on its control socket once the sandbox is
built, then serves the funclet's commands until the funclet closes the socket.

The runner's modules, each calling only those after it: ``zygote`` (forks this) → ``init`` →
``supervisor`` (the control loop) → ``standby`` (standby runtimes), ``build`` (the sandbox's
namespaces, root and mounts), ``environment`` (the runtime process's environment), ``privileges``
and ``seccomp`` (what a runtime process gives up) → ``control`` (the wire protocol).

Stdlib only, and everything it needs is imported before the zygote forks: inside the sandbox the
repository is not visible.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, NoReturn

from easyfaas import syscalls as sc
from runner.build import build_sandbox, describe
from runner.control import Op, SandboxSpec
from runner.supervisor import Supervisor, send_or_exit


def run_sandbox(spec: SandboxSpec | dict[str, Any], control_sock: socket.socket | int,
                listener: socket.socket | int) -> NoReturn:
    """Entry point in the zygote's child (PID 1 of a new pid namespace); never returns."""
    code = 1
    try:
        sc.set_parent_death_signal(signal.SIGKILL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # As PID 1, default dispositions mean "ignored" for signals sent from inside the namespace.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        ctl = control_sock if isinstance(control_sock, socket.socket) else socket.socket(fileno=control_sock)
        lst = listener if isinstance(listener, socket.socket) else socket.socket(fileno=listener)
        _close_fds_except({0, 1, 2, ctl.fileno(), lst.fileno()})
        ctl.setblocking(True)
        try:
            if not isinstance(spec, SandboxSpec):
                spec = SandboxSpec.from_dict(spec)
            build_sandbox(spec)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then we exit
            send_or_exit(ctl, {"op": Op.FAILED, "error": describe(exc)})
            os._exit(1)
        send_or_exit(ctl, {"op": Op.READY})
        Supervisor(spec, ctl, lst).serve()
        code = 0
    except BaseException as exc:  # noqa: BLE001 - PID 1 must not unwind into the zygote's code
        try:
            sys.stderr.write(f"easyfaas runner: {describe(exc)}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _close_fds_except(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
