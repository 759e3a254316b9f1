"""Checks that the host can run sandboxes, so the funclet refuses to start with a clear reason.

Each check returns a human sentence naming what is missing and how to get it; the funclet prints
all of them and exits non-zero rather than failing later on a request path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def check_host(*, runtime_path: str, rootfs_path: str, cgroup_root: str, need_network: bool,
               mkfs: str = "mkfs.erofs") -> list[str]:
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("the funclet must run as root (it creates cgroups, namespaces, mounts and "
                        "loop devices); start it with sudo or as a privileged container")
    for ns in ("mnt", "pid", "ipc", "uts", "net"):
        if not os.path.exists(f"/proc/self/ns/{ns}"):
            problems.append(f"the kernel lacks {ns} namespaces (/proc/self/ns/{ns} is missing)")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "erofs" not in filesystems.split():
        problems.append("the kernel cannot mount erofs (not in /proc/filesystems); load the erofs "
                        "module (modprobe erofs) or use a kernel with CONFIG_EROFS_FS")
    if not os.path.exists("/dev/loop-control"):
        problems.append("/dev/loop-control is missing: the kernel needs loop device support "
                        "(modprobe loop), and a container needs it passed in (--privileged)")
    if shutil.which(mkfs) is None:
        problems.append(f"{mkfs} is not installed (Debian/Ubuntu: apt-get install erofs-utils)")
    root = Path(cgroup_root)
    if (root / "cgroup.controllers").exists():
        controllers = (root / "cgroup.controllers").read_text().split()
        for ctrl in ("memory", "pids", "cpu"):
            if ctrl not in controllers:
                problems.append(f"cgroup v2 at {cgroup_root} lacks the {ctrl} controller")
    else:
        for ctrl in ("memory", "cpu", "pids"):
            if not (root / ctrl / "cgroup.procs").exists():
                problems.append(f"no cgroup {ctrl} controller: neither cgroup v2 at {cgroup_root} "
                                f"nor a v1 hierarchy at {root / ctrl}")
    if need_network and not os.path.exists("/proc/sys/net/ipv4"):
        problems.append("no IPv4 networking in this kernel; start with --network=none")
    try:
        if not any(Path(runtime_path).glob("*/runtime.yaml")):
            problems.append(f"no language runtimes under {runtime_path}: run "
                            f"`python -m runner prepare --runtime-dir {runtime_path} --rootfs-dir {rootfs_path}` first")
        if not (Path(rootfs_path) / "etc" / "passwd").exists():
            problems.append(f"no sandbox root skeleton at {rootfs_path}: run `python -m runner prepare` first")
    except OSError as exc:
        problems.append(f"cannot read the prepared runtimes: {exc.strerror} ({exc.filename})")
    return problems
