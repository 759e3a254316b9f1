"""Health of the sandboxes: ping idle runners, rebuild silent ones, report OOM kills.

A runner that has not been heard from for ``max_runner_defunct`` (no answer to pings) gets its
sandbox rebuilt (``defunct``); OOM kills that did not end the runtime (a process the exec runtime
spawned, say) are reported as ``oom``. A runner whose control socket closes is the lifecycle's
(``funclet/pool/lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from easyfaas.models import FuncletEventType, SandboxState
from funclet.pool.lifecycle import Lifecycle
from funclet.pool.records import Sandbox
from funclet.pool.registry import Registry
from funclet.pool.settings import MiB
from funclet.runner_link import LinkClosed
from runner.control import Op

log = structlog.get_logger(__name__)

# States in which the runner is idle and must answer a ping.
PINGABLE = frozenset({SandboxState.COLD, SandboxState.WARM, SandboxState.STOPPED})


class HealthWatch:
    def __init__(self, registry: Registry, lifecycle: Lifecycle) -> None:
        self._registry = registry
        self._lifecycle = lifecycle
        self._settings = registry.settings

    async def watch(self) -> None:
        """Check every sandbox each ``ping_interval``, until the pool closes."""
        while not self._registry.closing:
            await asyncio.sleep(self._settings.ping_interval)
            await self.check_all()

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(sb) for sb in self._registry), return_exceptions=True)

    async def check(self, sb: Sandbox) -> None:
        self._check_oom(sb)
        if sb.state not in PINGABLE or sb.link is None or sb.lock.locked():
            return
        async with sb.lock:
            link = sb.link
            if sb.state not in PINGABLE or link is None or link.closed:
                return
            try:
                await link.request({"op": Op.PING}, {Op.PONG}, min(1.0, self._settings.ping_interval))
                return
            except LinkClosed:
                return  # the lifecycle heals it (its runner is gone)
            except asyncio.TimeoutError:
                pass
            silent = time.time() - link.last_heard
            if silent < self._settings.max_runner_defunct:
                log.warning("runner_ping_missed", container=sb.id, silent_s=round(silent, 1))
                return
            log.warning("runner_defunct", container=sb.id, state=sb.state.value, silent_s=round(silent, 1))
            await self._lifecycle.heal_locked(sb, f"runner silent for {silent:.1f}s")

    def _check_oom(self, sb: Sandbox) -> None:
        if sb.cgroup is None:
            return
        try:
            kills = sb.cgroup.oom_kills()
        except OSError:
            kills = sb.oom_seen
        if kills > sb.oom_seen:
            sb.oom_seen = kills
            log.info("sandbox_oom_kill", container=sb.id, function=sb.function_brn, oom_kills=kills,
                     memory_limit_mb=sb.memory_limit // MiB)
            self._registry.emit(FuncletEventType.OOM, sb, reason=f"{kills} OOM kills")
