"""The seccomp filter of user code: refuse the system calls a function never needs and attackers do.

The runtime child installs it last, after dropping root (``no_new_privs`` is already set, so no
privilege is needed); it then holds for the runtime, every thread, every child and every program
they exec, and nothing can remove it. It is a deny list, not an allow list: functions run arbitrary
executables (the exec runtime, Node.js, native modules), and an allow list would break them.

What is refused, and why (docs/security.md has the threat model):

* new namespaces — ``unshare``/``clone`` with a ``CLONE_NEW*`` flag, ``setns``. Unprivileged user
  namespaces would hand user code a full capability set over a fresh namespace, which opens the
  large kernel surface behind those capabilities (mount, netfilter, raw sockets, ...).
  ``clone3`` answers ENOSYS, since its flags live in memory a filter cannot read; the C libraries
  fall back to ``clone``, whose flags it can.
* mounts and root changes — ``mount``, ``umount2``, ``pivot_root``, ``chroot`` and the new mount API.
* kernel keyrings — ``keyctl``, ``add_key``, ``request_key``: the per-uid keyring outlives a reset
  and would carry secrets from one function to the next in the same sandbox.
* kernel log, modules, kexec, reboot, swap, clock, accounting, quota, hostname and domain name.
* ``ptrace`` and ``process_vm_*``, ``perf_event_open``, ``bpf``, ``userfaultfd`` and
  ``open_by_handle_at``: debugging, profiling and exploitation primitives.
* ``io_uring_*`` answer ENOSYS (libuv and others fall back to threads).
* sockets of families other than unix, IPv4, IPv6 and netlink answer EAFNOSUPPORT, and netlink
  protocols other than NETLINK_ROUTE (interface and address lists) EPROTONOSUPPORT: vsock would reach
  the hypervisor, and the rest (AF_ALG, AF_PACKET, audit, netfilter, ...) is attack surface no
  function needs.
* system calls of another ABI (i386 ``int 0x80``, x32) kill the process: their numbers differ, and a
  filter written for one ABI would let them through.

Stdlib only (ctypes, struct): it runs inside the sandbox, in the forked runtime child.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

# linux/seccomp.h, linux/filter.h, linux/audit.h
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JMP_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JMP_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_JMP_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_OFFSET_NR = 0
_OFFSET_ARCH = 4


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of syscall argument ``index`` (little-endian machines)."""
    return 16 + 8 * index


# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET.
# clone() keeps the exit signal in its low byte, so CLONE_NEWTIME (0x80) only counts for unshare().
CLONE_NAMESPACE_FLAGS = 0x7E020000
CLONE_NEWTIME = 0x00000080
AF_NETLINK = 16
NETLINK_ROUTE = 0
ALLOWED_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6; AF_NETLINK for NETLINK_ROUTE only

# System calls refused with EPERM, by name; numbers per architecture below.
DENIED = (
    "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "open_tree_attr",
    "keyctl", "add_key", "request_key",
    "syslog", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "sethostname", "setdomainname",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "lookup_dcookie",
    "nfsservctl", "iopl", "ioperm", "uselib", "_sysctl", "create_module", "get_kernel_syms",
    "query_module",
    "ptrace", "process_vm_readv", "process_vm_writev", "perf_event_open", "bpf", "userfaultfd",
    "open_by_handle_at", "fanotify_init",
)
# Refused with ENOSYS, so that callers take their fallback path.
UNSUPPORTED = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")


@dataclass(frozen=True)
class Arch:
    audit_arch: int
    numbers: dict[str, int]
    has_x32: bool


# From the kernel's arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h.
_COMMON_NEW = {"pidfd_open": 434, "clone3": 435, "io_uring_setup": 425, "io_uring_enter": 426,
               "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
               "fsmount": 432, "fspick": 433, "mount_setattr": 442, "quotactl_fd": 443, "open_tree_attr": 467}
X86_64 = Arch(AUDIT_ARCH_X86_64, {
    "socket": 41, "clone": 56, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
    "chroot": 161, "keyctl": 250, "add_key": 248, "request_key": 249, "syslog": 103, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
    "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179, "sethostname": 170, "setdomainname": 171,
    "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "vhangup": 153,
    "lookup_dcookie": 212, "nfsservctl": 180, "iopl": 172, "ioperm": 173, "uselib": 134, "_sysctl": 156,
    "create_module": 174, "get_kernel_syms": 177, "query_module": 178, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "perf_event_open": 298, "bpf": 321,
    "userfaultfd": 323, "open_by_handle_at": 304, "fanotify_init": 300, **_COMMON_NEW,
}, has_x32=True)
AARCH64 = Arch(AUDIT_ARCH_AARCH64, {
    "socket": 198, "clone": 220, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
    "chroot": 51, "keyctl": 219, "add_key": 217, "request_key": 218, "syslog": 116, "init_module": 105,
    "finit_module": 273, "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "reboot": 142,
    "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60, "sethostname": 161, "setdomainname": 162,
    "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171, "vhangup": 58,
    "lookup_dcookie": 18, "nfsservctl": 42, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
    "perf_event_open": 241, "bpf": 280, "userfaultfd": 282, "open_by_handle_at": 265, "fanotify_init": 262,
    **_COMMON_NEW,
}, has_x32=False)
ARCHES = {"x86_64": X86_64, "aarch64": AARCH64}


class SeccompError(OSError):
    """The filter could not be built for this machine or the kernel refused it."""


class _Assembler:
    """Classic BPF with symbolic jump targets, resolved into 8-bit relative offsets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def load(self, offset: int) -> None:
        self.code.append((BPF_LD_W_ABS, 0, 0, offset))

    def jump(self, op: int, k: int, if_true: str | int = 0, if_false: str | int = 0) -> None:
        self.code.append((op, if_true, if_false, k))

    def ret(self, value: int) -> None:
        self.code.append((BPF_RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (op, jt, jf, k) in enumerate(self.code):
            out += struct.pack("=HBBI", op, self._offset(index, jt), self._offset(index, jf), k)
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise SeccompError(errno.E2BIG, f"seccomp jump to {target} out of range ({offset})")
        return offset


def build_filter(arch: Arch) -> bytes:
    """The filter program (packed ``struct sock_filter`` array) for ``arch``."""
    asm = _Assembler()
    asm.load(_OFFSET_ARCH)
    asm.jump(BPF_JMP_JEQ_K, arch.audit_arch, 0, "kill")
    asm.load(_OFFSET_NR)
    if arch.has_x32:
        asm.jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, "kill", 0)
    n = arch.numbers
    asm.jump(BPF_JMP_JEQ_K, n["clone"], "clone", 0)
    asm.jump(BPF_JMP_JEQ_K, n["unshare"], "unshare", 0)
    asm.jump(BPF_JMP_JEQ_K, n["socket"], "socket", 0)
    for name in DENIED:
        if name in n:
            asm.jump(BPF_JMP_JEQ_K, n[name], "eperm", 0)
    for name in UNSUPPORTED:
        asm.jump(BPF_JMP_JEQ_K, n[name], "enosys", 0)
    asm.ret(SECCOMP_RET_ALLOW)
    # Argument checks, then the shared returns: classic BPF only jumps forward.
    asm.label("clone")
    asm.load(_arg_low(0))
    asm.jump(BPF_JMP_JSET_K, CLONE_NAMESPACE_FLAGS, "eperm", "allow")
    asm.label("unshare")
    asm.load(_arg_low(0))
    asm.jump(BPF_JMP_JSET_K, CLONE_NAMESPACE_FLAGS | CLONE_NEWTIME, "eperm", "allow")
    asm.label("socket")
    asm.load(_arg_low(0))
    for family in ALLOWED_SOCKET_FAMILIES:
        asm.jump(BPF_JMP_JEQ_K, family, "allow", 0)
    asm.jump(BPF_JMP_JEQ_K, AF_NETLINK, 0, "eafnosupport")
    asm.load(_arg_low(2))
    asm.jump(BPF_JMP_JEQ_K, NETLINK_ROUTE, "allow", 0)
    asm.ret(SECCOMP_RET_ERRNO | errno.EPROTONOSUPPORT)
    asm.label("eafnosupport")
    asm.ret(SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT)
    asm.label("kill")
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    asm.label("allow")
    asm.ret(SECCOMP_RET_ALLOW)
    asm.label("eperm")
    asm.ret(SECCOMP_RET_ERRNO | errno.EPERM)
    asm.label("enosys")
    asm.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
    return asm.assemble()


def current_arch() -> Arch:
    machine = platform.machine()
    try:
        return ARCHES[machine]
    except KeyError:
        raise SeccompError(errno.ENOSYS, f"no seccomp filter for {machine} (known: {', '.join(ARCHES)})") from None


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]


def install_filter(program: bytes | None = None) -> None:
    """Install the filter on the calling process (needs no_new_privs or CAP_SYS_ADMIN); irreversible."""
    if program is None:
        program = build_filter(current_arch())
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"installing the seccomp filter: {os.strerror(err)}")
