"""Shared fixtures: a real pod (funclet, stubs, controller) for end-to-end tests, started once per
session with names of its own, and a check after the suite that nothing it made was left behind.

Markers: ``e2e`` for every test that starts a real pod or real sandboxes, ``slow`` for long ones;
``make test-fast`` runs neither. A test is marked ``e2e`` by what it uses (:data:`E2E_FIXTURES`, or
a module that starts its own pods with :func:`tests.pod_harness.live_pod`), so a new test gets the
marker without asking for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import tests.pod_harness
from easyfaas.pod import Pod, PodConfig
from easyfaas.pod_leaks import kernel_leaks, kernel_snapshot, new_objects
from easyfaas.pod_names import PodNames, free_port
from tests.pod_harness import E2E_SANDBOXES

# Fixtures more than one test module uses.
pytest_plugins = ["tests.sandbox_harness", "tests.fakes.stubs_app", "tests.fakes.openapi_check"]

# The session pod (``pod``, a module may name its own pod fixture so too), the root check that
# comes with it, the zygote host that real sandboxes are spawned from, and the egress tests' outside
# host that network sandboxes reach (tests/egress_harness.py; its probes wait out what is dropped).
E2E_FIXTURES = frozenset({"pod", "root_required", "host", "outside"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "e2e: starts a real pod or real sandboxes")


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if starts_real_pods(item) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)


def starts_real_pods(item: pytest.Item) -> bool:
    """True when the test starts a real pod or real sandboxes."""
    if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    return getattr(module, "live_pod", None) is tests.pod_harness.live_pod


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
    names = PodNames.new()
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
