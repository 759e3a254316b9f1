"""`runner prepare` and host_binds(): the runtimes and the root skeleton written for this host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from runner.prepare import PrepareError, describe_python, host_binds, prepare
from tests.runtime_harness import RuntimeProcess, runtime_env

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
NODE = shutil.which("node")


@pytest.fixture
def target() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ef-prep-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_writes_runtimes_and_rootfs(target: Path) -> None:
    summary = prepare(str(target / "runtime"), str(target / "rootfs"), python=PYTHON)
    real_python = os.path.realpath(PYTHON)
    assert summary["python"] == real_python
    py = yaml.safe_load((target / "runtime" / "python3" / "runtime.yaml").read_text())
    assert py == {"Name": "python3", "Bin": real_python, "Path": str(target / "runtime" / "python3"),
                  "Args": ["-I", "-S", "/var/runtime/bootstrap.py"], "Launch": "fork-python",
                  "Env": {"EASYFAAS_RUNTIME_MODE": "python",
                          "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info[0]}.{sys.version_info[1]}"},
                  "Aliases": ["python", f"python{sys.version_info[0]}.{sys.version_info[1]}"]}
    with open(py["Bin"], "rb") as f:
        assert f.read(4) == b"\x7fELF"  # a real interpreter, not a venv link or a shim script
    exec_ = yaml.safe_load((target / "runtime" / "exec" / "runtime.yaml").read_text())
    assert exec_["Launch"] == "fork-python" and exec_["Env"] == {"EASYFAAS_RUNTIME_MODE": "exec"}
    assert exec_["Aliases"] == ["custom"]
    provided = yaml.safe_load((target / "runtime" / "provided" / "runtime.yaml").read_text())
    assert provided["Env"] == {"EASYFAAS_RUNTIME_MODE": "provided"}
    assert provided["Aliases"] == ["provided.al2", "provided.al2023"]
    for name in ("python3", "exec", "provided"):
        assert (target / "runtime" / name / "bootstrap.py").read_bytes() == \
            (REPO / "runner" / "runtimes" / "python" / "bootstrap.py").read_bytes()
        assert (target / "runtime" / name / "easyfaas" / "frames.py").read_bytes() == \
            (REPO / "easyfaas" / "frames.py").read_bytes()
    if NODE:
        node = yaml.safe_load((target / "runtime" / "nodejs" / "runtime.yaml").read_text())
        assert node["Bin"] == os.path.realpath(NODE) and node["Launch"] == "exec"
        assert node["Args"] == ["/var/runtime/bootstrap.js"]
        assert {"nodejs10", "nodejs20", "node"} <= set(node["Aliases"])
        assert (target / "runtime" / "nodejs" / "bootstrap.js").exists()

    etc = target / "rootfs" / "etc"
    assert sorted(os.listdir(etc)) == ["group", "hosts", "nsswitch.conf", "passwd", "resolv.conf"]
    passwd = (etc / "passwd").read_text().splitlines()
    sandbox = [line for line in passwd if line.startswith("sandbox:")]
    assert len(sandbox) == 64
    assert sandbox[0] == "sandbox:x:20000:20000:easyfaas sandbox:/tmp:/usr/sbin/nologin"
    assert sandbox[-1].startswith("sandbox:x:20063:20063:")
    assert "sandbox:x:20005:" in (etc / "group").read_text()
    assert "localhost" in (etc / "hosts").read_text()
    assert (etc / "resolv.conf").read_text() == ""
    assert oct(etc.stat().st_mode & 0o777) == "0o755"
    assert oct((etc / "passwd").stat().st_mode & 0o777) == "0o644"


def test_prepare_is_idempotent_and_leaves_no_temp_files(target: Path) -> None:
    prepare(str(target / "runtime"), str(target / "rootfs"), python=PYTHON, uid_base=30000, uid_count=4)
    first = snapshot(target)
    prepare(str(target / "runtime"), str(target / "rootfs"), python=PYTHON, uid_base=30000, uid_count=4)
    assert snapshot(target) == first
    assert not [p for p in target.rglob(".*") if p.is_file()]
    passwd = (target / "rootfs" / "etc" / "passwd").read_text().splitlines()
    assert len([line for line in passwd if line.startswith("sandbox:")]) == 4


def test_cli(target: Path) -> None:
    result = subprocess.run([PYTHON, "-m", "runner", "prepare", "--runtime-dir", str(target / "rt"),
                             "--rootfs-dir", str(target / "fs"), "--uid-base", "21000", "--uid-count", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (target / "rt" / "python3" / "runtime.yaml").exists()
    assert "sandbox:x:21001:" in (target / "fs" / "etc" / "passwd").read_text()
    bad = subprocess.run([PYTHON, "-m", "runner", "prepare", "--runtime-dir", str(target / "rt"),
                          "--rootfs-dir", str(target / "fs"), "--node", "/no/such/node"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "node binary '/no/such/node'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_bad_arguments_are_clear_errors(target: Path) -> None:
    with pytest.raises(PrepareError, match="uid"):
        prepare(str(target / "rt"), str(target / "fs"), uid_count=0)
    with pytest.raises(PrepareError, match="cannot query"):
        describe_python(str(target / "no-python"))


def test_pyenv_shim_resolves_to_the_real_interpreter() -> None:
    shim = Path.home() / ".pyenv" / "shims" / "python3"
    if not shim.exists():
        pytest.skip("no pyenv shim on this host")
    info = describe_python(str(shim))
    with open(info.binary, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert "shims" not in info.binary


def test_host_binds_on_this_host(target: Path) -> None:
    binds, symlinks = host_binds(rootfs_dir=str(target))
    dsts = {b["dst"]: b["src"] for b in binds}
    assert dsts["/usr"] == "/usr"
    assert dsts["/etc"] == str(target / "etc")
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            assert symlinks[top] == os.readlink(top) and top not in dsts
        elif os.path.isdir(top):
            assert dsts[top] == top and top not in symlinks
    prefix = os.path.realpath(sys.base_prefix)
    if prefix.startswith("/usr/"):
        assert prefix not in dsts
    else:
        assert dsts[prefix] == prefix
    for bind in binds:
        assert bind["dst"].startswith("/") and (os.path.exists(bind["src"]) or bind["dst"] == "/etc")


def test_prepared_bootstrap_runs_as_a_script_without_the_repository(target: Path) -> None:
    """The exec fallback of a fork-python runtime: `python -I -S /var/runtime/bootstrap.py`."""
    prepare(str(target / "runtime"), str(target / "rootfs"), python=PYTHON)
    task = target / "task"
    task.mkdir()
    (task / "index.py").write_text("import sys\ndef handler(e, c):\n    return [p for p in sys.path if 'work' in p]\n")
    script = target / "runtime" / "python3" / "bootstrap.py"
    rt = RuntimeProcess([os.path.realpath(PYTHON), "-I", "-S", str(script)], runtime_env(task, "index.handler"))
    try:
        assert rt.read_status() == {"ok": True}, rt.output()
        response = rt.invoke()
        assert response["ok"] is True and response["result"] == "[]"
    finally:
        rt.close()
