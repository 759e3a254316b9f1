"""PID 1 of a sandbox: build the sandbox, then start, supervise and reset language runtimes.

The zygote forks this process as the first process of a fresh pid namespace. It joins the slot's
cgroups, unshares the mount/uts/ipc/net namespaces, builds a read-only tmpfs root out of read-only
binds and pivots into it, reports ``ready`` on its control socket, and then serves the funclet's
commands (``start``, ``reset``, ``ping``; see ``runner/control.py``). It is init of its pid
namespace, so it reaps every orphan, and when it exits the kernel kills everything left inside.

Stdlib only, and everything it needs is imported before the zygote forks: inside the sandbox the
repository is not visible.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any, NoReturn

from easyfaas import syscalls as sc
from runner import control, privileges, seccomp
from runner.control import SandboxSpec
from runner.runtimes.python import bootstrap as python_bootstrap

TASK_DIR = "/var/task"
RUNTIME_DIR = "/var/runtime"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SIZE = 64 << 10
OUTPUT_TAIL = 4096
MAX_STATUS = 1 << 20
# How long a runtime that closed its status pipe without writing may take to exit, so that the
# failure report can carry its exit status.
STATUS_EOF_GRACE = 1.0
RESET_TIMEOUT = 5.0
STANDBY_FD = 5
# Read by the dynamic loader, libc or the runtime's own start-up, before a pre-started runtime could
# take the function's environment: a function that sets one gets a freshly started runtime.
_START_TIME_ENV_PREFIXES = ("LD_", "MALLOC_", "GLIBC_", "NODE_OPTIONS", "UV_")

_RO_BIND = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sh22x")


class SandboxBuildError(Exception):
    """A step of building the sandbox failed; the message names the step."""


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
            _send_or_exit(ctl, {"op": control.OP_FAILED, "error": _describe(exc)})
            os._exit(1)
        _send_or_exit(ctl, {"op": control.OP_READY})
        Supervisor(spec, ctl, lst).serve()
        code = 0
    except BaseException as exc:  # noqa: BLE001 - PID 1 must not unwind into the zygote's code
        try:
            sys.stderr.write(f"easyfaas runner: {_describe(exc)}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


# ---- building the sandbox ------------------------------------------------------------------------

def build_sandbox(spec: SandboxSpec) -> None:
    """Everything between fork and ``ready``; raises SandboxBuildError naming the failed step."""
    _step("join cgroups", join_cgroups, spec.cgroup_procs)
    _step("unshare namespaces", sc.unshare, sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET)
    _step("set hostname", sc.sethostname, spec.hostname)
    _step("disable IPv6 on new interfaces", disable_ipv6_by_default)
    if spec.loopback_up:
        _step("bring up lo", bring_loopback_up)
    # Slave, not private: mounts the funclet makes later under the (shared) slots dir must still
    # reach /var/task and /var/runtime, while nothing we mount leaks back to the host.
    _step("make mounts slave", sc.mount, None, "/", None, sc.MS_REC | sc.MS_SLAVE)
    new_root = os.path.join(spec.slot_dir, "root")
    _step("mount root tmpfs", sc.mount, "easyfaas-root", new_root, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
          f"size={spec.root_size},mode=0755")
    _step("populate root", populate_root, spec, new_root)
    _step("pivot_root", enter_root, new_root)


def _step(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except SandboxBuildError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SandboxBuildError(f"{what}: {_describe(exc)}") from None


def join_cgroups(procs_files: list[str]) -> None:
    # "0" means "the writer": our pid is 1 in our namespace, and writing "1" would move host init.
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def disable_ipv6_by_default() -> None:
    """Interfaces that arrive in our (new) network namespace later, eth0 above all, get no IPv6.

    An unprivileged process can forge the source address of IPv6 packets (IPV6_FREEBIND with
    IPV6_PKTINFO), and a link-local address would reach the host's wildcard listeners past the
    bridge's IPv4 rules. Loopback keeps ::1. /proc/sys/net is the writer's namespace's.
    """
    try:
        with open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass  # a kernel without IPv6


def bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
        flags = _IFREQ.unpack(raw)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def populate_root(spec: SandboxSpec, root: str) -> None:
    for d in ("etc", "proc", "dev", "tmp", "var/task", "var/runtime", ".old"):
        os.makedirs(os.path.join(root, d), mode=0o755, exist_ok=True)
    for dst, target in spec.symlinks.items():
        path = _inside(root, dst)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.symlink(target, path)
    for bind in sorted(spec.binds, key=lambda b: b["dst"].rstrip("/").count("/")):
        target = _inside(root, bind["dst"])
        _make_mountpoint(target, os.path.isdir(bind["src"]))
        _step(f"bind {bind['src']} on {bind['dst']}", _bind_readonly, bind["src"], target)
    for sub, dst in (("task", "var/task"), ("runtime", "var/runtime")):
        # A bind of a slave mount is itself a slave of the same master: later host mounts on the
        # slot's task/runtime dirs propagate onto these.
        _step(f"bind slot {sub}", _bind_readonly, os.path.join(spec.slot_dir, sub), os.path.join(root, dst))
    _step("mount /proc", mount_proc, os.path.join(root, "proc"))
    _step("build /dev", _build_dev, os.path.join(root, "dev"), spec.effective_shm_size)
    _step("mount /tmp", mount_scratch, os.path.join(root, "tmp"), spec.tmp_size)


def mount_proc(path: str) -> None:
    # hidepid: user code does not see processes of other uids (PID 1's command line, say).
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    try:
        sc.mount("proc", path, "proc", flags, "hidepid=2")
    except OSError:
        sc.mount("proc", path, "proc", flags)


def _inside(root: str, path: str) -> str:
    rel = os.path.normpath(path).lstrip("/")
    if not rel or rel == "." or rel.startswith(".."):
        raise SandboxBuildError(f"path {path!r} does not name anything inside the sandbox root")
    return os.path.join(root, rel)


def _make_mountpoint(path: str, is_dir: bool) -> None:
    if os.path.lexists(path):
        return
    if is_dir:
        os.makedirs(path, mode=0o755)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _bind_readonly(src: str, target: str) -> None:
    sc.mount(src, target, None, sc.MS_BIND)
    sc.mount(None, target, None, _RO_BIND)


def _build_dev(dev: str, shm_size: int) -> None:
    sc.mount("easyfaas-dev", dev, "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, f"size={DEV_SIZE},mode=0755")
    for name in DEVICES:
        node = os.path.join(dev, name)
        os.close(os.open(node, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
        sc.mount(os.path.join("/dev", name), node, None, sc.MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "shm"), 0o755)
    mount_scratch(os.path.join(dev, "shm"), shm_size)
    sc.mount(None, dev, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NOEXEC)


def mount_scratch(path: str, size: int) -> None:
    """A fresh, size-capped, world-writable (sticky) tmpfs: /tmp and /dev/shm."""
    sc.mount("easyfaas-tmp", path, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"size={int(size)},mode=1777")


def enter_root(new_root: str) -> None:
    os.chdir(new_root)
    sc.pivot_root(".", ".old")
    os.chdir("/")
    sc.umount("/.old", sc.MNT_DETACH)
    os.rmdir("/.old")
    sc.mount(None, "/", None, _RO_BIND)


# ---- serving the funclet ------------------------------------------------------------------------

class _Spare:
    """A Python runtime forked, set up (own session and IPC namespace, the sandbox's user, seccomp)
    and blocked on a pipe before any function is assigned: a Python cold start then costs the pipe
    write and the handler's import instead of a fork and ~3 ms of set-up in a fresh child."""

    __slots__ = ("pid", "env_w", "status_r", "output_r")

    def __init__(self, pid: int, env_w: int, status_r: int, output_r: int) -> None:
        self.pid = pid
        self.env_w = env_w
        self.status_r = status_r
        self.output_r = output_r

    def close(self) -> None:
        for fd in (self.env_w, self.status_r, self.output_r):
            try:
                os.close(fd)
            except OSError:
                pass


class Supervisor:
    """The command loop of a built sandbox; one runtime at a time (plus a spare Python runtime while
    the sandbox is idle)."""

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
        # A pre-started runtime waiting for its function: the pipe that hands it the environment,
        # and what it was started as (Bin and Args: a start of anything else replaces it).
        self.standby_w = -1
        self.standby_key = ""
        self.spare: _Spare | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore_signal)

    def serve(self) -> None:
        self._fork_spare()
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
        _send_or_exit(self.ctl, message)

    # -- commands --

    def handle_command(self) -> None:
        try:
            message, fds = control.recv_message(self.ctl)
        except EOFError:
            os._exit(0)  # the funclet is done with us; the pid namespace dies with PID 1
        except control.ControlError as exc:
            self.send({"op": control.OP_ERROR, "error": str(exc)})
            return
        except InterruptedError:
            return
        for fd in fds:
            os.close(fd)
        op = message["op"]
        if op == control.OP_START:
            self.start(message)
        elif op == control.OP_RESET:
            self.reset()
            self.send({"op": control.OP_RESET_DONE})
        elif op == control.OP_PING:
            self.send({"op": control.OP_PONG, "runtime_pid": self.runtime_pid, "standby": self.standby_w >= 0,
                       "spare": self.spare is not None})
        elif op == control.OP_PRESTART:
            self.prestart(message)
        else:
            self.send({"op": control.OP_ERROR, "error": f"unknown op {op!r}"})

    def start(self, message: dict[str, Any]) -> None:
        runtime = message.get("runtime") or {}
        env = runtime_environment(message.get("env") or {}, runtime)
        if self.standby_w >= 0:
            if self.standby_key == _standby_key(runtime) and not _needs_fresh_start(env) and self._assign(env):
                return
            self._drop_standby()
        if self.runtime_pid or self.starting:
            self.send(_started_failure("a runtime is already running in this sandbox; reset it first",
                                       "Runtime.Busy"))
            return
        problem = _launch_problem(runtime)
        if problem:
            self.send(_started_failure(problem, "Runtime.InvalidConfiguration"))
            return
        if (runtime.get("Launch") or control.LAUNCH_EXEC) == control.LAUNCH_FORK_PYTHON and self._assign_spare(env):
            self.starting = True
            return
        self._drop_spare()
        self._fork_runtime(runtime, env)
        self.starting = True

    def prestart(self, message: dict[str, Any]) -> None:
        """Start a runtime with no function yet; ``start`` of the same runtime completes it."""
        runtime = message.get("runtime") or {}
        failure: str | None = None
        if self.runtime_pid or self.starting or self.standby_w >= 0:
            failure = "a runtime is already running in this sandbox"
        elif not runtime.get("Standby") or (runtime.get("Launch") or control.LAUNCH_EXEC) != control.LAUNCH_EXEC:
            failure = f"runtime {runtime.get('Name')!r} cannot be pre-started (it needs Standby and Launch exec)"
        else:
            failure = _launch_problem(runtime)
        if failure:
            self.send({"op": control.OP_PRESTARTED, "ok": False, "pid": 0, "error": failure})
            return
        self._drop_spare()  # this sandbox now waits for a function of the other runtime
        env = runtime_environment({}, runtime)
        env["EASYFAAS_STANDBY_FD"] = str(STANDBY_FD)
        standby_r, standby_w = os.pipe2(os.O_CLOEXEC)
        try:
            self._fork_runtime(runtime, env, standby_r)
        finally:
            os.close(standby_r)
        self.standby_w, self.standby_key = standby_w, _standby_key(runtime)
        self.send({"op": control.OP_PRESTARTED, "ok": True, "pid": self.runtime_pid})

    def _assign(self, env: dict[str, str]) -> bool:
        """Hand the function's environment to the pre-started runtime; False if it is gone."""
        if not _write_assignment(self.standby_w, env):
            return False  # it died: its exit is reaped and it is replaced by a fresh start
        os.close(self.standby_w)
        self.standby_w, self.standby_key = -1, ""
        self.starting = True
        return True

    def _drop_standby(self) -> None:
        """Kill the pre-started runtime (quietly: nobody needs to hear about its exit)."""
        pid = self.runtime_pid
        os.close(self.standby_w)
        self.standby_w, self.standby_key = -1, ""
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.runtime_pid = 0
        self._close_status()
        self._close_output()

    def _fork_runtime(self, runtime: dict[str, Any], env: dict[str, str], standby_r: int = -1) -> None:
        pid, status_r, output_r = self._fork_child(runtime.get("Launch") or control.LAUNCH_EXEC, runtime, env,
                                                   standby_r)
        self._adopt(pid, status_r, output_r)

    def _adopt(self, pid: int, status_r: int, output_r: int) -> None:
        self.runtime_pid = pid
        self.status_fd, self.status_buf, self.status_eof_at = status_r, b"", None
        self._close_output()
        self.output_fd = output_r
        self.output_tail = bytearray()

    def _fork_child(self, launch: str, runtime: dict[str, Any], env: dict[str, str] | None,
                    standby_r: int) -> tuple[int, int, int]:
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

    # -- the spare Python runtime --

    def _fork_spare(self) -> None:
        if self.spare is not None or self.runtime_pid or self.standby_w >= 0:
            return
        env_r, env_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid, status_r, output_r = self._fork_child(control.LAUNCH_FORK_PYTHON, {}, None, env_r)
        except OSError as exc:
            os.close(env_w)
            sys.stderr.write(f"easyfaas runner: no spare runtime: {exc}\n")
            return
        finally:
            os.close(env_r)
        self.spare = _Spare(pid, env_w, status_r, output_r)

    def _assign_spare(self, env: dict[str, str]) -> bool:
        spare, self.spare = self.spare, None
        if spare is None:
            return False
        if not _write_assignment(spare.env_w, env):
            self._kill_spare(spare)
            return False
        os.close(spare.env_w)
        self._adopt(spare.pid, spare.status_r, spare.output_r)
        return True

    def _drop_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            self._kill_spare(spare)

    @staticmethod
    def _kill_spare(spare: _Spare) -> None:
        spare.close()
        try:
            os.kill(spare.pid, signal.SIGKILL)
            os.waitpid(spare.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

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
        if self.standby_w >= 0:
            os.close(self.standby_w)
            self.standby_w, self.standby_key = -1, ""
        if self.spare is not None:
            self.spare.close()  # killed with the rest
            self.spare = None
        try:
            for path, size in (("/tmp", self.spec.tmp_size), ("/dev/shm", self.spec.effective_shm_size)):
                sc.umount(path, sc.MNT_DETACH)
                mount_scratch(path, size)
        except OSError as exc:
            # A sandbox without a clean /tmp must not be reused: exit, and the funclet rebuilds it.
            sys.stderr.write(f"easyfaas runner: reset could not renew scratch mounts: {exc}\n")
            os._exit(1)
        self._fork_spare()

    # -- the runtime child --

    def _become_runtime(self, launch: str, runtime: dict[str, Any], env: dict[str, str] | None,
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
            privileges.drop_to(self.spec.uid, self.spec.gid)
            # Last: everything above needed system calls the filter refuses (unshare, setns, ...).
            seccomp.install_filter()
        except BaseException as exc:  # noqa: BLE001
            _write_status(status_fd, {"ok": False, "error": {
                "errorMessage": f"runtime setup failed: {_describe(exc)}", "errorType": "Runtime.SandboxError"}})
            os._exit(126)
        if launch == control.LAUNCH_FORK_PYTHON:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = 1
            try:
                if env is None:  # a spare: wait for the function's environment
                    env = _await_assignment(STANDBY_FD)
                python_bootstrap.main(env)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported on the output pipe, then exit
                _write_status(4, {"ok": False, "error": {
                    "errorMessage": f"the Python runtime failed: {_describe(exc)}", "errorType": "Runtime.InitError"}})
                _write_quietly(2, f"easyfaas python runtime: {_describe(exc)}\n")
            finally:
                os._exit(code)
        # exec: dispositions Python set to SIG_IGN would survive execve.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        binary = str(runtime["Bin"])
        args = [str(a) for a in runtime.get("Args") or []]
        try:
            os.execve(binary, [binary, *args], env)
        except (OSError, ValueError) as exc:
            _write_status(4, {"ok": False, "error": {
                "errorMessage": f"cannot exec {binary}: {_describe(exc)}", "errorType": "Runtime.ExecError"}})
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
                reply: dict[str, Any] = {"op": control.OP_STARTED, "ok": status["ok"], "pid": self.runtime_pid}
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
            elif self.spare is not None and pid == self.spare.pid:
                # Not replaced until the next reset: a spare that cannot live must not loop.
                sys.stderr.write(f"easyfaas runner: the spare runtime died ({_exit_text(status)})\n")
                self.spare.close()
                self.spare = None

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
        standby = self.standby_w >= 0
        if standby:
            os.close(self.standby_w)
            self.standby_w, self.standby_key = -1, ""
        if self.starting:
            self.read_status()
            if self.starting:
                self._close_status()
                self.finish_start(self.status_buf if self.status_buf.strip() else None,
                                  "the runtime exited before reporting its init status", exit_status=status)
        self.runtime_pid = 0
        self.read_output()
        message: dict[str, Any] = {"op": control.OP_EXITED, "pid": pid,
                                   "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                                   "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}
        if standby:
            message["standby"] = True
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


def runtime_environment(env: dict[str, Any], runtime: dict[str, Any]) -> dict[str, str]:
    """The runtime's environment: the start message's env, plus defaults; nothing from the host."""
    result = {str(k): str(v) for k, v in env.items()}
    for key, value in (runtime.get("Env") or {}).items():
        result.setdefault(str(key), str(value))
    result.setdefault("PATH", DEFAULT_PATH)
    result.setdefault("HOME", "/tmp")
    result.setdefault("LANG", "C.UTF-8")
    result.setdefault("LAMBDA_TASK_ROOT", TASK_DIR)
    result.setdefault("LAMBDA_RUNTIME_DIR", RUNTIME_DIR)
    # Makes every node start ~100 ms slower (linux-limits.md §0) and points at a host file.
    result.pop("NODE_EXTRA_CA_CERTS", None)
    return result


# ---- helpers ------------------------------------------------------------------------------------

def _launch_problem(runtime: dict[str, Any]) -> str:
    launch = runtime.get("Launch") or control.LAUNCH_EXEC
    if launch not in (control.LAUNCH_EXEC, control.LAUNCH_FORK_PYTHON):
        return f"unknown runtime Launch {launch!r}"
    if launch == control.LAUNCH_EXEC and not str(runtime.get("Bin") or "").startswith("/"):
        return f"runtime {runtime.get('Name')!r} has no absolute Bin to exec"
    return ""


def _standby_key(runtime: dict[str, Any]) -> str:
    return json.dumps([runtime.get("Bin"), runtime.get("Args") or [], runtime.get("Env") or {}], sort_keys=True)


def _write_assignment(fd: int, env: dict[str, str]) -> bool:
    """The one line that gives a waiting runtime its function's environment; False if it is gone."""
    line = json.dumps({"env": env}, separators=(",", ":")).encode() + b"\n"
    try:
        while line:
            line = line[os.write(fd, line):]
    except OSError:
        return False
    return True


def _await_assignment(fd: int) -> dict[str, str]:
    """In a spare: block until the runner writes the environment line; exit if it never will."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            os._exit(0)  # the runner dropped us
        data += chunk
    os.close(fd)
    env = json.loads(data.split(b"\n", 1)[0])["env"]
    return {str(k): str(v) for k, v in env.items()}


def _needs_fresh_start(env: dict[str, str]) -> bool:
    return any(key.startswith(_START_TIME_ENV_PREFIXES) for key in env)


def _started_failure(message: str, error_type: str, pid: int = 0) -> dict[str, Any]:
    return {"op": control.OP_STARTED, "ok": False, "pid": pid,
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


def _send_or_exit(sock: socket.socket, message: dict[str, Any]) -> None:
    try:
        control.send_message(sock, message)
    except OSError:
        os._exit(1)  # nobody listens any more: the funclet is gone or gave up on us


def _close_fds_except(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


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


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
