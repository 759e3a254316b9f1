"""Dropping root for user code: rlimits, OOM bias, bounding set, groups, uid/gid, capabilities,
no_new_privs (and the runner's own OOM bias).

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


# The OOM killer's bias (-1000 never, 1000 first): the runner must outlive whatever its runtime
# does, so a memory or fork bomb loses its own processes and the sandbox is reset, not rebuilt.
OOM_SCORE_ADJ_RUNNER = -1000
OOM_SCORE_ADJ_RUNTIME = 1000


def set_oom_score_adj(value: int) -> bool:
    """Bias the OOM killer for the calling process and the children it forks from now on.

    With CAP_SYS_RESOURCE the value also becomes the process's floor: an unprivileged process is
    refused anything lower, so user code cannot make itself safer than its runner. Without it
    (a container host that withholds the capability) raising still works and lowering below the
    inherited floor does not; False says the value was refused.
    """
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except PermissionError:
        return False
    return True


def protect_runner_from_oom() -> None:
    """The runner's own bias, as low as the kernel lets it go.

    Not fatal when refused: the runtime's +1000 alone already adds the whole memory limit to the
    badness of every function process, so within the sandbox's cgroup the OOM killer still takes
    them first while any is left.
    """
    set_oom_score_adj(OOM_SCORE_ADJ_RUNNER)


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
