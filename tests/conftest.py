"""Shared fixtures: a real pod (funclet, stubs, controller) for end-to-end tests, started once per
session with names of its own, and a check after the suite that nothing it made was left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from easyfaas.pod import Pod, PodConfig
from tests.pod_harness import TestNames, free_port, kernel_leaks, kernel_snapshot, new_objects

E2E_SANDBOXES = 6

pytest_plugins = ["tests.fakes.openapi_check"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "e2e: starts a real pod")


@pytest.fixture(scope="session", autouse=True)
def no_leaked_kernel_objects() -> Iterator[None]:
    """After the whole suite: no mount, loop device, netns, network link, cgroup or sandbox process
    that was not there before it. (Set EASYFAAS_SKIP_LEAK_AUDIT=1 when another test run shares the
    machine, since its objects would show up here.)"""
    if os.geteuid() != 0 or os.environ.get("EASYFAAS_SKIP_LEAK_AUDIT"):
        yield
        return
    before = kernel_snapshot()
    yield
    import time

    deadline = time.monotonic() + 10  # veths of dead netns and lazy unmounts go asynchronously
    while (leaked := new_objects(before, kernel_snapshot())) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leaked, f"the test suite left kernel objects behind: {leaked}"


@pytest.fixture(scope="session")
def root_required() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: sandboxes are built from cgroups, namespaces and mounts")


@pytest.fixture(scope="session")
def pod(root_required: None) -> Iterator[Pod]:
    names = TestNames.new()
    base = Path(tempfile.mkdtemp(prefix=f"efaas-{names.tag}-"))
    config = PodConfig(state_dir=base / "state", run_dir=base / "run", controller_port=free_port(),
                       stubs_port=free_port(), container_num=E2E_SANDBOXES, pod_name=names.pod_name,
                       bridge_name=names.bridge, bridge_ip=names.bridge_ip, veth_prefix=names.veth_prefix,
                       log_dir=base / "logs",
                       controller_args=["--task-interval", "0.5", "--max-runtime-idle", "30"])
    pod = Pod(config)
    pod.names = names  # type: ignore[attr-defined]
    pod.start()
    try:
        yield pod
    finally:
        codes = pod.stop()
        leaks = kernel_leaks(config.state_dir, names)
        logs = {name: pod.log_tail(name, 15) for name in ("funclet", "controller", "stubs")}
        if not leaks:
            shutil.rmtree(base, ignore_errors=True)
        assert not leaks, f"the pod left kernel objects behind: {leaks}\nlogs: {logs}"
        assert all(code == 0 for code in codes.values()), f"daemons exited uncleanly: {codes}\nlogs: {logs}"
