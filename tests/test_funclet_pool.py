"""The funclet's sandbox pool, in process: its state changes against fake kernel parts and runners.

Everything the pool drives is a fake from ``tests/fakes/funclet.py`` (zygote and runners, cgroups,
code images, network, mounts); the pool's own code, its runner links and its event log are real.
No root, no kernel objects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Callable

import pytest

from easyfaas.errors import InvalidParameterValue, ResourceConflict, ResourceNotFound, ServiceError
from easyfaas.models import CodeLocation, CodePrepareRequest, FuncletEventType, RuntimeConfiguration, SandboxState
from funclet.pool.standby import MAX_STANDBY_FAILURES
from runner.environment import process_environment, runtime_env
from runner.standby import StandbyRuntime, standby_key
from tests.fakes.funclet_pool import Harness, MiB, make_pool, warmup_request


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def hex_of(code: bytes) -> str:
    return hashlib.sha256(code).hexdigest()


# ---- building ---------------------------------------------------------------------------------------

async def test_start_builds_the_idle_pool_cold(make_pool) -> None:
    h = await make_pool(3)
    infos = h.pool.list()
    assert [i.ContainerID for i in infos] == ["pod-c0", "pod-c1", "pod-c2"]
    assert {i.State for i in infos} == {"cold"}
    assert len({i.Epoch for i in infos}) == 3 and all(i.HostPid for i in infos)
    spec = h.zygote.spawned[1]
    assert (spec.id, spec.uid, spec.gid, spec.tmp_size) == ("pod-c1", 20001, 20001, 64 * MiB)
    assert spec.binds == [{"src": "/usr", "dst": "/usr"},
                          {"src": f"{spec.slot_dir}/secrets", "dst": "/var/secrets"}]  # funclet/sandbox/secretfs.py
    assert spec.symlinks == {"/bin": "usr/bin"}
    assert spec.cgroup_procs == ["/fake/cgroup/easyfaas-pod/pod-c1/cgroup.procs"]
    cg = h.cgroups.created[1]
    assert (cg.memory_limit, cg.cpu_limit, cg.pids_limit) == (128 * MiB, 500, 256)
    assert sorted(n.address for n in h.network.attached.values()) == ["172.33.0.2", "172.33.0.3", "172.33.0.4"]
    assert h.mounts.shared == [str(h.pool.settings.slots_dir)]
    built = [e for e in h.events(FuncletEventType.STATE) if e.Reason == "built"]
    assert sorted(e.ContainerID for e in built) == ["pod-c0", "pod-c1", "pod-c2"]
    node = h.pool.node()
    assert (node.IdleSandboxes, node.MaxSandboxes, node.Sandboxes) == (3, 3, 3)
    assert node.Allocatable.Memory == (8 << 30) - 100 * MiB and node.BootID == h.pool.events.boot_id


async def test_start_fails_when_no_sandbox_can_be_built(make_pool) -> None:
    h = await make_pool(2, start=False)
    h.zygote.started = True
    h.zygote.failed_inits = 2
    with pytest.raises(RuntimeError, match="no sandbox could be built"):
        await h.pool.start()
    assert {h.state(i) for i in ("pod-c0", "pod-c1")} == {SandboxState.DEAD}
    assert not h.cgroups.live() and not h.network.attached


async def test_close_leaves_nothing_behind(make_pool) -> None:
    h = await make_pool(2)
    await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3")))
    assert h.mounts.table
    await h.pool.close()
    assert not h.cgroups.live() and not h.network.attached and not h.network.set_up
    assert not h.mounts.table and h.images.closed and not h.zygote.started
    assert all(r.gone for r in h.zygote.runners.values())
    assert not h.events(FuncletEventType.DEFUNCT)  # runners that go with the pool are not rebuilt


# ---- warmup and cooldown ----------------------------------------------------------------------------

async def test_warmup_binds_code_and_runtime_and_starts_the_runtime(make_pool) -> None:
    h = await make_pool(2)
    cold_epoch = h.pool.get("pod-c0").epoch
    resp = await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3"), memory=256,
                                              variables={"MINE": "yes", "EASYFAAS_HANDLER": "theirs"}))
    info = resp.Container
    assert resp.InitError is None
    assert (info.State, info.Identity, info.FunctionBrn) == ("warm", "lease-1", "brn:cloud:faas:bj:acct:function:hello:1")
    assert info.Epoch > cold_epoch and info.Resource.Memory == 256 * MiB
    assert h.cgroups.created[0].memory_limit == 256 * MiB
    slot = h.pool.settings.slots_dir / "pod-c0"
    assert h.mounts.table[str(slot / "task")] == str(h.root / "images" / hex_of(b"code"))
    assert h.mounts.table[str(slot / "runtime")] == str(h.root / "runtime" / "python3")
    start = h.runner("pod-c0").commands[-1]
    assert start["op"] == "start" and start["runtime"]["Name"] == "python3"
    env = start["env"]
    assert env["MINE"] == "yes" and env["EASYFAAS_HANDLER"] == "index.handler"  # the platform's names win
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256" and env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert start["function"] == {"name": "hello", "version": "1", "brn": "brn:cloud:faas:bj:acct:function:hello:1",
                                 "handler": "index.handler", "memory": 256, "timeout": 5}
    assert h.pool.get("pod-c0").runtime_pid == h.runner("pod-c0").runtime_pid > 0
    states = [e.Container.State for e in h.events(FuncletEventType.STATE) if e.ContainerID == "pod-c0"]
    assert states[-2:] == ["warmup", "warm"]


async def test_warmup_refusals(make_pool) -> None:
    h = await make_pool(1)
    python = h.runtime("python3")
    with pytest.raises(ResourceNotFound):
        await h.pool.warmup(warmup_request("pod-c9", python))
    bad_hash = warmup_request("pod-c0", python)
    bad_hash.Configuration.CodeSha256 = "not base64 of a sha256"
    with pytest.raises(InvalidParameterValue, match="CodeSha256"):
        await h.pool.warmup(bad_hash)
    with pytest.raises(InvalidParameterValue, match="MemorySize"):
        await h.pool.warmup(warmup_request("pod-c0", python, memory=0))
    outside = RuntimeConfiguration(Name="evil", Path="/etc", Launch="fork-python")
    with pytest.raises(InvalidParameterValue, match="outside"):
        await h.pool.warmup(warmup_request("pod-c0", outside))
    assert h.state("pod-c0") is SandboxState.COLD  # nothing was touched
    await h.pool.warmup(warmup_request("pod-c0", python))
    with pytest.raises(ResourceConflict, match="warm, not cold"):
        await h.pool.warmup(warmup_request("pod-c0", python))


async def test_runtime_init_error_is_reported_with_the_warm_sandbox(make_pool) -> None:
    h = await make_pool(1)
    error = {"errorMessage": "No module named 'index'", "errorType": "Runtime.ImportModuleError"}
    h.runner("pod-c0").init_error = error
    resp = await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3")))
    assert resp.InitError == error and resp.Container.State == "warm"


async def test_a_runner_lost_during_warmup_fails_it_and_the_sandbox_is_rebuilt(make_pool) -> None:
    h = await make_pool(1)
    first = h.runner("pod-c0")
    first.silent = True
    task = asyncio.ensure_future(h.pool.warmup(warmup_request("pod-c0", h.runtime("python3"))))
    await until(lambda: "start" in first.ops, "the start command")
    first.dies()
    with pytest.raises(ServiceError, match="warm up container pod-c0 failed"):
        await task
    assert h.state("pod-c0") is SandboxState.COLD
    assert h.runner("pod-c0") is not first and len(h.zygote.spawned) == 2
    assert h.cgroups.created[0].removed and not h.cgroups.created[1].removed
    assert not h.mounts.table  # the code and runtime binds went with the old sandbox


async def test_cooldown_resets_without_rebuilding(make_pool) -> None:
    h = await make_pool(1)
    await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3"), memory=512))
    warm_epoch = h.pool.get("pod-c0").epoch
    info = await h.pool.cooldown("pod-c0")
    assert (info.State, info.Identity, info.FunctionBrn) == ("cold", "", "")
    assert info.Epoch > warm_epoch and info.Resource.Memory == 128 * MiB
    assert h.cgroups.created[0].memory_limit == 128 * MiB
    assert h.runner("pod-c0").ops[-1] == "reset" and len(h.zygote.spawned) == 1
    assert not h.mounts.table and h.pool.get("pod-c0").code_hash == ""
    assert not [e for e in h.events(FuncletEventType.DEFUNCT)]


async def test_a_failed_reset_rebuilds_the_sandbox(make_pool) -> None:
    h = await make_pool(1)
    await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3")))
    old = h.runner("pod-c0")
    old.fail_reset = True
    info = await h.pool.cooldown("pod-c0")
    assert info.State == "cold" and h.runner("pod-c0") is not old and old.pid in h.zygote.killed
    assert len(h.cgroups.live()) == 1


async def test_reborn_rebuilds_with_new_kernel_objects(make_pool) -> None:
    h = await make_pool(1)
    before = h.pool.get("pod-c0").pid
    info = await h.pool.reborn("pod-c0")
    assert info.State == "cold" and info.HostPid != before and before in h.zygote.killed
    assert [cg.removed for cg in h.cgroups.created] == [True, False]
    assert len(h.network.attached) == 1


async def test_the_egress_policy_lives_from_warmup_to_reset(make_pool) -> None:
    h = await make_pool(1)
    python = h.runtime("python3")
    await h.pool.warmup(warmup_request("pod-c0", python))
    assert h.network.egress == {}  # "none", the default, writes nothing
    await h.pool.cooldown("pod-c0")
    req = warmup_request("pod-c0", python)
    req.Configuration.Network = {"Egress": ["10.1.2.3:1883", "[2001:db8::1]:53"]}
    await h.pool.warmup(req)
    assert [str(rule) for rule in h.network.egress["efv0"].rules] == ["10.1.2.3:1883", "[2001:db8::1]:53"]
    await h.pool.cooldown("pod-c0")
    assert h.network.egress == {}  # the reset took it away
    req.Configuration.Network = {"Egress": "all"}
    await h.pool.warmup(req)
    assert h.network.egress["efv0"].allow_all
    await h.pool.reborn("pod-c0")
    assert h.network.egress == {}  # a destroyed sandbox's rules go with its port
    bad = warmup_request("pod-c0", python)
    bad.Configuration.Network = {"Egress": ["10.1.2.3"]}
    with pytest.raises(InvalidParameterValue, match=r"Configuration\.Network\.Egress\[0\]"):
        await h.pool.warmup(bad)
    assert h.state("pod-c0") is SandboxState.COLD and h.network.egress == {}


# ---- what the runner reports ------------------------------------------------------------------------

async def test_runtime_exit_stops_a_warm_sandbox_with_its_oom_flag(make_pool) -> None:
    h = await make_pool(1)
    await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3")))
    h.cgroups.created[0].oom = 1  # the kernel OOM-killed the runtime
    await h.runner("pod-c0").runtime_exits(code=None, signal=9, output="Killed")
    await until(lambda: h.state("pod-c0") is SandboxState.STOPPED, "the sandbox to stop")
    (exited,) = h.events(FuncletEventType.EXITED)
    assert exited.Exit is not None
    assert (exited.Exit.Signal, exited.Exit.OOMKilled, exited.Exit.MemoryLimit) == (9, True, 256 * MiB)
    assert exited.Exit.Epoch == h.pool.get("pod-c0").epoch and exited.Exit.Output == "Killed"
    assert h.pool.get("pod-c0").runtime_pid == 0
    assert (await h.pool.cooldown("pod-c0")).State == "cold"


async def test_a_runner_gone_while_idle_is_defunct_and_rebuilt(make_pool) -> None:
    h = await make_pool(2)
    old = h.runner("pod-c1")
    old.dies()
    await until(lambda: h.runner("pod-c1") is not old and h.state("pod-c1") is SandboxState.COLD,
                "the sandbox to be rebuilt")
    (defunct,) = h.events(FuncletEventType.DEFUNCT)
    assert defunct.ContainerID == "pod-c1" and defunct.Reason == "runner gone"
    assert h.state("pod-c0") is SandboxState.COLD and len(h.zygote.spawned) == 3


async def test_a_silent_runner_is_defunct_after_max_runner_defunct(make_pool) -> None:
    h = await make_pool(2, ping_interval=0.02, max_runner_defunct=0.05)
    old = h.runner("pod-c0")
    old.silent = True
    await until(lambda: bool(h.events(FuncletEventType.DEFUNCT)), "a defunct event")
    (defunct,) = h.events(FuncletEventType.DEFUNCT)
    assert defunct.ContainerID == "pod-c0" and defunct.Reason.startswith("runner silent for")
    await until(lambda: h.state("pod-c0") is SandboxState.COLD and h.runner("pod-c0") is not old, "the rebuild")
    assert old.ops.count("ping") >= 1 and "ping" in h.runner("pod-c1").ops
    assert h.runner("pod-c1").pid not in h.zygote.killed  # the answering one is left alone


async def test_an_oom_kill_that_spares_the_runtime_is_reported(make_pool) -> None:
    h = await make_pool(1, ping_interval=0.02)
    await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3")))
    h.cgroups.created[0].oom = 2
    await until(lambda: bool(h.events(FuncletEventType.OOM)), "an oom event")
    (oom,) = h.events(FuncletEventType.OOM)
    assert oom.Reason == "2 OOM kills" and oom.Container.OOMKills == 2
    assert h.state("pod-c0") is SandboxState.WARM


# ---- growing and shrinking --------------------------------------------------------------------------

async def test_grow_builds_up_to_the_bound(make_pool) -> None:
    h = await make_pool(1, max_sandboxes=3)
    resp = await h.pool.grow(5)
    assert [c.ContainerID for c in resp.Containers] == ["pod-c1", "pod-c2"]
    assert {c.State for c in resp.Containers} == {"cold"} and "bound" in resp.Refused
    assert [e.ContainerID for e in h.events(FuncletEventType.CREATED)] == ["pod-c1", "pod-c2"]
    assert h.pool.node().Sandboxes == 3
    assert "bound" in (await h.pool.grow(1)).Refused


async def test_a_sandbox_that_cannot_be_grown_is_forgotten(make_pool) -> None:
    h = await make_pool(1, max_sandboxes=2)
    h.zygote.fail_spawns = 1
    resp = await h.pool.grow(1)
    assert resp.Containers == [] and "cannot fork" in resp.Refused["pod-c1"]
    assert [i.ContainerID for i in h.pool.list()] == ["pod-c0"]
    (removed,) = h.events(FuncletEventType.REMOVED)
    assert removed.ContainerID == "pod-c1" and removed.Reason == "build failed"
    assert len(h.cgroups.live()) == 1


async def test_shrink_removes_cold_sandboxes_above_the_idle_size(make_pool) -> None:
    h = await make_pool(2, max_sandboxes=4)
    await h.pool.grow(2)
    await h.pool.warmup(warmup_request("pod-c2", h.runtime("python3")))
    resp = await h.pool.shrink(["pod-c2", "pod-c3", "pod-c9", "pod-c0", "pod-c1"])
    assert resp.Removed == ["pod-c3", "pod-c9", "pod-c0"]
    assert "warm, not cold" in resp.Refused["pod-c2"] and "idle size of 2" in resp.Refused["pod-c1"]
    assert [i.ContainerID for i in h.pool.list()] == ["pod-c1", "pod-c2"]
    assert sorted(e.ContainerID for e in h.events(FuncletEventType.REMOVED)) == ["pod-c0", "pod-c3"]
    assert len(h.cgroups.live()) == 2 and len(h.network.attached) == 2
    assert not (h.pool.settings.slots_dir / "pod-c3").exists()
    # The freed index is reused by the next growth.
    assert [c.ContainerID for c in (await h.pool.grow(1)).Containers] == ["pod-c0"]


# ---- standby runtimes -------------------------------------------------------------------------------

async def test_standby_runtimes_fill_idle_sandboxes_and_serve_a_warmup(make_pool) -> None:
    h = await make_pool(4, standby_runtimes=("nodejs",), standby_sandboxes=1)
    await until(lambda: any(i.Standby for i in h.pool.list()), "a standby runtime")
    (standing,) = [i for i in h.pool.list() if i.Standby]
    cid = standing.ContainerID
    assert standing.Standby == "nodejs" and h.runner(cid).ops == ["prestart"]
    standby_pid = h.runner(cid).standby_pid
    assert h.pool.get(cid).runtime_pid == standby_pid
    slot = h.pool.settings.slots_dir / cid
    assert h.mounts.table[str(slot / "runtime")] == str(h.root / "runtime" / "nodejs")
    assert any(e.Reason == "standby nodejs" for e in h.events(FuncletEventType.STATE))

    resp = await h.pool.warmup(warmup_request(cid, h.runtime("nodejs")))
    assert resp.Container.Standby == "" and resp.Container.State == "warm"
    assert h.pool.get(cid).runtime_pid == standby_pid  # the same process took the function
    # Another idle sandbox takes over the standby.
    await until(lambda: any(i.Standby == "nodejs" and i.ContainerID != cid for i in h.pool.list()),
                "the standby to be refilled")


async def test_standby_runtimes_take_at_most_half_the_pool(make_pool) -> None:
    h = await make_pool(3, standby_runtimes=("nodejs",), standby_sandboxes=3)
    await until(lambda: any(i.Standby for i in h.pool.list()), "a standby runtime")
    await asyncio.sleep(0.05)  # let the filler finish (it must stop at half of 3 sandboxes)
    assert sum(1 for i in h.pool.list() if i.Standby) == 1
    assert sum(r.ops.count("prestart") for r in h.zygote.runners.values()) == 1


def standing_by(h: Harness) -> list[str]:
    return [i.ContainerID for i in h.pool.list() if i.Standby]


def prestarts(h: Harness) -> int:
    return sum(r.ops.count("prestart") for r in h.zygote.runners.values())


async def test_a_dead_standby_is_replaced_and_a_broken_runtime_given_up(make_pool) -> None:
    h = await make_pool(2, standby_runtimes=("nodejs",), standby_sandboxes=1)
    await until(lambda: bool(standing_by(h)), "a standby runtime")
    (cid,) = standing_by(h)
    await h.runner(cid).standby_exits()
    await until(lambda: prestarts(h) == 2 and bool(standing_by(h)), "a new standby runtime")
    assert any(e.Reason == "standby exited" and e.ContainerID == cid for e in h.events(FuncletEventType.STATE))

    # A runtime that cannot stand by is given up on after MAX_STANDBY_FAILURES failures with no
    # function served in between: the two exits, then the refused restarts.
    for runner in h.zygote.runners.values():
        runner.refuse_prestart = "node: cannot execute"
    (cid,) = standing_by(h)
    await h.runner(cid).standby_exits()
    await until(lambda: prestarts(h) >= 2 + MAX_STANDBY_FAILURES - 2, "the retries")
    await asyncio.sleep(0.05)
    assert prestarts(h) == 2 + MAX_STANDBY_FAILURES - 2
    assert not standing_by(h) and {h.state(i) for i in ("pod-c0", "pod-c1")} == {SandboxState.COLD}


async def test_a_warmup_of_another_runtime_drops_the_standby(make_pool) -> None:
    h = await make_pool(2, standby_runtimes=("nodejs",), standby_sandboxes=1)
    await until(lambda: bool(standing_by(h)), "a standby runtime")
    (cid,) = standing_by(h)
    standby_pid = h.runner(cid).standby_pid
    resp = await h.pool.warmup(warmup_request(cid, h.runtime("python3")))
    assert resp.Container.Standby == "" and h.pool.get(cid).runtime_pid not in (0, standby_pid)
    assert h.mounts.table[str(h.pool.settings.slots_dir / cid / "runtime")] == str(h.root / "runtime" / "python3")


# ---- code images ------------------------------------------------------------------------------------

async def test_prepare_code_builds_once_and_trims_idle_images(make_pool) -> None:
    h = await make_pool(1)
    h.images.max_images = 1
    await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3"), code=b"in use"))
    sha = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    first = await h.pool.prepare_code(CodePrepareRequest(Code=CodeLocation(Location="x"), CodeSha256=sha))
    assert first.Built is True and first.ImageSize == 4096
    # Beyond max_images the idle image goes, the one bound into a sandbox stays.
    assert [i.code_hash for i in h.images.images()] == [hex_of(b"in use")]
    with pytest.raises(InvalidParameterValue):
        await h.pool.prepare_code(CodePrepareRequest(CodeSha256="short"))
    h.images.max_images = 4
    again = await h.pool.prepare_code(CodePrepareRequest(Code=CodeLocation(Location="x"), CodeSha256=sha))
    second = await h.pool.prepare_code(CodePrepareRequest(Code=CodeLocation(Location="x"), CodeSha256=sha))
    assert again.Built is True and second.Built is False and h.images.builds == 3


async def test_events_are_numbered_and_waited_for(make_pool) -> None:
    h = await make_pool(1)
    seq = h.pool.events.seq
    waiter = asyncio.ensure_future(h.pool.events.wait(seq, 5))
    await asyncio.sleep(0)
    await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3")))
    batch = await waiter
    assert batch.BootID == h.pool.events.boot_id and batch.Events[0].Seq == seq + 1
    assert batch.Events[0].Type == "state" and batch.Events[0].Container.State == "warmup"
    assert [e.Seq for e in h.pool.events.since(0).Events] == list(range(1, h.pool.events.seq + 1))


# ---- the runtime environment --------------------------------------------------------------------

def test_the_runtime_environment_is_built_in_one_place() -> None:
    runtime = RuntimeConfiguration(Name="exec", Launch="fork-python",
                                   Env={"EASYFAAS_RUNTIME_MODE": "exec", "FROM_RUNTIME": "1", "PATH": "/opt/bin"})
    cfg = warmup_request("pod-c0", runtime, variables={"FROM_RUNTIME": "function", "NODE_EXTRA_CA_CERTS": "/x",
                                                       "_HANDLER": "mine"}).Configuration
    sent = runtime_env(cfg, runtime)  # the funclet's half, in the start command
    env = process_environment(sent, runtime.to_dict())  # the runner's half
    assert env["FROM_RUNTIME"] == "function" and env["_HANDLER"] == "index.handler"
    assert env["EASYFAAS_RUNTIME_MODE"] == "exec" and env["EASYFAAS_RUNTIME"] == "exec"
    assert (env["EASYFAAS_FUNCTION_NAME"], env["EASYFAAS_FUNCTION_VERSION"], env["EASYFAAS_TIMEOUT"]) == ("hello", "1", "5")
    assert env["EASYFAAS_FUNCTION_BRN"] == env["AWS_LAMBDA_FUNCTION_NAME"].join(("brn:cloud:faas:bj:acct:function:", ":1"))
    assert (env["PATH"], env["HOME"], env["LANG"]) == ("/opt/bin", "/tmp", "C.UTF-8")
    assert (env["LAMBDA_TASK_ROOT"], env["LAMBDA_RUNTIME_DIR"]) == ("/var/task", "/var/runtime")
    assert "NODE_EXTRA_CA_CERTS" not in env


def test_a_standby_runtime_fits_only_starts_it_can_serve() -> None:
    node = {"Name": "nodejs", "Bin": "/usr/bin/node", "Args": ["/var/runtime/bootstrap.js"], "Launch": "exec"}
    standby = StandbyRuntime(1, assign_fd=-1, status_fd=-1, output_fd=-1, key=standby_key(node), requested=True)
    assert standby.fits(node, {"MINE": "yes"})
    assert not standby.fits(node, {"NODE_OPTIONS": "--max-old-space-size=64"})  # read at process start
    assert not standby.fits({**node, "Args": ["other.js"]}, {})
    python = StandbyRuntime(2, assign_fd=-1, status_fd=-1, output_fd=-1, key=standby_key({"Launch": "fork-python"}),
                            requested=False)
    # A forked Python bootstrap serves any fork-python runtime, whatever its variables.
    assert python.fits({"Name": "python3", "Launch": "fork-python", "Bin": "/usr/bin/python3"}, {"LD_PRELOAD": "x"})
    assert not python.fits(node, {})
