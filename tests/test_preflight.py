"""The funclet refuses to start, with reasons, on a host that cannot run sandboxes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from funclet.preflight import check_host
from runner.prepare import prepare

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path]:
    runtime, rootfs = tmp_path / "runtime", tmp_path / "rootfs"
    prepare(runtime, rootfs)
    return runtime, rootfs


def test_this_host_passes_as_root(prepared: tuple[Path, Path]) -> None:
    if not Path("/proc/self/ns/pid").exists():
        pytest.skip("no namespaces")
    runtime, rootfs = prepared
    problems = check_host(runtime_path=str(runtime), rootfs_path=str(rootfs), cgroup_root="/sys/fs/cgroup",
                          need_network=True)
    import os

    assert problems == [] if os.geteuid() == 0 else any("root" in p for p in problems)


def test_missing_runtimes_rootfs_mkfs_and_cgroups_are_each_named(tmp_path: Path) -> None:
    fake_cgroup = tmp_path / "cgroup"
    fake_cgroup.mkdir()
    (fake_cgroup / "cgroup.controllers").write_text("cpu io\n")
    problems = check_host(runtime_path=str(tmp_path / "none"), rootfs_path=str(tmp_path / "nofs"),
                          cgroup_root=str(fake_cgroup), need_network=False, mkfs="mkfs.does-not-exist")
    text = "\n".join(problems)
    assert "runner prepare" in text and "root skeleton" in text
    assert "mkfs.does-not-exist is not installed" in text
    assert "lacks the memory controller" in text and "lacks the pids controller" in text
    assert "lacks the cpu controller" not in text


def test_funclet_started_without_root_refuses_with_the_reason(prepared: tuple[Path, Path]) -> None:
    runtime, rootfs = prepared
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "funclet",
                           "--preflight-only", "--runtime-path", str(runtime), "--rootfs-path", str(rootfs)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "funclet cannot start on this host" in proc.stderr
    assert "must run as root" in proc.stderr
    assert "Traceback" not in proc.stderr
