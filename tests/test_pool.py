"""controller.pool: every guard and transition of the slot state machine, with an in-memory funclet.

:class:`FakeFunclet` implements the FuncletClient methods (the real funclet is covered by the
end-to-end tests); the controller API tests reuse it.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable

import pytest

from controller.funclet_client import FuncletError, FuncletUnavailable
from controller.pool import FunctionInitError, Lease, Pool, Slot, SlotState
from easyfaas.errors import ServiceError, TooManyRequests
from easyfaas.models import ContainerInfo, NodeResource, ResetRequest, Resource, WarmupRequest, WarmupResponse

MiB = 1 << 20


class FakeFunclet:
    """The funclet API in memory: containers c0..c<n-1>, every call recorded in ``calls``."""

    def __init__(self, n: int = 3, *, socket_for: Callable[[str], str] = lambda cid: f"/nonexistent/{cid}.sock",
                 states: dict[str, str] | None = None, allocatable_mb: int = 0) -> None:
        self.sock_path = "fake-funclet.sock"
        self.socket_for = socket_for
        self.containers = {
            f"c{i}": ContainerInfo(ContainerID=f"c{i}", Hostname=f"c{i}", State=(states or {}).get(f"c{i}", "cold"),
                                   InvokeSocket=socket_for(f"c{i}"), Resource=Resource(500, 128 * MiB))
            for i in range(n)
        }
        self.calls: list[tuple[str, str]] = []
        self.warmups: list[WarmupRequest] = []
        self.list_failures = 0
        self.warmup_gate: asyncio.Event | None = None
        self.warmup_error: FuncletError | None = None
        self.init_error: dict[str, Any] | None = None
        self.cooldown_error: FuncletError | None = None
        self.reborn_error: FuncletError | None = None
        self.allocatable_mb = allocatable_mb
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    async def node(self) -> NodeResource:
        self.calls.append(("node", ""))
        alloc = Resource(1000, self.allocatable_mb * MiB)
        return NodeResource(BaseMemory=128 * MiB, Default=Resource(500, 128 * MiB), Capacity=alloc,
                            Allocatable=alloc)

    async def list(self) -> list[ContainerInfo]:
        self.calls.append(("list", ""))
        if self.list_failures > 0:
            self.list_failures -= 1
            raise FuncletUnavailable("connection refused")
        return [ContainerInfo.from_dict(c.to_dict()) for c in self.containers.values()]

    async def container(self, container_id: str) -> ContainerInfo:
        return self.containers[container_id]

    async def warmup(self, request: WarmupRequest, timeout: float | None = None) -> WarmupResponse:
        self.calls.append(("warmup", request.ContainerID))
        self.warmups.append(request)
        c = self.containers[request.ContainerID]
        if c.State != "cold":
            raise FuncletError(409, "ResourceConflictException", f"container {c.ContainerID} is {c.State}")
        c.State = "warmup"
        if self.warmup_gate is not None:
            await self.warmup_gate.wait()
        if self.warmup_error is not None:
            c.State = "cold"
            raise self.warmup_error
        c.State = "warm"
        c.Identity = request.Identity
        c.Resource = Resource(500, request.Configuration.MemorySize * MiB)
        return WarmupResponse(Container=ContainerInfo.from_dict(c.to_dict()), InitError=self.init_error)

    async def cooldown(self, request: ResetRequest) -> ContainerInfo:
        self.calls.append(("cooldown", request.ContainerID))
        if self.cooldown_error is not None:
            raise self.cooldown_error
        return self._reset(request.ContainerID)

    async def reborn(self, request: ResetRequest) -> ContainerInfo:
        self.calls.append(("reborn", request.ContainerID))
        if self.reborn_error is not None:
            raise self.reborn_error
        return self._reset(request.ContainerID)

    def _reset(self, cid: str) -> ContainerInfo:
        c = self.containers[cid]
        c.State = "cold"
        c.Identity = ""
        c.Resource = Resource(500, 128 * MiB)
        return ContainerInfo.from_dict(c.to_dict())

    def ops(self, op: str) -> list[str]:
        return [cid for name, cid in self.calls if name == op]


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def warmup_for(memory: int = 128) -> Callable[[Slot], WarmupRequest]:
    def make(slot: Slot) -> WarmupRequest:
        request = WarmupRequest(ContainerID=slot.id, RequestID="r")
        request.Configuration.MemorySize = memory
        return request

    return make


@pytest.fixture
def funclet() -> FakeFunclet:
    return FakeFunclet()


@pytest.fixture
async def make_pool(funclet: FakeFunclet) -> AsyncIterator[Callable[..., Any]]:
    pools: list[Pool] = []

    async def make(fake: FakeFunclet | None = None, **kw: Any) -> Pool:
        kw.setdefault("task_interval", 3600)
        kw.setdefault("startup_retry_interval", 0.01)
        kw.setdefault("runtime_alive_timeout", 2.0)
        pool = Pool(fake or funclet, **kw)  # type: ignore[arg-type]
        pools.append(pool)
        await pool.start()
        await pool.wait_ready(2)
        return pool

    try:
        yield make
    finally:
        for pool in pools:
            await pool.close()
            assert not pool._tasks, "pool.close() left tasks behind"


async def acquire(pool: Pool, identity: str = "A", quota: int = 1, memory: int = 128) -> Lease:
    return await pool.acquire(identity, quota, warmup_for(memory), brn=f"brn-{identity}", memory_mb=memory)


# ---- startup -----------------------------------------------------------------------------------

async def test_startup_retries_until_the_funclet_answers(make_pool: Any, funclet: FakeFunclet) -> None:
    funclet.list_failures = 3
    pool = await make_pool()
    assert funclet.ops("list") == ["", "", "", ""]
    assert sorted(pool.slots) == ["c0", "c1", "c2"]
    assert all(s.state is SlotState.COLD for s in pool.slots.values())
    assert pool.node is not None and pool.node.BaseMemory == 128 * MiB


async def test_startup_resets_leftover_warm_and_broken_sandboxes(make_pool: Any) -> None:
    fake = FakeFunclet(4, states={"c0": "warm", "c1": "dead", "c2": "starting"})
    pool = await make_pool(fake)
    await until(lambda: pool.slots["c0"].state is SlotState.COLD and pool.slots["c1"].state is SlotState.COLD)
    assert fake.ops("cooldown") == ["c0"]
    assert fake.ops("reborn") == ["c1"]
    # A sandbox the funclet is still building is known but not used until it reports cold.
    assert pool.slots["c2"].available is False
    assert pool.slots["c3"].available is True
    assert not pool.occupy(pool.slots["c2"], "A", 1)


async def test_request_before_the_funclet_answers_waits_for_it(funclet: FakeFunclet) -> None:
    funclet.list_failures = 5
    pool = Pool(funclet, startup_retry_interval=0.02, runtime_alive_timeout=2, task_interval=3600)  # type: ignore[arg-type]
    await pool.start()
    try:
        assert not pool.ready.is_set()
        lease = await acquire(pool)
        assert lease.slot.state is SlotState.WARM
    finally:
        await pool.close()


# ---- warm path, identities, quotas -------------------------------------------------------------

async def test_cold_start_then_warm_reuse(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    first = await acquire(pool)
    assert first.cold and first.slot.state is SlotState.WARM
    assert first.slot.channel is not None and first.slot.channel.socket_path == f"/nonexistent/{first.slot.id}.sock"
    assert funclet.warmups[0].Identity == "A" and funclet.warmups[0].ContainerID == first.slot.id
    assert pool.release(first)
    second = pool.take_warm("A")
    assert second is not None and second.slot is first.slot and not second.cold
    assert pool.release(second)
    assert len(funclet.ops("warmup")) == 1
    assert pool.counters == {"warm_hit": 1, "cold_start": 1, "throttled": 0, "evicted": 0}
    assert first.slot.accepted == 2


async def test_two_identities_never_share_a_slot(make_pool: Any) -> None:
    pool = await make_pool()
    a = await acquire(pool, "A", quota=10)
    pool.release(a)
    assert pool.take_warm("B") is None
    b = await acquire(pool, "B", quota=10)
    assert b.slot is not a.slot
    assert a.slot.identity == "A" and b.slot.identity == "B"
    assert not pool.mark(a.slot, "B")
    pool.release(b)


async def test_quota_then_other_slots_then_429(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    leases = [await acquire(pool, "A", quota=2) for _ in range(2)]
    assert leases[0].slot is leases[1].slot and leases[0].slot.in_flight == 2
    more = [await acquire(pool, "A", quota=2) for _ in range(4)]
    assert len({lease.slot.id for lease in leases + more}) == 3
    with pytest.raises(TooManyRequests):
        await acquire(pool, "A", quota=2)
    with pytest.raises(TooManyRequests):
        await acquire(pool, "B")
    assert pool.counters["throttled"] == 2
    assert sum(s.rejected for s in pool.slots.values()) == 3
    for lease in leases + more:
        assert pool.release(lease)
    assert all(s.in_flight == 0 for s in pool.slots.values())


async def test_idle_warm_slots_are_evicted_least_recently_used_first(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    leases = {}
    for identity in ("A", "B", "C"):
        leases[identity] = await acquire(pool, identity)
    for identity in ("B", "A", "C"):  # B is now the least recently used
        pool.release(leases[identity])
        await asyncio.sleep(0.01)
    victim = leases["B"].slot
    d = await acquire(pool, "D")
    assert d.slot is victim and d.cold
    assert victim.identity == "D" and victim.state is SlotState.WARM
    assert pool.take_warm("B") is None, "the evicted function lost its slot"
    # The sandbox was reset before it was warmed for D.
    assert funclet.calls[-2:] == [("cooldown", victim.id), ("warmup", victim.id)]
    assert not pool.release(leases["B"])
    assert pool.counters["evicted"] == 1
    # Slots with work in flight are never evicted.
    others = [await acquire(pool, "A"), await acquire(pool, "C")]
    with pytest.raises(TooManyRequests):
        await acquire(pool, "E")
    for lease in (d, *others):
        pool.release(lease)


async def test_evict_guard(make_pool: Any) -> None:
    pool = await make_pool()
    lease = await acquire(pool, "A")
    slot = lease.slot
    assert not pool.evict(slot, "B", 1)  # in flight
    pool.release(lease)
    assert not pool.evict(slot, "A", 1)  # same identity: reuse it, do not evict
    assert not pool.evict(pool.slots["c1" if slot.id != "c1" else "c2"], "B", 1)  # only WARM
    assert pool.evict(slot, "B", 1)
    assert slot.state is SlotState.WARMUP and slot.identity == "B" and slot.in_flight == 1


async def test_failed_reset_during_eviction_breaks_the_slot(make_pool: Any) -> None:
    fake = FakeFunclet(1)
    pool = await make_pool(fake)
    pool.release(await acquire(pool, "A"))
    fake.cooldown_error = FuncletError(500, "ServiceException", "reset failed")
    with pytest.raises(ServiceError, match="reset failed"):
        await acquire(pool, "B")
    fake.cooldown_error = None
    await until(lambda: pool.slots["c0"].state is SlotState.COLD)
    assert fake.ops("reborn") == ["c0"]


async def test_quota_zero_means_one_and_serial_mode_ignores_quota(make_pool: Any) -> None:
    pool = await make_pool()
    a = await acquire(pool, "A", quota=0)
    assert a.slot.quota == 1
    assert pool.take_warm("A") is None
    serial = await make_pool(FakeFunclet(2), concurrent_mode=False)
    s = await acquire(serial, "A", quota=8)
    assert s.slot.quota == 1
    assert serial.take_warm("A") is None


async def test_release_never_goes_below_zero(make_pool: Any) -> None:
    pool = await make_pool()
    lease = await acquire(pool)
    assert pool.release(lease)
    assert not pool.release(lease)
    assert lease.slot.in_flight == 0


async def test_memory_admission(make_pool: Any) -> None:
    pool = await make_pool(FakeFunclet(3, allocatable_mb=300))
    first = await acquire(pool, "A", memory=256)
    with pytest.raises(TooManyRequests, match="insufficient memory"):
        await acquire(pool, "B", memory=128)
    pool.release(first)


# ---- warmup waiters and failures ---------------------------------------------------------------

async def test_requests_wait_for_a_warmup_in_progress(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.warmup_gate = asyncio.Event()
    first = asyncio.create_task(acquire(pool, "A", quota=2))
    await until(lambda: funclet.ops("warmup") != [])
    second = asyncio.create_task(acquire(pool, "A", quota=2))
    await asyncio.sleep(0.02)
    slot = pool.slots[funclet.ops("warmup")[0]]
    assert slot.state is SlotState.WARMUP and slot.in_flight == 2
    assert not first.done() and not second.done()
    funclet.warmup_gate.set()
    a, b = await asyncio.gather(first, second)
    assert a.slot is b.slot is slot and slot.state is SlotState.WARM
    assert len(funclet.ops("warmup")) == 1
    pool.release(a)
    pool.release(b)


async def test_full_warmup_slot_makes_another_slot_warm(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.warmup_gate = asyncio.Event()
    tasks = [asyncio.create_task(acquire(pool, "A", quota=1)) for _ in range(2)]
    await until(lambda: len(funclet.ops("warmup")) == 2)
    funclet.warmup_gate.set()
    a, b = await asyncio.gather(*tasks)
    assert a.slot is not b.slot


async def test_warmup_failure_breaks_the_slot_and_reborns_it(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.warmup_gate = asyncio.Event()
    funclet.warmup_error = FuncletError(500, "ServiceException", "code image build failed")
    first = asyncio.create_task(acquire(pool, "A", quota=2))
    await until(lambda: funclet.ops("warmup") != [])
    waiter = asyncio.create_task(acquire(pool, "A", quota=2))
    await asyncio.sleep(0.01)
    funclet.warmup_gate.set()
    for task in (first, waiter):
        with pytest.raises(ServiceError, match="code image build failed"):
            await task
    slot = pool.slots[funclet.ops("warmup")[0]]
    await until(lambda: slot.state is SlotState.COLD)
    assert funclet.ops("reborn") == [slot.id]
    assert slot.in_flight == 0 and slot.identity == ""
    assert "code image build failed" in slot.last_error


async def test_failed_reborn_is_retried_by_the_periodic_task(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(task_interval=0.02)
    funclet.warmup_error = FuncletError(500, "ServiceException", "boom")
    funclet.reborn_error = FuncletUnavailable("down")
    with pytest.raises(ServiceError):
        await acquire(pool)
    slot = pool.slots[funclet.ops("warmup")[0]]
    await until(lambda: len(funclet.ops("reborn")) >= 3)
    assert slot.state is SlotState.BROKEN
    funclet.reborn_error = None
    await until(lambda: slot.state is SlotState.COLD)


async def test_init_error_recycles_the_slot(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.init_error = {"errorMessage": "No module named 'index'", "errorType": "Runtime.ImportModuleError",
                          "stackTrace": []}
    with pytest.raises(FunctionInitError) as info:
        await acquire(pool)
    assert info.value.error["errorType"] == "Runtime.ImportModuleError"
    slot = pool.slots[funclet.ops("warmup")[0]]
    await until(lambda: slot.state is SlotState.COLD)
    assert funclet.ops("cooldown") == [slot.id]
    assert slot.in_flight == 0
    assert pool.take_warm("A") is None


async def test_cancelled_waiter_releases_and_warmup_completes(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.warmup_gate = asyncio.Event()
    task = asyncio.create_task(acquire(pool, "A", quota=1))
    await until(lambda: funclet.ops("warmup") != [])
    slot = pool.slots[funclet.ops("warmup")[0]]
    assert slot.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slot.in_flight == 0
    funclet.warmup_gate.set()
    await until(lambda: slot.state is SlotState.WARM)
    lease = pool.take_warm("A")
    assert lease is not None and lease.slot is slot


async def test_warmup_timeout_is_a_service_error(make_pool: Any, funclet: FakeFunclet) -> None:
    class SlowFunclet(FakeFunclet):
        async def warmup(self, request: WarmupRequest, timeout: float | None = None) -> WarmupResponse:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.sleep(10)
            except TimeoutError:
                raise FuncletUnavailable(f"no answer within {timeout}s") from None
            raise AssertionError

    fake = SlowFunclet()
    pool = await make_pool(fake, runtime_alive_timeout=0.1)
    with pytest.raises(ServiceError, match="no answer within"):
        await acquire(pool)
    await until(lambda: all(s.state is SlotState.COLD for s in pool.slots.values()))
    assert len(fake.ops("reborn")) == 1


# ---- stopping ----------------------------------------------------------------------------------

async def test_timeout_recycle_stops_and_cools_down(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    timed_out = await acquire(pool, "A", quota=3)
    other = await acquire(pool, "A", quota=3)
    slot = timed_out.slot
    channel = slot.channel
    assert pool.recycle(slot, timed_out.generation, "function timeout")
    assert slot.state is SlotState.STOPPING and slot.in_flight == 0
    assert channel is not None and channel.closed and slot.channel is None
    assert not pool.recycle(slot, other.generation, "runtime exited")  # second failure on the same slot
    assert pool.take_warm("A") is None
    await until(lambda: slot.state is SlotState.COLD)
    assert funclet.ops("cooldown") == [slot.id]
    # The leases of the old life are spent: releasing them touches nothing.
    fresh = await acquire(pool, "B")
    assert not pool.release(timed_out) and not pool.release(other)
    assert fresh.slot.in_flight == 1
    pool.release(fresh)


async def test_failed_cooldown_breaks_the_slot(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    lease = await acquire(pool)
    funclet.cooldown_error = FuncletError(500, "ServiceException", "reset failed")
    pool.recycle(lease.slot, lease.generation, "timeout")
    await until(lambda: lease.slot.state is SlotState.BROKEN and lease.slot.busy is None)
    assert "reset failed" in lease.slot.last_error


async def test_idle_slots_are_cooled_down(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(task_interval=0.02, max_runtime_idle=0.1)
    busy = await acquire(pool, "A")
    idle = await acquire(pool, "B")
    pool.release(idle)
    await until(lambda: idle.slot.state is SlotState.COLD)
    assert funclet.ops("cooldown") == [idle.slot.id]
    await asyncio.sleep(0.2)
    assert busy.slot.state is SlotState.WARM, "a slot with a request in flight is never cooled down"
    pool.release(busy)
    await until(lambda: busy.slot.state is SlotState.COLD)


async def test_stop_idle_guard(make_pool: Any) -> None:
    pool = await make_pool(max_runtime_idle=60)
    lease = await acquire(pool)
    slot = lease.slot
    assert not pool.stop_idle(slot)  # in flight
    pool.release(lease)
    assert not pool.stop_idle(slot)  # not idle long enough
    assert pool.stop_idle(slot, now=slot.last_access + 61)
    assert slot.state is SlotState.STOPPING
    assert not pool.stop_idle(slot, now=slot.last_access + 61)  # only from WARM


async def test_funclet_reporting_a_dead_runtime_recycles_the_slot(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    lease = await acquire(pool)
    pool.release(lease)
    funclet.containers[lease.slot.id].State = "stopped"
    await pool.tick()
    await until(lambda: lease.slot.state is SlotState.COLD)
    assert funclet.ops("cooldown") == [lease.slot.id]


# ---- guards ------------------------------------------------------------------------------------

async def test_transition_guards(make_pool: Any) -> None:
    pool = await make_pool()
    slot = pool.slots["c0"]
    assert not pool.mark(slot, "A")  # COLD is not markable
    assert not pool.warmed(slot, slot.generation, slot.container)  # only from WARMUP
    assert not pool.cooled(slot, slot.container)  # only from STOPPING
    assert not pool.reborn_done(slot, slot.container)  # only from BROKEN
    assert not pool.recycle(slot, slot.generation, "x")  # only WARM/WARMUP
    assert pool.occupy(slot, "A", 1)
    assert not pool.occupy(slot, "A", 1)  # only from COLD
    assert not pool.mark(slot, "A")  # quota 1 already used
    assert not pool.warmed(slot, slot.generation - 1, slot.container)  # stale generation
    assert pool.warmed(slot, slot.generation, slot.container)
    assert slot.state is SlotState.WARM
    assert not pool.break_slot(slot, slot.generation + 1, "stale")
    assert pool.break_slot(slot, slot.generation, "funclet error")
    assert slot.state is SlotState.BROKEN
    assert not pool.occupy(slot, "A", 1)
    await until(lambda: slot.state is SlotState.COLD)


# ---- invalidate --------------------------------------------------------------------------------

async def test_invalidate(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    assert not pool.invalidate("nope")
    busy = await acquire(pool, "A", quota=2)
    idle = await acquire(pool, "B")
    pool.release(idle)

    assert pool.invalidate(idle.slot.id)
    await until(lambda: idle.slot.state is SlotState.COLD and not idle.slot.abnormal)
    assert funclet.ops("reborn") == [idle.slot.id]

    assert pool.invalidate(busy.slot.id)
    assert busy.slot.state is SlotState.WARM
    assert pool.take_warm("A") is None, "an invalidated slot takes no new requests"
    pool.release(busy)
    await until(lambda: busy.slot.state is SlotState.COLD and not busy.slot.abnormal)
    assert funclet.ops("reborn") == [idle.slot.id, busy.slot.id]


async def test_views(make_pool: Any) -> None:
    pool = await make_pool()
    lease = await acquire(pool, "A", memory=256)
    runtimes = {r["RuntimeID"]: r for r in pool.runtimes()}
    r = runtimes[lease.slot.id]
    assert r["State"] == "warm" and r["Identity"] == "A" and r["FunctionBrn"] == "brn-A"
    assert r["Concurrency"] == 1 and r["Quota"] == 1 and r["AcceptReqCnt"] == 1
    assert r["LastAccessTime"].endswith("Z") and r["LastWarmTime"]
    res = pool.resource()
    assert res["Marked"]["Memory"] == 256 * MiB
    assert res["Used"]["Memory"] == 256 * MiB
    assert res["Slots"] == {"cold": 2, "warmup": 0, "warm": 1, "stopping": 0, "broken": 0}
    pool.release(lease)
