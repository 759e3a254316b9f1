"""Host-side mount operations of the funclet: shared slot dirs, read-only binds, crash cleanup.

All by mount(2)/umount2(2) (``easyfaas.syscalls``), never the ``mount`` CLI: a bind plus its
read-only remount costs ~0.04 ms by syscall and ~2 ms by CLI, and binds sit on the warmup path.

Propagation is what makes the slot design work: ``/var/faas/slots`` is bind-mounted onto itself
and marked MS_SHARED; a sandbox, after unshare(CLONE_NEWNS) and making its tree MS_SLAVE, binds
``slots/<id>/task`` onto its ``/var/task``. A later host mount on ``slots/<id>/task`` (the code
image) propagates into the sandbox, and the host unmount propagates too.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

import structlog

from easyfaas import syscalls

log = structlog.get_logger(__name__)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    mountpoint: str
    fstype: str
    source: str
    options: str          # per-mount options, e.g. "ro,nosuid,nodev,relatime"
    super_options: str    # per-superblock options
    propagation: str      # optional fields, e.g. "shared:12 master:3" ("" = private)

    @property
    def readonly(self) -> bool:
        return "ro" in self.options.split(",")

    @property
    def shared(self) -> bool:
        return any(f.startswith("shared:") for f in self.propagation.split())


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """Parse proc(5) mountinfo lines.

    Format: ``id parent maj:min root mountpoint opts [optional...] - fstype source superopts``.
    """
    entries = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 7:
                continue
            sep = fields.index("-", 6)
            entries.append(MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                mountpoint=_unescape(fields[4]),
                options=fields[5],
                propagation=" ".join(fields[6:sep]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
                super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
            ))
    return entries


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def mounts_at(path: str | os.PathLike) -> list[MountEntry]:
    """Every mount stacked on ``path`` (oldest first), the top one last."""
    target = _real(path)
    return [e for e in parse_mountinfo() if e.mountpoint == target]


def is_mountpoint(path: str | os.PathLike) -> bool:
    # mountinfo, not st_dev comparison: a bind of a directory of the same filesystem keeps st_dev.
    return bool(mounts_at(path))


def make_shared_dir(path: str | os.PathLike) -> None:
    """Turn ``path`` into a mount of its own in a fresh shared peer group."""
    p = _real(path)
    os.makedirs(p, exist_ok=True)
    if not is_mountpoint(p):
        syscalls.mount(p, p, None, syscalls.MS_BIND | syscalls.MS_REC)
    # Private first, so the new peer group is ours alone and does not join that of the parent mount
    # (whose other peers would then receive every slot mount).
    syscalls.mount(None, p, None, syscalls.MS_PRIVATE)
    syscalls.mount(None, p, None, syscalls.MS_SHARED)
    log.debug("mount_shared_dir", path=p)


def bind(src: str | os.PathLike, dst: str | os.PathLike, readonly: bool = True,
         recursive: bool = False, *, extra_flags: int = 0) -> None:
    """Bind ``src`` onto ``dst``; read-only needs a second remount (MS_RDONLY is ignored on a first bind)."""
    flags = syscalls.MS_BIND | (syscalls.MS_REC if recursive else 0)
    syscalls.mount(os.fspath(src), os.fspath(dst), None, flags)
    if readonly or extra_flags:
        try:
            syscalls.mount(None, os.fspath(dst), None,
                           syscalls.MS_REMOUNT | syscalls.MS_BIND
                           | (syscalls.MS_RDONLY if readonly else 0) | extra_flags)
        except OSError:
            unmount(dst)
            raise


def unmount(path: str | os.PathLike, lazy: bool = True) -> bool:
    """Unmount ``path``; returns False when nothing was mounted there."""
    try:
        syscalls.umount(os.fspath(path), (syscalls.MNT_DETACH if lazy else 0) | syscalls.UMOUNT_NOFOLLOW)
        return True
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):  # not a mountpoint / gone
            return False
        raise


def unmount_under(prefix: str | os.PathLike) -> int:
    """Unmount every mount at or below ``prefix``, deepest (and newest) first. Returns the count."""
    root = _real(prefix)
    count = 0
    # Loop: unmounting a shared parent can reveal mounts that were stacked underneath.
    for _ in range(64):
        entries = [e for e in parse_mountinfo()
                   if e.mountpoint == root or e.mountpoint.startswith(root.rstrip("/") + "/")]
        if not entries:
            break
        entries.sort(key=lambda e: (e.mountpoint.count("/"), e.mount_id), reverse=True)
        progressed = False
        for e in entries:
            if unmount(e.mountpoint, lazy=True):
                count += 1
                progressed = True
        if not progressed:
            break
    if count:
        log.info("mounts_stale_removed", prefix=root, count=count)
    return count
