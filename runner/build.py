"""Building a sandbox, inside the zygote's child, between its fork and ``ready``.

The child is PID 1 of a fresh pid namespace. It makes itself the OOM killer's last choice, joins
the slot's cgroups, unshares the mount/uts/ipc/net namespaces, builds a read-only tmpfs root out of
read-only binds (the host's ``/usr`` and friends, the slot's code and runtime directories), a small
``/dev``, ``/proc`` and a size-capped ``/tmp``, and pivots into it. Each step that fails raises
:class:`SandboxBuildError` naming the step, which the runner reports as ``failed``.

Stdlib only (imported before the zygote forks).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from typing import Any

from easyfaas import syscalls as sc
from runner import privileges
from runner.control import SandboxSpec

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SIZE = 64 << 10

_RO_BIND = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sh22x")


class SandboxBuildError(Exception):
    """A step of building the sandbox failed; the message names the step."""


def build_sandbox(spec: SandboxSpec) -> None:
    """Everything between fork and ``ready``; raises SandboxBuildError naming the failed step."""
    # Before anything can allocate in the sandbox's memory cgroup: its OOM killer must never pick PID 1.
    _step("protect the runner from the OOM killer", privileges.protect_runner_from_oom)
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
        raise SandboxBuildError(f"{what}: {describe(exc)}") from None


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


def describe(exc: BaseException) -> str:
    """An exception as one line of a report: its message, or its type when it has none."""
    return str(exc) or type(exc).__name__
