"""Memory footprint: the control plane's RSS, and what each warm sandbox costs.

The control plane is measured in both forms of the pod: separate daemons (controller, stubs and
funclet, three Pythons) and all-in-one (controller and stubs in one process, beside the funclet),
each idle, right after its pool of the same size is built. The zygote is listed, not added: it is
the template the sandboxes fork from.

A sandbox is its runner (PID 1, ``HostPid`` in the funclet's list) and the runtime under it. USS
(pages only that process has) is what one more sandbox adds in processes; PSS shares the zygote's
pages out among the processes that map them. The funclet's per-container view adds the sandbox
cgroup's memory usage, which also holds the kernel memory charged to it (namespaces, page tables,
tmpfs), so the "how many fit" extrapolation uses the larger of PSS and the cgroup figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil

from bench.pod import BenchPod
from bench.stats import median, percentile

MiB = 1 << 20
GiB = 1 << 30


@dataclass
class SandboxMemory:
    container: str
    language: str  # python, node or other (by the runtime's executable)
    uss: int
    pss: int
    rss: int
    cgroup: int


def control_plane(pod: BenchPod) -> dict[str, Any]:
    """RSS (MiB) of the pod's daemons (controller, funclet and stubs, or the all-in-one process and the
    funclet), and of the zygote (counted apart)."""
    rss: dict[str, float] = {}
    for name, pid in pod.daemon_pids().items():
        proc = psutil.Process(pid)
        rss[name] = round(proc.memory_info().rss / MiB, 1)
        if name == "funclet":
            for child in proc.children():
                if "runner.zygote" in " ".join(child.cmdline()):
                    rss["zygote"] = round(child.memory_info().rss / MiB, 1)
    total = round(sum(v for k, v in rss.items() if k != "zygote"), 1)
    return {"rss_mib": rss, "total_mib": total}


def all_in_one_idle(container_num: int, controller_loop: str) -> tuple[dict[str, Any], list[str]]:
    """The idle control plane of an all-in-one pod of ``container_num`` sandboxes, and what that pod
    left behind when it stopped."""
    pod = BenchPod(container_num, controller_loop=controller_loop, all_in_one=True)
    try:
        pod.start()
        figures = control_plane(pod)
    finally:
        leaks = pod.stop()
    return figures, leaks


def _language(proc: psutil.Process) -> str:
    name = proc.name().lower()
    if name.startswith("node"):
        return "node"
    if name.startswith("python") or "python" in " ".join(proc.cmdline()[:1]).lower():
        return "python"
    return "other"


def warm_sandboxes(pod: BenchPod) -> list[SandboxMemory]:
    result = []
    for info in pod.funclet_list():
        if info.get("State") != "warm" or not info.get("HostPid"):
            continue
        try:
            runner = psutil.Process(info["HostPid"])
            children = runner.children(recursive=True)
            if not children:
                continue
            procs = [runner, *children]
            full = [p.memory_full_info() for p in procs]
            language = _language(children[0])
        except psutil.Error:
            continue  # exited while we looked: not a warm sandbox any more
        stats = pod.funclet_get(f"/v1/funclet/container/{info['ContainerID']}").get("ResourceStats") or {}
        result.append(SandboxMemory(container=info["ContainerID"], language=language,
                                    uss=sum(m.uss for m in full), pss=sum(m.pss for m in full),
                                    rss=sum(m.rss for m in full), cgroup=int(stats.get("MemoryUsage") or 0)))
    return result


def summarize(sandboxes: list[SandboxMemory], language: str) -> dict[str, Any]:
    picked = [s for s in sandboxes if s.language == language]
    if not picked:
        return {"n": 0}

    def mib(values: list[int], pct: float | None = None) -> float:
        value = median(values) if pct is None else percentile(values, pct)
        return round(value / MiB, 2)

    return {"n": len(picked),
            "uss_mib": mib([s.uss for s in picked]), "uss_p99_mib": mib([s.uss for s in picked], 99),
            "pss_mib": mib([s.pss for s in picked]), "rss_mib": mib([s.rss for s in picked]),
            "cgroup_mib": mib([s.cgroup for s in picked]),
            "total_uss_mib": round(sum(s.uss for s in picked) / MiB, 1),
            "total_pss_mib": round(sum(s.pss for s in picked) / MiB, 1)}


def fit_in(memory_bytes: int, control_plane_mib: float, python: dict[str, Any]) -> dict[str, Any]:
    """How many warm Python sandboxes fit in ``memory_bytes``, from the measured per-sandbox cost."""
    if not python.get("n"):
        return {"fit": 0, "per_sandbox_mib": None}
    per = max(python["pss_mib"], python["cgroup_mib"])
    free = memory_bytes / MiB - control_plane_mib
    return {"fit": int(free // per) if per > 0 else 0, "per_sandbox_mib": per, "measured": python["n"],
            "basis": "max(median PSS, median cgroup usage) per warm Python sandbox"}
