"""Dropping root for user code: rlimits, bounding set, groups, uid/gid, capabilities, no_new_privs.

Runs in the runtime child of the sandbox init, between fork and running user code. The order
matters: the bounding set can only be dropped while we still hold CAP_SETPCAP (before setresuid);
setresuid to a non-zero uid clears the permitted/effective sets; capset then clears what is left
(inheritable); no_new_privs last, so no later execve (setuid binaries, file caps) can get any back.
Stdlib only (ctypes), because it runs inside the sandbox.
"""

from __future__ import annotations

import ctypes
import os
import resource

from easyfaas import syscalls

PR_SET_DUMPABLE = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def clear_capabilities() -> None:
    """capset(all sets = 0) for the calling thread; lowering is always allowed."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def set_rlimits(nofile: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def drop_to(uid: int, gid: int) -> None:
    """Become uid/gid with no supplementary groups, no capabilities and no_new_privs."""
    if uid <= 0 or gid <= 0:
        raise ValueError(f"refusing to run user code as uid {uid} / gid {gid}")
    syscalls.drop_bounding_set()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    clear_capabilities()
    # A uid change makes the process non-dumpable, which turns /proc/self/* (fd, environ, ...)
    # root-owned: user code could not read its own /proc/self/fd, /dev/stdin, ... Nothing in this
    # process is secret from its own uid, so make it dumpable again (core dumps stay off: RLIMIT_CORE 0).
    syscalls.prctl(PR_SET_DUMPABLE, 1)
    syscalls.set_no_new_privs()
