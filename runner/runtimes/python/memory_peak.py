"""The runtime process's peak memory: what a response frame reports as ``memory_peak_kb``
(``easyfaas/frames.py``), the "Max Memory Used" of the invocation's REPORT line.

The kernel keeps each process's high-water resident set (``getrusage``'s ``ru_maxrss``, in KiB on
Linux): reading it is one system call (about a microsecond), cheap enough for every response. A
process's figure covers itself; ``RUSAGE_CHILDREN`` covers the largest of its children it has
waited for (an ``exec`` invocation's process, an ended ``provided`` bootstrap); a child still
running is read from its ``/proc/<pid>/status`` (``VmHWM``).

One catch: ``exec`` keeps the parent's resident set at ``fork`` as the new program's ``ru_maxrss``
(a runtime started by a big process starts with its figure). While a process's ``ru_maxrss`` is
still that inherited figure, its own peak is read from ``/proc/self/status`` instead (some 5-20 µs
an answer; a sandbox's Python runtime is forked, never exec'd, and a Node.js runtime outgrows its
parent's figure at start, so neither pays it). Stdlib only.
"""

from __future__ import annotations

import os
import resource

__all__ = ["own_peak_kb", "peak_kb", "process_peak_kb"]

_getrusage = resource.getrusage
_SELF = resource.RUSAGE_SELF
_CHILDREN = resource.RUSAGE_CHILDREN


class _Inherited:
    """The ``ru_maxrss`` this process got from before its ``exec`` (0: none), found at its first
    reading; a forked child (``fork`` starts a child's figure afresh) finds its own. While that
    figure stands, ``/proc/self/status`` stays open for the readings (a re-read saves the open
    and close)."""

    __slots__ = ("kb", "known", "status_fd")

    def __init__(self) -> None:
        self.kb = 0
        self.known = False
        self.status_fd = -1

    def forget(self) -> None:
        self.known = False
        if self.status_fd >= 0:
            os.close(self.status_fd)  # the parent's, not ours
            self.status_fd = -1

    def learn(self, rss: int) -> None:
        self.known = True
        self.kb = 0
        try:
            fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        # Read after ru_maxrss: our own high-water mark can only have grown since, so a larger
        # ru_maxrss is not ours.
        own = _vm_hwm(fd)
        if own and rss > own:
            self.kb, self.status_fd = rss, fd
        else:
            os.close(fd)

    def own_kb(self) -> int:
        return _vm_hwm(self.status_fd) if self.status_fd >= 0 else 0


_inherited = _Inherited()
os.register_at_fork(after_in_child=_inherited.forget)


def own_peak_kb() -> int:
    """This process's own peak resident memory in KiB."""
    rss = _getrusage(_SELF).ru_maxrss
    inherited = _inherited
    if not inherited.known:
        inherited.learn(rss)
    if rss > inherited.kb:
        return rss
    return inherited.own_kb() or rss


class _LiveChild:
    """The ``/proc/<pid>/status`` of the running child last asked about, kept open between readings."""

    __slots__ = ("pid", "status_fd")

    def __init__(self) -> None:
        self.pid = 0
        self.status_fd = -1

    def forget(self) -> None:
        if self.status_fd >= 0:
            os.close(self.status_fd)
        self.pid, self.status_fd = 0, -1

    def peak_kb(self, pid: int) -> int:
        if pid != self.pid:
            self.forget()
            try:
                self.status_fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return 0
            self.pid = pid
        return _vm_hwm(self.status_fd)


_live_child = _LiveChild()
os.register_at_fork(after_in_child=_live_child.forget)


def peak_kb(live_child: int = 0) -> int:
    """This process's peak resident memory in KiB, plus its waited-for children's, plus the peak of
    ``live_child`` (a pid; 0 for none) while it runs."""
    peak = own_peak_kb() + _getrusage(_CHILDREN).ru_maxrss
    if live_child:
        peak += _live_child.peak_kb(live_child)
    return peak


def process_peak_kb(pid: int) -> int:
    """``VmHWM`` of a running process in KiB; 0 when it is gone or cannot be read."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return _vm_hwm(fd)
    finally:
        os.close(fd)


def _vm_hwm(status_fd: int) -> int:
    """``VmHWM`` (KiB) from an open ``/proc/<pid>/status``; 0 when it has none (a zombie)."""
    try:
        text = os.pread(status_fd, 8192, 0)
    except OSError:
        return 0
    start = text.find(b"\nVmHWM:")
    if start < 0:
        return 0
    fields = text[start + 7:text.find(b"\n", start + 7)].split()
    try:
        return int(fields[0])
    except (IndexError, ValueError):
        return 0
