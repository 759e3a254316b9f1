"""Following the funclet: its sandbox events, its list, its restarts, and what ended a runtime.

The funclet reports every sandbox change as an event (long poll of ``/v1/funclet/events``): a
runtime that exits or is OOM-killed, or a runner that dies, is known within milliseconds. After a
gap in the events, and at every tick, the pool's view is compared with the funclet's list; a new
BootID (the funclet restarted) resets it, and a restarted controller adopts the funclet's
sandboxes and resets those that were in use. :meth:`Reconciler.runtime_failure` tells the invoke
path what happened to a request's runtime.

The reconciler changes sandboxes only through the machine's public API; the machine never calls it.
"""

from __future__ import annotations

import asyncio

import structlog

from controller.funclet_client import FuncletClient, FuncletError
from controller.pool.machine import Machine
from controller.pool.records import MiB, Lease, Phase, RuntimeFailure, Sandbox
from easyfaas.models import ContainerInfo, FuncletEvent, FuncletEventType, RuntimeExit, SandboxState

log = structlog.get_logger(__name__)

# How long a request whose runtime went away waits for the funclet to say why. The funclet's exit
# report comes once the sandbox's runner has reaped the runtime, and a runner in a cgroup that is
# still at its memory limit (a memory bomb's survivors) can take a second or more to get there,
# several on a loaded host (once past 5 s in a full test run on two busy cores); an OOM kill is
# known sooner, from the cgroup's own count in the sandbox's info, polled while waiting. The report
# normally comes within milliseconds, so the bound costs only the rare call whose report is late,
# and that call has failed already. The controller's --runtime-failure-wait sets it.
FAILURE_WAIT = 5.0

EVENTS_WAIT = 10.0

# The funclet's states as the pool reads them.
_IN_USE = frozenset({SandboxState.WARMUP, SandboxState.WARM, SandboxState.STOPPED})
_BUSY = frozenset({SandboxState.STARTING, SandboxState.RESETTING})
_GONE = frozenset({SandboxState.DEAD, SandboxState.STARTING})  # the funclet is rebuilding the sandbox itself


class Reconciler:
    """Keeps the machine's sandboxes in line with the funclet's."""

    def __init__(self, machine: Machine, funclet: FuncletClient, *, use_events: bool = True,
                 startup_retry_interval: float = 1.0, failure_wait: float = FAILURE_WAIT) -> None:
        self.machine = machine
        self.funclet = funclet
        self.use_events = use_events
        self.startup_retry_interval = startup_retry_interval
        self.failure_wait = failure_wait
        self.boot_id = ""
        self._event_seq = -1

    # ---- start-up ------------------------------------------------------------------------------

    async def first_contact(self) -> None:
        """Wait for the funclet, adopt its sandboxes and mark the machine ready."""
        machine = self.machine
        attempt = 0
        while True:
            try:
                if self.use_events:
                    await self._start_events()
                node = await self.funclet.node()
                containers = await self.funclet.list()
                break
            except FuncletError as exc:
                # The funclet may start after the controller: keep asking, say so now and then.
                if attempt % 10 == 0:
                    log.warning("funclet_not_ready", sock=self.funclet.sock_path, error=exc.message, attempt=attempt)
                attempt += 1
                await asyncio.sleep(self.startup_retry_interval)
        machine.node = node
        self.boot_id = node.BootID or self.boot_id
        for info in containers:
            if info.State != SandboxState.REMOVING:
                self.adopt(info)
        machine.ready.set()
        phases = [sandbox.phase for sandbox in machine.sandboxes.values()]
        log.info("pool_ready", sandboxes=len(phases), boot_id=self.boot_id, max_sandboxes=machine.max_total(),
                 phases={phase.value: phases.count(phase) for phase in Phase})

    async def _start_events(self) -> None:
        try:
            batch = await self.funclet.events(-1, 0)
        except FuncletError as exc:
            if exc.status in (404, 405):
                log.warning("funclet_events_unsupported", detail="falling back to polling the funclet")
                self.use_events = False
                return
            raise
        self._event_seq = batch.Seq
        self.boot_id = batch.BootID

    def adopt(self, info: ContainerInfo) -> Sandbox:
        """A sandbox the pool has not seen; leftovers of an earlier controller are reset."""
        machine = self.machine
        sandbox = machine.add(info)
        state = info.State
        if state == SandboxState.COLD:
            pass
        elif state in _IN_USE:
            machine.reclaim(sandbox, f"adopted: sandbox was {state}")
        elif state in _BUSY:
            machine.set_available(sandbox, False)
        else:
            machine.condemn(sandbox, f"funclet reported state {state!r}")
        return sandbox

    # ---- events --------------------------------------------------------------------------------

    async def follow_events(self) -> None:
        """Long-poll the funclet's events; resynchronise from its list after a gap or a restart."""
        machine = self.machine
        broken = False
        while not machine.closed:
            failure = ""
            try:
                batch = await self.funclet.events(self._event_seq, EVENTS_WAIT)
            except FuncletError as exc:
                if exc.status in (404, 405):
                    log.warning("funclet_events_unsupported", detail="falling back to polling the funclet")
                    return
                failure = exc.message
            except Exception as exc:  # noqa: BLE001 - the stream must outlive any one failure
                log.exception("funclet_events_broken")
                failure = str(exc) or type(exc).__name__
            if failure:
                if not broken:
                    log.warning("funclet_events_failed", error=failure)
                broken = True
                await asyncio.sleep(self.startup_retry_interval)
                continue
            if broken or batch.Lost or batch.BootID != self.boot_id:
                broken = False
                self._event_seq = batch.Seq
                await self.sync(boot_id=batch.BootID)
                continue
            self._event_seq = batch.Seq
            for event in batch.Events:
                try:
                    self._on_event(event)
                except Exception:  # noqa: BLE001 - one odd event must not stop the stream
                    log.exception("funclet_event_failed", type=event.Type, container=event.ContainerID)
            machine.dispatch()

    def _on_event(self, event: FuncletEvent) -> None:
        machine = self.machine
        sandbox = machine.sandboxes.get(event.ContainerID)
        info = event.Container
        if event.Type == FuncletEventType.REMOVED:
            if sandbox is not None and sandbox.phase is not Phase.REMOVING and sandbox.busy is None:
                machine.forget(sandbox, event.Reason or "removed by the funclet")
            return
        if sandbox is None:
            if info.State != SandboxState.REMOVING:
                self.adopt(info)
                log.info("sandbox_added", sandbox=info.ContainerID, funclet_state=info.State)
            return
        if event.Type == FuncletEventType.EXITED and event.Exit is not None:
            self._runtime_exited(sandbox, event.Exit)
            machine.count_ooms(sandbox, info)
            return
        if event.Type == FuncletEventType.DEFUNCT:
            machine.counters["runner_defunct"] += 1
            log.warning("runner_defunct", sandbox=sandbox.id, function=sandbox.brn, reason=event.Reason)
            generation = sandbox.epoch_generation.get(info.Epoch)
            if generation is not None and generation not in sandbox.failures:
                machine.record_failure(sandbox, generation,
                                       RuntimeFailure.sandbox_lost(event.Reason or "its runner stopped answering"))
        self.observe(sandbox, info)

    def _runtime_exited(self, sandbox: Sandbox, exit: RuntimeExit) -> None:
        machine = self.machine
        failure = RuntimeFailure.of_exit(exit)
        machine.counters["runtime_exit"] += 1
        log.info("runtime_exited", sandbox=sandbox.id, function=sandbox.brn, code=exit.Code, signal=exit.Signal,
                 oom=exit.OOMKilled, memory_limit_mb=exit.MemoryLimit // MiB)
        generation = sandbox.epoch_generation.get(exit.Epoch)
        if generation is not None and generation not in sandbox.failures:
            machine.record_failure(sandbox, generation, failure)
        if exit.Epoch and sandbox.epoch == exit.Epoch and sandbox.phase is Phase.WARM:
            machine.recycle(sandbox, sandbox.generation, failure.detail)

    def observe(self, sandbox: Sandbox, info: ContainerInfo) -> None:
        """Bring a sandbox in line with what the funclet says about it (event or list)."""
        machine = self.machine
        if info.Epoch and info.Epoch < sandbox.container.Epoch:
            return  # about an older life of the sandbox
        machine.count_ooms(sandbox, info)
        if sandbox.busy is not None or sandbox.warming is not None:
            return  # our own operation is under way: its answer is authoritative
        funclet_state = info.State
        if sandbox.phase is Phase.COLD:
            sandbox.container = info
            if funclet_state in _IN_USE:
                # Warm at the funclet but not for us (e.g. our cooldown was lost): reset it.
                machine.reclaim(sandbox, f"funclet reports {funclet_state} for a cold sandbox")
                return
            became_available = funclet_state == SandboxState.COLD and not sandbox.available
            machine.set_available(sandbox, funclet_state == SandboxState.COLD)
            if became_available:
                machine.dispatch()
        elif sandbox.phase is Phase.WARM:
            if (info.Epoch and sandbox.epoch and info.Epoch == sandbox.epoch
                    and funclet_state in (SandboxState.WARMUP, SandboxState.WARM)):
                return  # a late report of the warmup that made the sandbox WARM
            if (funclet_state == SandboxState.WARM and info.Identity == sandbox.identity
                    and (not info.Epoch or not sandbox.epoch)):
                return
            sandbox.container = info
            if funclet_state in _GONE:
                machine.lost(sandbox, f"funclet reports {funclet_state}")
            else:
                machine.note_exit(sandbox, info)
                sandbox.last_error = f"funclet reports {funclet_state} (runtime gone)"
                machine.recycle(sandbox, sandbox.generation, sandbox.last_error)

    # ---- the funclet's list --------------------------------------------------------------------

    async def refresh_node(self) -> None:
        try:
            self.machine.node = await self.funclet.node()
        except FuncletError as exc:
            log.warning("funclet_node_failed", error=exc.message)

    async def sync(self, boot_id: str = "") -> None:
        """Compare the machine's sandboxes with the funclet's list (and notice a funclet restart)."""
        machine = self.machine
        before = {sandbox.id: sandbox.changes for sandbox in machine.sandboxes.values()}
        try:
            node = await self.funclet.node()
            containers = await self.funclet.list()
        except FuncletError as exc:
            log.warning("funclet_list_failed", error=exc.message)
            return
        machine.node = node
        boot = node.BootID or boot_id
        if boot and self.boot_id and boot != self.boot_id:
            self._reset_view(containers, boot)
            return
        self.boot_id = boot or self.boot_id
        seen = set()
        for info in containers:
            seen.add(info.ContainerID)
            sandbox = machine.sandboxes.get(info.ContainerID)
            if sandbox is None:
                if info.State != SandboxState.REMOVING:
                    self.adopt(info)
                    log.info("sandbox_added", sandbox=info.ContainerID, funclet_state=info.State)
                continue
            if before.get(sandbox.id) != sandbox.changes:
                continue  # the sandbox moved while we were asking: this answer is stale for it
            self.observe(sandbox, info)
        for sandbox in list(machine.sandboxes.values()):
            if (sandbox.id not in seen and before.get(sandbox.id) == sandbox.changes and sandbox.busy is None
                    and sandbox.warming is None and sandbox.phase is not Phase.REMOVING):
                machine.forget(sandbox, "the funclet no longer has it")
        machine.dispatch()

    def _reset_view(self, containers: list[ContainerInfo], boot_id: str) -> None:
        """The funclet restarted: every sandbox we knew is gone; adopt the new ones."""
        machine = self.machine
        log.warning("funclet_restarted", old_boot_id=self.boot_id, boot_id=boot_id, sandboxes=len(machine.sandboxes))
        for sandbox in list(machine.sandboxes.values()):
            machine.forget(sandbox, "the funclet restarted")
        self.boot_id = boot_id
        for info in containers:
            if info.State != SandboxState.REMOVING:
                self.adopt(info)
        machine.dispatch()

    # ---- what happened to a runtime ------------------------------------------------------------

    async def runtime_failure(self, lease: Lease, wait: float | None = None) -> RuntimeFailure | None:
        """Why the runtime of ``lease``'s sandbox went away (OOM kill, exit, lost sandbox), if the
        funclet knows; waits up to ``wait`` seconds for its report. None: nothing known (say "exited")."""
        sandbox = lease.sandbox
        failure = sandbox.failures.get(lease.generation)
        if failure is not None:
            return failure
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.failure_wait if wait is None else wait)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            if sandbox.failure_signal is None:
                sandbox.failure_signal = asyncio.Event()
            signal_ = sandbox.failure_signal
            try:
                async with asyncio.timeout(min(remaining, 0.1)):
                    await signal_.wait()
            except TimeoutError:
                pass
            failure = sandbox.failures.get(lease.generation)
            if failure is not None:
                return failure
            try:
                info = await self.funclet.container(sandbox.id)
            except (FuncletError, KeyError):
                continue
            self.machine.note_exit(sandbox, info)
            failure = sandbox.failures.get(lease.generation)
            if failure is not None:
                return failure
            if info.OOMKills > lease.oom_kills:
                # The kernel counted an OOM kill in the sandbox's cgroup while this request held it:
                # that is why the runtime went away, known before the runner has reaped it and
                # reported the exit (which a sandbox still at its memory limit can be slow to do).
                self.machine.count_ooms(sandbox, info)
                failure = RuntimeFailure.out_of_memory(info.Resource.Memory)
                self.machine.record_failure(sandbox, lease.generation, failure)
                return failure
