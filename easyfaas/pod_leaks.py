"""What a pod leaves behind: its mounts, loop devices, network links, cgroups and processes that
are still there after it stopped, and a before/after snapshot of the kernel objects a whole test run
could leave. The end-to-end tests and the benchmarks audit every pod they start with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from easyfaas.pod_names import PodNames


def kernel_leaks(state_dir: Path, names: PodNames) -> list[str]:
    """Everything of this pod that should be gone once it stopped."""
    leaks: list[str] = []
    prefix = str(state_dir)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split()[4].replace("\\040", " ")
            if mountpoint.startswith(prefix):
                leaks.append(f"mount {mountpoint}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().startswith(prefix):
                leaks.append(f"loop device {backing.parent.parent.name}")
        except OSError:
            pass
    for link in Path("/sys/class/net").iterdir():
        if link.name == names.bridge or link.name.startswith(names.veth_prefix):
            leaks.append(f"network link {link.name}")
    group = f"easyfaas-{names.pod_name}"
    for root in Path("/sys/fs/cgroup").iterdir():
        if root.is_dir():
            leaks.extend(f"cgroup {path}" for path in _cgroups_under(root) if path.name == group)
    for proc in psutil.process_iter(["cmdline", "pid"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            ours = prefix in cmd or ("runner.zygote" in cmd and _pod_of(proc) == names.pod_name)
        except (psutil.Error, TypeError):
            continue
        if ours and proc.pid != os.getpid():
            leaks.append(f"process {proc.pid}: {cmd[:120]}")
    return leaks


def _cgroups_under(root: Path) -> list[Path]:
    """Every cgroup (directory) below ``root``. Other pods on this machine add and remove cgroups
    while the walk looks: one that vanishes under it is skipped, not an error."""
    return [Path(parent) / name for parent, dirs, _ in os.walk(root) for name in dirs]


def _pod_of(proc: psutil.Process) -> str:
    """The pod a zygote or runner belongs to (the funclet puts EASYFAAS_POD in its environment)."""
    try:
        return proc.environ().get("EASYFAAS_POD", "")
    except psutil.Error:
        return ""


def kernel_snapshot() -> dict[str, set[str]]:
    """Kernel objects on this host that a test could leave behind, for a before/after comparison."""
    with open("/proc/self/mountinfo") as f:
        mounts = {line.split()[4] for line in f}
    loops = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            loops.add(f"{backing.parent.parent.name}:{backing.read_text().strip()}")
        except OSError:
            pass
    links = {p.name for p in Path("/sys/class/net").iterdir()}
    netns = {p.name for p in Path("/run/netns").iterdir()} if Path("/run/netns").is_dir() else set()
    cgroups = set()
    for ctrl in ("memory", "cpu", "pids", "unified"):
        root = Path("/sys/fs/cgroup") / ctrl
        if root.is_dir():
            cgroups |= {str(p) for p in _cgroups_under(root) if "easyfaas" in p.name or "test" in p.name}
    procs = set()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if "runner.zygote" in cmd or "-m funclet" in cmd or "bootstrap.js" in cmd:
            procs.add(f"{proc.pid}: {cmd[:100]}")
    return {"mounts": mounts, "loop devices": loops, "network links": links, "netns": netns,
            "cgroups": cgroups, "processes": procs}


def new_objects(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    """What ``after`` has that ``before`` had not, by kind (only the kinds with something new)."""
    return {kind: sorted(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}
