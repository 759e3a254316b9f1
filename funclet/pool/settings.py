"""The pool's settings: sizes, limits, paths and timeouts, from the funclet's options (``funclet/app.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from easyfaas.outbound import OutboundGuard

MiB = 1 << 20


@dataclass
class PoolSettings:
    pod_name: str
    container_num: int
    state_dir: Path
    run_dir: Path
    runtime_path: Path
    rootfs_path: Path
    runner_memory: int
    runner_millicpus: int
    runner_pids: int
    tmp_size: int
    uid_base: int
    warmup_timeout: float
    runner_timeout: float
    max_code_size: int
    capacity_memory: int
    capacity_millicpus: int
    reserved_memory: int
    reserved_millicpus: int
    max_sandboxes: int = 0           # 0: container_num (a fixed pool)
    ping_interval: float = 2.0       # 0: no health pings
    max_runner_defunct: float = 10.0
    event_buffer: int = 1024
    max_code_images: int = 256
    standby_runtimes: tuple[str, ...] = ()  # runtimes kept pre-started in idle sandboxes
    standby_sandboxes: int = 0              # how many idle sandboxes each of them stands by in
    outbound_guard: OutboundGuard | None = None  # checks remote code locations (easyfaas/outbound.py)

    @property
    def slots_dir(self) -> Path:
        return self.state_dir / "slots"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def sockets_dir(self) -> Path:
        return self.run_dir / "slots"

    @property
    def cgroup_group(self) -> str:
        return f"easyfaas-{self.pod_name}"

    @property
    def bound(self) -> int:
        """The most sandboxes the pool may hold."""
        return max(self.container_num, self.max_sandboxes)
