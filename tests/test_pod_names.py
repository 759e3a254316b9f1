"""What the end-to-end tests and the benchmarks share to start pods of their own: names that cannot
collide (easyfaas/pod_names.py), the code zips and BRNs they deploy (easyfaas/function_code.py) and
the audit of what a pod left behind (easyfaas/pod_leaks.py), the last against real mounts and
cgroups."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest

from easyfaas.brn import Brn
from easyfaas.function_code import ACCOUNT, b64zip, brn, make_zip
from easyfaas.pod_leaks import kernel_leaks, kernel_snapshot, new_objects
from easyfaas.pod_names import PodNames, free_port
from stubs.app import DEFAULT_ACCOUNT_ID

MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")


def test_pod_names_are_distinct_and_fit_the_kernel() -> None:
    names = {PodNames.new() for _ in range(20)}
    assert len({n.tag for n in names}) == 20
    for n in names:
        # Interface names are at most 15 bytes; a veth adds the sandbox index to the prefix.
        assert len(n.bridge) <= 15 and len(n.veth_prefix) + 4 <= 15
        assert n.pod_name != n.bridge and not n.bridge.startswith(n.veth_prefix)
        address, prefix = n.bridge_ip.split("/")
        assert prefix == "24" and address.startswith("10.214.") and address.endswith(".1")


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname()[1] == port


def test_code_zips_and_brns() -> None:
    data = make_zip({"index.py": "x = 1\n", "run": b"#!/bin/sh\n"}, executable=("run",))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        modes = {info.filename: (info.external_attr >> 16) & 0o777 for info in zf.infolist()}
        assert zf.read("index.py") == b"x = 1\n"
    assert modes == {"index.py": 0o644, "run": 0o755}
    assert base64.b64decode(b64zip({"index.py": "x = 1\n"})) == make_zip({"index.py": "x = 1\n"})
    assert brn("f", "1") == str(Brn.for_account(ACCOUNT, "f", "1"))
    assert ACCOUNT == DEFAULT_ACCOUNT_ID


def test_new_objects_reports_only_what_is_new() -> None:
    before = {"mounts": {"/a"}, "cgroups": {"x"}}
    after = {"mounts": {"/a", "/b"}, "cgroups": {"x"}}
    assert new_objects(before, after) == {"mounts": ["/b"]}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts and cgroups need root")
def test_kernel_leaks_finds_a_mount_and_a_cgroup_of_the_pod(tmp_path: Path) -> None:
    names = PodNames.new()
    state = tmp_path / "state"
    (state / "m").mkdir(parents=True)
    assert kernel_leaks(state, names) == []
    before = kernel_snapshot()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "efpool-test", str(state / "m")], check=True)
    group = MEMORY_CGROUP / f"easyfaas-{names.pod_name}"
    try:
        if MEMORY_CGROUP.is_dir():
            group.mkdir()
        leaks = kernel_leaks(state, names)
        assert f"mount {state / 'm'}" in leaks
        assert str(state / "m") in new_objects(before, kernel_snapshot()).get("mounts", [])
        if MEMORY_CGROUP.is_dir():
            assert f"cgroup {group}" in leaks
    finally:
        subprocess.run(["umount", str(state / "m")], check=True)
        if group.is_dir():
            group.rmdir()
    assert kernel_leaks(state, names) == []
