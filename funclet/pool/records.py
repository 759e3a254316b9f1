"""The sandbox record: what the pool knows of one sandbox, and the lock its operations take.

Only the registry (``funclet/pool/registry.py``) changes ``state``; the pool's other modules fill
the rest while they hold ``lock``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easyfaas.models import RuntimeExit, SandboxState
from funclet.pool.kernel import Cgroup, Nic
from funclet.runner_link import RunnerLink


@dataclass
class Sandbox:
    index: int
    id: str
    slot_dir: Path
    invoke_socket: Path
    uid: int
    state: SandboxState = SandboxState.STARTING
    pid: int = 0
    cgroup: Cgroup | None = None
    link: RunnerLink | None = None
    nic: Nic | None = None
    identity: str = ""
    function_brn: str = ""
    code_hash: str = ""              # the code image bound into the slot
    runtime_bound: str = ""          # the runtime directory bound into the slot
    standby: str = ""                # the standby runtime in it (COLD only), by Name
    current_event: str = "event_init"
    memory_limit: int = 0
    oom_base: int = 0
    oom_seen: int = 0
    runtime_pid: int = 0
    egress: bool = False             # its firewall lets it out (a function's policy is in force)
    epoch: int = 0
    last_exit: RuntimeExit | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Future[dict[str, Any]] | None = None

    def forget_function(self) -> None:
        """Clear what tied it to a function (its runtime process is gone or about to be)."""
        self.identity = ""
        self.function_brn = ""
        self.code_hash = ""
        self.runtime_pid = 0
