"""The runner's control loop in a built sandbox: start, reset and ping runtimes, and reap children.

It serves the funclet's commands on the control socket (``start``, ``reset``, ``ping``,
``prestart``; see ``runner/control.py``), relays a starting runtime's init status as ``started``,
keeps the last output of the runtime, reports its exit (``exited``, after killing what is left of
the runtime's process group), and keeps a standby runtime (``runner/standby.py``) in the sandbox
while it is idle. It is PID 1 of the sandbox's pid namespace, so it also reaps every orphan; when
it exits, the kernel kills everything left inside.

Stdlib only (imported before the zygote forks: inside the sandbox the repository is not visible).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Mapping

from easyfaas import syscalls as sc
from easyfaas.models import LAUNCH_EXEC, LAUNCH_FORK_PYTHON
from runner import control, privileges, seccomp
from runner.build import describe, mount_scratch
from runner.control import Op, SandboxSpec
from runner.environment import TASK_DIR, process_environment
from runner.runtimes.python import bootstrap as python_bootstrap
from runner.standby import STANDBY_FD, StandbyRuntime, await_assignment, standby_key

OUTPUT_TAIL = 4096
MAX_STATUS = 1 << 20
# How long a runtime that closed its status pipe without writing may take to exit, so that the
# failure report can carry its exit status.
STATUS_EOF_GRACE = 1.0
RESET_TIMEOUT = 5.0
# The runner's own standby: the preloaded Python bootstrap, forked.
_PYTHON_STANDBY: dict[str, Any] = {"Launch": LAUNCH_FORK_PYTHON}


class Supervisor:
    """The command loop of a built sandbox: one runtime at a time, or one standby runtime."""

    def __init__(self, spec: SandboxSpec, ctl: socket.socket, listener: socket.socket) -> None:
        self.spec = spec
        self.ctl = ctl
        self.listener = listener
        self.runtime_pid = 0
        self.starting = False
        self.status_fd = -1
        self.status_buf = b""
        self.status_eof_at: float | None = None
        self.output_fd = -1
        self.output_tail = bytearray()
        self.standby: StandbyRuntime | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore_signal)

    def serve(self) -> None:
        self.keep_python_standby()
        while True:
            self.reap()
            readable = [self.ctl.fileno(), self.wake_r]
            if self.status_fd >= 0:
                readable.append(self.status_fd)
            if self.output_fd >= 0:
                readable.append(self.output_fd)
            timeout = None
            if self.status_eof_at is not None:
                timeout = max(0.0, self.status_eof_at + STATUS_EOF_GRACE - time.monotonic())
            ready, _, _ = select.select(readable, [], [], timeout)
            if self.wake_r in ready:
                _drain(self.wake_r)
                self.reap()
            if self.output_fd >= 0 and self.output_fd in ready:
                self.read_output()
            if self.status_fd >= 0 and self.status_fd in ready:
                self.read_status()
            if self.ctl.fileno() in ready:
                self.handle_command()
            if self.status_eof_at is not None and time.monotonic() >= self.status_eof_at + STATUS_EOF_GRACE:
                self.finish_start(None, "the runtime closed its init-status pipe without reporting")

    def send(self, message: dict[str, Any]) -> None:
        send_or_exit(self.ctl, message)

    # -- commands --

    def handle_command(self) -> None:
        try:
            message, fds = control.recv_message(self.ctl)
        except EOFError:
            os._exit(0)  # the funclet is done with us; the pid namespace dies with PID 1
        except control.ControlError as exc:
            self.send({"op": Op.ERROR, "error": str(exc)})
            return
        except InterruptedError:
            return
        for fd in fds:
            os.close(fd)
        op = message["op"]
        if op == Op.START:
            self.start(message)
        elif op == Op.RESET:
            self.reset()
            self.send({"op": Op.RESET_DONE})
        elif op == Op.PING:
            self.send(self.pong())
        elif op == Op.PRESTART:
            self.prestart(message)
        else:
            self.send({"op": Op.ERROR, "error": f"unknown op {op!r}"})

    def pong(self) -> dict[str, Any]:
        # A standby the funclet asked for is the sandbox's runtime as far as the funclet knows.
        standby = self.standby
        requested = standby is not None and standby.requested
        return {"op": Op.PONG, "runtime_pid": self.runtime_pid or (standby.pid if requested and standby else 0),
                "standby": requested, "spare": standby is not None and not standby.requested}

    def start(self, message: dict[str, Any]) -> None:
        runtime = message.get("runtime") or {}
        env = process_environment(message.get("env") or {}, runtime)
        if self.runtime_pid or self.starting:
            self.send(_started_failure("a runtime is already running in this sandbox; reset it first",
                                       "Runtime.Busy"))
            return
        problem = _launch_problem(runtime)
        if problem:
            self.send(_started_failure(problem, "Runtime.InvalidConfiguration"))
            return
        standby, self.standby = self.standby, None
        if standby is not None:
            if standby.fits(runtime, env) and standby.assign(env):
                self._adopt(standby.pid, standby.status_fd, standby.output_fd)
                self.starting = True
                return
            standby.kill()  # another runtime's, or it died: its exit is not news to anyone
        pid, status_r, output_r = self._fork_child(runtime.get("Launch") or LAUNCH_EXEC, runtime, env)
        self._adopt(pid, status_r, output_r)
        self.starting = True

    def prestart(self, message: dict[str, Any]) -> None:
        """Start a standby of the funclet's runtime; a later ``start`` of it completes it."""
        runtime = message.get("runtime") or {}
        failure = ""
        if self.runtime_pid or self.starting or (self.standby is not None and self.standby.requested):
            failure = "a runtime is already running in this sandbox"
        elif not runtime.get("Standby") or (runtime.get("Launch") or LAUNCH_EXEC) != LAUNCH_EXEC:
            failure = f"runtime {runtime.get('Name')!r} cannot be pre-started (it needs Standby and Launch exec)"
        else:
            failure = _launch_problem(runtime)
        if not failure:
            self.drop_standby()  # the Python one: this sandbox now waits for a function of the other runtime
            try:
                self.standby = self.start_standby(runtime, requested=True)
            except OSError as exc:
                failure = f"cannot start the runtime: {describe(exc)}"
        if failure:
            self.send({"op": Op.PRESTARTED, "ok": False, "pid": 0, "error": failure})
            return
        assert self.standby is not None
        self.send({"op": Op.PRESTARTED, "ok": True, "pid": self.standby.pid})

    def reset(self) -> None:
        """Kill everything but ourselves, reap it all, fresh /tmp and /dev/shm."""
        deadline = time.monotonic() + RESET_TIMEOUT
        while True:
            try:
                os.kill(-1, signal.SIGKILL)  # from PID 1: every other process of the namespace
            except ProcessLookupError:
                pass
            if self._reap_quietly():
                break
            if time.monotonic() > deadline:
                sys.stderr.write("easyfaas runner: processes survived SIGKILL during reset\n")
                os._exit(1)
            select.select([self.wake_r], [], [], 0.01)
            _drain(self.wake_r)
        self.runtime_pid = 0
        self.starting = False
        self.status_eof_at = None
        self._close_status()
        self._close_output()
        if self.standby is not None:
            self.standby.close()  # killed with the rest
            self.standby = None
        try:
            for path, size in (("/tmp", self.spec.tmp_size), ("/dev/shm", self.spec.effective_shm_size)):
                sc.umount(path, sc.MNT_DETACH)
                mount_scratch(path, size)
        except OSError as exc:
            # A sandbox without a clean /tmp must not be reused: exit, and the funclet rebuilds it.
            sys.stderr.write(f"easyfaas runner: reset could not renew scratch mounts: {exc}\n")
            os._exit(1)
        self.keep_python_standby()

    # -- standby runtimes --

    def start_standby(self, runtime: Mapping[str, Any], *, requested: bool) -> StandbyRuntime:
        """Fork a runtime that waits for its function's environment on :data:`STANDBY_FD`.

        A forked Python bootstrap reads it before running anything; an exec'd runtime is told the fd
        (``EASYFAAS_STANDBY_FD``) and reads it itself once it has started.
        """
        launch = runtime.get("Launch") or LAUNCH_EXEC
        env: dict[str, str] | None = None
        if launch != LAUNCH_FORK_PYTHON:
            env = process_environment({}, runtime)
            env["EASYFAAS_STANDBY_FD"] = str(STANDBY_FD)
        assign_r, assign_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid, status_r, output_r = self._fork_child(launch, runtime, env, assign_r)
        except OSError:
            os.close(assign_w)
            raise
        finally:
            os.close(assign_r)
        return StandbyRuntime(pid, assign_fd=assign_w, status_fd=status_r, output_fd=output_r,
                              key=standby_key(runtime), requested=requested)

    def keep_python_standby(self) -> None:
        """An idle sandbox keeps a forked Python bootstrap waiting (unless it holds another runtime)."""
        if self.standby is not None or self.runtime_pid:
            return
        try:
            self.standby = self.start_standby(_PYTHON_STANDBY, requested=False)
        except OSError as exc:
            sys.stderr.write(f"easyfaas runner: no standby runtime: {exc}\n")

    def drop_standby(self) -> None:
        standby, self.standby = self.standby, None
        if standby is not None:
            standby.kill()

    def standby_exited(self, status: int) -> None:
        standby, self.standby = self.standby, None
        assert standby is not None
        if not standby.requested:
            # Not replaced until the next reset: a standby that cannot live must not loop.
            sys.stderr.write(f"easyfaas runner: the standby runtime died ({_exit_text(status)})\n")
            standby.close()
            return
        output = standby.read_output(OUTPUT_TAIL)
        standby.close()
        message = _exit_message(standby.pid, status)
        message["standby"] = True
        if output:
            message["output"] = output
        self.send(message)

    # -- the runtime child --

    def _fork_child(self, launch: str, runtime: Mapping[str, Any], env: dict[str, str] | None,
                    standby_r: int = -1) -> tuple[int, int, int]:
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        output_r, output_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                self._become_runtime(launch, runtime, env, status_w, output_w, standby_r)
            finally:
                os._exit(127)
        os.close(status_w)
        os.close(output_w)
        os.set_blocking(status_r, False)
        os.set_blocking(output_r, False)
        return pid, status_r, output_r

    def _adopt(self, pid: int, status_r: int, output_r: int) -> None:
        self.runtime_pid = pid
        self.status_fd, self.status_buf, self.status_eof_at = status_r, b"", None
        self._close_output()
        self.output_fd = output_r
        self.output_tail = bytearray()

    def _become_runtime(self, launch: str, runtime: Mapping[str, Any], env: dict[str, str] | None,
                        status_w: int, output_w: int, standby_r: int = -1) -> None:
        status_fd = status_w
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # Our sockets' fd numbers are about to be reused; the objects must not close them later.
            listener_fd = self.listener.detach()
            self.ctl.detach()
            os.setsid()
            sc.unshare(sc.CLONE_NEWIPC)
            devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            # Move every source above the target range first so no dup2 clobbers another source.
            sources = [devnull, output_w, listener_fd, status_w] + ([standby_r] if standby_r >= 0 else [])
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in sources]
            targets = (0, 1, 2, 3, 4, STANDBY_FD)
            for target, source in zip(targets, (high[0], high[1], *high[1:])):
                os.dup2(source, target)
            status_fd = 4
            # O_NONBLOCK lives on the listener's shared file description; a previous runtime may
            # have set it, and the contract promises every runtime a blocking listener.
            os.set_blocking(3, True)
            os.closerange(STANDBY_FD + 1 if standby_r >= 0 else 4 + 1, 1 << 20)
            os.chdir(TASK_DIR)
            privileges.set_rlimits(self.spec.nofile)
            # While still root (see set_oom_score_adj): the runtime and its children go first.
            if not privileges.set_oom_score_adj(privileges.OOM_SCORE_ADJ_RUNTIME):
                raise PermissionError("oom_score_adj: raising it was refused")
            # Assembled first, so that the filter follows the uid change within microseconds.
            program = seccomp.build_filter(seccomp.current_arch())
            privileges.drop_to(self.spec.uid, self.spec.gid)
            # Last: everything above needed system calls the filter refuses (unshare, setns, ...).
            seccomp.install_filter(program)
        except BaseException as exc:  # noqa: BLE001
            _write_status(status_fd, {"ok": False, "error": {
                "errorMessage": f"runtime setup failed: {describe(exc)}", "errorType": "Runtime.SandboxError"}})
            os._exit(126)
        if launch == LAUNCH_FORK_PYTHON:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = 1
            try:
                if env is None:  # a standby: wait for the function's environment
                    env = await_assignment(STANDBY_FD)
                python_bootstrap.main(env)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported on the output pipe, then exit
                _write_status(4, {"ok": False, "error": {
                    "errorMessage": f"the Python runtime failed: {describe(exc)}", "errorType": "Runtime.InitError"}})
                _write_quietly(2, f"easyfaas python runtime: {describe(exc)}\n")
            finally:
                os._exit(code)
        # exec: dispositions Python set to SIG_IGN would survive execve.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        binary = str(runtime["Bin"])
        args = [str(a) for a in runtime.get("Args") or []]
        try:
            os.execve(binary, [binary, *args], env or {})
        except (OSError, ValueError) as exc:
            _write_status(4, {"ok": False, "error": {
                "errorMessage": f"cannot exec {binary}: {describe(exc)}", "errorType": "Runtime.ExecError"}})
            os._exit(127)

    # -- init status and output of the runtime --

    def read_status(self) -> None:
        while self.status_fd >= 0:
            try:
                chunk = os.read(self.status_fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self._close_status()
                if self.status_buf.strip():
                    self.finish_start(self.status_buf, None)
                elif self.starting:
                    self.status_eof_at = time.monotonic()
                return
            self.status_buf += chunk
            if b"\n" in self.status_buf or len(self.status_buf) > MAX_STATUS:
                self._close_status()
                self.finish_start(self.status_buf.split(b"\n", 1)[0], None)
                return

    def finish_start(self, line: bytes | None, failure: str | None, exit_status: int | None = None) -> None:
        """Relay the runtime's init status as ``started`` (once per start)."""
        self.status_eof_at = None
        if not self.starting:
            return
        self.starting = False
        if line is not None:
            try:
                status = json.loads(line)
                if not isinstance(status, dict) or not isinstance(status.get("ok"), bool):
                    raise ValueError("not an object with a boolean ok")
            except ValueError as exc:
                failure = f"the runtime wrote an invalid init status ({exc}): {line[:200]!r}"
            else:
                reply: dict[str, Any] = {"op": Op.STARTED, "ok": status["ok"], "pid": self.runtime_pid}
                if not status["ok"]:
                    reply["error"] = status.get("error") or {"errorMessage": "runtime init failed",
                                                             "errorType": "Runtime.InitError"}
                self.send(reply)
                return
        message = failure or "the runtime failed to start"
        if exit_status is not None:
            message += f" ({_exit_text(exit_status)})"
        self.read_output()
        output = self.output_text()
        if output:
            message += f"; last output: {output[-1024:]}"
        self.send(_started_failure(message, "Runtime.ExitError" if exit_status is not None else "Runtime.InitError",
                                   pid=self.runtime_pid))

    def read_output(self) -> None:
        while self.output_fd >= 0:
            try:
                chunk = os.read(self.output_fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self._close_output()
                return
            self.output_tail += chunk
            if len(self.output_tail) > OUTPUT_TAIL:
                del self.output_tail[:-OUTPUT_TAIL]

    def output_text(self) -> str:
        return self.output_tail.decode("utf-8", "replace").strip()

    # -- children --

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.runtime_pid:
                self.runtime_exited(pid, status)
            elif self.standby is not None and pid == self.standby.pid:
                self.standby_exited(status)

    def _reap_quietly(self) -> bool:
        """Reap what has exited; True when no process but us is left."""
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False

    def runtime_exited(self, pid: int, status: int) -> None:
        # What the runtime left in its process group (the runtime is its leader, see setsid in
        # _become_runtime) dies with it: after an OOM kill, a bomb's survivors would otherwise keep
        # the cgroup at its limit and slow this report until the reset. Escapees are the reset's.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.starting:
            self.read_status()
            if self.starting:
                self._close_status()
                self.finish_start(self.status_buf if self.status_buf.strip() else None,
                                  "the runtime exited before reporting its init status", exit_status=status)
        self.runtime_pid = 0
        self.read_output()
        message = _exit_message(pid, status)
        output = self.output_text()
        if output:
            message["output"] = output
        self.send(message)

    def _close_status(self) -> None:
        if self.status_fd >= 0:
            os.close(self.status_fd)
            self.status_fd = -1

    def _close_output(self) -> None:
        if self.output_fd >= 0:
            os.close(self.output_fd)
            self.output_fd = -1


def send_or_exit(sock: socket.socket, message: dict[str, Any]) -> None:
    try:
        control.send_message(sock, message)
    except OSError:
        os._exit(1)  # nobody listens any more: the funclet is gone or gave up on us


def _launch_problem(runtime: Mapping[str, Any]) -> str:
    launch = runtime.get("Launch") or LAUNCH_EXEC
    if launch not in (LAUNCH_EXEC, LAUNCH_FORK_PYTHON):
        return f"unknown runtime Launch {launch!r}"
    if launch == LAUNCH_EXEC and not str(runtime.get("Bin") or "").startswith("/"):
        return f"runtime {runtime.get('Name')!r} has no absolute Bin to exec"
    return ""


def _exit_message(pid: int, status: int) -> dict[str, Any]:
    return {"op": Op.EXITED, "pid": pid, "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}


def _started_failure(message: str, error_type: str, pid: int = 0) -> dict[str, Any]:
    return {"op": Op.STARTED, "ok": False, "pid": pid,
            "error": {"errorMessage": message, "errorType": error_type, "stackTrace": []}}


def _write_status(fd: int, status: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(status).encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _write_quietly(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode(errors="replace"))
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _ignore_signal(_signum: int, _frame: Any) -> None:
    """SIGCHLD only has to wake the loop (through the wakeup fd)."""


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"exit status {os.WEXITSTATUS(status)}"
