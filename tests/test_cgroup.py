"""Sandbox cgroups: real v1 hierarchies of this host, the real (controller-less) cgroup2 mount,
and a plain-file cgroup2 tree for the v2 limit logic this host cannot exercise for real."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from funclet.sandbox.cgroup import (
    CgroupControllerMissing,
    CgroupV1Driver,
    CgroupV2Driver,
    V2SandboxCgroup,
    detect_driver,
)

V1_ROOT = Path("/sys/fs/cgroup")
V2_REAL = Path("/sys/fs/cgroup/unified")

needs_v1 = pytest.mark.skipif(not (V1_ROOT / "memory" / "cgroup.procs").exists(),
                              reason="no cgroup v1 memory hierarchy")
needs_v2_mount = pytest.mark.skipif(not (V2_REAL / "cgroup.controllers").exists(),
                                    reason="no cgroup2 mount at /sys/fs/cgroup/unified")


def _join_and_run(procs_files: list[str], body: str) -> subprocess.Popen:
    """A python child that joins the cgroup itself (writes "0"), reports, then runs ``body``."""
    code = (
        "import sys,os\n"
        f"for f in {procs_files!r}:\n"
        "    open(f,'w').write('0')\n"
        "sys.stdout.write('joined\\n'); sys.stdout.flush()\n"
        + body
    )
    # Unbuffered: a buffered readline could swallow output that communicate() then never sees.
    proc = subprocess.Popen([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdout.readline() == b"joined\n"
    return proc


@pytest.fixture
def pod_prefix():
    return f"easyfaas-test{secrets.token_hex(4)}"


@pytest.fixture
def v1(pod_prefix):
    driver = detect_driver(V1_ROOT)
    assert isinstance(driver, CgroupV1Driver)
    try:
        yield driver
    finally:
        driver.cleanup(pod_prefix)
        for parent in driver.parents.values():
            assert not (parent / pod_prefix).exists()


@needs_v1
def test_v1_detect_nests_under_own_cgroup(v1):
    assert v1.version == 1
    assert v1.missing_controllers() == []
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            own[c] = path
    assert v1.parents["memory"] == V1_ROOT / "memory" / own["memory"].lstrip("/")
    mem, cpu = v1.capacity()
    assert mem is None or mem > 0
    assert cpu is None or cpu > 0


@needs_v1
def test_v1_lifecycle_with_real_process(v1, pod_prefix):
    group = v1.create(f"{pod_prefix}/slot0")
    assert len(group.procs_files) >= 3 and all(os.path.exists(f) for f in group.procs_files)
    group.set_memory_limit(64 * 1024 * 1024)
    group.set_cpu_limit(500)
    group.set_pids_limit(32)
    assert int((group.dirs["memory"] / "memory.limit_in_bytes").read_text()) == 64 * 1024 * 1024
    assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (group.dirs["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
    burst = group.dirs["cpu"] / "cpu.cfs_burst_us"
    if burst.exists():  # kernel >= 5.14: one period's quota may be banked while idle
        assert burst.read_text().strip() == "50000"
        group.set_cpu_limit(100)  # a lower quota than the burst already set is accepted
        assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "10000"
        assert burst.read_text().strip() == "10000"
        group.set_cpu_limit(500)
    assert (group.dirs["pids"] / "pids.max").read_text().strip() == "32"

    proc = _join_and_run(group.procs_files, "x = b\"\\x01\" * (8 << 20)\nimport time\ntime.sleep(60)\n")
    try:
        assert group.pids() == [proc.pid]
        time.sleep(0.05)
        assert group.memory_usage() > 4 << 20
        assert group.memory_peak() >= group.memory_usage()
        assert group.cpu_usage_ns() > 0
        assert group.oom_kills() == 0
        group.kill()
        assert proc.wait(timeout=2) == -signal.SIGKILL
        assert group.pids() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    group.remove()
    group.remove()  # idempotent
    assert not any(os.path.exists(os.path.dirname(f)) for f in group.procs_files)


@needs_v1
def test_v1_pids_limit_enforced(v1, pod_prefix):
    group = v1.create(f"{pod_prefix}/slot1")
    group.set_pids_limit(1)
    body = "try:\n    os.fork()\n    print('forked')\nexcept OSError as e:\n    print('refused', e.errno)\n"
    proc = _join_and_run(group.procs_files, body)
    out, _ = proc.communicate(timeout=5)
    assert out.startswith(b"refused 11"), (out, proc.returncode)  # EAGAIN
    group.remove()


@needs_v1
def test_v1_oom_kills_only_the_child(v1, pod_prefix):
    group = v1.create(f"{pod_prefix}/oom")
    group.set_memory_limit(32 * 1024 * 1024)
    body = "chunks = []\nfor _ in range(64):\n    chunks.append(b'\\x01' * (4 << 20))\nprint('survived')\n"
    proc = _join_and_run(group.procs_files, body)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert b"survived" not in out
    assert group.oom_kills() >= 1
    assert group.memory_peak() <= 32 * 1024 * 1024
    os.kill(os.getpid(), 0)  # we are alive
    group.remove()


@needs_v1
def test_v1_cleanup_removes_crash_leftovers(v1, pod_prefix):
    groups = [v1.create(f"{pod_prefix}/slot{i}") for i in range(3)]
    proc = _join_and_run(groups[0].procs_files, "import time\ntime.sleep(60)\n")
    try:
        removed = v1.cleanup(pod_prefix)
        assert removed == 4  # three slots + the pod group
        assert proc.wait(timeout=2) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert v1.cleanup(pod_prefix) == 0


def test_v1_capacity_from_fake_tree(tmp_path):
    for ctrl in ("memory", "cpu", "pids"):
        (tmp_path / ctrl / "outer" / "pod").mkdir(parents=True)
        (tmp_path / ctrl / "cgroup.procs").write_text("")
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")
    (tmp_path / "memory" / "outer" / "memory.limit_in_bytes").write_text(str(2 << 30))
    (tmp_path / "memory" / "outer" / "pod" / "memory.limit_in_bytes").write_text("9223372036854771712")
    (tmp_path / "cpu" / "outer" / "cpu.cfs_quota_us").write_text("150000")
    (tmp_path / "cpu" / "outer" / "cpu.cfs_period_us").write_text("100000")
    (tmp_path / "cpu" / "outer" / "pod" / "cpu.cfs_quota_us").write_text("-1")
    (tmp_path / "cpu" / "outer" / "pod" / "cpu.cfs_period_us").write_text("100000")
    self_cg = tmp_path / "self_cgroup"
    self_cg.write_text("4:memory:/outer/pod\n2:pids:/\n1:cpu:/outer/pod\n0::/\n")
    driver = detect_driver(tmp_path, self_cgroup=str(self_cg))
    assert isinstance(driver, CgroupV1Driver)
    assert driver.parents["pids"] == tmp_path / "pids"
    assert driver.capacity() == (2 << 30, 1500)


# --------------------------------------------------------------------------------------- v2 fake


def _fake_v2(tmp_path: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> Path:
    root = tmp_path / "cg2"
    (root / "outer").mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "outer" / "cgroup.controllers").write_text(controllers + "\n")
    (root / "outer" / "cgroup.subtree_control").write_text("")
    (root / "outer" / "memory.max").write_text(f"{1 << 30}\n")
    (root / "outer" / "cpu.max").write_text("200000 100000\n")
    return root


def test_v2_fake_tree_enables_controllers_and_writes_limits(tmp_path):
    root = _fake_v2(tmp_path)
    driver = detect_driver(root, parent="/outer")
    assert isinstance(driver, CgroupV2Driver) and driver.version == 2
    assert driver.missing_controllers() == []
    assert driver.capacity() == (1 << 30, 2000)

    group = driver.create("easyfaas-pod/slot3")
    assert isinstance(group, V2SandboxCgroup)
    assert group.procs_files == [str(root / "outer/easyfaas-pod/slot3/cgroup.procs")]
    # parent and the created intermediate group both delegate the three controllers
    for d in (root / "outer", root / "outer/easyfaas-pod"):
        assert set((d / "cgroup.subtree_control").read_text().split()) == {"+cpu", "+memory", "+pids"}
    # the leaf holds processes, so it must not enable controllers for children
    assert not (root / "outer/easyfaas-pod/slot3/cgroup.subtree_control").exists()

    leaf = root / "outer/easyfaas-pod/slot3"
    (leaf / "memory.swap.max").write_text("max\n")
    (leaf / "cpu.max.burst").write_text("0\n")
    group.set_memory_limit(128 << 20)
    group.set_cpu_limit(250)
    group.set_pids_limit(256)
    assert (leaf / "memory.max").read_text() == str(128 << 20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "cpu.max").read_text() == "25000 100000"
    assert (leaf / "cpu.max.burst").read_text() == "25000"  # one period's quota may be banked while idle
    assert (leaf / "pids.max").read_text() == "256"
    group.set_cpu_limit(0)
    assert (leaf / "cpu.max").read_text() == "max 100000"
    assert (leaf / "cpu.max.burst").read_text() == "0"

    (leaf / "memory.current").write_text("4096\n")
    (leaf / "memory.peak").write_text("8192\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n")
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (leaf / "cgroup.procs").write_text("")
    assert group.memory_usage() == 4096
    assert group.memory_peak() == 8192
    assert group.oom_kills() == 2
    assert group.cpu_usage_ns() == 1_500_000
    assert group.pids() == []


def test_v2_fake_tree_reports_missing_controllers(tmp_path):
    root = _fake_v2(tmp_path, controllers="hugetlb")
    driver = detect_driver(root, parent="/outer")
    assert driver.missing_controllers() == ["memory", "pids", "cpu"]
    group = driver.create("pod/slot")
    with pytest.raises(CgroupControllerMissing, match="memory"):
        group.set_memory_limit(1 << 20)
    with pytest.raises(CgroupControllerMissing, match="pids"):
        group.set_pids_limit(10)
    with pytest.raises(CgroupControllerMissing, match="cpu"):
        group.set_cpu_limit(100)


def test_v2_fake_tree_subtree_control_refused(tmp_path):
    root = _fake_v2(tmp_path)
    # Stand-in for EBUSY (the parent holds processes): writing subtree_control fails.
    (root / "outer" / "cgroup.subtree_control").unlink()
    (root / "outer" / "cgroup.subtree_control").mkdir()
    driver = detect_driver(root, parent="/outer")
    group = driver.create("pod/slot")
    assert group.controllers == set()
    with pytest.raises(CgroupControllerMissing):
        group.set_memory_limit(1 << 20)


def test_invalid_names_rejected(tmp_path):
    driver = detect_driver(_fake_v2(tmp_path), parent="/outer")
    for bad in ("../escape", "/abs", "a//b", "a/./b", "sp ace", ""):
        with pytest.raises(ValueError):
            driver.create(bad)


# --------------------------------------------------------------------------------------- v2 real


@pytest.fixture
def v2_real(pod_prefix):
    driver = detect_driver(V2_REAL, parent="/")
    try:
        yield driver
    finally:
        driver.cleanup(pod_prefix)
        assert not (V2_REAL / pod_prefix).exists()


@needs_v2_mount
def test_v2_real_mount_kill_and_remove(v2_real, pod_prefix):
    assert v2_real.version == 2
    group = v2_real.create(f"{pod_prefix}/slot0")
    assert (V2_REAL / pod_prefix / "slot0" / "cgroup.procs").exists()
    for ctrl in v2_real.missing_controllers():
        assert ctrl not in group.controllers
    if "memory" not in group.controllers:
        with pytest.raises(CgroupControllerMissing, match="memory"):
            group.set_memory_limit(64 << 20)
    proc = _join_and_run(group.procs_files, "import time\nwhile True: time.sleep(1)\n")
    try:
        assert group.pids() == [proc.pid]
        assert group.populated()
        assert group.cpu_usage_ns() >= 0
        group.kill()
        assert proc.wait(timeout=2) == -signal.SIGKILL
        assert not group.populated()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    group.remove()
    group.remove()
    assert not group.path.exists()


@needs_v2_mount
def test_v2_real_cleanup(v2_real, pod_prefix):
    v2_real.create(f"{pod_prefix}/a")
    g = v2_real.create(f"{pod_prefix}/b")
    proc = _join_and_run(g.procs_files, "import time\ntime.sleep(60)\n")
    try:
        assert v2_real.cleanup(pod_prefix) == 3
        assert proc.wait(timeout=2) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
