"""The funclet's sandbox pool in process on the fakes of tests/fakes/funclet.py: ``make_pool`` (a
fixture the test modules import) builds a :class:`Harness` of a real pool and its fake kernel parts
and runners; :func:`warmup_request` is a warmup of one sandbox for a runtime."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

import pytest

from easyfaas.models import (CodeLocation, Environment, FuncletEvent, FuncletEventType, FunctionConfiguration,
                             RuntimeConfiguration, SandboxState, WarmupRequest)
from funclet.pool import PoolSettings, SandboxPool
from tests.fakes.funclet import FakeCgroups, FakeImages, FakeMounts, FakeNetwork, FakeRunner, FakeZygote

MiB = 1 << 20
NODE_RUNTIME = """\
Name: nodejs
Bin: /usr/bin/node
Args: [/var/runtime/bootstrap.js]
Launch: exec
Standby: true
"""
PYTHON_RUNTIME = """\
Name: python3
Bin: /usr/bin/python3
Launch: fork-python
"""


@dataclass
class Harness:
    pool: SandboxPool
    zygote: FakeZygote
    cgroups: FakeCgroups
    images: FakeImages
    network: FakeNetwork
    mounts: FakeMounts
    root: Path

    def runner(self, container_id: str) -> FakeRunner:
        return self.zygote.runners[container_id]

    def state(self, container_id: str) -> SandboxState:
        return self.pool.get(container_id).state

    def events(self, kind: FuncletEventType | None = None) -> list[FuncletEvent]:
        return [e for e in self.pool.events.since(0).Events if kind is None or e.Type == kind.value]

    def runtime(self, name: str) -> RuntimeConfiguration:
        return RuntimeConfiguration(Name=name, Bin="/usr/bin/node" if name == "nodejs" else "/usr/bin/python3",
                                    Path=str(self.root / "runtime" / name),
                                    Launch="exec" if name == "nodejs" else "fork-python",
                                    Standby=name == "nodejs")


def warmup_request(container_id: str, runtime: RuntimeConfiguration, *, code: bytes = b"code",
                   memory: int = 256, variables: dict[str, str] | None = None) -> WarmupRequest:
    sha = base64.b64encode(hashlib.sha256(code).digest()).decode()
    cfg = FunctionConfiguration(CodeSha256=sha, FunctionArn="brn:cloud:faas:bj:acct:function:hello:1",
                                FunctionName="hello", Handler="index.handler", MemorySize=memory, Timeout=5,
                                Version="1", Runtime=runtime.Name,
                                Environment=Environment(Variables=variables or {}))
    return WarmupRequest(ContainerID=container_id, Code=CodeLocation(Location="unused"), Configuration=cfg,
                         RuntimeConfiguration=runtime, Identity="lease-1")


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., asyncio.Future[Harness]]]:
    made: list[Harness] = []
    roots: list[Path] = []

    async def make(container_num: int = 2, *, start: bool = True, **settings: object) -> Harness:
        root = Path(tempfile.mkdtemp(prefix="efpool-"))
        roots.append(root)
        for name, text in (("nodejs", NODE_RUNTIME), ("python3", PYTHON_RUNTIME)):
            (root / "runtime" / name).mkdir(parents=True)
            (root / "runtime" / name / "runtime.yaml").write_text(text)
        values: dict[str, object] = dict(
            pod_name="pod", container_num=container_num, state_dir=root / "state", run_dir=root / "run",
            runtime_path=root / "runtime", rootfs_path=root / "rootfs", runner_memory=128 * MiB,
            runner_millicpus=500, runner_pids=256, tmp_size=64 * MiB, uid_base=20000, warmup_timeout=5.0,
            runner_timeout=5.0, max_code_size=MiB, capacity_memory=8 << 30, capacity_millicpus=4000,
            reserved_memory=100 * MiB, reserved_millicpus=100, ping_interval=0.0)
        values.update(settings)
        h = Harness(pool=None, zygote=FakeZygote(), cgroups=FakeCgroups(),  # type: ignore[arg-type]
                    images=FakeImages(root / "images"), network=FakeNetwork(), mounts=FakeMounts(), root=root)
        h.pool = SandboxPool(PoolSettings(**values), cgroups=h.cgroups, images=h.images,  # type: ignore[arg-type]
                             network=h.network, zygote=h.zygote,
                             host_binds=([{"src": "/usr", "dst": "/usr"}], {"/bin": "usr/bin"}), mounts=h.mounts)
        made.append(h)
        if start:
            await h.pool.start()
        return h

    yield make  # type: ignore[misc]
    for h in made:
        await h.pool.close()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
