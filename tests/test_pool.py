"""controller.pool: every guard and transition of the sandbox state machine, with an in-memory funclet.

The funclet is :class:`tests.fakes.funclet_api.FakeFunclet` (the real funclet is covered by the
end-to-end tests).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable

import pytest

from controller.funclet_client import FuncletError, FuncletUnavailable
from controller.pool import FunctionInitError, Lease, Phase, Pool, Sandbox
from controller.scaling import FunctionPolicy, parse_scaling
from easyfaas.errors import ServiceError, TooManyRequests
from easyfaas.models import ContainerInfo, FuncletEvent, FunctionRecord, RuntimeExit, WarmupRequest, WarmupResponse
from tests.fakes.funclet_api import FakeFunclet, MiB
from tests.fakes.waiting import until


def warmup_for(memory: int = 128) -> Callable[[Sandbox], WarmupRequest]:
    def make(slot: Sandbox) -> WarmupRequest:
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
            assert not pool.machine._tasks, "pool.close() left tasks behind"


async def acquire(pool: Pool, identity: str = "A", quota: int = 1, memory: int = 128) -> Lease:
    return await pool.acquire(identity, quota, warmup_for(memory), brn=f"brn-{identity}", memory_mb=memory)


# ---- startup -----------------------------------------------------------------------------------

async def test_startup_retries_until_the_funclet_answers(make_pool: Any, funclet: FakeFunclet) -> None:
    funclet.list_failures = 3
    pool = await make_pool()
    assert funclet.ops("list") == ["", "", "", ""]
    assert sorted(pool.sandboxes) == ["c0", "c1", "c2"]
    assert all(s.phase is Phase.COLD for s in pool.sandboxes.values())
    assert pool.node is not None and pool.node.BaseMemory == 128 * MiB


async def test_startup_resets_leftover_warm_and_broken_sandboxes(make_pool: Any) -> None:
    fake = FakeFunclet(4, states={"c0": "warm", "c1": "dead", "c2": "starting"})
    pool = await make_pool(fake)
    await until(lambda: pool.sandboxes["c0"].phase is Phase.COLD and pool.sandboxes["c1"].phase is Phase.COLD)
    assert fake.ops("cooldown") == ["c0"]
    assert fake.ops("reborn") == ["c1"]
    # A sandbox the funclet is still building is known but not used until it reports cold.
    assert pool.sandboxes["c2"].available is False
    assert pool.sandboxes["c3"].available is True
    assert not pool.occupy(pool.sandboxes["c2"], "A", 1)


async def test_request_before_the_funclet_answers_waits_for_it(funclet: FakeFunclet) -> None:
    funclet.list_failures = 5
    pool = Pool(funclet, startup_retry_interval=0.02, runtime_alive_timeout=2, task_interval=3600)  # type: ignore[arg-type]
    await pool.start()
    try:
        assert not pool.ready.is_set()
        lease = await acquire(pool)
        assert lease.sandbox.phase is Phase.WARM
    finally:
        await pool.close()


# ---- warm path, identities, quotas -------------------------------------------------------------

async def test_cold_start_then_warm_reuse(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    first = await acquire(pool)
    assert first.cold and first.sandbox.phase is Phase.WARM
    assert first.sandbox.channel is not None and first.sandbox.channel.socket_path == f"/nonexistent/{first.sandbox.id}.sock"
    assert funclet.warmups[0].Identity == "A" and funclet.warmups[0].ContainerID == first.sandbox.id
    assert pool.release(first)
    second = pool.take_warm("A")
    assert second is not None and second.sandbox is first.sandbox and not second.cold
    assert pool.release(second)
    assert len(funclet.ops("warmup")) == 1
    assert {k: pool.counters[k] for k in ("warm_hit", "cold_start", "throttled", "evicted")} == {
        "warm_hit": 1, "cold_start": 1, "throttled": 0, "evicted": 0}
    assert first.sandbox.accepted == 2


async def test_two_identities_never_share_a_slot(make_pool: Any) -> None:
    pool = await make_pool()
    a = await acquire(pool, "A", quota=10)
    pool.release(a)
    assert pool.take_warm("B") is None
    b = await acquire(pool, "B", quota=10)
    assert b.sandbox is not a.sandbox
    assert a.sandbox.identity == "A" and b.sandbox.identity == "B"
    assert not pool.mark(a.sandbox, "B")
    pool.release(b)


async def test_quota_then_other_slots_then_429(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    leases = [await acquire(pool, "A", quota=2) for _ in range(2)]
    assert leases[0].sandbox is leases[1].sandbox and leases[0].sandbox.in_flight == 2
    more = [await acquire(pool, "A", quota=2) for _ in range(4)]
    assert len({lease.sandbox.id for lease in leases + more}) == 3
    with pytest.raises(TooManyRequests):
        await acquire(pool, "A", quota=2)
    with pytest.raises(TooManyRequests):
        await acquire(pool, "B")
    assert pool.counters["throttled"] == 2
    assert sum(s.rejected for s in pool.sandboxes.values()) == 3
    for lease in leases + more:
        assert pool.release(lease)
    assert all(s.in_flight == 0 for s in pool.sandboxes.values())


async def test_idle_warm_slots_are_evicted_least_recently_used_first(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    leases = {}
    for identity in ("A", "B", "C"):
        leases[identity] = await acquire(pool, identity)
    for identity in ("B", "A", "C"):  # B is now the least recently used
        pool.release(leases[identity])
        await asyncio.sleep(0.01)
    victim = leases["B"].sandbox
    d = await acquire(pool, "D")
    assert d.sandbox is victim and d.cold
    assert victim.identity == "D" and victim.phase is Phase.WARM
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
    slot = lease.sandbox
    assert not pool.evict(slot, "B", 1)  # in flight
    pool.release(lease)
    assert not pool.evict(slot, "A", 1)  # same identity: reuse it, do not evict
    assert not pool.evict(pool.sandboxes["c1" if slot.id != "c1" else "c2"], "B", 1)  # only WARM
    assert pool.evict(slot, "B", 1)
    assert slot.phase is Phase.WARMUP and slot.identity == "B" and slot.in_flight == 1


async def test_failed_reset_during_eviction_breaks_the_slot(make_pool: Any) -> None:
    fake = FakeFunclet(1)
    pool = await make_pool(fake)
    pool.release(await acquire(pool, "A"))
    fake.cooldown_error = FuncletError(500, "ServiceException", "reset failed")
    with pytest.raises(ServiceError, match="reset failed"):
        await acquire(pool, "B")
    fake.cooldown_error = None
    await until(lambda: pool.sandboxes["c0"].phase is Phase.COLD)
    assert fake.ops("reborn") == ["c0"]


async def test_quota_zero_means_one_and_serial_mode_ignores_quota(make_pool: Any) -> None:
    pool = await make_pool()
    a = await acquire(pool, "A", quota=0)
    assert a.sandbox.quota == 1
    assert pool.take_warm("A") is None
    serial = await make_pool(FakeFunclet(2), concurrent_mode=False)
    s = await acquire(serial, "A", quota=8)
    assert s.sandbox.quota == 1
    assert serial.take_warm("A") is None


async def test_release_never_goes_below_zero(make_pool: Any) -> None:
    pool = await make_pool()
    lease = await acquire(pool)
    assert pool.release(lease)
    assert not pool.release(lease)
    assert lease.sandbox.in_flight == 0


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
    slot = pool.sandboxes[funclet.ops("warmup")[0]]
    assert slot.phase is Phase.WARMUP and slot.in_flight == 2
    assert not first.done() and not second.done()
    funclet.warmup_gate.set()
    a, b = await asyncio.gather(first, second)
    assert a.sandbox is b.sandbox is slot and slot.phase is Phase.WARM
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
    assert a.sandbox is not b.sandbox


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
    slot = pool.sandboxes[funclet.ops("warmup")[0]]
    await until(lambda: slot.phase is Phase.COLD)
    assert funclet.ops("reborn") == [slot.id]
    assert slot.in_flight == 0 and slot.identity == ""
    assert "code image build failed" in slot.last_error


async def test_failed_reborn_is_retried_by_the_periodic_task(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(task_interval=0.02)
    funclet.warmup_error = FuncletError(500, "ServiceException", "boom")
    funclet.reborn_error = FuncletUnavailable("down")
    with pytest.raises(ServiceError):
        await acquire(pool)
    slot = pool.sandboxes[funclet.ops("warmup")[0]]
    await until(lambda: len(funclet.ops("reborn")) >= 3)
    assert slot.phase is Phase.BROKEN
    funclet.reborn_error = None
    await until(lambda: slot.phase is Phase.COLD)


async def test_init_error_recycles_the_slot(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.init_error = {"errorMessage": "No module named 'index'", "errorType": "Runtime.ImportModuleError",
                          "stackTrace": []}
    with pytest.raises(FunctionInitError) as info:
        await acquire(pool)
    assert info.value.error["errorType"] == "Runtime.ImportModuleError"
    slot = pool.sandboxes[funclet.ops("warmup")[0]]
    await until(lambda: slot.phase is Phase.COLD)
    assert funclet.ops("cooldown") == [slot.id]
    assert slot.in_flight == 0
    assert pool.take_warm("A") is None


async def test_cancelled_waiter_releases_and_warmup_completes(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.warmup_gate = asyncio.Event()
    task = asyncio.create_task(acquire(pool, "A", quota=1))
    await until(lambda: funclet.ops("warmup") != [])
    slot = pool.sandboxes[funclet.ops("warmup")[0]]
    assert slot.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slot.in_flight == 0
    funclet.warmup_gate.set()
    await until(lambda: slot.phase is Phase.WARM)
    lease = pool.take_warm("A")
    assert lease is not None and lease.sandbox is slot


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
    await until(lambda: all(s.phase is Phase.COLD for s in pool.sandboxes.values()))
    assert len(fake.ops("reborn")) == 1


# ---- stopping ----------------------------------------------------------------------------------

async def test_timeout_recycle_stops_and_cools_down(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    timed_out = await acquire(pool, "A", quota=3)
    other = await acquire(pool, "A", quota=3)
    slot = timed_out.sandbox
    channel = slot.channel
    assert pool.recycle(slot, timed_out.generation, "function timeout")
    assert slot.phase is Phase.STOPPING and slot.in_flight == 0
    assert channel is not None and channel.closed and slot.channel is None
    assert not pool.recycle(slot, other.generation, "runtime exited")  # second failure on the same slot
    assert pool.take_warm("A") is None
    await until(lambda: slot.phase is Phase.COLD)
    assert funclet.ops("cooldown") == [slot.id]
    # The leases of the old life are spent: releasing them touches nothing.
    fresh = await acquire(pool, "B")
    assert not pool.release(timed_out) and not pool.release(other)
    assert fresh.sandbox.in_flight == 1
    pool.release(fresh)


async def test_failed_cooldown_breaks_the_slot(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    lease = await acquire(pool)
    funclet.cooldown_error = FuncletError(500, "ServiceException", "reset failed")
    pool.recycle(lease.sandbox, lease.generation, "timeout")
    await until(lambda: lease.sandbox.phase is Phase.BROKEN and lease.sandbox.busy is None)
    assert "reset failed" in lease.sandbox.last_error


async def test_idle_slots_are_cooled_down(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(task_interval=0.02, max_runtime_idle=0.1)
    busy = await acquire(pool, "A")
    idle = await acquire(pool, "B")
    pool.release(idle)
    await until(lambda: idle.sandbox.phase is Phase.COLD)
    assert funclet.ops("cooldown") == [idle.sandbox.id]
    await asyncio.sleep(0.2)
    assert busy.sandbox.phase is Phase.WARM, "a slot with a request in flight is never cooled down"
    pool.release(busy)
    await until(lambda: busy.sandbox.phase is Phase.COLD)


async def test_stop_idle_guard(make_pool: Any) -> None:
    pool = await make_pool(max_runtime_idle=60)
    lease = await acquire(pool)
    slot = lease.sandbox
    assert not pool.stop_idle(slot)  # in flight
    pool.release(lease)
    assert not pool.stop_idle(slot)  # not idle long enough
    assert pool.stop_idle(slot, now=slot.last_access + 61)
    assert slot.phase is Phase.STOPPING
    assert not pool.stop_idle(slot, now=slot.last_access + 61)  # only from WARM


async def test_funclet_reporting_a_dead_runtime_recycles_the_slot(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    lease = await acquire(pool)
    pool.release(lease)
    funclet.containers[lease.sandbox.id].State = "stopped"
    await pool.tick()
    await until(lambda: lease.sandbox.phase is Phase.COLD)
    assert funclet.ops("cooldown") == [lease.sandbox.id]


# ---- guards ------------------------------------------------------------------------------------

async def test_transition_guards(make_pool: Any) -> None:
    pool = await make_pool()
    slot = pool.sandboxes["c0"]
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
    assert slot.phase is Phase.WARM
    assert not pool.break_sandbox(slot, slot.generation + 1, "stale")
    assert pool.break_sandbox(slot, slot.generation, "funclet error")
    assert slot.phase is Phase.BROKEN
    assert not pool.occupy(slot, "A", 1)
    await until(lambda: slot.phase is Phase.COLD)


# ---- invalidate --------------------------------------------------------------------------------

async def test_invalidate(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    assert not pool.invalidate("nope")
    busy = await acquire(pool, "A", quota=2)
    idle = await acquire(pool, "B")
    pool.release(idle)

    assert pool.invalidate(idle.sandbox.id)
    await until(lambda: idle.sandbox.phase is Phase.COLD and not idle.sandbox.abnormal)
    assert funclet.ops("reborn") == [idle.sandbox.id]

    assert pool.invalidate(busy.sandbox.id)
    assert busy.sandbox.phase is Phase.WARM
    assert pool.take_warm("A") is None, "an invalidated slot takes no new requests"
    pool.release(busy)
    await until(lambda: busy.sandbox.phase is Phase.COLD and not busy.sandbox.abnormal)
    assert funclet.ops("reborn") == [idle.sandbox.id, busy.sandbox.id]


async def test_views(make_pool: Any) -> None:
    pool = await make_pool()
    lease = await acquire(pool, "A", memory=256)
    runtimes = {r["RuntimeID"]: r for r in pool.runtimes()}
    r = runtimes[lease.sandbox.id]
    assert r["State"] == "warm" and r["Identity"] == "A" and r["FunctionBrn"] == "brn-A"
    assert r["Concurrency"] == 1 and r["Quota"] == 1 and r["AcceptReqCnt"] == 1
    assert r["LastAccessTime"].endswith("Z") and r["LastWarmTime"]
    res = pool.resource()
    assert res["Marked"]["Memory"] == 256 * MiB
    assert res["Used"]["Memory"] == 256 * MiB
    assert res["Slots"] == {"cold": 2, "warmup": 0, "warm": 1, "stopping": 0, "broken": 0, "removing": 0}
    pool.release(lease)


# ---- memory: every path that reserves memory releases it ---------------------------------------

def reserved_mb(pool: Pool) -> int:
    return pool.resource()["Reserved"]["Memory"] // MiB


async def test_reservation_follows_the_slot_through_warm_and_cooldown(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(task_interval=0.02, max_runtime_idle=0.05)
    lease = await acquire(pool, "A", memory=256)
    assert reserved_mb(pool) == 256 and lease.sandbox.reserved_mb == 256
    pool.release(lease)
    await until(lambda: lease.sandbox.phase is Phase.COLD)
    assert reserved_mb(pool) == 0


async def test_failed_warmup_releases_memory_at_once(make_pool: Any, funclet: FakeFunclet) -> None:
    """Reference §2.13/§9.9: the original kept a failed warmup's memory reserved until a reborn."""
    pool = await make_pool()
    funclet.reborn_error = FuncletUnavailable("down")  # the reborn cannot complete
    funclet.warmup_error = FuncletError(500, "ServiceException", "code image build failed")
    with pytest.raises(ServiceError):
        await acquire(pool, "A", memory=512)
    assert reserved_mb(pool) == 0, "the funclet answered and reset the sandbox: nothing is held"


async def test_silent_funclet_keeps_memory_until_the_reborn(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.warmup_error = FuncletUnavailable("no answer")
    funclet.reborn_error = FuncletUnavailable("still down")
    with pytest.raises(ServiceError):
        await acquire(pool, "A", memory=512)
    slot = pool.sandboxes[funclet.ops("warmup")[0]]
    # Nobody knows whether the sandbox still runs with its limit: the memory stays reserved ...
    await until(lambda: slot.busy is None and slot.phase is Phase.BROKEN)
    assert reserved_mb(pool) == 512
    funclet.reborn_error = None
    await pool.tick()
    # ... until the funclet confirms it rebuilt the sandbox.
    await until(lambda: slot.phase is Phase.COLD)
    assert reserved_mb(pool) == 0


async def test_init_error_recycle_and_eviction_release_memory(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(FakeFunclet(1))
    fake = pool.funclet
    fake.init_error = {"errorMessage": "x", "errorType": "Runtime.ImportModuleError"}
    with pytest.raises(FunctionInitError):
        await acquire(pool, "A", memory=300)
    await until(lambda: pool.sandboxes["c0"].phase is Phase.COLD)
    assert reserved_mb(pool) == 0
    fake.init_error = None
    lease = await acquire(pool, "A", memory=300)
    pool.release(lease)
    lease = await acquire(pool, "B", memory=200)  # evicts A: the slot now holds B's memory only
    assert reserved_mb(pool) == 200
    pool.recycle(lease.sandbox, lease.generation, "timeout")
    assert reserved_mb(pool) == 200, "held until the cooldown is confirmed"
    await until(lambda: lease.sandbox.phase is Phase.COLD)
    assert reserved_mb(pool) == 0
    pool.release(lease)


async def test_abandoned_cold_start_releases_memory(make_pool: Any) -> None:
    pool = await make_pool()

    def broken_factory(slot: Sandbox) -> WarmupRequest:
        raise RuntimeError("runtime configuration vanished")

    with pytest.raises(RuntimeError):
        await pool.acquire("A", 1, broken_factory, brn="brn-A", memory_mb=256)
    assert reserved_mb(pool) == 0
    assert all(s.phase is Phase.COLD and s.in_flight == 0 for s in pool.sandboxes.values())


async def test_memory_admission_waits_for_memory_and_never_admits_the_impossible(make_pool: Any) -> None:
    pool = await make_pool(FakeFunclet(3, allocatable_mb=400), queue_timeout=2)
    first = await acquire(pool, "A", memory=256)
    with pytest.raises(TooManyRequests, match="insufficient memory.*400 MB allocatable"):
        await acquire(pool, "H", memory=1024)
    waiting = asyncio.create_task(acquire(pool, "B", memory=256))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "B waits for memory, not for a slot"
    pool.recycle(first.sandbox, first.generation, "done with A")
    second = await waiting
    assert second.sandbox.memory_mb == 256 and reserved_mb(pool) == 256
    pool.release(first)
    pool.release(second)


# ---- concurrency limits ------------------------------------------------------------------------

async def test_reserved_concurrency_caps_every_version_of_a_function(make_pool: Any) -> None:
    pool = await make_pool(FakeFunclet(4))
    policy = FunctionPolicy(reserved_concurrency=2)
    a1 = await pool.acquire("A1", 5, warmup_for(), brn="brn:cloud:faas:bj:acct:function:f:1", policy=policy)
    a2 = await pool.acquire("A2", 5, warmup_for(), brn="brn:cloud:faas:bj:acct:function:f:2", policy=policy)
    assert pool.take_warm("A1") is None, "the slot has room, but the function is at its cap"
    with pytest.raises(TooManyRequests, match="reserved concurrency of 2"):
        await pool.acquire("A1", 5, warmup_for(), brn="brn:cloud:faas:bj:acct:function:f:1", policy=policy)
    pool.release(a2)
    again = pool.take_warm("A1")
    assert again is not None and again.sandbox is a1.sandbox
    for lease in (a1, again):
        pool.release(lease)
    assert pool.machine.groups.limits["brn:cloud:faas:bj:acct:function:f"].in_flight == 0


async def test_reserved_concurrency_zero_throttles(make_pool: Any) -> None:
    pool = await make_pool(queue_timeout=5)
    with pytest.raises(TooManyRequests, match="reserved concurrency of 0"):
        await pool.acquire("A", 1, warmup_for(), brn="brn-A", policy=FunctionPolicy(reserved_concurrency=0))


async def test_policy_from_a_record_and_the_operator_overrides() -> None:
    record = FunctionRecord()
    record.Tags = {"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "4",
                   "com.openfaas.scale.zero-duration": "90s"}
    record.Concurrency.ReservedConcurrentExecutions = 7
    assert FunctionPolicy.of(record) == FunctionPolicy(min_warm=2, max_sandboxes=4, max_idle=90.0,
                                                       reserved_concurrency=7)
    record.Tags = {"com.openfaas.scale.zero": "false", "com.openfaas.scale.min": "nonsense"}
    assert FunctionPolicy.of(record).min_warm == 0, "a malformed label is ignored, not fatal"
    record.Tags = {"com.openfaas.scale.zero": "false"}
    assert FunctionPolicy.of(record).min_warm == 1
    knobs = parse_scaling({"hello": {"min": 1, "zero-duration": "2s", "reserved_concurrency": 3}})
    assert knobs == {"hello": {"min_warm": 1, "max_idle": 2.0, "reserved_concurrency": 3}}
    pool = Pool(FakeFunclet(), scaling=knobs)  # type: ignore[arg-type]
    brn = "brn:cloud:faas:bj:acct:function:hello:$LATEST"
    assert pool.policy_for(brn, record) == FunctionPolicy(min_warm=1, max_idle=2.0, reserved_concurrency=3)
    for bad, message in (({"f": {"colour": 1}}, "unknown knob"), ({"f": {"min": -1}}, "negative"),
                         ({"f": {"zero-duration": "soon"}}, "not a duration"), (["f"], "must map")):
        with pytest.raises(ValueError, match=message):
            parse_scaling(bad)


async def test_function_max_sandboxes(make_pool: Any) -> None:
    pool = await make_pool(queue_timeout=0.2)
    policy = FunctionPolicy(max_sandboxes=1)
    first = await pool.acquire("A", 1, warmup_for(), brn="brn-A", policy=policy)
    with pytest.raises(TooManyRequests, match="maximum of 1 sandboxes"):
        await pool.acquire("A", 1, warmup_for(), brn="brn-A", policy=policy)
    pool.release(first)


# ---- the queue ---------------------------------------------------------------------------------

async def test_queued_request_gets_the_slot_that_frees_up(make_pool: Any) -> None:
    pool = await make_pool(FakeFunclet(1), queue_timeout=5)
    first = await acquire(pool, "A")
    waiter = asyncio.create_task(acquire(pool, "A"))
    await until(lambda: pool.resource()["Queue"]["Waiting"] == 1)
    assert pool.take_warm("A") is None
    pool.release(first)
    second = await waiter
    assert second.sandbox is first.sandbox and not second.cold
    assert pool.counters["queued"] == 1 and pool.resource()["Queue"]["Waiting"] == 0
    pool.release(second)


async def test_queue_is_bounded_in_length_and_time(make_pool: Any) -> None:
    pool = await make_pool(FakeFunclet(1), queue_timeout=0.2, queue_length=2)
    busy = await acquire(pool, "A")
    waiters = [asyncio.create_task(acquire(pool, "A")) for _ in range(2)]
    await until(lambda: pool.resource()["Queue"]["Waiting"] == 2)
    with pytest.raises(TooManyRequests, match="queue of function brn-A is full"):
        await acquire(pool, "A")
    for task in waiters:
        with pytest.raises(TooManyRequests, match="no sandbox became free for brn-A within 0.2s"):
            await task
    assert pool.counters["queue_timeout"] == 2 and pool.counters["throttled"] == 3
    assert pool.resource()["Queue"]["Waiting"] == 0 and busy.sandbox.in_flight == 1
    pool.release(busy)
    assert busy.sandbox.in_flight == 0


async def test_cancelled_waiter_leaves_the_queue_and_leaks_nothing(make_pool: Any) -> None:
    pool = await make_pool(FakeFunclet(1), queue_timeout=5)
    busy = await acquire(pool, "A")
    waiter = asyncio.create_task(acquire(pool, "A"))
    await until(lambda: pool.resource()["Queue"]["Waiting"] == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.resource()["Queue"]["Waiting"] == 0
    pool.release(busy)
    assert busy.sandbox.in_flight == 0


async def test_waiter_served_as_it_times_out_keeps_its_lease(make_pool: Any) -> None:
    pool = await make_pool(FakeFunclet(1), queue_timeout=5)
    busy = await acquire(pool, "A")
    waiter = asyncio.create_task(acquire(pool, "A"))
    await until(lambda: pool.resource()["Queue"]["Waiting"] == 1)
    pool.release(busy)  # serves the waiter's future ...
    waiter.cancel()      # ... and its task is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert busy.sandbox.in_flight == 0, "the lease the cancelled waiter was given went back"


async def test_queues_are_served_round_robin_between_functions(make_pool: Any) -> None:
    pool = await make_pool(FakeFunclet(1), queue_timeout=5)
    busy = await acquire(pool, "A", quota=1)
    order: list[str] = []

    async def request(identity: str) -> None:
        lease = await acquire(pool, identity)
        order.append(identity)
        await asyncio.sleep(0.01)
        pool.release(lease)

    tasks = [asyncio.create_task(request(i)) for i in ("A", "A", "A", "B", "B")]
    await until(lambda: pool.resource()["Queue"]["Waiting"] == 5)
    pool.release(busy)
    await asyncio.gather(*tasks)
    # A's three requests do not all go before B's: the functions take turns.
    assert order[:4] in (["A", "B", "A", "B"], ["B", "A", "B", "A"]), order
    assert pool.counters["evicted"] >= 3


# ---- the elastic pool --------------------------------------------------------------------------

async def test_pool_grows_under_a_burst_and_shrinks_back(make_pool: Any) -> None:
    fake = FakeFunclet(2, max_sandboxes=5)
    pool = await make_pool(fake, queue_timeout=2, max_sandbox_idle=0.05, min_free_sandboxes=1)
    leases = await asyncio.gather(*(acquire(pool, "A") for _ in range(5)))
    assert len({lease.sandbox.id for lease in leases}) == 5
    assert len(pool.sandboxes) == 5 and pool.counters["grown"] == 3
    assert all(int(n) <= 5 for n in fake.ops("grow"))
    with pytest.raises(TooManyRequests, match="within 2s"):
        await acquire(pool, "B")  # at the bound: waits its queue time, then 429
    for lease in leases:
        pool.release(lease)
        pool.recycle(lease.sandbox, lease.generation, "test: cool it now")
    await until(lambda: all(s.phase is Phase.COLD for s in pool.sandboxes.values()))
    await asyncio.sleep(0.06)
    await pool.tick()
    await until(lambda: len(pool.sandboxes) == 2)
    assert sorted(fake.containers) == sorted(pool.sandboxes) == ["c0", "c1"]
    assert pool.counters["shrunk"] == 3
    assert pool.resource()["Sandboxes"] == {"Total": 2, "Idle": 2, "Max": 5, "Free": 2, "Growing": 0}


async def test_spare_sandbox_is_built_off_the_request_path(make_pool: Any) -> None:
    fake = FakeFunclet(1, max_sandboxes=3)
    pool = await make_pool(fake, min_free_sandboxes=1)
    lease = await acquire(pool, "A")  # takes the only free sandbox: one more is built in the background
    await until(lambda: len(pool.sandboxes) == 2)
    assert fake.ops("grow") == ["1"]
    second = await acquire(pool, "B")
    assert second.sandbox.id == "c1" and second.cold
    pool.release(lease)
    pool.release(second)


async def test_growth_failure_backs_off_and_requests_get_429(make_pool: Any) -> None:
    fake = FakeFunclet(1, max_sandboxes=3)
    fake.grow_error = FuncletError(500, "ServiceException", "no more veths")
    pool = await make_pool(fake, queue_timeout=0.2, min_free_sandboxes=0)
    busy = await acquire(pool, "A")
    with pytest.raises(TooManyRequests, match="within 0.2s"):
        await acquire(pool, "B")
    assert len(fake.ops("grow")) == 1, "one attempt, then a back-off"
    pool.release(busy)


async def test_refused_or_failed_shrink_leaves_the_slot_cold(make_pool: Any) -> None:
    fake = FakeFunclet(1, max_sandboxes=2)
    pool = await make_pool(fake, max_sandbox_idle=0, min_free_sandboxes=1)
    pool.release(await acquire(pool, "A"))
    await until(lambda: len(pool.sandboxes) == 2)
    fake.refuse_shrink = True
    await pool.tick()
    await until(lambda: all(s.busy is None for s in pool.sandboxes.values()))
    assert pool.sandboxes["c1"].phase is Phase.COLD and len(pool.sandboxes) == 2
    assert fake.ops("shrink") == ["c1"]


async def test_drain_stops_growth(make_pool: Any) -> None:
    fake = FakeFunclet(1, max_sandboxes=3)
    pool = await make_pool(fake, queue_timeout=0.1, min_free_sandboxes=0)
    busy = await acquire(pool, "A")
    pool.begin_drain()
    with pytest.raises(TooManyRequests):
        await acquire(pool, "B")
    assert fake.ops("grow") == []
    pool.release(busy)


# ---- keeping functions warm (scale.min, zero-duration) -----------------------------------------

async def test_min_warm_is_kept_and_topped_up(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(max_runtime_idle=0.01)
    policy = FunctionPolicy(min_warm=2)
    lease = await pool.acquire("A", 1, warmup_for(), brn="brn-A", memory_mb=128, policy=policy)
    pool.release(lease)
    await pool.tick()  # pre-warms a second sandbox for A from the first one's warmup
    await until(lambda: sum(1 for s in pool.sandboxes.values() if s.identity == "A" and s.phase is Phase.WARM) == 2)
    assert pool.counters["prewarm"] == 1
    await asyncio.sleep(0.02)
    await pool.tick()
    assert funclet.ops("cooldown") == [], "idle, but owed to A"
    # A lost sandbox is replaced.
    kept = next(s for s in pool.sandboxes.values() if s.identity == "A")
    pool.recycle(kept, kept.generation, "runtime died")
    await until(lambda: kept.phase is Phase.COLD)
    await pool.tick()
    await until(lambda: sum(1 for s in pool.sandboxes.values() if s.identity == "A" and s.phase is Phase.WARM) == 2)


async def test_min_warm_ends_when_the_function_changes(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(max_runtime_idle=0.01)
    policy = FunctionPolicy(min_warm=1)
    pool.release(await pool.acquire("A-v1", 1, warmup_for(), brn="brn-A", policy=policy))
    pool.release(await pool.acquire("A-v2", 1, warmup_for(), brn="brn-A", policy=policy))
    await asyncio.sleep(0.02)
    await pool.tick()
    old = next(s for s in pool.sandboxes.values() if s.identity == "A-v1" or s.phase is Phase.STOPPING)
    await until(lambda: old.phase is Phase.COLD)
    assert any(s.identity == "A-v2" and s.phase is Phase.WARM for s in pool.sandboxes.values())


async def test_per_function_idle_time(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(max_runtime_idle=3600)
    quick = await pool.acquire("A", 1, warmup_for(), brn="brn-A", policy=FunctionPolicy(max_idle=0.01))
    slow = await acquire(pool, "B")
    pool.release(quick)
    pool.release(slow)
    await asyncio.sleep(0.02)
    await pool.tick()
    await until(lambda: quick.sandbox.phase is Phase.COLD)
    assert slow.sandbox.phase is Phase.WARM


# ---- the funclet's events ----------------------------------------------------------------------

async def test_oom_exit_event_recycles_and_explains(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    lease = await acquire(pool, "A", memory=128)
    slot = lease.sandbox
    c = funclet.containers[slot.id]
    c.State, c.OOMKills = "stopped", 1
    funclet.push("exited", slot.id, Exit=RuntimeExit(Epoch=c.Epoch, Signal=9, OOMKilled=True,
                                                     MemoryLimit=128 * MiB))
    failure = await pool.runtime_failure(lease, wait=2)
    assert failure is not None and failure.oom and failure.error_type == "Runtime.OutOfMemory"
    assert "memory limit of 128 MB" in failure.message("rid") and failure.message("rid").startswith("RequestID: rid")
    await until(lambda: slot.phase is Phase.COLD)
    assert funclet.ops("cooldown") == [slot.id]
    assert pool.counters["oom_kill"] == 1 and pool.counters["runtime_exit"] == 1
    assert not pool.release(lease)


async def test_runtime_failure_asks_the_funclet_when_no_event_came(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(use_events=False)
    lease = await acquire(pool)
    c = funclet.containers[lease.sandbox.id]
    c.State = "stopped"
    c.LastExit = RuntimeExit(Epoch=c.Epoch, Code=3, Output="Traceback ... ValueError: bad config")
    failure = await pool.runtime_failure(lease, wait=1)
    assert failure is not None and failure.error_type == "Runtime.ExitError"
    assert "exited with status 3" in failure.detail and "bad config" in failure.detail
    other = await acquire(pool, "B")
    assert await pool.runtime_failure(other, wait=0.05) is None, "a healthy runtime has no failure"
    pool.release(lease)
    pool.release(other)


async def test_an_oom_kill_is_known_from_the_cgroup_before_the_exit_report(make_pool: Any,
                                                                           funclet: FakeFunclet) -> None:
    pool = await make_pool()
    lease = await acquire(pool, "A", memory=64)
    c = funclet.containers[lease.sandbox.id]
    assert await pool.runtime_failure(lease, wait=0.15) is None, "no OOM kill counted, no report: not known"
    c.OOMKills += 1  # the kernel's count in the sandbox's cgroup; the runner has not reported the exit yet
    failure = await pool.runtime_failure(lease, wait=2)
    assert failure is not None and failure.oom and failure.error_type == "Runtime.OutOfMemory"
    assert "memory limit of 64 MB" in failure.detail, failure.detail
    assert pool.counters["oom_kill"] == 1
    pool.release(lease)


async def test_dead_sandbox_event_fails_the_slot_and_waits_for_the_rebuild(make_pool: Any,
                                                                          funclet: FakeFunclet) -> None:
    pool = await make_pool()
    lease = await acquire(pool, "A", memory=200)
    slot = lease.sandbox
    c = funclet.containers[slot.id]
    funclet.push("defunct", slot.id, Reason="runner silent for 10.0s")
    c.State = "dead"
    funclet.push("state", slot.id)
    await until(lambda: slot.phase is Phase.COLD and not slot.available)
    failure = await pool.runtime_failure(lease, wait=0)
    assert failure is not None and "runner silent" in failure.detail
    assert reserved_mb(pool) == 0 and not pool.occupy(slot, "B", 1)
    assert pool.counters["runner_defunct"] == 1
    c.State, c.Epoch = "cold", funclet.next_epoch()
    funclet.push("state", slot.id)
    await until(lambda: slot.available)
    assert funclet.ops("reborn") == [], "the funclet rebuilt it by itself"
    pool.release(lease)


async def test_stale_events_are_ignored(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.epoch = 10
    lease = await acquire(pool)
    slot = lease.sandbox
    c = funclet.containers[slot.id]
    stale = ContainerInfo.from_dict(c.to_dict())
    stale.State, stale.Epoch = "cold", c.Epoch - 1  # the reset before this warmup, reported late
    funclet.events_log.append(FuncletEvent(Seq=len(funclet.events_log) + 1, Type="state", ContainerID=slot.id,
                                           Container=stale))
    late = ContainerInfo.from_dict(c.to_dict())
    late.State = "warmup"  # the warmup's own state change, reported after its answer
    funclet.push("state", slot.id)
    funclet.events_log[-1].Container = late
    await until(lambda: funclet.calls.count(("events", str(len(funclet.events_log)))) >= 1)
    assert slot.phase is Phase.WARM and funclet.ops("cooldown") == []
    pool.release(lease)


async def test_new_and_removed_sandboxes_from_events(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    funclet.containers["c9"] = funclet._container("c9", "starting")
    funclet.push("created", "c9")
    await until(lambda: "c9" in pool.sandboxes)
    assert not pool.sandboxes["c9"].available
    funclet.containers["c9"].State = "cold"
    funclet.push("state", "c9")
    await until(lambda: pool.sandboxes["c9"].available)
    del funclet.containers["c9"]
    funclet.push("removed", "c9")
    await until(lambda: "c9" not in pool.sandboxes)


async def test_funclet_restart_resets_the_view(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool()
    lease = await acquire(pool, "A", memory=256)
    old_slot = lease.sandbox
    funclet.boot_id = "boot-2"
    for cid in list(funclet.containers):
        funclet.containers[cid] = funclet._container(cid, "starting" if cid == "c2" else "cold")
    funclet.push("state", "c0")
    await until(lambda: pool.sandboxes.get(old_slot.id) is not old_slot)
    assert all(s.phase is Phase.COLD for s in pool.sandboxes.values())
    assert not pool.sandboxes["c2"].available and reserved_mb(pool) == 0
    failure = await pool.runtime_failure(lease, wait=0)
    assert failure is not None and "the funclet restarted" in failure.detail
    assert not pool.release(lease)
    assert pool.take_warm("A") is None


async def test_sync_forgets_sandboxes_the_funclet_no_longer_has(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(use_events=False)
    del funclet.containers["c2"]
    await pool.tick()
    assert sorted(pool.sandboxes) == ["c0", "c1"]


# ---- a way out of every state ------------------------------------------------------------------

async def test_every_stuck_state_is_reborn(make_pool: Any, funclet: FakeFunclet) -> None:
    """Reference §2.11: slots used as memory donors were lost to the pool (no way out of reclaiming)."""
    pool = await make_pool(max_transition_time=0.01)
    stuck = {Phase.WARMUP: pool.sandboxes["c0"], Phase.STOPPING: pool.sandboxes["c1"],
             Phase.REMOVING: pool.sandboxes["c2"]}
    for state, slot in stuck.items():
        pool.machine._set_phase(slot, state)
    await asyncio.sleep(0.02)
    await pool.tick()
    await until(lambda: all(s.phase is Phase.COLD for s in pool.sandboxes.values()))
    assert sorted(funclet.ops("reborn")) == ["c0", "c1", "c2"]


async def test_unavailable_sandbox_is_reborn_after_max_runner_defunct(make_pool: Any, funclet: FakeFunclet) -> None:
    pool = await make_pool(max_transition_time=0.01, use_events=False)
    funclet.containers["c0"].State = "dead"
    await pool.tick()
    assert not pool.sandboxes["c0"].available
    funclet.containers["c0"].State = "dead"
    await asyncio.sleep(0.02)
    await pool.tick()
    await until(lambda: pool.sandboxes["c0"].phase is Phase.COLD and pool.sandboxes["c0"].available)
    assert funclet.ops("reborn") == ["c0"]


async def test_abnormal_slot_is_reborn_even_though_it_is_healthy(make_pool: Any, funclet: FakeFunclet) -> None:
    """Reference §9.9: an abnormal slot whose runner kept heartbeating was never reborn."""
    pool = await make_pool()
    lease = await acquire(pool)
    pool.release(lease)
    assert pool.invalidate(lease.sandbox.id)
    await until(lambda: funclet.ops("reborn") == [lease.sandbox.id])
    await until(lambda: lease.sandbox.phase is Phase.COLD and not lease.sandbox.abnormal)


# ---- the machine's transitions for its collaborators: each refuses every other phase ----------

async def _removal(pool: Pool, sandbox: Sandbox) -> bool:
    async def remove(chosen: list[Sandbox]) -> None:
        for s in chosen:
            pool.machine.removal_done(s, False)

    return pool.machine.begin_removal([sandbox], remove) == [sandbox]


COLLABORATOR_TRANSITIONS: dict[str, tuple[Callable[[Pool, Sandbox], Any], set[Phase], Phase]] = {
    "retire": (lambda p, s: p.machine.retire(s, "t"), {Phase.COLD, Phase.WARM}, Phase.BROKEN),
    "reclaim": (lambda p, s: p.machine.reclaim(s, "t"), {Phase.COLD}, Phase.STOPPING),
    "condemn": (lambda p, s: p.machine.condemn(s, "t"), {Phase.COLD}, Phase.BROKEN),
    "reborn": (lambda p, s: p.machine.reborn(s), {Phase.BROKEN}, Phase.BROKEN),
    "unstick": (lambda p, s: p.machine.unstick(s), {Phase.WARMUP, Phase.STOPPING, Phase.REMOVING}, Phase.BROKEN),
    "removal_done": (lambda p, s: p.machine.removal_done(s, False), {Phase.REMOVING}, Phase.COLD),
    "begin_removal": (_removal, {Phase.COLD}, Phase.REMOVING),
}


@pytest.mark.parametrize("name", sorted(COLLABORATOR_TRANSITIONS))
@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
async def test_collaborator_transition_guards(make_pool: Any, funclet: FakeFunclet, name: str, phase: Phase) -> None:
    transition, allowed, target = COLLABORATOR_TRANSITIONS[name]
    pool = await make_pool()
    sandbox = pool.sandboxes["c0"]
    pool.machine._set_phase(sandbox, phase)
    changes = ("warmup", "cooldown", "reborn", "grow", "shrink")
    calls = len(funclet.calls)
    result = transition(pool, sandbox)
    if asyncio.iscoroutine(result):
        result = await result
    if phase in allowed:
        assert result and sandbox.phase is target
    else:
        assert not result and sandbox.phase is phase
        await asyncio.sleep(0.01)
        called = [call for call in funclet.calls[calls:] if call[0] in changes]
        assert called == [], f"{name} refused in {phase.value} yet asked the funclet for a change"


async def test_collaborator_transitions_refuse_a_sandbox_with_an_operation_under_way(make_pool: Any) -> None:
    pool = await make_pool()
    sandbox = pool.sandboxes["c0"]
    gate = asyncio.Event()
    sandbox.busy = asyncio.get_running_loop().create_task(gate.wait())  # type: ignore[assignment]
    try:
        assert not pool.machine.reclaim(sandbox, "t") and not pool.machine.condemn(sandbox, "t")
        assert not await _removal(pool, sandbox)
        pool.machine._set_phase(sandbox, Phase.BROKEN)
        assert not pool.machine.reborn(sandbox)
        pool.machine._set_phase(sandbox, Phase.STOPPING)
        assert not pool.machine.unstick(sandbox)
        assert sandbox.phase is Phase.STOPPING
    finally:
        gate.set()
        await sandbox.busy
        sandbox.busy = None


async def test_retire_refuses_a_sandbox_with_requests_in_flight(make_pool: Any) -> None:
    pool = await make_pool()
    lease = await acquire(pool)
    assert not pool.machine.retire(lease.sandbox, "t") and lease.sandbox.phase is Phase.WARM
    pool.release(lease)
    assert pool.machine.retire(lease.sandbox, "t") and lease.sandbox.phase is Phase.BROKEN
