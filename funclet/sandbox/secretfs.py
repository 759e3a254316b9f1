"""A sandbox's ``/var/secrets``: a small tmpfs on the slot's ``secrets`` directory, one file a secret.

The slot's ``secrets`` directory is bound onto the sandbox's ``/var/secrets`` when the sandbox is
built (a bind of the shared slots mount, so what is mounted on it later reaches the sandbox, like
the code image on ``task``). At warmup a tmpfs is mounted there, owned by the function's uid with
mode 0500, each secret written as a 0400 file, and the tmpfs remounted read-only as a whole (the
superblock, so the sandbox's copy of the mount is read-only too). The reset unmounts it.
"""

from __future__ import annotations

import os
from pathlib import Path

from easyfaas import syscalls

__all__ = ["clear_secrets", "write_secrets"]

_FLAGS = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
_SIZE = "1m"


def write_secrets(path: Path, uid: int, values: dict[str, str]) -> None:
    """Mount the tmpfs on ``path`` with one file per secret; on failure nothing stays mounted."""
    data = f"size={_SIZE},mode=0500,uid={uid},gid={uid}"
    syscalls.mount("easyfaas-secrets", str(path), "tmpfs", _FLAGS, data)
    try:
        for name, value in values.items():
            fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
            try:
                os.fchown(fd, uid, uid)
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        syscalls.mount(None, str(path), None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY | _FLAGS, data)
    except BaseException:
        clear_secrets(path)
        raise


def clear_secrets(path: Path) -> None:
    try:
        syscalls.umount(str(path), syscalls.MNT_DETACH)
    except OSError:
        pass  # nothing mounted
