"""The zygote: a small, stdlib-only Python process that forks one sandbox init per spawn request.

The funclet starts it once (``runner.control.zygote_command``) with one end of a SOCK_SEQPACKET socketpair. It
pre-imports the runner and the Python runtime, so a sandbox costs a fork (~1.5 ms) instead of an
interpreter start (~40 ms), and forked Python runtimes share its pages.

Each child becomes PID 1 of a fresh pid namespace without a second fork: ``unshare(CLONE_NEWPID)``
only changes the namespace of the *next* child, so the zygote unshares, forks, and then
``setns``-es back into its own pid namespace.
"""

from __future__ import annotations

import gc
import os
import platform  # noqa: F401 - easyfaas.syscalls.pivot_root imports it lazily, inside the sandbox
import signal
import socket
import sys
from typing import NoReturn

# Everything a sandbox init and a forked Python runtime run, imported once here, before any fork:
# inside a sandbox the repository is not mounted.
import runner.init  # noqa: F401
import runner.runtimes.python.bootstrap  # noqa: F401
from easyfaas import syscalls as sc
from runner import control
from runner.control import Op


def main(sock_fd: int) -> NoReturn:
    sc.set_parent_death_signal(signal.SIGKILL)
    # Auto-reap our children (the sandbox inits): the funclet learns that one died from its
    # control socket's EOF, and the zygote never has to wait.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    sock = socket.socket(fileno=sock_fd)
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    # Everything imported so far goes to the collector's permanent generation: a collection in a
    # sandbox never walks (and so never writes to, and copies) the pages it shares with us.
    gc.collect()
    gc.freeze()
    while True:
        try:
            message, fds = control.recv_message(sock)
        except EOFError:
            os._exit(0)
        except control.ControlError as exc:
            _reply(sock, {"op": Op.SPAWNED, "pid": 0, "error": str(exc)})
            continue
        except InterruptedError:
            continue
        try:
            reply = spawn(sock, own_pidns, message, fds)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        _reply(sock, reply)


def spawn(sock: socket.socket, own_pidns: int, message: dict, fds: list[int]) -> dict:
    """Fork one sandbox init; returns the reply for the funclet."""
    if message.get("op") != Op.SPAWN:
        return {"op": Op.SPAWNED, "pid": 0, "error": f"the zygote only spawns, not {message.get('op')!r}"}
    if len(fds) != 2:
        return {"op": Op.SPAWNED, "pid": 0,
                "error": f"spawn needs 2 fds (control, invoke listener), got {len(fds)}"}
    try:
        spec = control.SandboxSpec.from_dict(message.get("spec") or {})
    except (TypeError, ValueError) as exc:
        return {"op": Op.SPAWNED, "pid": 0, "error": f"bad sandbox spec: {exc}"}
    try:
        sc.unshare(sc.CLONE_NEWPID)
        pid = os.fork()
    except OSError as exc:
        _back_to_own_pidns(own_pidns)
        return {"op": Op.SPAWNED, "pid": 0, "error": f"cannot fork a sandbox: {exc}"}
    if pid == 0:
        try:
            # The zygote's socket object must not close a reused fd number later.
            sock.detach()
            runner.init.run_sandbox(spec, fds[0], fds[1])
        finally:
            os._exit(1)
    _back_to_own_pidns(own_pidns)
    return {"op": Op.SPAWNED, "pid": pid}


def _back_to_own_pidns(own_pidns: int) -> None:
    try:
        sc.setns(own_pidns, sc.CLONE_NEWPID)
    except OSError as exc:
        # Every later child would land in the previous sandbox's namespace: better to stop.
        sys.stderr.write(f"easyfaas zygote: cannot return to its pid namespace: {exc}\n")
        os._exit(1)


def _reply(sock: socket.socket, message: dict) -> None:
    try:
        control.send_message(sock, message)
    except OSError:
        os._exit(0)  # the funclet is gone
