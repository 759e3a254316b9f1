"""Standby runtimes in idle sandboxes: runtimes started before any function is assigned to them.

For each runtime named in ``standby_runtimes`` whose configuration says ``Standby`` (and ``Launch:
exec``), up to ``standby_sandboxes`` cold sandboxes get one (``prestart``; the runner side is
``runner/standby.py``), never more than half the pool. A warmup of that runtime in such a sandbox
hands the function to the waiting process. Standby runtimes that fail or die
:data:`MAX_STANDBY_FAILURES` times in a row are given up on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from easyfaas.errors import FaasError
from easyfaas.models import LAUNCH_EXEC, FuncletEventType, RuntimeConfiguration, SandboxState
from easyfaas.runtimes import RuntimeCatalog
from funclet.pool.records import Sandbox
from funclet.pool.registry import Registry
from funclet.pool.slots import Slots
from funclet.runner_link import LinkClosed
from runner.control import Op

log = structlog.get_logger(__name__)

# A broken runtime must not be restarted in a loop; the count restarts when one serves a function.
MAX_STANDBY_FAILURES = 5


class StandbyKeeper:
    def __init__(self, registry: Registry, slots: Slots, runtimes: RuntimeCatalog) -> None:
        self._registry = registry
        self._slots = slots
        self._runtimes = runtimes
        self._settings = registry.settings
        self._filling = False
        self.failures = 0

    def want(self) -> None:
        """Top up the standby runtimes in idle sandboxes, in the background."""
        s = self._settings
        if (s.standby_sandboxes <= 0 or not s.standby_runtimes or self._registry.closing or self._filling
                or self.failures >= MAX_STANDBY_FAILURES):
            return
        self._filling = True
        self._registry.spawn_task(self._fill())

    def used(self, ok: bool) -> None:
        """A warmup took a sandbox's standby runtime; ``ok``: the function's init succeeded in it."""
        if ok:
            self.failures = 0
        self.want()

    def exited(self, sb: Sandbox, message: dict[str, Any]) -> None:
        """The runner reports that the standby runtime of ``sb`` died before any function had it."""
        runtime, sb.standby, sb.runtime_pid = sb.standby, "", 0
        self.failures += 1
        log.warning("standby_exited", container=sb.id, runtime=runtime, code=message.get("code"),
                    signal=message.get("signal"), output=str(message.get("output") or "")[-500:])
        if self._registry.holds(sb):
            self._registry.emit(FuncletEventType.STATE, sb, reason="standby exited")
        self.want()

    def _targets(self) -> list[RuntimeConfiguration]:
        """The configured standby runtimes that are prepared here and support it."""
        targets = []
        for name in self._settings.standby_runtimes:
            runtime = self._runtimes.get(name)
            if runtime is not None and runtime.Standby and runtime.Launch == LAUNCH_EXEC:
                targets.append(runtime)
        return targets

    async def _fill(self) -> None:
        try:
            for runtime in self._targets():
                while not self._registry.closing and self.failures < MAX_STANDBY_FAILURES:
                    sandboxes = list(self._registry)
                    if sum(1 for sb in sandboxes if sb.standby == runtime.Name) >= self._settings.standby_sandboxes:
                        break
                    # Never more than half the pool: the other runtimes' cold starts need sandboxes too.
                    if sum(1 for sb in sandboxes if sb.standby) >= len(sandboxes) // 2:
                        return
                    free = [sb for sb in sandboxes if sb.state is SandboxState.COLD and not sb.standby
                            and not sb.lock.locked() and sb.link is not None]
                    if not free:
                        return
                    sb = free[-1]  # the controller takes free sandboxes from the front
                    async with sb.lock:
                        if sb.state is not SandboxState.COLD or sb.standby or sb.link is None:
                            continue
                        if not await self._prestart_locked(sb, runtime):
                            self.failures += 1
                if self.failures >= MAX_STANDBY_FAILURES:
                    log.error("standby_disabled", runtime=runtime.Name, failures=self.failures)
                    return
        finally:
            self._filling = False

    async def _prestart_locked(self, sb: Sandbox, runtime: RuntimeConfiguration) -> bool:
        assert sb.link is not None
        try:
            self._slots.bind_runtime(sb, self._slots.runtime_dir(runtime))
            reply = await sb.link.request({"op": Op.PRESTART, "runtime": runtime.to_dict()}, {Op.PRESTARTED},
                                          self._settings.runner_timeout)
        except (LinkClosed, asyncio.TimeoutError, OSError, FaasError) as exc:
            log.warning("standby_failed", container=sb.id, runtime=runtime.Name, error=str(exc) or type(exc).__name__)
            return False
        if not reply.get("ok"):
            log.warning("standby_refused", container=sb.id, runtime=runtime.Name, error=reply.get("error"))
            return False
        sb.standby = runtime.Name
        sb.runtime_pid = int(reply.get("pid") or 0)
        self._registry.emit(FuncletEventType.STATE, sb, reason=f"standby {runtime.Name}")
        log.info("standby_started", container=sb.id, runtime=runtime.Name, pid=sb.runtime_pid)
        return True
