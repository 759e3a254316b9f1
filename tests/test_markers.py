"""The markers that split the suite: whatever starts a real pod or real sandboxes is ``e2e`` (so
``make test-fast``, ``-m "not e2e and not slow"``, never starts one), whether or not its module
says so itself."""

from __future__ import annotations

import pytest

import tests.pod_harness

# What starts real pods or sandboxes: the session pod (and modules' own pod fixtures of that name),
# the root check that comes with it, the zygote host of tests/sandbox_harness.py and the outside host
# of tests/egress_harness.py.
REAL_POD_FIXTURES = {"pod", "root_required", "host", "outside"}


def test_markers_are_registered(pytestconfig: pytest.Config) -> None:
    names = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert {"e2e", "slow"} <= names


def test_every_collected_test_that_starts_real_pods_is_e2e(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    assert request.node in items
    unmarked = [item.nodeid for item in items if not item.get_closest_marker("e2e") and (
        REAL_POD_FIXTURES & set(getattr(item, "fixturenames", ()))
        or getattr(getattr(item, "module", None), "live_pod", None) is tests.pod_harness.live_pod)]
    assert unmarked == []


def test_this_module_is_not_e2e(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("e2e") is None
