"""`runner prepare`: write the language runtimes and the sandbox root skeleton for this host.

Runtimes go to ``<runtime-dir>/<name>/runtime.yaml`` (+ bootstrap files), written as JSON (which
is YAML, and what the daemons read without a YAML parser); stubs serves them as runtime
configurations. The root skeleton (``<rootfs-dir>/etc``: passwd, group, hosts,
resolv.conf, nsswitch.conf) is bound read-only onto the sandbox's ``/etc``. Every write is atomic
(temporary file + rename), and running it again gives the same result.

``host_binds()`` tells the funclet which host directories the sandbox root needs on this host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

RUNNER_DIR = Path(__file__).resolve().parent
REPO_ROOT = RUNNER_DIR.parent
PYTHON_BOOTSTRAP = RUNNER_DIR / "runtimes" / "python" / "bootstrap.py"
NODE_BOOTSTRAP = RUNNER_DIR / "runtimes" / "nodejs" / "bootstrap.js"
FRAMES_MODULE = REPO_ROOT / "easyfaas" / "frames.py"
# The packages the Python bootstrap imports, copied next to it for its exec fallback.
PYTHON_RUNTIME_PACKAGES = ("runner/runtimes/python", "runner/runtimes/provided")
PROVIDED_ALIASES = ["provided.al2", "provided.al2023"]
NODE_ALIASES = ["nodejs10", "nodejs12", "nodejs14", "nodejs16", "nodejs18", "nodejs20", "node"]
SANDBOX_SHELL = "/usr/sbin/nologin"


@dataclass
class PythonInfo:
    binary: str  # the real interpreter (symlinks resolved, never a shim)
    prefix: str  # its installation prefix (sys.base_prefix, symlinks resolved)
    version: tuple[int, int]


class PrepareError(Exception):
    """The host lacks something a runtime needs (the message says what)."""


def describe_python(python: str | None = None) -> PythonInfo:
    """Ask the interpreter itself where it lives: follows venvs and pyenv shims to the real binary."""
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        return PythonInfo(os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix), sys.version_info[:2])
    code = ("import json, os, sys; print(json.dumps([os.path.realpath(sys.executable), "
            "os.path.realpath(sys.base_prefix), list(sys.version_info[:2])]))")
    try:
        out = subprocess.run([python, "-I", "-S", "-c", code], check=True, capture_output=True, text=True,
                             timeout=30).stdout
        binary, prefix, version = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise PrepareError(f"cannot query the Python interpreter {python!r}: {exc}") from None
    if version[0] != 3:
        raise PrepareError(f"{python} is Python {version[0]}.{version[1]}; the runtimes need Python 3")
    return PythonInfo(binary, prefix, (version[0], version[1]))


def find_node(node: str | None = None) -> str | None:
    candidate = node or shutil.which("node") or "/usr/bin/node"
    path = os.path.realpath(candidate)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    if node:
        raise PrepareError(f"node binary {node!r} is not an executable file")
    return None


def node_major_version(node: str) -> int | None:
    """The major version of a node binary (for Lambda's ``AWS_EXECUTION_ENV``), None if unknown."""
    try:
        out = subprocess.run([node, "--version"], check=True, capture_output=True, text=True, timeout=30).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def host_binds(python_prefix: str | None = None, node: str | None = None,
               rootfs_dir: str | None = None) -> tuple[list[dict[str, str]], dict[str, str]]:
    """(binds, symlinks) that make up the sandbox root on this host.

    ``/usr`` always; ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` as symlinks where the host has
    symlinks (usr-merged), else read-only binds; the Python prefix and node's prefix when they are
    not under /usr; ``<rootfs_dir>/etc`` on ``/etc`` when rootfs_dir is given.
    """
    binds: list[dict[str, str]] = [{"src": "/usr", "dst": "/usr"}]
    symlinks: dict[str, str] = {}
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin"):
        if os.path.islink(top):
            symlinks[top] = os.readlink(top)
        elif os.path.isdir(top):
            binds.append({"src": top, "dst": top})
    prefixes = [os.path.realpath(python_prefix or sys.base_prefix)]
    node_path = find_node(node)
    if node_path:
        prefixes.append(os.path.dirname(os.path.dirname(node_path)))
    covered = [b["dst"] for b in binds]
    for prefix in prefixes:
        if any(prefix == c or prefix.startswith(c.rstrip("/") + "/") for c in covered):
            continue
        binds.append({"src": prefix, "dst": prefix})
        covered.append(prefix)
    if rootfs_dir:
        binds.append({"src": str(Path(rootfs_dir) / "etc"), "dst": "/etc"})
    return binds, symlinks


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def runtime_configurations(runtime_dir: Path, python: PythonInfo, node: str | None) -> dict[str, dict[str, Any]]:
    """The runtime.yaml contents, by runtime directory name."""
    py_args = ["-I", "-S", "/var/runtime/bootstrap.py"]
    major, minor = python.version
    configs: dict[str, dict[str, Any]] = {
        "python3": {"Name": "python3", "Bin": python.binary, "Path": str(runtime_dir / "python3"),
                    "Args": py_args, "Launch": "fork-python",
                    "Env": {"EASYFAAS_RUNTIME_MODE": "python", "AWS_EXECUTION_ENV": f"AWS_Lambda_python{major}.{minor}"},
                    "Aliases": ["python", f"python{major}.{minor}"]},
        "exec": {"Name": "exec", "Bin": python.binary, "Path": str(runtime_dir / "exec"),
                 "Args": py_args, "Launch": "fork-python", "Env": {"EASYFAAS_RUNTIME_MODE": "exec"},
                 "Aliases": ["custom"]},
        # Lambda's custom runtime: the zip's `bootstrap` behind the Runtime API (no AWS_EXECUTION_ENV).
        "provided": {"Name": "provided", "Bin": python.binary, "Path": str(runtime_dir / "provided"),
                     "Args": py_args, "Launch": "fork-python", "Env": {"EASYFAAS_RUNTIME_MODE": "provided"},
                     "Aliases": list(PROVIDED_ALIASES)},
    }
    if node:
        node_major = node_major_version(node)
        node_env = {"AWS_EXECUTION_ENV": f"AWS_Lambda_nodejs{node_major}.x"} if node_major else {}
        configs["nodejs"] = {"Name": "nodejs", "Bin": node, "Path": str(runtime_dir / "nodejs"),
                             "Args": ["/var/runtime/bootstrap.js"], "Launch": "exec", "Env": node_env,
                             "Standby": True, "Aliases": list(NODE_ALIASES)}
    return configs


def write_runtimes(runtime_dir: Path, python: PythonInfo, node: str | None) -> list[str]:
    configs = runtime_configurations(runtime_dir, python, node)
    for name, config in configs.items():
        target = runtime_dir / name
        write_atomic(target / "runtime.yaml", json.dumps(config, indent=2).encode() + b"\n")
        if config["Launch"] == "fork-python":
            # The exec fallback (`python -I -S /var/runtime/bootstrap.py`) has no repository: the
            # modules it imports travel next to it, as the same `easyfaas` and `runner` packages.
            write_atomic(target / "bootstrap.py", PYTHON_BOOTSTRAP.read_bytes())
            write_atomic(target / "easyfaas" / "__init__.py", b"")
            write_atomic(target / "easyfaas" / "frames.py", FRAMES_MODULE.read_bytes())
            for package in ("runner", "runner/runtimes"):
                write_atomic(target / package / "__init__.py", b"")
            for package in PYTHON_RUNTIME_PACKAGES:
                for module in sorted((REPO_ROOT / package).glob("*.py")):
                    write_atomic(target / package / module.name, module.read_bytes())
        else:
            write_atomic(target / "bootstrap.js", NODE_BOOTSTRAP.read_bytes())
    return list(configs)


def rootfs_files(uid_base: int, uid_count: int) -> dict[str, str]:
    passwd = ["root:x:0:0:root:/root:/usr/sbin/nologin", "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"]
    group = ["root:x:0:", "nogroup:x:65534:"]
    for uid in range(uid_base, uid_base + uid_count):
        passwd.append(f"sandbox:x:{uid}:{uid}:easyfaas sandbox:/tmp:{SANDBOX_SHELL}")
        group.append(f"sandbox:x:{uid}:")
    return {
        "passwd": "\n".join(passwd) + "\n",
        "group": "\n".join(group) + "\n",
        "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "resolv.conf": "",
        "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
                         "protocols: files\nservices: files\n",
    }


def write_rootfs(rootfs_dir: Path, uid_base: int, uid_count: int) -> None:
    etc = rootfs_dir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    os.chmod(rootfs_dir, 0o755)
    os.chmod(etc, 0o755)
    for name, content in rootfs_files(uid_base, uid_count).items():
        write_atomic(etc / name, content)


def prepare(runtime_dir: str, rootfs_dir: str, python: str | None = None, node: str | None = None,
            uid_base: int = 20000, uid_count: int = 64) -> dict[str, Any]:
    """Write runtimes and the rootfs skeleton; returns a summary."""
    if uid_base <= 0 or uid_count <= 0:
        raise PrepareError("--uid-base and --uid-count must be positive")
    py = describe_python(python)
    node_path = find_node(node)
    rdir = Path(runtime_dir).resolve()
    names = write_runtimes(rdir, py, node_path)
    write_rootfs(Path(rootfs_dir).resolve(), uid_base, uid_count)
    if node_path is None:
        log.warning("node_not_found", hint="pass --node to add the nodejs runtime")
    summary = {"runtimes": names, "runtime_dir": str(rdir), "rootfs_dir": str(Path(rootfs_dir).resolve()),
               "python": py.binary, "node": node_path}
    log.info("runner_prepared", **summary)
    return summary
